//! Dead-lettering and redrive against real RabbitMQ, driven by the operator running against the
//! fake API server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};
use nerite::spec::api::{RedrivePhase, ScaledConsumerStatus};
use serde_json::{Value, json};

use crate::support::Env;
use crate::support::cluster::{Cluster, blocking, condition, eventually};
use crate::support::rabbitmq::RabbitMq;

pub fn trials(env: &Env) -> Vec<Trial> {
    let mut trials = Vec::new();
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::classic_and_quorum_queues_dead_letter",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { classic_and_quorum(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::classic_queue_never_gets_a_delivery_limit",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { classic_gotcha(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::redrive_moves_1000_messages_exactly_once",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { redrive(&rabbit, "rd", Mode::Plain).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::redrive_survives_an_operator_restart",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { redrive(&rabbit, "rr", Mode::Restart).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::rate_limited_redrive_moves_in_batches",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { redrive(&rabbit, "rp", Mode::Paced).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::cancel_stops_a_paced_redrive_and_loses_nothing",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { cancel(&rabbit).await })
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_deadletter::bad_inputs_get_clear_conditions",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { bad_inputs(&rabbit).await })
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

fn spec(rabbit: &RabbitMq, queue: &str, dead_letter: Value) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 1,
        "maxReplicas": 5,
        "source": {"rabbitmq": {
            "managementUrl": rabbit.management_url(),
            "vhost": "/",
            "queue": queue,
            "credentialsSecretRef": {"name": "creds"},
            "deadLetter": dead_letter,
        }},
        "objective": {"backlogPerReplica": 1000},
        "behavior": {"pollInterval": "1s"}
    })
}

/// A fake cluster with the namespace, the credentials and the workload.
async fn cluster(ns: &str) -> Result<Cluster, String> {
    let cluster = Cluster::fake(true).await?;
    cluster.namespace(ns).await?;
    cluster.secret(ns, "creds", "guest", "guest").await?;
    cluster.deployment(ns, "worker", 1).await?;
    Ok(cluster)
}

/// Wait for a status that satisfies `check`.
async fn status_where(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ScaledConsumerStatus) -> bool,
) -> Result<ScaledConsumerStatus, String> {
    eventually(what, LONG, || async {
        let s = cluster.status(ns, name).await?;
        Ok(check(&s).then_some(s))
    })
    .await
}

