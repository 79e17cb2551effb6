//! Kafka end to end: a Kafka-protocol broker (tansu, `e2e/kafka.sh`), the confluent-kafka
//! test driver, the fake Kubernetes API server and nerite's controller — lag accuracy, a
//! real rebalance, partition growth against a broker without CreatePartitions, redrive of a
//! dead-letter topic (with an operator kill), and bad inputs.

use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use nerite::spec::api::{KafkaRedriveStatus, KafkaStatus, RedrivePhase, ScaledConsumerStatus};
use nerite_testkit::ops::OperatorProcess;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, blocking, condition, eventually};
use crate::support::kafka::{Kafka, TlsFront};
use crate::support::{Env, dump, run};

pub fn trials(env: &Env) -> Vec<Trial> {
    let mut trials = Vec::new();
    let with_kafka = |name: &str, env: &Env, f: fn(Arc<Kafka>) -> Result<(), String>| {
        let e = env.clone();
        Trial::test(format!("kafka::{name}"), move || {
            let kafka = e.kafka()?;
            f(kafka).map_err(Failed::from)
        })
    };
    trials.push(with_kafka(
        "lag_matches_committed_offsets_and_caps_at_partitions",
        env,
        |k| run(lag_accuracy(k)),
    ));
    trials.push(with_kafka(
        "a_rebalance_does_not_disturb_the_readings",
        env,
        |k| run(rebalance(k)),
    ));
    trials.push(with_kafka(
        "partition_growth_without_create_partitions_keeps_scaling",
        env,
        |k| run(growth_unsupported(k)),
    ));
    trials.push(with_kafka(
        "redrive_copies_1000_records_once_per_request",
        env,
        |k| run(redrive(k)),
    ));
    let binary = Arc::new(crate::support::binary_copy());
    let e = env.clone();
    trials.push(Trial::test(
        "kafka::operator_kill_mid_redrive_loses_nothing",
        move || {
            let kafka = e.kafka()?;
            run(kill_mid_redrive(kafka, binary.clone())).map_err(Failed::from)
        },
    ));
    trials.push(Trial::test("kafka::tls_with_a_ca_from_a_secret", || {
        let (kafka, front) = Kafka::start_behind_tls()?;
        run(tls(Arc::new(kafka), front)).map_err(Failed::from)
    }));
    trials.push(with_kafka("bad_inputs_get_clear_conditions", env, |k| {
        let guarded = Kafka::start_with_users(&[("alice", "wonderland")])?;
        run(bad_inputs(k, Arc::new(guarded)))
    }));
    trials
}

fn source(kafka: &Kafka, topic: &str, group: &str) -> Value {
    json!({
        "bootstrapServers": [kafka.bootstrap()],
        "topic": topic,
        "consumerGroup": group,
    })
}

fn spec(deployment: &str, kafka: Value, per_replica: i64) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": 1,
        "maxReplicas": 20,
        "source": {"kafka": kafka},
        "objective": {"backlogPerReplica": per_replica},
        "behavior": {"pollInterval": "1s", "scaleDown": {"stabilizationWindow": "0s"}}
    })
}

async fn setup(cluster: &Cluster, ns: &str, deployments: &[(&str, i32)]) -> Result<(), String> {
    cluster.namespace(ns).await?;
    for (d, n) in deployments {
        cluster.deployment(ns, d, *n).await?;
    }
    Ok(())
}

/// Each trial uses its own topic names on the shared broker.
async fn topic(
    kafka: &Arc<Kafka>,
    name: &str,
    partitions: i32,
    counts: &[i64],
) -> Result<(), String> {
    let k = kafka.clone();
    let (name, counts) = (name.to_string(), counts.to_vec());
    blocking(move || {
        k.create_topic(&name, partitions)?;
        if counts.iter().any(|c| *c > 0) {
            k.produce(&name, &counts)?;
        }
        Ok::<_, String>(())
    })
    .await?
}

async fn commit(
    kafka: &Arc<Kafka>,
    group: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), String> {
    let k = kafka.clone();
    let (g, t, o) = (group.to_string(), topic.to_string(), offsets.to_vec());
    blocking(move || k.commit(&g, &t, &o)).await?
}

