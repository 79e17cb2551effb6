//! The operator end to end: real RabbitMQ, the fake (or a real) Kubernetes API, and nerite's
//! controller running unchanged against it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use libtest_mimic::{Failed, Trial};
use nerite::spec::api::ScaledConsumer;
use serde_json::{Value, json};

use crate::support::Env;
use crate::support::cluster::{Cluster, blocking, condition, eventually};
use crate::support::ops::{self, metric};
use crate::support::rabbitmq::RabbitMq;

const NS: &str = "shop";

pub fn trials(env: &Env) -> Vec<Trial> {
    let mut trials = Vec::new();
    let e = env.clone();
    trials.push(Trial::test(
        "operator::scales_up_and_down_with_the_backlog",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move {
                let cluster = Cluster::fake(true).await?;
                scale_up_and_down(&cluster, &rabbit, NS, "orders").await
            })
        },
    ));
    trials.push(Trial::test(
        "operator::holds_the_count_while_the_broker_is_down",
        move || {
            run(async move {
                let rabbit = Arc::new(blocking(RabbitMq::start).await??);
                let cluster = Cluster::fake(true).await?;
                broker_outage(&cluster, &rabbit).await
            })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "operator::bad_inputs_get_clear_conditions",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move {
                let cluster = Cluster::fake(false).await?;
                bad_inputs(&cluster, &rabbit).await
            })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "operator::a_refused_scale_write_is_reported_and_retried",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move {
                let cluster = Cluster::fake(true).await?;
                refused_scale_write(&cluster, &rabbit).await
            })
        },
    ));
    trials.push(Trial::test(
        "operator::api_server_refuses_invalid_specs",
        move || {
            run(async move {
                let cluster = Cluster::fake(true).await?;
                admission(&cluster).await
            })
        },
    ));
    // The same scaling trial against a real cluster (kind, ...), when one is named:
    // NERITE_E2E_KUBECONFIG, else KUBECONFIG.
    let e = env.clone();
    let real = std::env::var("NERITE_E2E_KUBECONFIG")
        .or_else(|_| std::env::var("KUBECONFIG"))
        .ok()
        .filter(|k| !k.is_empty());
    let skip = real.is_none();
    trials.push(
        Trial::test(
            "operator::real_cluster::scales_up_and_down_with_the_backlog",
            move || {
                let Some(kubeconfig) = real.clone() else {
                    return Ok(());
                };
                let rabbit = e.rabbitmq()?;
                run(async move {
                    let cluster = Cluster::real(&kubeconfig).await?;
                    // A namespace of its own each run, removed afterwards, so the trial
                    // runs again and again on the same cluster.
                    let ns = format!("nerite-e2e-{}", std::process::id());
                    let outcome = scale_up_and_down(&cluster, &rabbit, &ns, "orders-real").await;
                    let removed = cluster.delete_namespace(&ns).await;
                    outcome.and(removed)
                })
            },
        )
        .with_ignored_flag(skip),
    );
    trials
}

fn run(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    rt.block_on(fut).map_err(Failed::from)
}

fn rabbit_source(rabbit: &RabbitMq, queue: &str, secret: &str) -> Value {
    json!({"rabbitmq": {
        "managementUrl": rabbit.management_url(),
        "vhost": "/",
        "queue": queue,
        "credentialsSecretRef": {"name": secret}
    }})
}

fn spec(rabbit: &RabbitMq, deployment: &str, queue: &str, secret: &str) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": 1,
        "maxReplicas": 10,
        "source": rabbit_source(rabbit, queue, secret),
        "objective": {"backlogPerReplica": 100},
        "behavior": {
            "pollInterval": "1s",
            "scaleDown": {"stabilizationWindow": "5s"}
        }
    })
}

