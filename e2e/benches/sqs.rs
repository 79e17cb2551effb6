//! SQS polling cost per tick: nerite's shared per-endpoint client with coalesced reads,
//! against one client per object (how KEDA's SQS scaler works: a client per ScaledObject,
//! one GetQueueAttributes per object per poll), in the same run, against moto.
//!
//! Every request and connection goes through a counting TCP proxy in front of moto, so both
//! sides are measured the same way. Objects are spread over at most 100 queues (1,000
//! objects: 10 per queue, as when several workloads scale on one queue).
//!
//! Run: `make bench` (or `cargo bench --profile dev --bench sqs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nerite::brokers::Source;
use nerite::brokers::sqs::{SqsApi, SqsTarget};
use nerite::core::observation::Credentials;
use nerite_testkit::moto::{Moto, REGION, Sqs, queue_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONCURRENCY: usize = 64;

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
}

/// Forward 127.0.0.1:<port> to moto, counting connections and SQS requests.
async fn proxy(upstream: u16, counters: Arc<Counters>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counters.connections.fetch_add(1, Ordering::Relaxed);
            let counters = counters.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&tail).to_ascii_lowercase();
                        let hits = text.matches("x-amz-target: amazonsqs.").count();
                        counters.requests.fetch_add(hits as u64, Ordering::Relaxed);
                        // Keep a little of the end, in case a header straddles two reads.
                        let keep = tail.len().min(32);
                        let cut = if hits > 0 {
                            tail.len()
                        } else {
                            tail.len() - keep
                        };
                        tail.drain(..cut);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(port)
}

struct Row {
    objects: usize,
    queues: usize,
    side: &'static str,
    clients: usize,
    calls: [u64; 2],
    connections: [u64; 2],
    millis: [u128; 2],
}

fn targets(endpoint: &str, objects: usize, queues: usize) -> Vec<SqsTarget> {
    (0..objects)
        .map(|i| SqsTarget {
            queue_url: queue_url(REGION, &format!("bench-{}", i % queues)),
            region: REGION.to_string(),
            endpoint: Some(endpoint.to_string()),
            credentials: Some(Credentials::new("test", "test")),
            include_in_flight: true,
            include_delayed: false,
        })
        .collect()
}

async fn nerite_side(endpoint: &str, objects: usize, queues: usize, c: &Counters) -> Row {
    let api = SqsApi::new(Duration::from_secs(30));
    let targets = targets(endpoint, objects, queues);
    let mut row = Row {
        objects,
        queues,
        side: "nerite (shared client, coalesced)",
        clients: 0,
        calls: [0; 2],
        connections: [0; 2],
        millis: [0; 2],
    };
    for tick in 0..2 {
        let (r0, c0) = (
            c.requests.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let failures = futures::stream::iter(targets.iter())
            .map(|t| api.observe(t))
            .buffer_unordered(CONCURRENCY)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        assert_eq!(failures, 0, "nerite reads failed");
        row.millis[tick] = started.elapsed().as_millis();
        row.calls[tick] = c.requests.load(Ordering::Relaxed) - r0;
        row.connections[tick] = c.connections.load(Ordering::Relaxed) - c0;
        // The next tick comes one poll interval later: past the coalescing window.
        tokio::time::sleep(nerite::brokers::sqs::COALESCE).await;
    }
    row.clients = api.client_count().await;
    row
}

async fn baseline_side(endpoint: &str, objects: usize, queues: usize, c: &Counters) -> Row {
    // One client (and connection pool) per object, built when the object is first seen.
    let clients: Vec<(Sqs, String)> = (0..objects)
        .map(|i| {
            (
                Sqs::new(endpoint, REGION, "test", "test"),
                queue_url(REGION, &format!("bench-{}", i % queues)),
            )
        })
        .collect();
    let mut row = Row {
        objects,
        queues,
        side: "one client per object",
        clients: clients.len(),
        calls: [0; 2],
        connections: [0; 2],
        millis: [0; 2],
    };
    for tick in 0..2 {
        let (r0, c0) = (
            c.requests.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        let failures = futures::stream::iter(clients.iter())
            .map(|(sqs, url)| {
                sqs.client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(
                        aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    )
                    .send()
            })
            .buffer_unordered(CONCURRENCY)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        assert_eq!(failures, 0, "baseline reads failed");
        row.millis[tick] = started.elapsed().as_millis();
        row.calls[tick] = c.requests.load(Ordering::Relaxed) - r0;
        row.connections[tick] = c.connections.load(Ordering::Relaxed) - c0;
        tokio::time::sleep(nerite::brokers::sqs::COALESCE).await;
    }
    row
}

fn main() {
    let moto = Moto::start().expect("moto");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(async {
        let counters = Arc::new(Counters::default());
        let port = proxy(moto.port, counters.clone()).await.expect("proxy");
        let endpoint = format!("http://127.0.0.1:{port}");
        let setup = moto.sqs();
        for q in 0..100 {
            setup
                .create_queue(&format!("bench-{q}"), &[])
                .await
                .expect("create queue");
        }
        let mut rows = Vec::new();
        for objects in [1usize, 100, 1000] {
            let queues = objects.min(100);
            rows.push(nerite_side(&endpoint, objects, queues, &counters).await);
            rows.push(baseline_side(&endpoint, objects, queues, &counters).await);
        }
        rows
    });
    println!();
    println!(
        "SQS polling, API calls per tick (moto via a counting proxy; tick 1 cold, tick 2 warm)"
    );
    println!();
    println!(
        "| objects | queues | polling                           | SDK clients | calls tick 1 | calls tick 2 | new connections tick 1 | new connections tick 2 | tick 1 ms | tick 2 ms |"
    );
    println!(
        "|--------:|-------:|-----------------------------------|------------:|-------------:|-------------:|-----------------------:|-----------------------:|----------:|----------:|"
    );
    for r in &rows {
        println!(
            "| {:>7} | {:>6} | {:<33} | {:>11} | {:>12} | {:>12} | {:>22} | {:>22} | {:>9} | {:>9} |",
            r.objects,
            r.queues,
            r.side,
            r.clients,
            r.calls[0],
            r.calls[1],
            r.connections[0],
            r.connections[1],
            r.millis[0],
            r.millis[1]
        );
    }
    println!();
    println!(
        "Both sides read the same queues with the same concurrency ({CONCURRENCY}); nerite's one read per queue also returns the redrive policy it keeps in sync."
    );
}