async fn kafka_status(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Result<Option<KafkaStatus>, String> {
    Ok(cluster.status(ns, name).await?.kafka)
}

async fn wait_status<T>(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&ScaledConsumerStatus) -> Option<T>,
) -> Result<T, String> {
    match eventually(what, timeout, || async {
        Ok(f(&cluster.status(ns, name).await?))
    })
    .await
    {
        Ok(v) => Ok(v),
        Err(e) => Err(format!("{e}{}", dump(cluster, ns, name).await)),
    }
}

async fn wait_replicas(
    cluster: &Cluster,
    ns: &str,
    d: &str,
    want: i32,
    timeout: Duration,
) -> Result<(), String> {
    let r = eventually(&format!("{d} at {want} replicas"), timeout, || async {
        Ok((cluster.replicas(ns, d).await? == want).then_some(()))
    })
    .await;
    match r {
        Ok(()) => Ok(()),
        // Each trial names its ScaledConsumers after their deployments.
        Err(e) => Err(format!("{e}{}", dump(cluster, ns, d).await)),
    }
}

async fn patch_kafka(cluster: &Cluster, ns: &str, name: &str, kafka: Value) -> Result<(), String> {
    cluster
        .patch_scaled_consumer(ns, name, json!({"spec": {"source": {"kafka": kafka}}}))
        .await
}

/// 6,000 lag on 4 partitions at 1,000 per replica: 6 wanted, capped at 4; each
/// per-partition figure exact; the caps move with `limitToPartitionsWithLag` and
/// `allowIdleConsumers`.
async fn lag_accuracy(kafka: Arc<Kafka>) -> Result<(), String> {
    let ns = "kafka-lag";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("orders", 1)]).await?;
    topic(&kafka, "orders", 4, &[2000, 2000, 2000, 3000]).await?;
    commit(
        &kafka,
        "workers",
        "orders",
        &[(0, 500), (1, 2000), (2, 500), (3, 0)],
    )
    .await?;
    cluster
        .scaled_consumer(
            ns,
            "orders",
            spec("orders", source(&kafka, "orders", "workers"), 1000),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);

    let k = wait_status(
        &cluster,
        ns,
        "orders",
        "a Kafka reading",
        Duration::from_secs(30),
        |s| s.kafka.clone().filter(|k| k.partitions == 4),
    )
    .await?;
    let per: Vec<(i32, i64, i64, Option<i64>, i64)> = k
        .per_partition
        .iter()
        .map(|p| (p.partition, p.log_start, p.log_end, p.committed, p.lag))
        .collect();
    let want = vec![
        (0, 0, 2000, Some(500), 1500),
        (1, 0, 2000, Some(2000), 0),
        (2, 0, 2000, Some(500), 1500),
        (3, 0, 3000, Some(0), 3000),
    ];
    if per != want || k.total_lag != 6000 || k.lagging_partitions != 3 {
        return Err(format!(
            "readings {per:?} total {} lagging {}, want {want:?} / 6000 / 3",
            k.total_lag, k.lagging_partitions
        ));
    }
    wait_replicas(&cluster, ns, "orders", 4, Duration::from_secs(30)).await?;
    let s = cluster.status(ns, "orders").await?;
    let reason = s.reason.clone().unwrap_or_default();
    if !reason.contains("backlog 6000 at 1000/replica → 6")
        || !reason.contains("capped at 4 partitions")
    {
        return Err(format!("reason does not explain the cap: {reason}"));
    }
    let limited = condition(&s, "ScalingLimited").map(|c| c.reason.clone());
    if limited.as_deref() != Some("AtPartitionCount") {
        return Err(format!(
            "ScalingLimited reason {limited:?}, want AtPartitionCount"
        ));
    }
    println!("  4 partitions, lag [1500, 0, 1500, 3000] = 6000 exact; {reason}");

    // Without opt-in, growth is only recommended (after the rates are measured).
    let rec = wait_status(
        &cluster,
        ns,
        "orders",
        "a partition recommendation",
        Duration::from_secs(30),
        |s| {
            condition(s, "PartitionGrowth")
                .filter(|c| c.reason == "Recommended")
                .map(|c| c.message.clone())
        },
    )
    .await?;
    println!("  PartitionGrowth=Recommended: {rec}");

    patch_kafka(
        &cluster,
        ns,
        "orders",
        json!({"limitToPartitionsWithLag": true}),
    )
    .await?;
    wait_replicas(&cluster, ns, "orders", 3, Duration::from_secs(30)).await?;
    let r = cluster
        .status(ns, "orders")
        .await?
        .reason
        .unwrap_or_default();
    if !r.contains("3 partitions with lag") {
        return Err(format!("reason after limitToPartitionsWithLag: {r}"));
    }
    patch_kafka(
        &cluster,
        ns,
        "orders",
        json!({"limitToPartitionsWithLag": null, "allowIdleConsumers": true}),
    )
    .await?;
    wait_replicas(&cluster, ns, "orders", 6, Duration::from_secs(30)).await?;
    println!("  limitToPartitionsWithLag → 3 replicas; allowIdleConsumers → 6");

    // Consumption shows up as lag going down and a consume rate.
    commit(
        &kafka,
        "workers",
        "orders",
        &[(0, 2000), (1, 2000), (2, 2000), (3, 3000)],
    )
    .await?;
    wait_replicas(&cluster, ns, "orders", 1, Duration::from_secs(30)).await?;
    let k = kafka_status(&cluster, ns, "orders")
        .await?
        .ok_or("no kafka status")?;
    if k.total_lag != 0 {
        return Err(format!("lag after full commit: {}", k.total_lag));
    }
    println!("  all committed → lag 0, back to 1 replica");
    Ok(())
}

