//! Prefetch tuning against real RabbitMQ with a real consumer process (`e2e/tools/consumer.py`,
//! pika), the operator running against the fake API server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use nerite::spec::api::{PrefetchStatus, ScaledConsumerStatus};
use serde_json::{Value, json};

use crate::support::Env;
use crate::support::cluster::{Cluster, blocking, condition, eventually};
use crate::support::rabbitmq::{Consumer, RabbitMq};

pub fn trials(env: &Env) -> Vec<Trial> {
    let mut trials = Vec::new();
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_prefetch::slow_consumer_at_a_low_prefetch_gets_a_higher_recommendation",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { slow(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_prefetch::fast_consumer_with_a_small_backlog_stays_low",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { fast(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_prefetch::apply_changes_the_pod_template_once",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { apply_once(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_prefetch::apply_to_a_config_map_and_never_over_another_manager",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { config_map_and_conflict(&rabbit).await })
        },
    ));
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

const LONG: Duration = Duration::from_secs(60);

fn spec(rabbit: &RabbitMq, queue: &str, prefetch: Value) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 1,
        "maxReplicas": 1,
        "source": {"rabbitmq": {
            "managementUrl": rabbit.management_url(),
            "vhost": "/",
            "queue": queue,
            "credentialsSecretRef": {"name": "creds"},
            "prefetch": prefetch,
        }},
        "objective": {"backlogPerReplica": 100000},
        "behavior": {"pollInterval": "1s"}
    })
}

async fn cluster(ns: &str) -> Result<Cluster, String> {
    let cluster = Cluster::fake(true).await?;
    cluster.namespace(ns).await?;
    cluster.secret(ns, "creds", "guest", "guest").await?;
    cluster.deployment(ns, "worker", 1).await?;
    Ok(cluster)
}

fn prefetch_of(s: &ScaledConsumerStatus) -> Option<PrefetchStatus> {
    s.rabbitmq.as_ref().and_then(|r| r.prefetch.clone())
}

async fn publish(rabbit: &Arc<RabbitMq>, queue: &'static str, n: usize) -> Result<(), String> {
    let r = rabbit.clone();
    blocking(move || r.publish("/", queue, n)).await?
}

async fn consumer(
    rabbit: &Arc<RabbitMq>,
    queue: &'static str,
    prefetch: u32,
    delay: Duration,
) -> Result<Consumer, String> {
    let port = rabbit.amqp_port;
    blocking(move || Consumer::start(port, queue, prefetch, delay)).await?
}