fn cond_is(s: &ScaledConsumerStatus, type_: &str, status: &str, reason: &str) -> bool {
    condition(s, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// Run a blocking broker helper off the runtime.
async fn on<T: Send + 'static>(
    rabbit: &Arc<RabbitMq>,
    f: impl FnOnce(&RabbitMq) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let r = rabbit.clone();
    blocking(move || f(&r)).await?
}

async fn wait_depth(rabbit: &Arc<RabbitMq>, queue: &str, want: i64) -> Result<(), String> {
    eventually(&format!("{queue} to hold {want}"), LONG, || {
        let q = queue.to_string();
        async move {
            let d = on(rabbit, move |r| r.depth("/", &q)).await.unwrap_or(-1);
            Ok((d == want).then_some(()))
        }
    })
    .await
}

/// The dynamic shovels on vhost `/` that read from `src` (other trials share the vhost and
/// run redrives of their own).
async fn shovels_from(rabbit: &Arc<RabbitMq>, src: &str) -> Result<Vec<Value>, String> {
    let all = on(rabbit, |r| r.api_get("parameters/shovel/%2F")).await?;
    Ok(all
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|s| s["value"]["src-queue"] == json!(src))
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

async fn classic_and_quorum(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "dl";
    let cluster = cluster(ns).await?;
    on(rabbit, |r| {
        r.declare_queue("/", "dl.classic")?;
        r.declare_quorum_queue("/", "dl.quorum")
    })
    .await?;
    for (name, queue) in [("classic", "dl.classic"), ("quorum", "dl.quorum")] {
        cluster
            .scaled_consumer(ns, name, spec(rabbit, queue, json!({"maxDeliveries": 2})))
            .await
            .map_err(|e| e.to_string())?;
    }
    let _operator = cluster.start_operator(ns);

    let classic = status_where(&cluster, ns, "classic", "classic DeadLetterReady", |s| {
        cond_is(s, "DeadLetterReady", "True", "Configured")
    })
    .await?;
    let quorum = status_where(&cluster, ns, "quorum", "quorum DeadLetterReady", |s| {
        cond_is(s, "DeadLetterReady", "True", "Configured")
    })
    .await?;
    let cdl = classic
        .rabbitmq
        .and_then(|r| r.dead_letter)
        .ok_or("no status.rabbitmq.deadLetter")?;
    let qdl = quorum
        .rabbitmq
        .and_then(|r| r.dead_letter)
        .ok_or("no status.rabbitmq.deadLetter")?;
    if cdl.queue != "dl.classic.dlq" || cdl.queue_type.as_deref() != Some("classic") {
        return Err(format!("classic status: {cdl:?}"));
    }
    let cdef = cdl.policy_definition.clone().unwrap_or_default();
    if cdef.contains("delivery-limit")
        || !cdl
            .message
            .clone()
            .unwrap_or_default()
            .contains("maxDeliveries ignored")
    {
        return Err(format!(
            "classic policy must not carry delivery-limit: {cdl:?}"
        ));
    }
    if !qdl
        .policy_definition
        .clone()
        .unwrap_or_default()
        .contains("\"delivery-limit\":2")
    {
        return Err(format!("quorum policy needs delivery-limit 2: {qdl:?}"));
    }
    // The broker applies nerite's policy to exactly these queues.
    for q in ["dl.classic", "dl.quorum"] {
        let name = format!("nerite.dlx.{q}");
        eventually(&format!("{q} under {name}"), LONG, || {
            let (q, name) = (q.to_string(), name.clone());
            async move {
                let info = on(rabbit, move |r| r.queue_info("/", &q)).await?;
                Ok((info["policy"] == json!(name)).then_some(()))
            }
        })
        .await?;
    }

    // Rejected messages reach the DLQ, for both queue types.
    on(rabbit, |r| {
        r.publish("/", "dl.classic", 5)?;
        r.publish("/", "dl.quorum", 3)
    })
    .await?;
    on(rabbit, |r| {
        let a = r.take("/", "dl.classic", 5, "reject_requeue_false")?.len();
        let b = r.take("/", "dl.quorum", 3, "reject_requeue_false")?.len();
        if (a, b) == (5, 3) {
            Ok(())
        } else {
            Err(format!("took {a} and {b}"))
        }
    })
    .await?;
    wait_depth(rabbit, "dl.classic.dlq", 5).await?;
    wait_depth(rabbit, "dl.quorum.dlq", 3).await?;

    // Over-delivered: a quorum message returned more than maxDeliveries times is dead-lettered.
    on(rabbit, |r| r.publish("/", "dl.quorum", 2)).await?;
    on(rabbit, |r| {
        nerite_testkit::rabbitmq::wait_for(LONG, || {
            let took = r.take("/", "dl.quorum", 2, "reject_requeue_true")?;
            if took.is_empty() {
                Ok(())
            } else {
                Err(format!("{} still delivered", took.len()))
            }
        })
        .map(drop)
    })
    .await?;
    wait_depth(rabbit, "dl.quorum.dlq", 5).await?;
    status_where(&cluster, ns, "quorum", "status DLQ depth 5", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.dead_letter.as_ref())
            .and_then(|d| d.depth)
            == Some(5)
    })
    .await?;

    // Removing the section removes nerite's policy (and only it).
    cluster
        .patch_scaled_consumer(
            ns,
            "classic",
            json!({"spec": {"source": {"rabbitmq": {"deadLetter": null}}}}),
        )
        .await?;
    eventually("classic policy removed", LONG, || async {
        let names = on(rabbit, |r| r.policy_names("/")).await?;
        Ok((!names.iter().any(|n| n == "nerite.dlx.dl.classic")).then_some(names))
    })
    .await
    .and_then(|names| {
        if names.iter().any(|n| n == "nerite.dlx.dl.quorum") {
            Ok(())
        } else {
            Err(format!("the quorum queue's policy went too: {names:?}"))
        }
    })?;
    status_where(
        &cluster,
        ns,
        "classic",
        "DeadLetterReady condition gone",
        |s| {
            condition(s, "DeadLetterReady").is_none()
                && s.rabbitmq
                    .as_ref()
                    .and_then(|r| r.dead_letter.as_ref())
                    .is_none()
        },
    )
    .await?;
    on(rabbit, |r| {
        for q in ["dl.classic", "dl.quorum", "dl.classic.dlq", "dl.quorum.dlq"] {
            r.delete_queue("/", q)?;
        }
        r.api_get("policies/%2F").map(drop)
    })
    .await?;
    Ok(())
}