/// Publish 1,000 → 10 replicas with the reason explained; drain → back to min after the
/// (shortened) scale-down window.
async fn scale_up_and_down(
    cluster: &Cluster,
    rabbit: &Arc<RabbitMq>,
    ns: &str,
    queue: &str,
) -> Result<(), String> {
    cluster.namespace(ns).await?;
    cluster.secret(ns, "rabbit-creds", "guest", "guest").await?;
    cluster.deployment(ns, "orders-consumer", 1).await?;
    let r = rabbit.clone();
    let q = queue.to_string();
    blocking(move || r.declare_queue("/", &q)).await??;
    cluster
        .scaled_consumer(
            ns,
            "orders",
            spec(rabbit, "orders-consumer", queue, "rabbit-creds"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let metrics_addr = ops::free_local_addr()?;
    let _operator = cluster.start_operator_with(nerite::runtime::OperatorConfig {
        metrics_addr: Some(metrics_addr),
        ..Cluster::operator_config(ns)
    });
    let metrics_url = format!("http://{metrics_addr}/metrics");

    // Idle queue: ready, at min.
    eventually(
        "Ready=True on an idle queue",
        Duration::from_secs(30),
        || async {
            let s = cluster.status(ns, "orders").await?;
            Ok(condition(&s, "Ready")
                .filter(|c| c.status == "True")
                .map(|_| ()))
        },
    )
    .await?;
    assert_eq_or(
        cluster.replicas(ns, "orders-consumer").await?,
        1,
        "idle replicas",
    )?;

    let r = rabbit.clone();
    let q = queue.to_string();
    blocking(move || r.publish("/", &q, 1000)).await??;
    let published = Instant::now();
    // When the broker's statistics show the burst (what nerite can see at the earliest).
    let r = rabbit.clone();
    let q = queue.to_string();
    let stats_seen = eventually(
        "management stats to show a backlog above 900 (10 replicas wanted)",
        Duration::from_secs(30),
        || {
            let r = r.clone();
            let q = q.clone();
            async move {
                let info = blocking(move || r.queue_info("/", &q)).await??;
                let depth = info["messages"].as_i64().unwrap_or(0);
                Ok((depth > 900).then(Instant::now))
            }
        },
    )
    .await?;
    let scaled = eventually("scale to 10", Duration::from_secs(30), || async {
        let n = cluster.replicas(ns, "orders-consumer").await?;
        Ok((n == 10).then(Instant::now))
    })
    .await?;
    println!(
        "  stats visible {:.1}s after publish; /scale written {:.1}s after the stats changed",
        stats_seen.duration_since(published).as_secs_f64(),
        scaled.saturating_duration_since(stats_seen).as_secs_f64()
    );
    let s = eventually(
        "status to explain the scale-up",
        Duration::from_secs(10),
        || async {
            let s = cluster.status(ns, "orders").await?;
            Ok((s.desired_replicas == Some(10)).then_some(s))
        },
    )
    .await?;
    let reason = s.reason.clone().unwrap_or_default();
    if !(reason.contains("backlog") && reason.contains("100/replica")) {
        return Err(format!("reason does not explain the decision: {reason:?}"));
    }
    if !reason.contains("→ 10") {
        return Err(format!("reason does not name the new count: {reason:?}"));
    }
    println!("  status.reason: {reason}");
    let events = cluster.events_for(ns, "orders").await?;
    if !events.iter().any(|e| e.reason.as_deref() == Some("Scaled")) {
        return Err("no Scaled event".into());
    }
    // /metrics shows the backlog nerite saw and the scale-up it made.
    let object = [("namespace", ns), ("name", "orders")];
    let samples = scrape(&metrics_url).await?;
    let backlog = metric(&samples, "nerite_observed_backlog", &object);
    let ups = metric(
        &samples,
        "nerite_scale_actions_total",
        &[object[0], object[1], ("direction", "up")],
    );
    let desired = metric(&samples, "nerite_desired_replicas", &object);
    println!("  /metrics: observed_backlog {backlog:?}, scale-ups {ups:?}, desired {desired:?}");
    if !backlog.is_some_and(|b| b > 900.0)
        || !ups.is_some_and(|n| n >= 1.0)
        || desired != Some(10.0)
    {
        return Err(format!(
            "/metrics does not show the backlog and the scale-up: backlog {backlog:?}, ups {ups:?}, desired {desired:?}"
        ));
    }

    // Drain: back to min after the 5 s window, never before it.
    let r = rabbit.clone();
    let q = queue.to_string();
    blocking(move || r.purge("/", &q)).await??;
    let drained = Instant::now();
    eventually("scale back to 1", Duration::from_secs(40), || async {
        let n = cluster.replicas(ns, "orders-consumer").await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    let took = drained.elapsed();
    if took < Duration::from_secs(4) {
        return Err(format!("scaled down after {took:?}, before the 5s window"));
    }
    println!(
        "  scaled down {:.1}s after the purge (window 5s)",
        took.as_secs_f64()
    );
    // The Event follows the /scale write: wait for it briefly.
    eventually(
        "Scaled events for the rise and the fall",
        Duration::from_secs(5),
        || async {
            let notes: Vec<String> = cluster
                .events_for(ns, "orders")
                .await?
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("Scaled"))
                .filter_map(|e| e.note)
                .collect();
            let up = notes.iter().any(|n| n.contains(": 1 → "));
            let down = notes.iter().any(|n| n.contains(" → 1 replicas"));
            if up && down {
                Ok(Some(()))
            } else {
                Err(format!("Scaled events so far: {notes:?}"))
            }
        },
    )
    .await?;
    let samples = scrape(&metrics_url).await?;
    let downs = metric(
        &samples,
        "nerite_scale_actions_total",
        &[object[0], object[1], ("direction", "down")],
    );
    let backlog = metric(&samples, "nerite_observed_backlog", &object);
    println!("  /metrics after the drain: observed_backlog {backlog:?}, scale-downs {downs:?}");
    if !downs.is_some_and(|n| n >= 1.0) || backlog != Some(0.0) {
        return Err(format!(
            "/metrics does not show the drain: backlog {backlog:?}, scale-downs {downs:?}"
        ));
    }
    Ok(())
}

async fn scrape(url: &str) -> Result<Vec<ops::Sample>, String> {
    let u = url.to_string();
    let (status, body) = blocking(move || ops::http_get(&u)).await??;
    if status != 200 {
        return Err(format!("{url}: {status}"));
    }
    Ok(ops::parse_metrics(&body))
}

/// Stop the broker: the count holds, SourceReachable=False, an Event; restart: recovery.
async fn broker_outage(cluster: &Cluster, rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "outage";
    cluster.namespace(ns).await?;
    cluster.secret(ns, "rabbit-creds", "guest", "guest").await?;
    cluster.deployment(ns, "worker", 1).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", "jobs")).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "jobs", 500)).await??;
    cluster
        .scaled_consumer(ns, "jobs", spec(rabbit, "worker", "jobs", "rabbit-creds"))
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    eventually("scale to 5", Duration::from_secs(40), || async {
        Ok((cluster.replicas(ns, "worker").await? == 5).then_some(()))
    })
    .await?;

    let r = rabbit.clone();
    blocking(move || r.stop()).await??;
    let s = eventually("SourceReachable=False", Duration::from_secs(30), || async {
        let s = cluster.status(ns, "jobs").await?;
        let down = condition(&s, "SourceReachable").is_some_and(|c| c.status == "False");
        Ok((down && s.consecutive_failures.unwrap_or(0) >= 3).then_some(s))
    })
    .await?;
    let c = condition(&s, "SourceReachable").ok_or("no SourceReachable")?;
    if c.reason != "Unreachable" || !c.message.contains("cannot connect") {
        return Err(format!("unclear outage condition: {c:?}"));
    }
    if c.message.contains("guest:guest") {
        return Err("credentials leaked into the condition".into());
    }
    assert_eq_or(
        cluster.replicas(ns, "worker").await?,
        5,
        "replicas during the outage",
    )?;
    let events = cluster.events_for(ns, "jobs").await?;
    if !events.iter().any(|e| {
        e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("Unreachable")
    }) {
        return Err(format!("no Warning/Unreachable event: {events:?}"));
    }

    let r = rabbit.clone();
    blocking(move || r.start_again()).await??;
    eventually(
        "SourceReachable=True after restart",
        Duration::from_secs(60),
        || async {
            let s = cluster.status(ns, "jobs").await?;
            Ok(condition(&s, "SourceReachable")
                .filter(|c| c.status == "True")
                .map(|_| ()))
        },
    )
    .await?;
    assert_eq_or(
        cluster.replicas(ns, "worker").await?,
        5,
        "replicas after recovery",
    )?;
    Ok(())
}

/// Each broken object gets its own clear condition; a healthy one next to them still scales.
async fn bad_inputs(cluster: &Cluster, rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "bad";
    cluster.namespace(ns).await?;
    cluster.secret(ns, "good", "guest", "guest").await?;
    cluster
        .secret(ns, "wrong-password", "guest", "not-the-password")
        .await?;
    for d in ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "healthy"] {
        cluster.deployment(ns, d, 1).await?;
    }
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", "bad-inputs")).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "bad-inputs", 300)).await??;

    let good = |deploy: &str| spec(rabbit, deploy, "bad-inputs", "good");
    let mut cases: Vec<(&str, Value, &str, &str)> = Vec::new();
    let mut min_gt_max = good("w1");
    min_gt_max["minReplicas"] = json!(5);
    min_gt_max["maxReplicas"] = json!(3);
    cases.push(("min-gt-max", min_gt_max, "Ready", "InvalidSpec"));
    let mut no_source = good("w1");
    no_source["source"] = json!({});
    cases.push(("no-source", no_source, "Ready", "InvalidSpec"));
    cases.push((
        "unknown-queue",
        spec(rabbit, "w2", "no-such-queue", "good"),
        "SourceReachable",
        "QueueNotFound",
    ));
    cases.push((
        "wrong-password",
        spec(rabbit, "w3", "bad-inputs", "wrong-password"),
        "SourceReachable",
        "Unauthorized",
    ));
    cases.push((
        "missing-secret",
        spec(rabbit, "w4", "bad-inputs", "no-such-secret"),
        "SourceReachable",
        "SecretNotFound",
    ));
    cases.push((
        "missing-target",
        good("no-such-deployment"),
        "Ready",
        "TargetNotFound",
    ));
    let mut not_scalable = good("w5");
    not_scalable["scaleTargetRef"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "w5"});
    cases.push(("not-scalable", not_scalable, "Ready", "TargetNotScalable"));
    let mut unresolvable = good("w6");
    unresolvable["source"]["rabbitmq"]["managementUrl"] =
        json!("http://rabbitmq.nonexistent.invalid:15672");
    cases.push((
        "unresolvable-host",
        unresolvable,
        "SourceReachable",
        "HostNotFound",
    ));

    for (name, spec, _, _) in &cases {
        cluster.raw_scaled_consumer(ns, name, spec.clone()).await?;
    }
    cluster
        .scaled_consumer(ns, "healthy", good("healthy"))
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);

    eventually(
        "the healthy object to scale to 3",
        Duration::from_secs(40),
        || async { Ok((cluster.replicas(ns, "healthy").await? == 3).then_some(())) },
    )
    .await?;
    for (name, _, type_, reason) in &cases {
        let c = eventually(
            &format!("{name}: {type_}=False/{reason}"),
            Duration::from_secs(30),
            || async {
                let s = cluster.status(ns, name).await?;
                Ok(condition(&s, type_)
                    .filter(|c| c.status == "False" && c.reason == *reason)
                    .cloned())
            },
        )
        .await?;
        if c.message.is_empty() || c.message.contains("not-the-password") {
            return Err(format!(
                "{name}: unclear or leaking message {:?}",
                c.message
            ));
        }
        println!("  {name}: {type_}=False {reason}: {}", c.message);
        let events = cluster.events_for(ns, name).await?;
        if !events
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(*reason))
        {
            return Err(format!("{name}: no Warning event with reason {reason}"));
        }
    }
    // None of the broken objects touched their workloads.
    for d in ["w1", "w2", "w3", "w4", "w6"] {
        assert_eq_or(cluster.replicas(ns, d).await?, 1, d)?;
    }
    // The password appears in no Event and no status of the namespace.
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), ns);
    let events = events
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let objects: Api<ScaledConsumer> = Api::namespaced(cluster.client.clone(), ns);
    let objects = objects
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        serde_json::to_string(&events.items).map_err(|e| e.to_string())?,
        serde_json::to_string(&objects.items).map_err(|e| e.to_string())?
    );
    if events.items.is_empty() || text.contains("not-the-password") {
        return Err(format!(
            "{} events; the password leaked into an Event or a status",
            events.items.len()
        ));
    }
    Ok(())
}