/// Two real members join the group (a rebalance) while nerite reads every second: the
/// readings stay exact and no read fails.
async fn rebalance(kafka: Arc<Kafka>) -> Result<(), String> {
    let ns = "kafka-rebalance";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("payments", 1)]).await?;
    topic(&kafka, "payments", 4, &[1000, 1000, 1000, 1000]).await?;
    commit(
        &kafka,
        "payers",
        "payments",
        &[(0, 100), (1, 200), (2, 300), (3, 400)],
    )
    .await?;
    cluster
        .scaled_consumer(
            ns,
            "payments",
            spec("payments", source(&kafka, "payments", "payers"), 1000),
        )
        .await
        .map_err(|e| e.to_string())?;
    // Readings are counted through status.lastObservation, so every poll writes it.
    let _op = cluster.start_operator_writing_every_poll(ns);
    let want_lag = 900 + 800 + 700 + 600;
    wait_status(
        &cluster,
        ns,
        "payments",
        "the first reading",
        Duration::from_secs(30),
        |s| {
            s.kafka
                .as_ref()
                .filter(|k| k.total_lag == want_lag)
                .map(|_| ())
        },
    )
    .await?;

    let k = kafka.clone();
    let members = blocking(move || k.members("payers", "payments", 2)).await??;
    // Watch through the joins: every reading exact, no failures.
    let mut seen = std::collections::BTreeSet::new();
    let started = std::time::Instant::now();
    let mut readings = 0;
    while started.elapsed() < Duration::from_secs(15) {
        let s = cluster.status(ns, "payments").await?;
        let k = s.kafka.clone().unwrap_or_default();
        if let Some(o) = &s.last_observation {
            seen.insert(o.observed_at.clone());
        }
        if k.total_lag != want_lag || s.consecutive_failures.unwrap_or(0) != 0 {
            members.stop();
            return Err(format!(
                "reading disturbed during the rebalance: lag {} failures {:?}{}",
                k.total_lag,
                s.consecutive_failures,
                dump(&cluster, ns, "payments").await
            ));
        }
        readings += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = members.events();
    let assigned: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("assigned").is_some())
        .collect();
    let both = events
        .iter()
        .any(|e| e.get("member") == Some(&json!(1)) && e.get("assigned").is_some());
    blocking(move || members.stop()).await?;
    if !both {
        return Err(format!(
            "the second member never got an assignment: {events:?}"
        ));
    }
    println!(
        "  {} assignments across 2 members (a rebalance); {} distinct readings, all lag {want_lag}, no failed read ({readings} checks)",
        assigned.len(),
        seen.len()
    );
    if seen.len() < 5 {
        return Err(format!("only {} readings during the rebalance", seen.len()));
    }
    Ok(())
}