/// On RabbitMQ 3.10 a policy with `delivery-limit` matching a classic queue silently disables
/// its dead-lettering. The control shows the broker does that; nerite's policy for a classic
/// queue (even with `maxDeliveries` set, and with a user's policy carrying `delivery-limit`)
/// keeps dead-lettering working.
async fn classic_gotcha(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "gotcha";
    let cluster = cluster(ns).await?;
    let version = on(rabbit, |r| r.api_get("overview")).await?["rabbitmq_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    on(rabbit, |r| {
        r.declare_queue("/", "gotcha")?;
        r.declare_queue("/", "gotcha.raw")?;
        r.declare_queue("/", "gotcha.raw.dlq")?;
        // The user's own policy on the nerite-managed queue carries a delivery-limit.
        r.put_policy(
            "/",
            "user-limits",
            "^gotcha$",
            json!({"delivery-limit": 3, "max-length": 10000}),
            5,
        )?;
        // Control: the broker's behaviour with delivery-limit on a classic queue.
        r.put_policy(
            "/",
            "raw-gotcha",
            "^gotcha\\.raw$",
            json!({"dead-letter-exchange": "", "dead-letter-routing-key": "gotcha.raw.dlq", "delivery-limit": 3}),
            5,
        )
    })
    .await?;
    cluster
        .scaled_consumer(
            ns,
            "gotcha",
            spec(rabbit, "gotcha", json!({"maxDeliveries": 3})),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    let s = status_where(&cluster, ns, "gotcha", "DeadLetterReady", |s| {
        cond_is(s, "DeadLetterReady", "True", "Configured")
    })
    .await?;
    let dl = s
        .rabbitmq
        .and_then(|r| r.dead_letter)
        .ok_or("no deadLetter status")?;
    let def = dl.policy_definition.clone().unwrap_or_default();
    if def.contains("delivery-limit") || !def.contains("max-length") {
        return Err(format!(
            "policy must drop delivery-limit and keep max-length: {def}"
        ));
    }
    eventually("gotcha under nerite's policy", LONG, || async {
        let info = on(rabbit, |r| r.queue_info("/", "gotcha")).await?;
        Ok((info["policy"] == json!("nerite.dlx.gotcha")).then_some(()))
    })
    .await?;

    // Control first, then the managed queue: once the managed queue's dead letters arrived,
    // the control's (rejected earlier, same node) would have too.
    on(rabbit, |r| {
        r.publish("/", "gotcha.raw", 4)?;
        let n = r.take("/", "gotcha.raw", 4, "reject_requeue_false")?.len();
        r.publish("/", "gotcha", 4)?;
        let m = r.take("/", "gotcha", 4, "reject_requeue_false")?.len();
        if (n, m) == (4, 4) {
            Ok(())
        } else {
            Err(format!("took {n}, {m}"))
        }
    })
    .await?;
    wait_depth(rabbit, "gotcha.dlq", 4).await?;
    let raw = on(rabbit, |r| {
        r.take("/", "gotcha.raw.dlq", 10, "ack_requeue_false")
    })
    .await?;
    println!(
        "  RabbitMQ {version}: delivery-limit policy on a classic queue: {} of 4 dead letters \
         kept; nerite's policy: 4 of 4",
        raw.len()
    );
    if version.starts_with("3.10.") && !raw.is_empty() {
        return Err(format!(
            "control: expected RabbitMQ {version} to drop dead letters under a delivery-limit \
             policy on a classic queue, got {}",
            raw.len()
        ));
    }
    on(rabbit, |r| {
        for q in ["gotcha", "gotcha.raw", "gotcha.raw.dlq", "gotcha.dlq"] {
            r.delete_queue("/", q)?;
        }
        Ok(())
    })
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    /// The operator is stopped while the shovel runs and started again.
    Restart,
    /// `maxMessagesPerSecond: 200` with a 1 s poll: five batches of 200.
    Paced,
}

