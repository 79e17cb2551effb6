//! Management-API cost of reading many queues: nerite's shared poller beside a
//! one-call-per-object poller (what KEDA's RabbitMQ scaler does), same broker, same run.
//!
//! A vhost holds 1,000 queues; 1, 100 and 1,000 of them are watched (one ScaledConsumer
//! each). A tick is every watched queue read once. Prints calls and response bytes per tick.
//! Run with `make bench`.

use std::sync::Arc;
use std::time::Duration;

use nerite::brokers::Source;
use nerite::brokers::rabbitmq::poller::SharedPoller;
use nerite::brokers::rabbitmq::{ManagementApi, RabbitMqTarget, Traffic};
use nerite::core::observation::Credentials;
use nerite_testkit::rabbitmq::{RabbitMq, wait_for};

const VHOST: &str = "bench";
const QUEUES: usize = 1000;
const TICKS: u32 = 3;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nerite-bench-rabbitmq: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let rabbit = RabbitMq::start()?;
    rabbit.add_vhost(VHOST)?;
    eprintln!("declaring {QUEUES} queues in vhost {VHOST:?} ...");
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let rabbit = &rabbit;
                s.spawn(move || {
                    (t..QUEUES)
                        .step_by(4)
                        .try_for_each(|i| rabbit.declare_queue(VHOST, &queue(i)))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| "declare thread panicked".to_string())?
        })
    })?;
    // Wait until the statistics database has every queue's counts.
    wait_for(Duration::from_secs(60), || {
        let v = rabbit.api_get(&format!(
            "queues/{VHOST}?columns=name,messages_ready&page=1&page_size=500&pagination=true"
        ))?;
        let counted = v["items"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter(|q| q.get("messages_ready").is_some())
                    .count()
            })
            .unwrap_or(0);
        let total = v["total_count"].as_u64().unwrap_or(0);
        if total as usize == QUEUES && counted == 500 {
            Ok(())
        } else {
            Err(format!(
                "{total} queues, {counted} of the first page with counts"
            ))
        }
    })?;

    let url = rabbit.management_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    println!();
    println!(
        "Management API per tick, vhost with {QUEUES} queues (mean of {TICKS} ticks; RabbitMQ, same run)"
    );
    println!(
        "| ScaledConsumers | shared poller: calls | shared: KiB | per object: calls | per object: KiB | calls saved |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1usize, 100, 1000] {
        let targets: Vec<RabbitMqTarget> = (0..n)
            .map(|i| RabbitMqTarget {
                management_url: url.clone(),
                vhost: VHOST.into(),
                queue: queue(i),
                include_unacked: true,
                credentials: Credentials::new("guest", "guest"),
            })
            .collect();
        let (shared, errors_a) = rt.block_on(shared_ticks(&targets))?;
        let (per_object, errors_b) = rt.block_on(per_object_ticks(&targets))?;
        if errors_a + errors_b > 0 {
            return Err(format!(
                "{n} objects: {errors_a} shared and {errors_b} per-object reads failed"
            ));
        }
        let kib = |t: Traffic| t.bytes as f64 / f64::from(TICKS) / 1024.0;
        let calls = |t: Traffic| t.calls as f64 / f64::from(TICKS);
        println!(
            "| {n} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0}× |",
            calls(shared),
            kib(shared),
            calls(per_object),
            kib(per_object),
            calls(per_object) / calls(shared).max(1.0)
        );
    }
    println!();
    println!(
        "Shared: one GET /api/queues/{{vhost}} per 500 queues (a name filter while the watched set is \
         small). Per object: one GET /api/queues/{{vhost}}/{{queue}} per ScaledConsumer."
    );
    Ok(())
}

fn queue(i: usize) -> String {
    format!("work-{i:04}")
}

/// Every object reads its queue through one shared poller; a tick's readings may be up to
/// half a poll interval old (here 500 ms), ticks are 600 ms apart.
async fn shared_ticks(targets: &[RabbitMqTarget]) -> Result<(Traffic, usize), String> {
    let api = Arc::new(ManagementApi::new(Duration::from_secs(10)));
    let poller = Arc::new(SharedPoller::new(api.clone()));
    let mut errors = 0;
    // Warm-up: the poller learns the watched set.
    errors += tick(targets, |t| {
        let p = poller.clone();
        async move { p.observe(&t, Duration::from_millis(500)).await.is_ok() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = api.traffic();
    for _ in 0..TICKS {
        errors += tick(targets, |t| {
            let p = poller.clone();
            async move { p.observe(&t, Duration::from_millis(500)).await.is_ok() }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    Ok((api.traffic().since(start), errors))
}

/// Every object makes its own request, as KEDA's scaler does.
async fn per_object_ticks(targets: &[RabbitMqTarget]) -> Result<(Traffic, usize), String> {
    let api = Arc::new(ManagementApi::new(Duration::from_secs(10)));
    let start = api.traffic();
    let mut errors = 0;
    for _ in 0..TICKS {
        errors += tick(targets, |t| {
            let a = api.clone();
            async move { a.observe(&t).await.is_ok() }
        })
        .await;
    }
    Ok((api.traffic().since(start), errors))
}

/// Read every target once, at most 32 at a time; returns how many reads failed.
async fn tick<F, Fut>(targets: &[RabbitMqTarget], read: F) -> usize
where
    F: Fn(RabbitMqTarget) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut failed = 0;
    for t in targets {
        if set.len() >= 32
            && let Some(r) = set.join_next().await
        {
            failed += usize::from(!r.unwrap_or(false));
        }
        set.spawn(read(t.clone()));
    }
    while let Some(r) = set.join_next().await {
        failed += usize::from(!r.unwrap_or(false));
    }
    failed
}