/// autoIncrease against a broker that does not offer CreatePartitions: a clear condition and
/// an Event; replicas still scale to the partition count.
async fn growth_unsupported(kafka: Arc<Kafka>) -> Result<(), String> {
    let ns = "kafka-growth";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("events", 1)]).await?;
    topic(&kafka, "events", 2, &[5000, 5000]).await?;
    commit(&kafka, "ev", "events", &[(0, 0), (1, 0)]).await?;
    let mut src = source(&kafka, "events", "ev");
    src["partitionGrowth"] = json!({"autoIncrease": true, "maxPartitions": 8, "cooldown": "1m"});
    cluster
        .scaled_consumer(ns, "events", spec("events", src, 1000))
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    wait_replicas(&cluster, ns, "events", 2, Duration::from_secs(30)).await?;
    let msg = wait_status(
        &cluster,
        ns,
        "events",
        "PartitionGrowth=False BrokerUnsupported",
        Duration::from_secs(40),
        |s| {
            condition(s, "PartitionGrowth")
                .filter(|c| c.status == "False" && c.reason == "BrokerUnsupported")
                .map(|c| c.message.clone())
        },
    )
    .await?;
    if !msg.contains("CreatePartitions") {
        return Err(format!(
            "condition message does not name CreatePartitions: {msg}"
        ));
    }
    let events = cluster.events_for(ns, "events").await?;
    if !events
        .iter()
        .any(|e| e.reason.as_deref() == Some("PartitionGrowthFailed"))
    {
        return Err(format!(
            "no PartitionGrowthFailed Event{}",
            dump(&cluster, ns, "events").await
        ));
    }
    // Scaling continues: more lag is still followed (within the cap), the status stays Ready.
    let s = cluster.status(ns, "events").await?;
    if condition(&s, "Ready").map(|c| c.status.as_str()) != Some("True")
        || cluster.replicas(ns, "events").await? != 2
    {
        return Err(format!(
            "scaling disturbed{}",
            dump(&cluster, ns, "events").await
        ));
    }
    println!(
        "  PartitionGrowth=False BrokerUnsupported: {msg}; replicas stay at the 2 partitions, Ready=True"
    );
    Ok(())
}