/// 1,000 messages with unique ids dead-lettered, then redriven by a request id.
async fn redrive(rabbit: &Arc<RabbitMq>, queue: &'static str, mode: Mode) -> Result<(), String> {
    let restart = mode == Mode::Restart;
    let ns = queue;
    let dlq = format!("{queue}.dlq");
    let cluster = cluster(ns).await?;
    on(rabbit, move |r| r.declare_queue("/", queue)).await?;
    cluster
        .scaled_consumer(ns, "sc", spec(rabbit, queue, json!({})))
        .await
        .map_err(|e| e.to_string())?;
    let mut operator = Some(cluster.start_operator(ns));
    status_where(&cluster, ns, "sc", "DeadLetterReady", |s| {
        cond_is(s, "DeadLetterReady", "True", "Configured")
    })
    .await?;
    eventually("policy in force", LONG, || async {
        let info = on(rabbit, move |r| r.queue_info("/", queue)).await?;
        Ok((info["policy"] == json!(format!("nerite.dlx.{queue}"))).then_some(()))
    })
    .await?;
    on(rabbit, move |r| {
        r.publish("/", queue, 1000)?;
        let mut taken = 0;
        while taken < 1000 {
            let n = r
                .take("/", queue, 1000 - taken, "reject_requeue_false")?
                .len();
            if n == 0 {
                return Err(format!("only {taken} of 1000 could be rejected"));
            }
            taken += n;
        }
        Ok(())
    })
    .await?;
    wait_depth(rabbit, &dlq, 1000).await?;
    status_where(&cluster, ns, "sc", "status DLQ depth 1000", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.dead_letter.as_ref())
            .and_then(|d| d.depth)
            == Some(1000)
    })
    .await?;

    let max_in_flight = if restart { 1 } else { 100 };
    let mut request = json!({"requestId": "r1", "maxInFlight": max_in_flight});
    if mode == Mode::Paced {
        request["maxMessagesPerSecond"] = json!(200);
    }
    cluster
        .patch_scaled_consumer(
            ns,
            "sc",
            json!({"spec": {"source": {"rabbitmq": {"deadLetter": {"redrive": request}}}}}),
        )
        .await?;

    if restart {
        let running = status_where(&cluster, ns, "sc", "redrive Running", |s| {
            s.rabbitmq
                .as_ref()
                .and_then(|r| r.redrive.as_ref())
                .is_some_and(|r| r.progress.phase != RedrivePhase::Pending)
        })
        .await?;
        if let Some(op) = operator.take() {
            op.stop().await;
        }
        println!(
            "  operator stopped while the redrive was {}; started again",
            running
                .rabbitmq
                .and_then(|r| r.redrive)
                .map(|r| r.progress.phase.to_string())
                .unwrap_or_default()
        );
        operator = Some(cluster.start_operator_writing_every_poll(ns));
    }

    let done = status_where(&cluster, ns, "sc", "redrive finished", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.redrive.as_ref())
            .is_some_and(|r| !r.progress.phase.is_active())
    })
    .await?;
    let rd = done
        .rabbitmq
        .and_then(|r| r.redrive)
        .ok_or("no redrive status")?;
    if rd.progress.phase != RedrivePhase::Succeeded
        || rd.progress.moved != 1000
        || rd.progress.request_id != "r1"
    {
        return Err(format!("redrive status: {rd:?}"));
    }
    if mode == Mode::Paced {
        // Five batches of 200; batch 5 cannot start before 4 × 200 / 200 s = 4 s.
        let t = |x: &Option<String>| x.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let span = match (t(&rd.progress.started_at), t(&rd.batch_started_at)) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => return Err(format!("batch times missing: {rd:?}")),
        };
        println!(
            "  rate-limited: {} batches of up to {}, the last started {span:.1}s after the first",
            rd.batch.unwrap_or_default(),
            200
        );
        if rd.batch != Some(5) || span < 4.0 {
            return Err(format!(
                "paced redrive: {rd:?}, last batch {span:.1}s after the first"
            ));
        }
    }
    if rd.progress.started_at.is_none() || rd.progress.finished_at.is_none() {
        return Err(format!("start and end must be recorded: {rd:?}"));
    }
    // Every id back on the source queue exactly once; the DLQ empty; the shovel gone.
    wait_depth(rabbit, queue, 1000).await?;
    let payloads = on(rabbit, move |r| {
        r.take("/", queue, 2000, "ack_requeue_false")
    })
    .await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in &payloads {
        *seen.entry(p.clone()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let missing = (0..1000)
        .filter(|i| !seen.contains_key(&format!("message {i}")))
        .count();
    println!(
        "  redrive{}: {} messages back, {} unique, {duplicates} duplicates, {missing} missing",
        if restart { " across a restart" } else { "" },
        payloads.len(),
        seen.len()
    );
    if missing > 0 || duplicates > 0 || seen.len() != 1000 {
        return Err(format!(
            "{missing} missing, {duplicates} duplicates of 1000 (got {})",
            payloads.len()
        ));
    }
    let left = on(rabbit, move |r| {
        r.take("/", &format!("{queue}.dlq"), 10, "ack_requeue_false")
    })
    .await?;
    if !left.is_empty() {
        return Err(format!("{} messages left in the DLQ", left.len()));
    }
    let shovels = shovels_from(rabbit, &dlq).await?;
    if !shovels.is_empty() {
        return Err(format!("shovel left behind: {shovels:?}"));
    }
    // The same request id again starts nothing: the status keeps r1 and no shovel appears.
    let s = cluster.status(ns, "sc").await?;
    let evaluated = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Redrive")
        .map(|c| c.last_transition_time.clone());
    cluster
        .patch_scaled_consumer(
            ns,
            "sc",
            json!({"metadata": {"annotations": {"touch": "1"}}}),
        )
        .await?;
    status_where(&cluster, ns, "sc", "a later tick", |s2| {
        s2.observed_generation == s.observed_generation
            && s2.last_observation.as_ref().map(|o| o.observed_at.clone())
                != s.last_observation.as_ref().map(|o| o.observed_at.clone())
    })
    .await?;
    let after = cluster.status(ns, "sc").await?;
    let rd2 = after
        .rabbitmq
        .and_then(|r| r.redrive)
        .ok_or("redrive status gone")?;
    let shovels = shovels_from(rabbit, &dlq).await?;
    if rd2.progress.phase != RedrivePhase::Succeeded
        || rd2.progress.started_at != rd.progress.started_at
        || !shovels.is_empty()
        || after
            .conditions
            .iter()
            .find(|c| c.type_ == "Redrive")
            .map(|c| c.last_transition_time.clone())
            != evaluated
    {
        return Err(format!(
            "the same request id ran again: {rd2:?} {shovels:?}"
        ));
    }
    drop(operator);
    on(rabbit, move |r| {
        r.delete_queue("/", queue)?;
        r.delete_queue("/", &format!("{queue}.dlq"))
    })
    .await
}

/// Dead-letter `n` messages (`message 0` .. `message n-1`) of `queue`.
async fn dead_letter_n(
    rabbit: &Arc<RabbitMq>,
    queue: &'static str,
    n: usize,
) -> Result<(), String> {
    on(rabbit, move |r| {
        r.publish("/", queue, n)?;
        let mut taken = 0;
        while taken < n {
            let got = r.take("/", queue, n - taken, "reject_requeue_false")?.len();
            if got == 0 {
                return Err(format!("only {taken} of {n} could be rejected"));
            }
            taken += got;
        }
        Ok(())
    })
    .await
}

/// A paced redrive (5 a second, batches of 5) of 200 messages, cancelled mid-way with
/// `cancel: true`: the shovel is gone, the request ends `Cancelled`, `moved` is what left the
/// DLQ, nothing moves afterwards, and every message is in exactly one of the two queues.
async fn cancel(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    const QUEUE: &str = "rc";
    const N: i64 = 200;
    let ns = "rc";
    let dlq = format!("{QUEUE}.dlq");
    let cluster = cluster(ns).await?;
    on(rabbit, |r| r.declare_queue("/", QUEUE)).await?;
    cluster
        .scaled_consumer(ns, "sc", spec(rabbit, QUEUE, json!({})))
        .await
        .map_err(|e| e.to_string())?;
    // The trial counts polls through status.lastObservation: every poll writes it.
    let _operator = cluster.start_operator_writing_every_poll(ns);
    status_where(&cluster, ns, "sc", "DeadLetterReady", |s| {
        cond_is(s, "DeadLetterReady", "True", "Configured")
    })
    .await?;
    eventually("policy in force", LONG, || async {
        let info = on(rabbit, |r| r.queue_info("/", QUEUE)).await?;
        Ok((info["policy"] == json!(format!("nerite.dlx.{QUEUE}"))).then_some(()))
    })
    .await?;
    dead_letter_n(rabbit, QUEUE, N as usize).await?;
    wait_depth(rabbit, &dlq, N).await?;
    status_where(&cluster, ns, "sc", "status DLQ depth 200", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.dead_letter.as_ref())
            .and_then(|d| d.depth)
            == Some(N)
    })
    .await?;
    let redrive = |cancel: bool| {
        json!({"spec": {"source": {"rabbitmq": {"deadLetter": {"redrive": {
            "requestId": "c1", "maxMessagesPerSecond": 5, "cancel": cancel
        }}}}}})
    };
    cluster
        .patch_scaled_consumer(ns, "sc", redrive(false))
        .await?;
    // Batches of 5 at most once a second and one per tick: 200 take 40 s or (loaded) more;
    // cancel after 10 have moved.
    let moving = status_where(&cluster, ns, "sc", "10 moved", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.redrive.as_ref())
            .is_some_and(|r| r.progress.moved >= 10)
    })
    .await?;
    cluster
        .patch_scaled_consumer(ns, "sc", redrive(true))
        .await?;
    let done = status_where(&cluster, ns, "sc", "redrive ended", |s| {
        s.rabbitmq
            .as_ref()
            .and_then(|r| r.redrive.as_ref())
            .is_some_and(|r| !r.progress.phase.is_active())
    })
    .await?;
    let rd = done
        .rabbitmq
        .as_ref()
        .and_then(|r| r.redrive.clone())
        .ok_or("no redrive status")?;
    let moved = rd.progress.moved;
    println!(
        "  cancelled at {} moved (asked at {}): {}",
        moved,
        moving
            .rabbitmq
            .and_then(|r| r.redrive)
            .map(|r| r.progress.moved)
            .unwrap_or_default(),
        rd.progress.message.clone().unwrap_or_default()
    );
    if rd.progress.phase != RedrivePhase::Cancelled || moved <= 0 || moved >= N {
        return Err(format!("cancelled redrive status: {rd:?}"));
    }
    if rd.shovel.is_some() || rd.progress.finished_at.is_none() {
        return Err(format!(
            "a cancelled redrive names no shovel and has ended: {rd:?}"
        ));
    }
    let c = condition(&done, "Redrive")
        .cloned()
        .ok_or("no Redrive condition")?;
    if (c.status.as_str(), c.reason.as_str()) != ("True", "Cancelled") {
        return Err(format!("Redrive condition after the cancel: {c:?}"));
    }
    if !shovels_from(rabbit, &dlq).await?.is_empty() {
        return Err("a shovel of the cancelled redrive is left".into());
    }
    // What left the DLQ is on the source queue, the rest still in the DLQ (the broker's
    // counts settle within a stats interval).
    eventually("DLQ + source = 200", LONG, || {
        let dlq = dlq.clone();
        async move {
            let (d, q) = on(rabbit, move |r| {
                Ok((r.depth("/", &dlq)?, r.depth("/", QUEUE)?))
            })
            .await
            .unwrap_or((-1, -1));
            Ok((d == N - moved && q == moved).then_some(()))
        }
    })
    .await?;
    // Nothing moves after the cancel: two more ticks, same counts, no shovel.
    let seen = done
        .last_observation
        .as_ref()
        .map(|o| o.observed_at.clone());
    let later = status_where(&cluster, ns, "sc", "a later tick", |s| {
        s.last_observation.as_ref().map(|o| o.observed_at.clone()) != seen
    })
    .await?;
    let seen = later
        .last_observation
        .as_ref()
        .map(|o| o.observed_at.clone());
    status_where(&cluster, ns, "sc", "one more tick", |s| {
        s.last_observation.as_ref().map(|o| o.observed_at.clone()) != seen
    })
    .await?;
    let after = cluster.status(ns, "sc").await?;
    if after.rabbitmq.and_then(|r| r.redrive) != Some(rd.clone())
        || !shovels_from(rabbit, &dlq).await?.is_empty()
    {
        return Err("the cancelled redrive changed or moved on after the cancel".into());
    }
    let events = cluster.events_for(ns, "sc").await?;
    if !events
        .iter()
        .any(|e| e.reason.as_deref() == Some("RedriveCancelled"))
    {
        return Err("no RedriveCancelled event".into());
    }
    // Every message exactly once across the two queues.
    let dlq2 = dlq.clone();
    let mut payloads = on(rabbit, move |r| {
        r.take("/", &dlq2, 400, "ack_requeue_false")
    })
    .await?;
    let from_dlq = payloads.len();
    payloads.extend(on(rabbit, |r| r.take("/", QUEUE, 400, "ack_requeue_false")).await?);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in &payloads {
        *seen.entry(p.clone()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let missing = (0..N)
        .filter(|i| !seen.contains_key(&format!("message {i}")))
        .count();
    println!(
        "  after the cancel: {} in the DLQ, {} on the source, {duplicates} duplicates, {missing} missing",
        from_dlq,
        payloads.len() - from_dlq
    );
    if missing > 0 || duplicates > 0 || from_dlq as i64 != N - moved {
        return Err(format!(
            "{missing} missing, {duplicates} duplicates, {from_dlq} in the DLQ (moved {moved})"
        ));
    }
    on(rabbit, move |r| {
        r.delete_queue("/", QUEUE)?;
        r.delete_queue("/", &dlq)
    })
    .await
}

async fn bad_inputs(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let ns = "bad-dl";
    let cluster = cluster(ns).await?;
    // A DLQ that exists with different arguments (a length cap would drop dead letters).
    on(rabbit, |r| {
        r.declare_queue("/", "bad")?;
        r.declare_queue_with_args("/", "bad.dlq", json!({"x-max-length": 5}))
    })
    .await?;
    cluster
        .scaled_consumer(ns, "conflict", spec(rabbit, "bad", json!({})))
        .await
        .map_err(|e| e.to_string())?;
    // A prefetch container that is not in the pod template.
    let mut s = spec(rabbit, "bad", json!(null));
    s["source"]["rabbitmq"]
        .as_object_mut()
        .map(|m| m.remove("deadLetter"));
    s["source"]["rabbitmq"]["prefetch"] = json!({
        "mode": "Apply",
        "deliverTo": {"env": {"container": "no-such-container", "name": "PREFETCH"}}
    });
    cluster
        .scaled_consumer(ns, "container", s)
        .await
        .map_err(|e| e.to_string())?;
    let _operator = cluster.start_operator(ns);
    let s = status_where(&cluster, ns, "conflict", "DeadLetterQueueConflict", |s| {
        cond_is(s, "DeadLetterReady", "False", "DeadLetterQueueConflict")
    })
    .await?;
    let msg = condition(&s, "DeadLetterReady")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    if !msg.contains("bad.dlq") || !msg.contains("inequivalent") {
        return Err(format!("conflict message: {msg}"));
    }
    let s = status_where(&cluster, ns, "container", "ContainerNotFound", |s| {
        cond_is(s, "Prefetch", "False", "ContainerNotFound")
    })
    .await?;
    let msg = condition(&s, "Prefetch")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    if !msg.contains("no-such-container") || !msg.contains("consumer") {
        return Err(format!("container message: {msg}"));
    }
    for (name, reason) in [
        ("conflict", "DeadLetterQueueConflict"),
        ("container", "ContainerNotFound"),
    ] {
        eventually(&format!("{reason} Event"), LONG, || async {
            let events = cluster.events_for(ns, name).await?;
            Ok(events
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason))
                .then_some(()))
        })
        .await?;
    }
    // Scaling goes on regardless.
    status_where(
        &cluster,
        ns,
        "container",
        "Ready despite the bad prefetch",
        |s| condition(s, "Ready").is_some_and(|c| c.status == "True"),
    )
    .await?;
    on(rabbit, |r| {
        r.delete_queue("/", "bad")?;
        r.delete_queue("/", "bad.dlq")
    })
    .await?;

    // A broker without the shovel plugin: the redrive says so.
    let private =
        Arc::new(blocking(|| RabbitMq::start_with_plugins("rabbitmq_management")).await??);
    on(&private, |r| r.declare_queue("/", "noshovel")).await?;
    let mut s = spec(
        &private,
        "noshovel",
        json!({"redrive": {"requestId": "r1"}}),
    );
    s["source"]["rabbitmq"]["credentialsSecretRef"]["name"] = json!("creds");
    cluster
        .scaled_consumer(ns, "noshovel", s)
        .await
        .map_err(|e| e.to_string())?;
    let s = status_where(&cluster, ns, "noshovel", "ShovelPluginMissing", |s| {
        cond_is(s, "Redrive", "False", "ShovelPluginMissing")
    })
    .await?;
    let rd = s
        .rabbitmq
        .and_then(|r| r.redrive)
        .ok_or("no redrive status")?;
    if rd.progress.phase != RedrivePhase::Failed || rd.progress.moved != 0 {
        return Err(format!("redrive status without the plugin: {rd:?}"));
    }
    Ok(())
}