/// With schema validation on, the API server itself refuses bad specs with the CEL message,
/// and a source kind this version does not support is pruned and then refused.
async fn admission(cluster: &Cluster) -> Result<(), String> {
    let ns = "admission";
    let unsupported = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 3,
        "source": {"pulsar": {"serviceUrl": "pulsar://pulsar:6650", "topic": "t"}},
        "objective": {"backlogPerReplica": 100}
    });
    match cluster.raw_scaled_consumer(ns, "pulsar", unsupported).await {
        Err(e) if e.contains("exactly one source") => {}
        other => return Err(format!("pulsar source: expected a refusal, got {other:?}")),
    }
    // Two complete sources at once.
    let two = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 3,
        "source": {
            "rabbitmq": {"managementUrl": "http://r:15672", "queue": "q",
                         "credentialsSecretRef": {"name": "s"}},
            "sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q",
                    "region": "us-east-1"}
        },
        "objective": {"backlogPerReplica": 100}
    });
    match cluster.raw_scaled_consumer(ns, "two-sources", two).await {
        Err(e) if e.contains("exactly one source") => {}
        other => return Err(format!("two sources: expected a refusal, got {other:?}")),
    }
    // A Kafka source with both topic forms: the CEL rule's message.
    let both = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 3,
        "source": {"kafka": {"bootstrapServers": ["kafka:9092"], "topic": "t", "topics": ["u"], "consumerGroup": "g"}},
        "objective": {"backlogPerReplica": 100}
    });
    match cluster.raw_scaled_consumer(ns, "kafka-both", both).await {
        Err(e) if e.contains("exactly one of topic and topics") => {}
        other => {
            return Err(format!(
                "kafka topic and topics: expected a refusal, got {other:?}"
            ));
        }
    }
    let spec = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "minReplicas": 5,
        "maxReplicas": 3,
        "source": {"rabbitmq": {"managementUrl": "http://r:15672", "queue": "q",
                    "credentialsSecretRef": {"name": "s"}}},
        "objective": {"backlogPerReplica": 100}
    });
    match cluster.scaled_consumer(ns, "bad", spec).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            if !s
                .message
                .contains("minReplicas must not exceed maxReplicas")
            {
                return Err(format!("422 without the rule's message: {}", s.message));
            }
            Ok(())
        }
        other => Err(format!("expected 422 Invalid, got {other:?}")),
    }
}