/// Unreachable bootstrap servers, unknown topic, unknown group, wrong SASL password: each a
/// clear condition and the count held; the right password reads.
async fn bad_inputs(kafka: Arc<Kafka>, guarded: Arc<Kafka>) -> Result<(), String> {
    let ns = "kafka-bad";
    let cluster = Cluster::fake(true).await?;
    let names = [
        "unreachable",
        "unknown-topic",
        "unknown-group",
        "wrong-password",
        "right-password",
    ];
    let deployments: Vec<(&str, i32)> = names.iter().map(|n| (*n, 3)).collect();
    setup(&cluster, ns, &deployments).await?;
    cluster
        .secret(ns, "kafka-wrong", "alice", "not-the-password")
        .await?;
    cluster
        .secret(ns, "kafka-right", "alice", "wonderland")
        .await?;
    topic(&kafka, "known", 2, &[10, 10]).await?;
    commit(&kafka, "known-group", "known", &[(0, 0), (1, 0)]).await?;
    let [dead_port] = nerite_testkit::rabbitmq::free_ports::<1>()?;
    let specs = [
        (
            "unreachable",
            json!({"bootstrapServers": [format!("127.0.0.1:{dead_port}")], "topic": "known", "consumerGroup": "known-group"}),
        ),
        (
            "unknown-topic",
            source(&kafka, "no-such-topic", "known-group"),
        ),
        ("unknown-group", source(&kafka, "known", "no-such-group")),
        (
            "wrong-password",
            json!({"bootstrapServers": [guarded.bootstrap()], "topic": "known", "consumerGroup": "g",
            "sasl": {"mechanism": "ScramSha512", "credentialsSecretRef": {"name": "kafka-wrong"}}}),
        ),
        (
            "right-password",
            json!({"bootstrapServers": [guarded.bootstrap()], "topic": "absent", "consumerGroup": "g",
            "sasl": {"mechanism": "ScramSha512", "credentialsSecretRef": {"name": "kafka-right"}}}),
        ),
    ];
    for (name, src) in &specs {
        cluster
            .scaled_consumer(ns, name, spec(name, src.clone(), 100))
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    let _op = cluster.start_operator(ns);
    let want = [
        ("unreachable", "Unreachable"),
        ("unknown-topic", "TopicNotFound"),
        ("unknown-group", "GroupHasNoOffsets"),
        ("wrong-password", "Unauthorized"),
        // Logged in: the broker answers, and the topic it is asked about does not exist.
        ("right-password", "TopicNotFound"),
    ];
    for (name, reason) in want {
        let msg = wait_status(
            &cluster,
            ns,
            name,
            &format!("{name}: SourceReachable=False {reason}"),
            Duration::from_secs(40),
            |s| {
                condition(s, "SourceReachable")
                    .filter(|c| c.status == "False" && c.reason == reason)
                    .map(|c| c.message.clone())
            },
        )
        .await?;
        if msg.contains("not-the-password") || msg.contains("wonderland") {
            return Err(format!(
                "{name}: a password leaked into the condition: {msg}"
            ));
        }
        let replicas = cluster.replicas(ns, name).await?;
        if replicas != 3 {
            return Err(format!("{name}: count changed to {replicas} on bad input"));
        }
        let events = cluster.events_for(ns, name).await?;
        if !events.iter().any(|e| e.reason.as_deref() == Some(reason)) {
            return Err(format!(
                "{name}: no {reason} Event{}",
                dump(&cluster, ns, name).await
            ));
        }
        println!("  {name}: SourceReachable=False {reason}: {msg}");
    }
    Ok(())
}

fn redrive_spec(kafka: &Kafka, topic: &str, dlq: &str, group: &str, redrive: Value) -> Value {
    let mut src = source(kafka, topic, group);
    src["deadLetter"] = json!({"topic": dlq, "redrive": redrive});
    src
}

async fn redrive_status(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Result<Option<KafkaRedriveStatus>, String> {
    Ok(kafka_status(cluster, ns, name)
        .await?
        .and_then(|k| k.redrive))
}

async fn redrive_done(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    request: &str,
    timeout: Duration,
) -> Result<KafkaRedriveStatus, String> {
    match eventually(
        &format!("redrive {request} of {name} to end"),
        timeout,
        || async {
            Ok(redrive_status(cluster, ns, name)
                .await?
                .filter(|r| r.progress.request_id == request && !r.progress.phase.is_active()))
        },
    )
    .await
    {
        Ok(r) => Ok(r),
        Err(e) => Err(format!("{e}{}", dump(cluster, ns, name).await)),
    }
}

/// Records of a topic: key → (partition, value, headers), and how many copies of each key.
async fn records_of(kafka: &Arc<Kafka>, topic: &str) -> Result<Vec<Value>, String> {
    let k = kafka.clone();
    let t = topic.to_string();
    blocking(move || k.dump(&t)).await?
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Each DLQ key exactly once on the target, with its value, its headers and the partition
/// librdkafka's murmur2 partitioner chose for it (both topics have 4 partitions).
fn check_copies(dlq: &[Value], target: &[Value], prefix: &str) -> Result<(usize, usize), String> {
    use std::collections::BTreeMap;
    let mut want: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in dlq.iter().filter(|r| str_of(r, "key").starts_with(prefix)) {
        want.insert(str_of(r, "key"), r);
    }
    let mut got: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in target
        .iter()
        .filter(|r| str_of(r, "key").starts_with(prefix))
    {
        got.entry(str_of(r, "key")).or_default().push(r);
    }
    let missing: Vec<&&str> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} keys missing on the target, e.g. {missing:?}",
            want.keys().filter(|k| !got.contains_key(*k)).count()
        ));
    }
    let duplicates: usize = got.values().map(|v| v.len().saturating_sub(1)).sum();
    for (key, copies) in &got {
        let Some(orig) = want.get(key) else {
            return Err(format!("unexpected key {key} on the target"));
        };
        for c in copies {
            if str_of(c, "value") != str_of(orig, "value") {
                return Err(format!("value of {key} changed: {c}"));
            }
            let h = &c["headers"];
            if h["origin"] != json!("checkout") {
                return Err(format!("header of {key} lost: {c}"));
            }
            if h["nerite-redrive-origin"].as_str().is_none() {
                return Err(format!("no origin header on {key}: {c}"));
            }
            if c["partition"] != orig["partition"] {
                return Err(format!(
                    "{key} went to partition {} but the producer's partitioner chose {}",
                    c["partition"], orig["partition"]
                ));
            }
        }
    }
    Ok((want.len(), duplicates))
}

