//! `make demo`: a local RabbitMQ, the in-repo fake Kubernetes API server and the nerite
//! operator, with a burst of messages scaled live. Nothing stays running afterwards.
//!
//! The fake cluster runs no pods, so the demo plays the consumers itself: every second each
//! replica the workload has acknowledges a fixed number of messages.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nerite_testkit::cluster::{Cluster, blocking};
use nerite_testkit::rabbitmq::RabbitMq;
use serde_json::json;

const NS: &str = "demo";
const QUEUE: &str = "orders";
const DEPLOYMENT: &str = "orders-consumer";
/// Messages one replica acknowledges per second in the demo.
const PER_REPLICA_RATE: usize = 25;

fn main() -> ExitCode {
    // Warnings from the operator (e.g. a failed write) go to stderr; RUST_LOG=info shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    println!("nerite demo: starting an isolated RabbitMQ (Debian's rabbitmq-server)…");
    let rabbit = Arc::new(blocking(RabbitMq::start).await??);
    println!(
        "  RabbitMQ ready in {:.1}s, management API at {}",
        rabbit.cold_start.as_secs_f64(),
        rabbit.management_url()
    );
    let cluster = Cluster::fake(true).await?;
    let kubeconfig = std::env::temp_dir().join("nerite-demo.kubeconfig");
    if let Some(kc) = cluster.kubeconfig_yaml() {
        std::fs::write(&kubeconfig, kc).map_err(|e| format!("writing the kubeconfig: {e}"))?;
        println!(
            "  fake Kubernetes API at {} (try: KUBECONFIG={} kubectl get scon,deploy -n {NS})",
            cluster.url().unwrap_or_default(),
            kubeconfig.display()
        );
    }

    cluster.namespace(NS).await?;
    cluster
        .secret(NS, "rabbitmq-monitoring", "guest", "guest")
        .await?;
    cluster.deployment(NS, DEPLOYMENT, 1).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", QUEUE)).await??;
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
        "minReplicas": 1,
        "maxReplicas": 10,
        "source": {"rabbitmq": {
            "managementUrl": rabbit.management_url(),
            "queue": QUEUE,
            "credentialsSecretRef": {"name": "rabbitmq-monitoring"}
        }},
        "objective": {"backlogPerReplica": 100},
        "behavior": {"pollInterval": "1s", "scaleDown": {"stabilizationWindow": "10s"}}
    });
    cluster
        .scaled_consumer(NS, "orders", spec)
        .await
        .map_err(|e| format!("creating the ScaledConsumer: {e}"))?;
    let operator = cluster.start_operator(NS);
    println!(
        "  operator running; ScaledConsumer {NS}/orders: 100 messages per replica, 1..10 replicas, \
         scale-down window 10s"
    );
    println!(
        "  each replica of {DEPLOYMENT} consumes {PER_REPLICA_RATE} messages/s (played by the demo)\n"
    );
    println!("{:>5}  {:>7}  {:>8}  reason", "t", "backlog", "replicas");

    let start = Instant::now();
    let mut burst_sent = false;
    let mut last_replicas = 0;
    let mut quiet_since: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(150) {
        let t = start.elapsed().as_secs();
        if !burst_sent && t >= 3 {
            println!("{:>4}s  publishing a burst of 2,000 messages", t);
            let r = rabbit.clone();
            blocking(move || r.publish("/", QUEUE, 2000)).await??;
            burst_sent = true;
        }
        let replicas = cluster.replicas(NS, DEPLOYMENT).await?;
        if burst_sent && replicas > 0 {
            let r = rabbit.clone();
            let n = replicas as usize * PER_REPLICA_RATE;
            blocking(move || r.get("/", QUEUE, n)).await??;
        }
        let status = cluster.status(NS, "orders").await?;
        let backlog = status
            .last_observation
            .as_ref()
            .map(|o| o.backlog.to_string())
            .unwrap_or_else(|| "-".into());
        let marker = if replicas != last_replicas { "*" } else { " " };
        println!(
            "{:>4}s  {:>7}  {:>7}{marker}  {}",
            t,
            backlog,
            replicas,
            status.reason.unwrap_or_default()
        );
        last_replicas = replicas;
        let idle =
            burst_sent && replicas == 1 && status.last_observation.is_some_and(|o| o.backlog == 0);
        match (idle, quiet_since) {
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > Duration::from_secs(3) => break,
            (false, _) => quiet_since = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    operator.stop().await;
    let events = cluster.events_for(NS, "orders").await?;
    println!("\nEvents on {NS}/orders:");
    for e in events {
        println!(
            "  {:<8} {:<16} {}",
            e.type_.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.note.unwrap_or_default()
        );
    }
    println!("\nDone: the broker, the fake API server and the operator are stopped.");
    Ok(())
}