/// Prefetch 2 and 50 ms per message (acked one at a time): consumers wait at their limit while
/// hundreds of messages are ready, so the recommendation rises above 2.
async fn slow(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let (ns, queue) = ("pf-slow", "pf.slow");
    let cluster = cluster(ns).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", queue)).await??;
    publish(rabbit, queue, 600).await?;
    let _consumer = consumer(rabbit, queue, 2, Duration::from_millis(50)).await?;
    cluster
        .scaled_consumer(
            ns,
            "slow",
            spec(rabbit, queue, json!({"mode": "Recommend"})),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    let p =
        eventually("a recommendation above 2", LONG, || async {
            let s = cluster.status(ns, "slow").await?;
            Ok(prefetch_of(&s)
                .filter(|p| p.current == Some(2) && p.recommended.is_some_and(|r| r > 2)))
        })
        .await?;
    println!(
        "  slow consumer: prefetch {:?} → recommended {:?} ({})",
        p.current,
        p.recommended,
        p.reason.unwrap_or_default()
    );
    let s = cluster.status(ns, "slow").await?;
    if !condition(&s, "Prefetch").is_some_and(|c| c.status == "True" && c.reason == "Recommended") {
        return Err(format!(
            "Prefetch condition: {:?}",
            condition(&s, "Prefetch")
        ));
    }
    let r = rabbit.clone();
    blocking(move || r.delete_queue("/", queue)).await?
}

/// Prefetch 1, no processing delay, a trickle of messages: nothing waits, nobody should hoard.
async fn fast(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let (ns, queue) = ("pf-fast", "pf.fast");
    let cluster = cluster(ns).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", queue)).await??;
    let _consumer = consumer(rabbit, queue, 1, Duration::ZERO).await?;
    cluster
        .scaled_consumer(
            ns,
            "fast",
            spec(rabbit, queue, json!({"mode": "Recommend"})),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    // Publish 5 messages at a time; once the first recommendation is there, keep reading the
    // status for 15 s (three evaluation periods) and record every recommendation seen.
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + LONG;
    let mut seen: Vec<i32> = Vec::new();
    let mut last_reason = String::new();
    while first.is_none_or(|t| t.elapsed() < Duration::from_secs(15)) {
        if Instant::now() > deadline {
            return Err("no recommendation within 60s".into());
        }
        publish(rabbit, queue, 5).await?;
        let s = cluster.status(ns, "fast").await?;
        if let Some(p) = prefetch_of(&s)
            && p.current == Some(1)
            && let Some(r) = p.recommended
        {
            first.get_or_insert_with(Instant::now);
            seen.push(r);
            last_reason = p.reason.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen.dedup();
    println!("  fast consumer, small backlog: recommendations {seen:?} ({last_reason})");
    if seen.iter().any(|r| *r > 4) {
        return Err(format!("recommendation rose for a fast consumer: {seen:?}"));
    }
    let r = rabbit.clone();
    blocking(move || r.delete_queue("/", queue)).await?
}

fn template_env(d: &Value, var: &str) -> Option<String> {
    d.pointer("/spec/template/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "consumer")?
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

/// `Apply` writes the recommendation into the pod template once (server-side apply as
/// `nerite-prefetch`, the rest of the template untouched) and then holds.
async fn apply_once(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let (ns, queue) = ("pf-apply", "pf.apply");
    let cluster = cluster(ns).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", queue)).await??;
    publish(rabbit, queue, 600).await?;
    let _consumer = consumer(rabbit, queue, 2, Duration::from_millis(50)).await?;
    let before = cluster.deployment_json(ns, "worker").await?;
    cluster
        .scaled_consumer(
            ns,
            "apply",
            spec(
                rabbit,
                queue,
                json!({
                    "mode": "Apply",
                    "deliverTo": {"env": {"container": "consumer", "name": "PREFETCH_COUNT"}},
                    "minInterval": "1h"
                }),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    let applied = eventually("PREFETCH_COUNT in the pod template", LONG, || async {
        let d = cluster.deployment_json(ns, "worker").await?;
        Ok(template_env(&d, "PREFETCH_COUNT").map(|v| (v, d)))
    })
    .await?;
    let (value, after) = applied;
    let generation = after["metadata"]["generation"].as_i64();
    if value.parse::<u32>().map_or(true, |v| v <= 2) {
        return Err(format!("applied {value:?}, expected more than 2"));
    }
    let image = |d: &Value| d.pointer("/spec/template/spec/containers/0/image").cloned();
    if image(&after) != image(&before) {
        return Err("the rest of the pod template changed".into());
    }
    let fields = after["metadata"]["managedFields"].to_string();
    if !fields.contains("nerite-prefetch") || !fields.contains(r#"k:{\"name\":\"PREFETCH_COUNT\"}"#)
    {
        return Err(format!("managedFields: {fields}"));
    }
    // Later evaluations hold (same value, minInterval): the template does not change again.
    let s = eventually("an evaluation that holds", LONG, || async {
        let s = cluster.status(ns, "apply").await?;
        Ok(condition(&s, "Prefetch")
            .is_some_and(|c| c.reason == "Holding")
            .then_some(s))
    })
    .await?;
    let held = eventually("a second holding evaluation", LONG, || async {
        let s2 = cluster.status(ns, "apply").await?;
        let m1 = condition(&s, "Prefetch").map(|c| c.message.clone());
        let c2 = condition(&s2, "Prefetch");
        Ok(c2
            .filter(|c| c.reason == "Holding" && Some(c.message.clone()) != m1)
            .map(|c| c.message.clone()))
    })
    .await
    .unwrap_or_else(|e| format!("(no second distinct message: {e})"));
    let d = cluster.deployment_json(ns, "worker").await?;
    if d["metadata"]["generation"].as_i64() != generation
        || template_env(&d, "PREFETCH_COUNT") != Some(value.clone())
    {
        return Err(format!("the pod template changed again: {d}"));
    }
    let p = prefetch_of(&s).unwrap_or_default();
    if p.applied.map(|v| v.to_string()) != Some(value.clone()) || p.last_applied_time.is_none() {
        return Err(format!("status: {p:?}"));
    }
    let events = cluster.events_for(ns, "apply").await?;
    let applies = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PrefetchApplied"))
        .count();
    println!(
        "  applied PREFETCH_COUNT={value} once ({applies} PrefetchApplied Event); then: {held}"
    );
    if applies != 1 {
        return Err(format!("{applies} PrefetchApplied Events"));
    }
    let r = rabbit.clone();
    blocking(move || r.delete_queue("/", queue)).await?
}

/// `deliverTo.configMap`: the value lands in the ConfigMap key under nerite's field manager.
/// Then a pod-template env var another field manager owns with another value: nerite reports
/// the conflict and leaves the template alone (it never forces).
async fn config_map_and_conflict(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};
    let (ns, queue) = ("pf-cm", "pf.cm");
    let cluster = cluster(ns).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", queue)).await??;
    publish(rabbit, queue, 600).await?;
    let _consumer = consumer(rabbit, queue, 2, Duration::from_millis(50)).await?;
    cluster
        .scaled_consumer(
            ns,
            "cm",
            spec(
                rabbit,
                queue,
                json!({
                    "mode": "Apply",
                    "deliverTo": {"configMap": {"name": "worker-tuning", "key": "prefetch"}},
                    "minInterval": "1h"
                }),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let operator = cluster.start_operator(ns);
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
    let (value, cm) = eventually("the prefetch in ConfigMap worker-tuning", LONG, || async {
        let cm = cms
            .get_opt("worker-tuning")
            .await
            .map_err(|e| e.to_string())?;
        Ok(cm.and_then(|cm| {
            let v = cm.data.as_ref()?.get("prefetch")?.clone();
            Some((v, cm))
        }))
    })
    .await?;
    if value.parse::<u32>().map_or(true, |v| v <= 2) {
        return Err(format!("applied {value:?}, expected more than 2"));
    }
    let owners: Vec<String> = cm
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    if owners != ["nerite-prefetch"] {
        return Err(format!("ConfigMap managers {owners:?}"));
    }
    let s = cluster.status(ns, "cm").await?;
    if prefetch_of(&s)
        .and_then(|p| p.applied)
        .map(|v| v.to_string())
        != Some(value.clone())
    {
        return Err(format!("status: {:?}", prefetch_of(&s)));
    }
    println!("  ConfigMap worker-tuning: prefetch={value}, owned by nerite-prefetch");
    drop(operator);

    // The team's own deploy tool owns PREFETCH_COUNT=2 in the pod template.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), ns);
    let team = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "worker"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "consumer", "env": [{"name": "PREFETCH_COUNT", "value": "2"}]}
        ]}}}
    });
    deployments
        .patch(
            "worker",
            &PatchParams::apply("team-deploy"),
            &Patch::Apply(&team),
        )
        .await
        .map_err(|e| format!("the team's apply: {e}"))?;
    let before = cluster.deployment_json(ns, "worker").await?;
    cluster
        .patch_scaled_consumer(
            ns,
            "cm",
            json!({"spec": {"source": {"rabbitmq": {"prefetch": {
                "deliverTo": {"configMap": null, "env": {"container": "consumer", "name": "PREFETCH_COUNT"}},
                "minInterval": "1s"
            }}}}}),
        )
        .await?;
    let _operator = cluster.start_operator(ns);
    let c = eventually("Prefetch=False PrefetchConflict", LONG, || async {
        let s = cluster.status(ns, "cm").await?;
        Ok(condition(&s, "Prefetch")
            .filter(|c| c.status == "False" && c.reason == "PrefetchConflict")
            .cloned())
    })
    .await?;
    let after = cluster.deployment_json(ns, "worker").await?;
    if template_env(&after, "PREFETCH_COUNT").as_deref() != Some("2")
        || after["metadata"]["generation"] != before["metadata"]["generation"]
    {
        return Err(format!("nerite changed the team's value: {after}"));
    }
    println!(
        "  another manager's PREFETCH_COUNT=2 left alone: {}",
        c.message
    );
    let r = rabbit.clone();
    blocking(move || r.delete_queue("/", queue)).await?
}