/// 1,000 keyed records in the DLQ: all on the source topic once, keys, values and headers
/// kept, same partitioning as the producer's; the same request id never runs again; a new
/// id copies only what arrived since.
async fn redrive(kafka: Arc<Kafka>) -> Result<(), String> {
    let ns = "kafka-redrive";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("retry", 1)]).await?;
    topic(&kafka, "retry", 4, &[0, 0, 0, 0]).await?;
    topic(&kafka, "retry.dlq", 4, &[0, 0, 0, 0]).await?;
    let k = kafka.clone();
    blocking(move || k.produce_keyed("retry.dlq", 1000, "r")).await??;
    commit(
        &kafka,
        "retry-workers",
        "retry",
        &[(0, 0), (1, 0), (2, 0), (3, 0)],
    )
    .await?;
    let spec_r = |id: &str| {
        spec(
            "retry",
            redrive_spec(
                &kafka,
                "retry",
                "retry.dlq",
                "retry-workers",
                json!({"requestId": id}),
            ),
            100,
        )
    };
    cluster
        .scaled_consumer(ns, "retry", spec_r("r1"))
        .await
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let _op = cluster.start_operator_writing_every_poll(ns);
    let r = redrive_done(&cluster, ns, "retry", "r1", Duration::from_secs(180)).await?;
    let took = started.elapsed();
    if (
        r.progress.phase,
        r.progress.moved,
        r.to_copy,
        r.failed,
        r.duplicates,
    ) != (RedrivePhase::Succeeded, 1000, 1000, 0, 0)
    {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    let dlq = records_of(&kafka, "retry.dlq").await?;
    let target = records_of(&kafka, "retry").await?;
    let (n, dups) = check_copies(&dlq, &target, "r-")?;
    if (n, dups, target.len()) != (1000, 0, 1000) {
        return Err(format!(
            "{n} keys, {dups} duplicates, {} records on the target",
            target.len()
        ));
    }
    // A copy leaves the dead-letter topic as it was: its depth stays 1000.
    let dlq_depth = |s: &ScaledConsumerStatus| {
        s.kafka
            .as_ref()
            .and_then(|k| k.dead_letter.as_ref())
            .and_then(|d| d.depth)
    };
    wait_status(
        &cluster,
        ns,
        "retry",
        "DLQ depth 1000 in status",
        Duration::from_secs(30),
        |s| (dlq_depth(s) == Some(1000)).then_some(()),
    )
    .await?;
    println!(
        "  1000 copied in {:.1}s (operator start to completion), each key once, values, headers and partitions kept; DLQ depth in status 1000",
        took.as_secs_f64()
    );

    // r1 never runs again; r2 copies only the 5 records that arrived since.
    let k = kafka.clone();
    blocking(move || k.produce_keyed("retry.dlq", 5, "late")).await??;
    cluster
        .patch_scaled_consumer(
            ns,
            "retry",
            json!({"spec": {"behavior": {"pollInterval": "2s"}}}),
        )
        .await?;
    // Two readings after the spec change (each sees the 5 late records): r1 had its
    // chances to run again.
    let seen = wait_status(
        &cluster,
        ns,
        "retry",
        "DLQ depth 1005 after the change",
        Duration::from_secs(30),
        |s| {
            (dlq_depth(s) == Some(1005))
                .then(|| s.last_observation.as_ref().map(|o| o.observed_at.clone()))
        },
    )
    .await?;
    wait_status(
        &cluster,
        ns,
        "retry",
        "one more reading",
        Duration::from_secs(30),
        |s| (s.last_observation.as_ref().map(|o| o.observed_at.clone()) != seen).then_some(()),
    )
    .await?;
    let again = records_of(&kafka, "retry").await?;
    if again.len() != 1000 {
        return Err(format!(
            "r1 ran again: {} records on the target",
            again.len()
        ));
    }
    patch_kafka(
        &cluster,
        ns,
        "retry",
        json!({"deadLetter": {"topic": "retry.dlq", "redrive": {"requestId": "r2"}}}),
    )
    .await?;
    let r2 = redrive_done(&cluster, ns, "retry", "r2", Duration::from_secs(120)).await?;
    let after = records_of(&kafka, "retry").await?;
    if (r2.progress.phase, r2.progress.moved, after.len()) != (RedrivePhase::Succeeded, 5, 1005) {
        return Err(format!("r2: {r2:?}, {} records on the target", after.len()));
    }
    println!("  r1 did not run again after a spec change; r2 copied only the 5 new records");

    // The annotation triggers the next one (the spec's request removed: the spec would win).
    let k = kafka.clone();
    blocking(move || k.produce_keyed("retry.dlq", 3, "annotated")).await??;
    cluster
        .patch_scaled_consumer(
            ns,
            "retry",
            json!({
                "metadata": {"annotations": {"nerite.dev/redrive-request": "a3"}},
                "spec": {"source": {"kafka": {"deadLetter": {"topic": "retry.dlq", "redrive": null}}}}
            }),
        )
        .await?;
    let r3 = redrive_done(&cluster, ns, "retry", "a3", Duration::from_secs(120)).await?;
    let after = records_of(&kafka, "retry").await?;
    if (r3.progress.phase, r3.progress.moved, after.len()) != (RedrivePhase::Succeeded, 3, 1008) {
        return Err(format!("a3: {r3:?}, {} records on the target", after.len()));
    }
    wait_status(
        &cluster,
        ns,
        "retry",
        "Redrive=True/Succeeded for a3",
        Duration::from_secs(30),
        |s| {
            condition(s, "Redrive")
                .filter(|c| {
                    c.status == "True" && c.reason == "Succeeded" && c.message.contains("a3")
                })
                .map(drop)
        },
    )
    .await?;
    println!("  the annotation started a3: the 3 records since r2 copied");
    Ok(())
}

