//! Kafka polling cost per tick, against a real Kafka-protocol broker (tansu), in one run:
//!
//! - **shared** — nerite: every ScaledConsumer on the cluster served by one client and one
//!   round per tick (one Metadata, two ListOffsets per leader, one OffsetFetch per
//!   coordinator for all groups);
//! - **client per object** — what KEDA does (a client per ScaledObject): the same reads,
//!   made by a separate client for each ScaledConsumer;
//! - **per-partition watermarks** — what a client built on librdkafka's `fetch_watermarks`
//!   does: two ListOffsets per partition, plus Metadata and OffsetFetch per object.
//!
//! Requests and bytes are counted by the clients themselves (every frame sent); time is the
//! wall time of the tick, the median of the measured ticks (the first, which opens the
//! connections, is not measured).
//!
//! Run: `make bench-kafka` (or `cargo bench --profile dev --bench kafka`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nerite::brokers::kafka::model::{CapMode, OffsetReset};
use nerite::brokers::kafka::wire::{Cluster, Settings, Traffic};
use nerite::brokers::kafka::{KafkaApi, KafkaTarget, list_offsets, metadata, offset_fetch};
use nerite_testkit::kafka::Kafka;

const TICKS: usize = 5;

fn settings(kafka: &Kafka) -> Settings {
    Settings {
        bootstrap: vec![kafka.bootstrap()],
        tls: None,
        sasl: None,
        timeout: Duration::from_secs(30),
        client_id: "nerite-bench".into(),
    }
}

fn target(kafka: &Kafka, topic: &str, group: &str) -> KafkaTarget {
    KafkaTarget {
        settings: settings(kafka),
        topics: vec![topic.to_string()],
        group: group.to_string(),
        offset_reset: OffsetReset::Latest,
        cap: CapMode::Partitions,
        dead_letter_topic: None,
    }
}