fn assert_eq_or(actual: i32, expected: i32, what: &str) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected}, got {actual}"))
    }
}

/// The API server refuses the `/scale` write three times: a Warning Event names the failure
/// once, the reconcile is retried with backoff, and the count arrives once the server
/// accepts.
async fn refused_scale_write(cluster: &Cluster, rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "refused";
    cluster.namespace(ns).await?;
    cluster.secret(ns, "rabbit-creds", "guest", "guest").await?;
    cluster.deployment(ns, "payments", 1).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", "refused")).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "refused", 400)).await??;
    cluster.fail_requests(
        "PATCH",
        "/namespaces/refused/deployments/payments/scale",
        500,
        3,
    );
    cluster
        .scaled_consumer(
            ns,
            "payments",
            spec(rabbit, "payments", "refused", "rabbit-creds"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    eventually(
        "payments at 4 replicas",
        Duration::from_secs(60),
        || async { Ok((cluster.replicas(ns, "payments").await? == 4).then_some(())) },
    )
    .await?;
    // Events are published after the writes they report: wait for the Scaled one.
    let (failed, scaled) = eventually("the Scaled Event", Duration::from_secs(30), || async {
        let events = cluster.events_for(ns, "payments").await?;
        let failed: Vec<String> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("ReconcileFailed"))
            .map(|e| e.note.clone().unwrap_or_default())
            .collect();
        let scaled = events
            .iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Normal") && e.reason.as_deref() == Some("Scaled")
            })
            .count();
        Ok((scaled > 0).then_some((failed, scaled)))
    })
    .await?;
    println!("  refused three times, then scaled 1 → 4; Events: {failed:?}, {scaled} Scaled");
    if failed.len() != 1 || !failed[0].contains("refused by a test's failure rule") {
        return Err(format!("ReconcileFailed events: {failed:?}"));
    }
    if scaled != 1 {
        return Err(format!("{scaled} Scaled events for one change"));
    }
    let r = rabbit.clone();
    blocking(move || r.delete_queue("/", "refused")).await?
}