/// The operator process is killed mid-redrive and started again: every record reaches the
/// target; duplicates on the target never exceed what the status reports.
async fn kill_mid_redrive(
    kafka: Arc<Kafka>,
    binary: Arc<Result<(tempfile::TempDir, std::path::PathBuf), String>>,
) -> Result<(), String> {
    let binary = match binary.as_ref() {
        Ok((_, path)) => path.clone(),
        Err(e) => return Err(e.clone()),
    };
    let ns = "kafka-kill";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("kill", 1)]).await?;
    topic(&kafka, "kill", 4, &[0, 0, 0, 0]).await?;
    topic(&kafka, "kill.dlq", 4, &[0, 0, 0, 0]).await?;
    let k = kafka.clone();
    blocking(move || k.produce_keyed("kill.dlq", 1000, "k")).await??;
    commit(
        &kafka,
        "kill-workers",
        "kill",
        &[(0, 0), (1, 0), (2, 0), (3, 0)],
    )
    .await?;
    cluster
        .scaled_consumer(
            ns,
            "kill",
            spec(
                "kill",
                redrive_spec(
                    &kafka,
                    "kill",
                    "kill.dlq",
                    "kill-workers",
                    json!({"requestId": "k1", "maxMessagesPerSecond": 100}),
                ),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        cluster.kubeconfig_yaml().ok_or("no kubeconfig")?,
    )
    .map_err(|e| e.to_string())?;
    let args = ["--namespace", ns, "--source-timeout", "2"];
    let mut first = OperatorProcess::start(&binary, &kubeconfig, "first", &args, dir.path())?;
    // Kill inside a batch: journaled, partly written, not yet committed.
    let at_kill = eventually(
        "200 copied and a batch in flight",
        Duration::from_secs(120),
        || async {
            Ok(redrive_status(&cluster, ns, "kill")
                .await?
                .filter(|r| r.progress.moved >= 200 && r.journal.is_some()))
        },
    )
    .await;
    if let Err(e) = at_kill {
        return Err(format!(
            "{e}{}\n  operator log: {}",
            dump(&cluster, ns, "kill").await,
            first.log_tail(20)
        ));
    }
    first.kill()?;
    let at_kill = redrive_status(&cluster, ns, "kill")
        .await?
        .ok_or("no redrive status")?;
    let on_target = records_of(&kafka, "kill").await?.len();
    println!(
        "  killed the operator (SIGKILL) at {} copied ({} on the target, journal {:?})",
        at_kill.progress.moved,
        on_target,
        at_kill
            .journal
            .as_ref()
            .map(|j| (j.partition, j.from, j.to))
    );
    let second = OperatorProcess::start(&binary, &kubeconfig, "second", &args, dir.path())?;
    let r = match redrive_done(&cluster, ns, "kill", "k1", Duration::from_secs(180)).await {
        Ok(r) => r,
        Err(e) => return Err(format!("{e}\n  operator log: {}", second.log_tail(30))),
    };
    let dlq = records_of(&kafka, "kill.dlq").await?;
    let target = records_of(&kafka, "kill").await?;
    let (n, dups) = check_copies(&dlq, &target, "k-")?;
    println!(
        "  after restart: {} — moved {}, reported duplicates {}, skipped as already copied {}; on the target {} records, {n} keys, {dups} duplicates, 0 missing",
        r.progress.phase,
        r.progress.moved,
        r.duplicates,
        r.skipped_already_copied,
        target.len()
    );
    if r.progress.phase != RedrivePhase::Succeeded || n != 1000 || r.progress.moved != 1000 {
        return Err(format!("unexpected outcome {r:?}"));
    }
    if dups as i64 > r.duplicates {
        return Err(format!(
            "{dups} duplicates on the target but {} reported",
            r.duplicates
        ));
    }
    Ok(())
}