struct Row {
    scenario: String,
    approach: &'static str,
    requests: f64,
    bytes: f64,
    millis: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run `tick` TICKS + 1 times; per-tick requests, bytes and median time of the last TICKS.
async fn measure<F, Fut>(traffic: impl Fn() -> Traffic, mut tick: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    if let Err(e) = tick().await {
        panic!("warm-up tick failed: {e}");
    }
    let before = traffic();
    let mut times = Vec::new();
    for _ in 0..TICKS {
        // Past the shared reader's freshness window: every tick reads the broker.
        tokio::time::sleep(FRESH + Duration::from_millis(20)).await;
        let t = Instant::now();
        if let Err(e) = tick().await {
            panic!("tick failed: {e}");
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let d = traffic().since(&before);
    (
        d.requests as f64 / TICKS as f64,
        (d.bytes_in + d.bytes_out) as f64 / TICKS as f64,
        median(times),
    )
}

const FRESH: Duration = Duration::from_millis(50);

async fn shared(targets: &[KafkaTarget]) -> (f64, f64, f64) {
    let api = Arc::new(KafkaApi::new(Duration::from_secs(30)));
    let a = api.clone();
    measure(
        move || a.traffic(),
        || {
            let api = api.clone();
            let targets = targets.to_vec();
            async move {
                let reads = targets.iter().map(|t| api.read(t, FRESH));
                for r in futures::future::join_all(reads).await {
                    r.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        },
    )
    .await
}

async fn per_object(targets: &[KafkaTarget]) -> (f64, f64, f64) {
    let apis: Arc<Vec<KafkaApi>> = Arc::new(
        targets
            .iter()
            .map(|_| KafkaApi::new(Duration::from_secs(30)))
            .collect(),
    );
    let a = apis.clone();
    measure(
        move || {
            let mut t = Traffic::default();
            for api in a.iter() {
                t.add(&api.traffic());
            }
            t
        },
        || {
            let apis = apis.clone();
            let targets = targets.to_vec();
            async move {
                let reads = apis.iter().zip(&targets).map(|(api, t)| api.read(t, FRESH));
                for r in futures::future::join_all(reads).await {
                    r.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        },
    )
    .await
}

/// Metadata, then two ListOffsets for every partition, then OffsetFetch: per object.
async fn per_partition(kafka: &Kafka, targets: &[KafkaTarget]) -> (f64, f64, f64) {
    let clusters: Arc<Vec<Cluster>> = Arc::new(
        targets
            .iter()
            .map(|_| Cluster::new(settings(kafka)))
            .collect(),
    );
    let coordinators: Arc<Vec<i32>> = Arc::new({
        let mut v = Vec::new();
        for (c, t) in clusters.iter().zip(targets) {
            let found =
                nerite::brokers::kafka::find_coordinators(c, std::slice::from_ref(&t.group))
                    .await
                    .expect("coordinator");
            v.push(found.first().map_or(0, |x| x.1));
        }
        v
    });
    let c2 = clusters.clone();
    measure(
        move || {
            let mut t = Traffic::default();
            for c in c2.iter() {
                t.add(&c.traffic());
            }
            t
        },
        || {
            let clusters = clusters.clone();
            let coordinators = coordinators.clone();
            let targets = targets.to_vec();
            async move {
                let reads = clusters.iter().zip(&targets).zip(coordinators.iter()).map(
                    |((c, t), coord)| async move {
                        let topics: BTreeSet<String> = t.topics.iter().cloned().collect();
                        let meta = metadata(c, &topics).await.map_err(|e| e.to_string())?;
                        let mut parts = BTreeMap::new();
                        for (topic, ps) in meta.topics {
                            let ps = ps.map_err(|e| e.to_string())?;
                            for (p, leader) in &ps {
                                let one = [(topic.clone(), *p)];
                                list_offsets(c, *leader, &one, -1)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                list_offsets(c, *leader, &one, -2)
                                    .await
                                    .map_err(|e| e.to_string())?;
                            }
                            parts.insert(topic, ps.iter().map(|(p, _)| *p).collect::<Vec<_>>());
                        }
                        let g = (t.group.clone(), parts);
                        offset_fetch(c, *coord, &[&g])
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<(), String>(())
                    },
                );
                for r in futures::future::join_all(reads).await {
                    r?;
                }
                Ok(())
            }
        },
    )
    .await
}

fn main() {
    let kafka = Kafka::start().expect("start tansu");
    let mut scenarios: Vec<(String, Vec<KafkaTarget>)> = Vec::new();
    for parts in [10, 100, 1000] {
        let topic = format!("bench-p{parts}");
        kafka.create_topic(&topic, parts).expect("create topic");
        let mut counts = vec![0i64; parts as usize];
        for c in counts.iter_mut().take(10) {
            *c = 20;
        }
        kafka.produce(&topic, &counts).expect("produce");
        kafka
            .driver(
                "commit-groups",
                &[&topic, &parts.to_string(), &format!("g-p{parts}"), "1"],
            )
            .expect("commit");
        scenarios.push((
            format!("1 group, {parts} partitions"),
            vec![target(&kafka, &topic, &format!("g-p{parts}-0"))],
        ));
    }
    kafka
        .create_topic("bench-groups", 10)
        .expect("create topic");
    kafka.produce("bench-groups", &[50; 10]).expect("produce");
    kafka
        .driver("commit-groups", &["bench-groups", "10", "many", "100"])
        .expect("commit 100 groups");
    scenarios.push((
        "100 groups × 10 partitions".into(),
        (0..100)
            .map(|i| target(&kafka, "bench-groups", &format!("many-{i}")))
            .collect(),
    ));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for (name, targets) in &scenarios {
        let s = rt.block_on(shared(targets));
        let o = rt.block_on(per_object(targets));
        let p = rt.block_on(per_partition(&kafka, targets));
        for (approach, (requests, bytes, millis)) in [
            ("shared (nerite)", s),
            ("client per object", o),
            ("per-partition watermarks", p),
        ] {
            rows.push(Row {
                scenario: name.clone(),
                approach,
                requests,
                bytes,
                millis,
            });
        }
    }

    println!("\nKafka reads per tick against tansu (median of {TICKS} ticks after a warm-up)\n");
    println!(
        "| {:<28} | {:<24} | {:>12} | {:>12} | {:>11} | {:>10} | {:>8} |",
        "scenario", "approach", "requests", "bytes", "time (ms)", "requests ×", "time ×"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|",
        "-".repeat(30),
        "-".repeat(26),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(13),
        "-".repeat(16)
    );
    for chunk in rows.chunks(3) {
        let base = chunk[0].requests.max(1.0);
        let base_ms = chunk[0].millis.max(0.001);
        for r in chunk {
            println!(
                "| {:<28} | {:<24} | {:>12.1} | {:>12.0} | {:>11.1} | {:>10.1} | {:>8.1} |",
                r.scenario,
                r.approach,
                r.requests,
                r.bytes,
                r.millis,
                r.requests / base,
                r.millis / base_ms
            );
        }
    }
    println!("\n(× = relative to nerite's shared reader in the same run)");
}