/// A broker reachable only over TLS: the CA from a Secret verifies it and the group is read;
/// a Secret with another CA gives a clear condition and the count is held.
async fn tls(kafka: Arc<Kafka>, front: TlsFront) -> Result<(), String> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    let ns = "kafka-tls";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &[("secure", 1), ("wrong-ca", 2)]).await?;
    topic(&kafka, "secure", 2, &[3000, 1000]).await?;
    commit(&kafka, "secure-workers", "secure", &[(0, 0), (1, 0)]).await?;
    let api: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
    for (name, pem) in [
        ("kafka-ca", &front.ca_pem),
        ("other-ca", &front.other_ca_pem),
    ] {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.data = Some([("ca.crt".to_string(), ByteString(pem.as_bytes().to_vec()))].into());
        api.create(&PostParams::default(), &s)
            .await
            .map_err(|e| e.to_string())?;
    }
    for (name, ca) in [("secure", "kafka-ca"), ("wrong-ca", "other-ca")] {
        let mut src = source(&kafka, "secure", "secure-workers");
        src["tls"] = json!({"caSecretRef": {"name": ca, "key": "ca.crt"}});
        cluster
            .scaled_consumer(ns, name, spec(name, src, 1000))
            .await
            .map_err(|e| e.to_string())?;
    }
    let _op = cluster.start_operator(ns);
    wait_replicas(&cluster, ns, "secure", 2, Duration::from_secs(30)).await?;
    let k = kafka_status(&cluster, ns, "secure")
        .await?
        .ok_or("no kafka status")?;
    if k.total_lag != 4000 {
        return Err(format!(
            "lag over TLS {} (want 4000){}",
            k.total_lag,
            dump(&cluster, ns, "secure").await
        ));
    }
    let msg = wait_status(
        &cluster,
        ns,
        "wrong-ca",
        "wrong CA: SourceReachable=False",
        Duration::from_secs(30),
        |s| {
            condition(s, "SourceReachable")
                .filter(|c| c.status == "False")
                .map(|c| format!("{}: {}", c.reason, c.message))
        },
    )
    .await?;
    if !msg.starts_with("TlsFailed") || cluster.replicas(ns, "wrong-ca").await? != 2 {
        return Err(format!(
            "wrong CA: {msg}{}",
            dump(&cluster, ns, "wrong-ca").await
        ));
    }
    println!(
        "  over TLS with the CA from a Secret: lag 4000 read, 2 replicas; another CA: {msg}; count held"
    );
    Ok(())
}
