//! SQS end to end: moto's SQS server (`e2e/moto.sh`), the fake Kubernetes API server, and
//! nerite's controller — depth, the dead-letter policy, redrives, and bad inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::{Failed, Trial};
use nerite::brokers::sqs::model::{QueueArn, RedrivePolicy};
use nerite::spec::api::{RedrivePhase, ScaledConsumer, ScaledConsumerStatus, SqsRedriveStatus};
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, condition, eventually};
use crate::support::moto::{Moto, REGION, Sqs, queue_arn, queue_url};
use crate::support::{Env, dump, run};

pub fn trials(env: &Env) -> Vec<Trial> {
    let mut trials = Vec::new();
    let with_moto = |name: &str, env: &Env, f: fn(Arc<Moto>) -> Result<(), String>| {
        let e = env.clone();
        Trial::test(format!("sqs::{name}"), move || {
            let moto = e.moto()?;
            f(moto).map_err(Failed::from)
        })
    };
    trials.push(with_moto(
        "depth_counts_visible_in_flight_and_delayed",
        env,
        |m| run(depth(m)),
    ));
    trials.push(with_moto(
        "redrive_policy_is_set_repaired_used_and_removed",
        env,
        |m| run(policy(m)),
    ));
    trials.push(with_moto(
        "client_redrive_moves_1000_messages_once_per_request",
        env,
        |m| run(client_redrive(m)),
    ));
    trials.push(with_moto("fifo_redrive_keeps_group_order", env, |m| {
        run(fifo_redrive(m))
    }));
    trials.push(with_moto(
        "partial_send_failure_deletes_nothing_unsent",
        env,
        |m| run(partial_failure(m)),
    ));
    let binary = Arc::new(crate::support::binary_copy());
    let e = env.clone();
    trials.push(Trial::test(
        "sqs::operator_kill_mid_redrive_loses_nothing",
        move || {
            let moto = e.moto()?;
            run(kill_mid_redrive(moto, binary.clone())).map_err(Failed::from)
        },
    ));
    trials.push(with_moto("aws_mode_falls_back_to_client", env, |m| {
        run(aws_fallback(m))
    }));
    trials.push(with_moto(
        "aws_mode_follows_and_cancels_a_move_task",
        env,
        |m| run(aws_move_task(m)),
    ));
    trials.push(with_moto(
        "annotations_start_refuse_and_cancel_redrives",
        env,
        |m| run(annotation_redrive(m)),
    ));
    trials.push(with_moto("bad_inputs_get_clear_conditions", env, |m| {
        // A private server that checks signatures and IAM permissions.
        let guarded = Moto::start()?;
        let keys = guarded.python(
            "import boto3, os\n\
             e = os.environ['ENDPOINT']\n\
             boto3.client('sqs', endpoint_url=e).create_queue(QueueName='guarded')\n\
             iam = boto3.client('iam', endpoint_url=e)\n\
             iam.create_user(UserName='denied')\n\
             k = iam.create_access_key(UserName='denied')['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])\n",
        )?;
        guarded.enforce_auth()?;
        let mut parts = keys.split_whitespace();
        let key = parts.next().ok_or("no access key id")?.to_string();
        let secret = parts.next().ok_or("no secret key")?.to_string();
        run(bad_inputs(m, Arc::new(guarded), key, secret))
    }));
    trials
}

const SECRET: &str = "aws";

fn source(moto: &Moto, queue: &str) -> Value {
    json!({
        "queueUrl": queue_url(REGION, queue),
        "region": REGION,
        "endpoint": moto.endpoint(),
        "credentialsSecretRef": {
            "name": SECRET, "accessKeyIdKey": "username", "secretAccessKeyKey": "password"
        }
    })
}

fn spec(deployment: &str, sqs: Value, per_replica: i64) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": 1,
        "maxReplicas": 50,
        "source": {"sqs": sqs},
        "objective": {"backlogPerReplica": per_replica},
        "behavior": {"pollInterval": "1s", "scaleDown": {"stabilizationWindow": "0s"}}
    })
}

/// Namespace, credentials Secret and deployments.
async fn setup(cluster: &Cluster, ns: &str, deployments: &[&str]) -> Result<(), String> {
    cluster.namespace(ns).await?;
    cluster.secret(ns, SECRET, "test", "test").await?;
    for d in deployments {
        cluster.deployment(ns, d, 1).await?;
    }
    Ok(())
}

async fn status(cluster: &Cluster, ns: &str, name: &str) -> Result<ScaledConsumerStatus, String> {
    cluster.status(ns, name).await
}

async fn redrive_status(
    cluster: &Cluster,
    ns: &str,
    name: &str,
) -> Result<Option<SqsRedriveStatus>, String> {
    Ok(status(cluster, ns, name).await?.sqs.and_then(|s| s.redrive))
}

async fn patch_spec(cluster: &Cluster, ns: &str, name: &str, spec: Value) -> Result<(), String> {
    let api: Api<ScaledConsumer> = Api::namespaced(cluster.client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "spec": spec })),
    )
    .await
    .map(drop)
    .map_err(|e| format!("patch {name}: {e}"))
}

async fn has_event(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    reason: &str,
) -> Result<Option<String>, String> {
    Ok(cluster
        .events_for(ns, name)
        .await?
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.note.unwrap_or_default()))
}

async fn completed(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    request: &str,
    timeout: Duration,
) -> Result<SqsRedriveStatus, String> {
    let done = eventually(
        &format!("redrive {request} of {name} to complete"),
        timeout,
        || async {
            let r = redrive_status(cluster, ns, name).await?;
            Ok(r.filter(|r| r.progress.request_id == request && !r.progress.phase.is_active()))
        },
    )
    .await;
    match done {
        Ok(r) => Ok(r),
        Err(e) => Err(format!("{e}{}", dump(cluster, ns, name).await)),
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

// ---------------------------------------------------------------------------------------

/// Visible, in-flight and delayed messages at once; each counting mode scales its own
/// workload, and each part shows in the status.
async fn depth(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-depth";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["d-default", "d-delayed", "d-visible"]).await?;
    let sqs = moto.sqs();
    let url = sqs.create_queue("depth-q", &[]).await?;
    sqs.send(&url, &bodies("v", 14), None, None, None).await?;
    if sqs.receive(&url, 4, 600).await? != 4 {
        return Err("could not put 4 messages in flight".into());
    }
    sqs.send(&url, &bodies("d", 3), None, None, Some(600))
        .await?;
    let want = sqs.depth(&url).await?;
    if want != (10, 4, 3) {
        return Err(format!(
            "queue set-up: expected (10, 4, 3), SQS says {want:?}"
        ));
    }
    let mut delayed = source(&moto, "depth-q");
    delayed["includeDelayed"] = json!(true);
    let mut visible = source(&moto, "depth-q");
    visible["includeInFlight"] = json!(false);
    for (name, d, s) in [
        ("default", "d-default", source(&moto, "depth-q")),
        ("delayed", "d-delayed", delayed),
        ("visible", "d-visible", visible),
    ] {
        cluster
            .scaled_consumer(ns, name, spec(d, s, 1))
            .await
            .map_err(|e| e.to_string())?;
    }
    let _op = cluster.start_operator(ns);
    for (d, n) in [("d-default", 14), ("d-delayed", 17), ("d-visible", 10)] {
        eventually(&format!("{d} at {n}"), Duration::from_secs(30), || async {
            Ok((cluster.replicas(ns, d).await? == n).then_some(()))
        })
        .await?;
    }
    let s = status(&cluster, ns, "default").await?;
    let q = s.sqs.ok_or("no status.sqs")?;
    let parts = (q.visible, q.in_flight, q.delayed);
    if parts != (Some(10), Some(4), Some(3)) {
        return Err(format!("status.sqs parts {parts:?}"));
    }
    let obs = s.last_observation.ok_or("no lastObservation")?;
    if obs.backlog != 14 {
        return Err(format!("backlog {} (expected 14)", obs.backlog));
    }
    println!("  visible 10 + in flight 4 (+ delayed 3): replicas 14 / 17 / 10 as counted");
    Ok(())
}

/// Set the policy (creating the DLQ), repair drift, see messages reach the DLQ, refuse a
/// FIFO/standard mismatch, and remove the policy with the section.
async fn policy(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-policy";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["orders", "fifo", "fifo-made"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("orders", &[]).await?;
    let dlq_arn = queue_arn(REGION, "orders-dlq");
    let mut s = source(&moto, "orders");
    s["deadLetter"] = json!({"queue": "orders-dlq", "create": true, "maxReceiveCount": 2});
    cluster
        .scaled_consumer(ns, "orders", spec("orders", s, 100))
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);

    let wanted = RedrivePolicy {
        dead_letter_target_arn: dlq_arn.clone(),
        max_receive_count: 2,
    };
    let policy_of = |sqs: Sqs, url: String| async move {
        Ok::<_, String>(
            sqs.attributes(&url)
                .await?
                .get("RedrivePolicy")
                .and_then(|p| RedrivePolicy::parse(p)),
        )
    };
    let policy_ok = eventually(
        "the redrive policy on the source",
        Duration::from_secs(30),
        || async {
            let s = status(&cluster, ns, "orders").await?;
            let ready = condition(&s, "DeadLetterReady").is_some_and(|c| c.status == "True");
            let p = policy_of(sqs.clone(), src.clone()).await?;
            Ok((ready && p.as_ref() == Some(&wanted)).then_some(()))
        },
    )
    .await;
    if let Err(e) = policy_ok {
        return Err(format!("{e}{}", dump(&cluster, ns, "orders").await));
    }
    let dl = status(&cluster, ns, "orders")
        .await?
        .sqs
        .and_then(|s| s.dead_letter)
        .ok_or("no status.sqs.deadLetter")?;
    if dl.queue_arn != dlq_arn {
        return Err(format!("status names DLQ {}", dl.queue_arn));
    }
    has_event(&cluster, ns, "orders", "DeadLetterQueueCreated")
        .await?
        .ok_or("no DeadLetterQueueCreated event")?;
    println!("  policy set: {}", dl.redrive_policy.unwrap_or_default());

    // Someone changes it.
    let drifted = RedrivePolicy {
        max_receive_count: 7,
        ..wanted.clone()
    };
    sqs.set_attribute(&src, "RedrivePolicy", &drifted.to_json())
        .await?;
    eventually("the policy restored", Duration::from_secs(30), || async {
        let p = policy_of(sqs.clone(), src.clone()).await?;
        let repairs = status(&cluster, ns, "orders")
            .await?
            .sqs
            .and_then(|s| s.dead_letter)
            .map(|d| d.drift_repairs)
            .unwrap_or(0);
        Ok((p.as_ref() == Some(&wanted) && repairs >= 1).then_some(()))
    })
    .await?;
    let note = has_event(&cluster, ns, "orders", "RedrivePolicyRestored")
        .await?
        .ok_or("no RedrivePolicyRestored event")?;
    println!("  drift repaired: {note}");

    // Messages received more than maxReceiveCount times reach the DLQ.
    sqs.send(&src, &bodies("poison", 3), None, None, None)
        .await?;
    let dlq = queue_url(REGION, "orders-dlq");
    eventually("3 messages in the DLQ", Duration::from_secs(30), || async {
        sqs.receive(&src, 10, 0).await?;
        let (v, f, _) = sqs.depth(&dlq).await?;
        Ok((v + f == 3).then_some(()))
    })
    .await?;
    println!("  3 messages received 3 times each are in the DLQ");

    // A FIFO source with a standard DLQ.
    sqs.create_queue("fifo-src.fifo", &[("FifoQueue", "true")])
        .await?;
    let mut f = source(&moto, "fifo-src.fifo");
    f["deadLetter"] = json!({"queue": "orders-dlq", "maxReceiveCount": 3});
    cluster
        .scaled_consumer(ns, "fifo", spec("fifo", f, 100))
        .await
        .map_err(|e| e.to_string())?;
    let c = eventually(
        "DeadLetterTypeMismatch",
        Duration::from_secs(30),
        || async {
            let s = status(&cluster, ns, "fifo").await?;
            Ok(condition(&s, "DeadLetterReady")
                .filter(|c| c.status == "False" && c.reason == "DeadLetterTypeMismatch")
                .cloned())
        },
    )
    .await?;
    println!("  FIFO/standard: {}", c.message);
    has_event(&cluster, ns, "fifo", "DeadLetterTypeMismatch")
        .await?
        .ok_or("no DeadLetterTypeMismatch event")?;
    let fifo_attrs = sqs.attributes(&queue_url(REGION, "fifo-src.fifo")).await?;
    if fifo_attrs.contains_key("RedrivePolicy") {
        return Err("a policy was set despite the type mismatch".into());
    }

    // A FIFO source whose DLQ nerite creates: a FIFO DLQ, and the policy on the source.
    let made_src = sqs
        .create_queue("fifo-made.fifo", &[("FifoQueue", "true")])
        .await?;
    let mut m = source(&moto, "fifo-made.fifo");
    m["deadLetter"] = json!({"queue": "fifo-made-dlq.fifo", "create": true, "maxReceiveCount": 4});
    cluster
        .scaled_consumer(ns, "fifo-made", spec("fifo-made", m, 100))
        .await
        .map_err(|e| e.to_string())?;
    let made_wanted = RedrivePolicy {
        dead_letter_target_arn: queue_arn(REGION, "fifo-made-dlq.fifo"),
        max_receive_count: 4,
    };
    eventually(
        "a FIFO dead-letter queue created and named in the policy",
        Duration::from_secs(30),
        || async {
            let p = policy_of(sqs.clone(), made_src.clone()).await?;
            Ok((p.as_ref() == Some(&made_wanted)).then_some(()))
        },
    )
    .await?;
    let made_attrs = sqs
        .attributes(&queue_url(REGION, "fifo-made-dlq.fifo"))
        .await?;
    if made_attrs.get("FifoQueue").map(String::as_str) != Some("true") {
        return Err(format!("the created DLQ is not FIFO: {made_attrs:?}"));
    }
    has_event(&cluster, ns, "fifo-made", "DeadLetterQueueCreated")
        .await?
        .ok_or("no DeadLetterQueueCreated event for the FIFO DLQ")?;
    println!("  FIFO source: nerite created the FIFO dead-letter queue fifo-made-dlq.fifo");

    // Removing the section removes the policy.
    patch_spec(
        &cluster,
        ns,
        "orders",
        json!({"source": {"sqs": {"deadLetter": null}}}),
    )
    .await?;
    eventually("the policy removed", Duration::from_secs(30), || async {
        let p = policy_of(sqs.clone(), src.clone()).await?;
        let s = status(&cluster, ns, "orders").await?;
        let gone = s.sqs.as_ref().is_some_and(|q| q.dead_letter.is_none());
        Ok((p.is_none() && gone).then_some(()))
    })
    .await?;
    has_event(&cluster, ns, "orders", "DeadLetterPolicyRemoved")
        .await?
        .ok_or("no DeadLetterPolicyRemoved event")?;
    println!("  deadLetter removed: the source has no redrive policy");
    Ok(())
}

fn redrive_source(moto: &Moto, src: &str, dlq: &str, request: &str, extra: Value) -> Value {
    let mut s = source(moto, src);
    let mut redrive = json!({"requestId": request});
    if let (Some(r), Some(x)) = (redrive.as_object_mut(), extra.as_object()) {
        r.extend(x.clone());
    }
    s["deadLetter"] = json!({"queue": dlq, "maxReceiveCount": 5, "redrive": redrive});
    s
}

/// 1,000 messages back to the source, none lost; a request id runs once; a new id runs.
async fn client_redrive(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-redrive";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["jobs"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("jobs", &[]).await?;
    let dlq = sqs.create_queue("jobs-dlq", &[]).await?;
    let sent = bodies("msg", 1000);
    sqs.send(&dlq, &sent, Some(("origin", "checkout")), None, None)
        .await?;
    cluster
        .scaled_consumer(
            ns,
            "jobs",
            spec(
                "jobs",
                redrive_source(&moto, "jobs", "jobs-dlq", "r1", json!({"mode": "Client"})),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let _op = cluster.start_operator_writing_every_poll(ns);
    // moto answers a receive from a 1,000-message queue in about 1.5 s (it scans the queue),
    // so the move takes minutes on a loaded 2-core machine; the deadline leaves room.
    let r = completed(&cluster, ns, "jobs", "r1", Duration::from_secs(600)).await?;
    let took = started.elapsed();
    if (r.progress.phase, r.progress.moved, r.failed, r.duplicates)
        != (RedrivePhase::Succeeded, 1000, 0, 0)
    {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    let dlq_depth = sqs.depth(&dlq).await?;
    if dlq_depth != (0, 0, 0) {
        return Err(format!("DLQ not empty: {dlq_depth:?}"));
    }
    let got = sqs.drain(&src).await?;
    let unique: BTreeSet<&str> = got.iter().map(|m| m.body.as_str()).collect();
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    if got.len() != 1000 || unique != want {
        return Err(format!(
            "source got {} messages, {} unique, {} missing",
            got.len(),
            unique.len(),
            want.difference(&unique).count()
        ));
    }
    if let Some(m) = got
        .iter()
        .find(|m| m.attributes.get("origin").map(String::as_str) != Some("checkout"))
    {
        return Err(format!("message attributes lost: {m:?}"));
    }
    println!(
        "  1000 moved in {:.1}s (operator start to completion), 1000 unique on the source, attributes kept, DLQ empty",
        took.as_secs_f64()
    );
    has_event(&cluster, ns, "jobs", "RedriveSucceeded")
        .await?
        .ok_or("no RedriveSucceeded event")?;

    // The same request id never runs again, whatever else changes.
    sqs.send(&dlq, &bodies("late", 5), None, None, None).await?;
    patch_spec(
        &cluster,
        ns,
        "jobs",
        json!({"behavior": {"pollInterval": "2s"}}),
    )
    .await?;
    let generation = {
        let api: Api<ScaledConsumer> = Api::namespaced(cluster.client.clone(), ns);
        api.get("jobs")
            .await
            .map_err(|e| e.to_string())?
            .metadata
            .generation
    };
    let seen = eventually(
        "the new generation observed",
        Duration::from_secs(20),
        || async {
            let s = status(&cluster, ns, "jobs").await?;
            Ok((s.observed_generation == generation)
                .then(|| s.last_observation.map(|o| o.observed_at))
                .flatten())
        },
    )
    .await?;
    // Two more ticks after that.
    let ticks = std::sync::Mutex::new((seen, 0));
    eventually("two more ticks", Duration::from_secs(20), || async {
        let at = status(&cluster, ns, "jobs")
            .await?
            .last_observation
            .map(|o| o.observed_at)
            .unwrap_or_default();
        let mut t = ticks.lock().map_err(|e| e.to_string())?;
        if at != t.0 {
            t.0 = at;
            t.1 += 1;
        }
        Ok((t.1 >= 2).then_some(()))
    })
    .await?;
    let (visible, _, _) = sqs.depth(&dlq).await?;
    if visible != 5 {
        return Err(format!(
            "request r1 ran again: the DLQ has {visible} of the 5 new messages"
        ));
    }
    // A new request id moves them.
    patch_spec(
        &cluster,
        ns,
        "jobs",
        json!({"source": {"sqs": {"deadLetter": {"redrive": {"requestId": "r2"}}}}}),
    )
    .await?;
    let r2 = completed(&cluster, ns, "jobs", "r2", Duration::from_secs(60)).await?;
    if r2.progress.moved != 5 {
        return Err(format!("r2 moved {} (expected 5)", r2.progress.moved));
    }
    println!("  r1 did not run again after a spec change; r2 moved the 5 new messages");
    Ok(())
}

/// A FIFO source and DLQ: two interleaved groups keep their order.
async fn fifo_redrive(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-fifo";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["fifo"]).await?;
    let sqs = moto.sqs();
    let src = sqs
        .create_queue("fifo-jobs.fifo", &[("FifoQueue", "true")])
        .await?;
    let dlq = sqs
        .create_queue("fifo-jobs-dlq.fifo", &[("FifoQueue", "true")])
        .await?;
    let sent: Vec<String> = (0..60)
        .map(|i| format!("g{}-{:03}", i % 2, i / 2))
        .collect();
    let group = |i: usize| format!("g{}", i % 2);
    sqs.send(&dlq, &sent, None, Some(&group), None).await?;
    cluster
        .scaled_consumer(
            ns,
            "fifo",
            spec(
                "fifo",
                redrive_source(
                    &moto,
                    "fifo-jobs.fifo",
                    "fifo-jobs-dlq.fifo",
                    "f1",
                    json!({"mode": "Client"}),
                ),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    let r = completed(&cluster, ns, "fifo", "f1", Duration::from_secs(60)).await?;
    if r.progress.moved != 60 || r.failed != 0 {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    let got = sqs.drain(&src).await?;
    let mut per_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &got {
        let g = m.group_id.clone().ok_or("a message without its group id")?;
        per_group.entry(g).or_default().push(m.body.clone());
    }
    for (g, msgs) in &per_group {
        let want: Vec<String> = sent
            .iter()
            .filter(|b| b.starts_with(g.as_str()))
            .cloned()
            .collect();
        if msgs != &want {
            return Err(format!("group {g} out of order or incomplete: {msgs:?}"));
        }
    }
    if per_group.len() != 2 {
        return Err(format!("expected 2 groups, got {:?}", per_group.keys()));
    }
    println!("  60 FIFO messages in 2 groups moved, each group in its original order");
    Ok(())
}

/// The source refuses some messages (too large): they stay in the DLQ, the rest move.
async fn partial_failure(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-partial";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["small"]).await?;
    let sqs = moto.sqs();
    let src = sqs
        .create_queue("small", &[("MaximumMessageSize", "1024")])
        .await?;
    let dlq = sqs.create_queue("small-dlq", &[]).await?;
    let large: Vec<String> = (0..5)
        .map(|i| format!("L-{i}-{}", "x".repeat(2000)))
        .collect();
    let mut all = Vec::new();
    for i in 0..35 {
        if i % 7 == 3 {
            all.push(large[i / 7].clone());
        } else {
            all.push(format!("s-{i:02}"));
        }
    }
    sqs.send(&dlq, &all, None, None, None).await?;
    cluster
        .scaled_consumer(
            ns,
            "small",
            spec(
                "small",
                redrive_source(&moto, "small", "small-dlq", "p1", json!({"mode": "Client"})),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    let r = completed(&cluster, ns, "small", "p1", Duration::from_secs(60)).await?;
    if (r.progress.moved, r.failed, r.failed_message_ids.len()) != (30, 5, 5) {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    eventually(
        "the refused messages visible in the DLQ",
        Duration::from_secs(30),
        || async { Ok((sqs.depth(&dlq).await? == (5, 0, 0)).then_some(())) },
    )
    .await?;
    let left: BTreeSet<String> = sqs.drain(&dlq).await?.into_iter().map(|m| m.body).collect();
    let want: BTreeSet<String> = large.iter().cloned().collect();
    if left != want {
        return Err(format!(
            "DLQ holds {} messages, not the 5 large ones",
            left.len()
        ));
    }
    let moved: BTreeSet<String> = sqs.drain(&src).await?.into_iter().map(|m| m.body).collect();
    let small: BTreeSet<String> = all.iter().filter(|b| b.len() < 100).cloned().collect();
    if moved != small {
        return Err(format!(
            "source holds {} messages, not the 30 small ones",
            moved.len()
        ));
    }
    println!(
        "  30 moved, 5 refused by the source stay in the DLQ ({})",
        r.progress
            .message
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect::<String>()
    );
    Ok(())
}

/// The operator as its own process, SIGKILLed mid-redrive and started again.
struct OperatorProcess(Child);

impl OperatorProcess {
    fn start(
        binary: &std::path::Path,
        kubeconfig: &std::path::Path,
        ns: &str,
        log: &std::path::Path,
    ) -> Result<Self, String> {
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        Command::new(binary)
            .args([
                "run",
                "--namespace",
                ns,
                "--source-timeout",
                "2",
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map(OperatorProcess)
            .map_err(|e| format!("start nerite: {e}"))
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn kill_mid_redrive(
    moto: Arc<Moto>,
    binary: Arc<Result<(tempfile::TempDir, std::path::PathBuf), String>>,
) -> Result<(), String> {
    let binary = match binary.as_ref() {
        Ok((_, path)) => path.clone(),
        Err(e) => return Err(e.clone()),
    };
    let ns = "sqs-kill";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["kill"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("kill-src", &[]).await?;
    let dlq = sqs.create_queue("kill-dlq", &[]).await?;
    let sent = bodies("k", 300);
    sqs.send(&dlq, &sent, None, None, None).await?;
    cluster
        .scaled_consumer(
            ns,
            "kill",
            spec(
                "kill",
                redrive_source(
                    &moto,
                    "kill-src",
                    "kill-dlq",
                    "k1",
                    json!({"mode": "Client", "maxMessagesPerSecond": 50}),
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

    let mut first =
        OperatorProcess::start(&binary, &kubeconfig, ns, &dir.path().join("first.log"))?;
    let at_kill = eventually("100 moved", Duration::from_secs(90), || async {
        let r = redrive_status(&cluster, ns, "kill").await?;
        Ok(r.filter(|r| r.progress.moved >= 100))
    })
    .await;
    let at_kill = match at_kill {
        Ok(r) => r,
        Err(e) => {
            let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            return Err(format!(
                "{e}{}\n  operator log (last lines, newest first): {tail:#?}",
                dump(&cluster, ns, "kill").await
            ));
        }
    };
    first.kill();
    let dlq_at_kill = sqs.depth(&dlq).await?;
    let at_kill = redrive_status(&cluster, ns, "kill")
        .await?
        .unwrap_or(at_kill);
    println!(
        "  status at the kill: moved {}, journal {:?}",
        at_kill.progress.moved, at_kill.journal
    );
    println!(
        "  killed the operator (SIGKILL) at {} moved; DLQ visible/in flight {:?}",
        at_kill.progress.moved,
        (dlq_at_kill.0, dlq_at_kill.1)
    );
    let _second = OperatorProcess::start(&binary, &kubeconfig, ns, &dir.path().join("second.log"))?;
    let r = completed(&cluster, ns, "kill", "k1", Duration::from_secs(600)).await?;
    let dlq_depth = sqs.depth(&dlq).await?;
    let got = sqs.drain(&src).await?;
    let unique: BTreeSet<&str> = got.iter().map(|m| m.body.as_str()).collect();
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let missing = want.difference(&unique).count();
    let duplicates = got.len() - unique.len();
    println!(
        "  after restart: phase {}, moved {}, reported possible duplicates {}, copies on the source {} ({} unique, {} duplicates, {} missing)",
        r.progress.phase,
        r.progress.moved,
        r.duplicates,
        got.len(),
        unique.len(),
        duplicates,
        missing
    );
    if missing > 0 || unique != want {
        let lost: Vec<&&str> = want.difference(&unique).collect();
        let dlq_left = sqs.drain(&dlq).await?.len();
        return Err(format!(
            "{missing} messages lost: {lost:?}; DLQ at the end {dlq_depth:?} ({dlq_left} drained later); final status {r:?}{}",
            dump(&cluster, ns, "kill").await
        ));
    }
    if dlq_depth != (0, 0, 0) {
        return Err(format!("DLQ not empty: {dlq_depth:?}"));
    }
    if r.progress.phase != RedrivePhase::Succeeded {
        return Err(format!("redrive ended {}", r.progress.phase));
    }
    if i64::try_from(duplicates).unwrap_or(i64::MAX) > r.duplicates {
        return Err(format!(
            "{duplicates} duplicates on the source but only {} reported",
            r.duplicates
        ));
    }
    has_event(&cluster, ns, "kill", "RedriveResumed")
        .await?
        .ok_or("no RedriveResumed event")?;
    Ok(())
}

/// moto answers StartMessageMoveTask with HTTP 500: nerite falls back to client mode.
async fn aws_fallback(moto: Arc<Moto>) -> Result<(), String> {
    let ns = "sqs-aws";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["aws"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("aws-src", &[]).await?;
    let dlq = sqs.create_queue("aws-dlq", &[]).await?;
    sqs.send(&dlq, &bodies("a", 20), None, None, None).await?;
    cluster
        .scaled_consumer(
            ns,
            "aws",
            spec(
                "aws",
                redrive_source(&moto, "aws-src", "aws-dlq", "a1", json!({"mode": "Aws"})),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    let r = completed(&cluster, ns, "aws", "a1", Duration::from_secs(60)).await?;
    if (r.progress.phase, r.mode.as_str(), r.progress.moved)
        != (RedrivePhase::Succeeded, "Client", 20)
    {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    let note = has_event(&cluster, ns, "aws", "RedriveFallback")
        .await?
        .ok_or("no RedriveFallback event")?;
    if sqs.drain(&src).await?.len() != 20 || sqs.depth(&dlq).await? != (0, 0, 0) {
        return Err("the fallback did not move every message".into());
    }
    println!("  {note}");
    Ok(())
}

/// Wrong region, unknown queue, access denied, unknown key, malformed ARN: each a clear
/// condition and Event, the count held.
async fn bad_inputs(
    moto: Arc<Moto>,
    guarded: Arc<Moto>,
    key: String,
    secret: String,
) -> Result<(), String> {
    let ns = "sqs-bad";
    let cluster = Cluster::fake(false).await?;
    setup(&cluster, ns, &[]).await?;
    cluster.secret(ns, "denied", &key, &secret).await?;
    cluster
        .secret(ns, "bogus", "AKIAIOSFODNN7EXAMPLE", "not-a-secret-key")
        .await?;
    let sqs = moto.sqs();
    sqs.create_queue("bad-inputs", &[]).await?;
    sqs.send(
        &queue_url(REGION, "bad-inputs"),
        &bodies("b", 5),
        None,
        None,
        None,
    )
    .await?;

    let mut cases: Vec<(&str, Value, &str, &str)> = Vec::new();
    let mut wrong_region = source(&moto, "bad-inputs");
    wrong_region["region"] = json!("eu-west-1");
    cases.push(("wrong-region", wrong_region, "Ready", "InvalidSpec"));
    cases.push((
        "unknown-queue",
        source(&moto, "no-such-queue"),
        "SourceReachable",
        "QueueNotFound",
    ));
    let mut arn = source(&moto, "bad-inputs");
    arn["deadLetter"] = json!({"queue": "arn:aws:sqs:us-east-1:12345:dlq", "maxReceiveCount": 3});
    cases.push(("malformed-arn", arn, "Ready", "InvalidSpec"));
    let mut denied = source(&guarded, "guarded");
    denied["credentialsSecretRef"]["name"] = json!("denied");
    cases.push(("access-denied", denied, "SourceReachable", "Forbidden"));
    let mut bogus = source(&guarded, "guarded");
    bogus["credentialsSecretRef"]["name"] = json!("bogus");
    cases.push(("unknown-key", bogus, "SourceReachable", "Unauthorized"));

    for (name, s, _, _) in &cases {
        cluster.deployment(ns, name, 2).await?;
        cluster
            .raw_scaled_consumer(ns, name, spec(name, s.clone(), 1))
            .await?;
    }
    let _op = cluster.start_operator(ns);
    for (name, _, type_, reason) in &cases {
        let c = eventually(
            &format!("{name}: {type_}=False/{reason}"),
            Duration::from_secs(30),
            || async {
                let s = status(&cluster, ns, name).await?;
                Ok(condition(&s, type_)
                    .filter(|c| c.status == "False" && c.reason == *reason)
                    .cloned())
            },
        )
        .await;
        let c = match c {
            Ok(c) => c,
            Err(e) => return Err(format!("{e}{}", dump(&cluster, ns, name).await)),
        };
        if c.message.contains("not-a-secret-key") || c.message.contains(&secret) {
            return Err(format!("{name}: the message leaks a secret: {}", c.message));
        }
        println!("  {name}: {type_}=False {reason}: {}", c.message);
        has_event(&cluster, ns, name, reason)
            .await?
            .ok_or(format!("{name}: no {reason} event"))?;
        let n = cluster.replicas(ns, name).await?;
        if n != 2 {
            return Err(format!("{name}: replicas changed to {n}"));
        }
    }
    // The API server itself refuses the malformed ARN with the schema's rule.
    let strict = Cluster::fake(true).await?;
    let mut arn = source(&moto, "bad-inputs");
    arn["deadLetter"] = json!({"queue": "arn:aws:sqs:us-east-1:12345:dlq", "maxReceiveCount": 3});
    match strict
        .raw_scaled_consumer(ns, "arn", spec("arn", arn, 1))
        .await
    {
        Err(e) if e.contains("deadLetter.queue must be a queue name or an SQS ARN") => {}
        other => return Err(format!("malformed ARN admitted by the schema: {other:?}")),
    }
    // Checked in code too, with the same verdict.
    if QueueArn::parse("arn:aws:sqs:us-east-1:12345:dlq").is_ok() {
        return Err("QueueArn accepted a malformed ARN".into());
    }
    Ok(())
}

/// `aws` mode against [`MoveTaskDouble`] (moto has no move-task API): nerite starts one
/// task, follows it to COMPLETED and records what it moved; a second request, cancelled
/// while it runs, ends Cancelled with every message in one of the two queues.
async fn aws_move_task(moto: Arc<Moto>) -> Result<(), String> {
    use nerite_testkit::sqs_move::MoveTaskDouble;
    let double = MoveTaskDouble::start(&moto).await?;
    let ns = "sqs-aws-task";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["mover"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("mover-src", &[]).await?;
    let dlq = sqs.create_queue("mover-dlq", &[]).await?;
    sqs.send(
        &dlq,
        &bodies("m", 50),
        Some(("origin", "checkout")),
        None,
        None,
    )
    .await?;
    let with_double = |request: &str, extra: Value| {
        let mut s = redrive_source(&moto, "mover-src", "mover-dlq", request, extra);
        s["endpoint"] = json!(double.endpoint);
        s
    };
    cluster
        .scaled_consumer(
            ns,
            "mover",
            spec(
                "mover",
                with_double("t1", json!({"mode": "Aws", "maxMessagesPerSecond": 25})),
                100,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    let r = completed(&cluster, ns, "mover", "t1", Duration::from_secs(60)).await?;
    if (r.progress.phase, r.mode.as_str(), r.progress.moved) != (RedrivePhase::Succeeded, "Aws", 50)
    {
        return Err(format!("unexpected outcome: {r:?}"));
    }
    let tasks = double.tasks();
    if tasks.len() != 1
        || tasks[0].rate != Some(25)
        || r.task_handle.as_deref() != Some(tasks[0].handle.as_str())
    {
        return Err(format!("tasks {tasks:?}, status {r:?}"));
    }
    if has_event(&cluster, ns, "mover", "RedriveFallback")
        .await?
        .is_some()
    {
        return Err("fell back to client mode against a move-task API".into());
    }
    let back = sqs.drain(&src).await?;
    if back.len() != 50
        || back
            .iter()
            .any(|m| m.attributes.get("origin").map(String::as_str) != Some("checkout"))
    {
        return Err(format!("{} messages back on the source", back.len()));
    }
    println!("  aws mode: one move task, 50 moved at ≤ 25/s, attributes kept");

    // A slow task, cancelled while it runs.
    sqs.send(&dlq, &bodies("c", 200), None, None, None).await?;
    cluster
        .patch_scaled_consumer(
            ns,
            "mover",
            json!({"spec": {"source": {"sqs": with_double("t2", json!({"mode": "Aws", "maxMessagesPerSecond": 5}))}}}),
        )
        .await?;
    eventually("task t2 moving", Duration::from_secs(60), || async {
        let r = redrive_status(&cluster, ns, "mover").await?;
        Ok(
            r.filter(|r| r.progress.request_id == "t2" && r.progress.moved > 0)
                .map(drop),
        )
    })
    .await?;
    cluster
        .patch_scaled_consumer(
            ns,
            "mover",
            json!({"spec": {"source": {"sqs": with_double("t2", json!({"mode": "Aws", "maxMessagesPerSecond": 5, "cancel": true}))}}}),
        )
        .await?;
    let r = completed(&cluster, ns, "mover", "t2", Duration::from_secs(60)).await?;
    let tasks = double.tasks();
    let t2 = tasks.last().ok_or("no second task")?;
    let (v_src, f_src, _) = sqs.depth(&src).await?;
    let (v_dlq, f_dlq, _) = sqs.depth(&dlq).await?;
    println!(
        "  cancelled: {} moved of 200, task {}; source {} + DLQ {} messages",
        r.progress.moved,
        t2.status,
        v_src + f_src,
        v_dlq + f_dlq
    );
    if r.progress.phase != RedrivePhase::Cancelled
        || t2.status != "CANCELLED"
        || r.progress.moved >= 200
        || r.progress.moved <= 0
    {
        return Err(format!("cancel: {r:?} {t2:?}"));
    }
    if v_src + f_src + v_dlq + f_dlq != 200 {
        return Err(format!(
            "{} messages in the two queues after the cancel (want 200)",
            v_src + f_src + v_dlq + f_dlq
        ));
    }
    Ok(())
}

async fn annotate(cluster: &Cluster, ns: &str, name: &str, pairs: Value) -> Result<(), String> {
    cluster
        .patch_scaled_consumer(ns, name, json!({"metadata": {"annotations": pairs}}))
        .await
}

/// The `Redrive` condition once it has `status` and `reason`.
async fn redrive_condition(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> Result<nerite::spec::api::Condition, String> {
    let c = eventually(
        &format!("{name}: Redrive={status}/{reason}"),
        Duration::from_secs(60),
        || async {
            let s = cluster.status(ns, name).await?;
            Ok(condition(&s, "Redrive")
                .filter(|c| c.status == status && c.reason == reason)
                .cloned())
        },
    )
    .await;
    match c {
        Ok(c) => Ok(c),
        Err(e) => Err(format!("{e}{}", dump(cluster, ns, name).await)),
    }
}

/// The annotations on SQS: `nerite.dev/redrive-request` starts a redrive (client mode by
/// default here); without a `deadLetter` section, or with an id that breaks the rule, the
/// request is refused with a condition and an Event; `nerite.dev/redrive-cancel` cancels a
/// spec-triggered redrive of its id mid-way, losing nothing.
async fn annotation_redrive(moto: Arc<Moto>) -> Result<(), String> {
    const REQUEST: &str = "nerite.dev/redrive-request";
    const CANCEL: &str = "nerite.dev/redrive-cancel";
    let ns = "sqs-annotate";
    let cluster = Cluster::fake(true).await?;
    setup(&cluster, ns, &["annot", "plain"]).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("annot-src", &[]).await?;
    let dlq = sqs.create_queue("annot-dlq", &[]).await?;
    sqs.create_queue("plain-src", &[]).await?;
    let first = bodies("a", 30);
    sqs.send(&dlq, &first, None, None, None).await?;
    let mut with_dl = source(&moto, "annot-src");
    with_dl["deadLetter"] = json!({"queue": "annot-dlq", "maxReceiveCount": 5});
    cluster
        .scaled_consumer(ns, "annot", spec("annot", with_dl.clone(), 100))
        .await
        .map_err(|e| e.to_string())?;
    cluster
        .scaled_consumer(ns, "plain", spec("plain", source(&moto, "plain-src"), 100))
        .await
        .map_err(|e| e.to_string())?;
    let _op = cluster.start_operator(ns);
    eventually("DeadLetterReady", Duration::from_secs(60), || async {
        let s = status(&cluster, ns, "annot").await?;
        Ok(condition(&s, "DeadLetterReady")
            .filter(|c| c.status == "True")
            .map(drop))
    })
    .await?;

    // The annotation starts a redrive, once.
    annotate(&cluster, ns, "annot", json!({REQUEST: "a1"})).await?;
    let r = completed(&cluster, ns, "annot", "a1", Duration::from_secs(120)).await?;
    if (r.progress.phase, r.progress.moved, r.mode.as_str())
        != (RedrivePhase::Succeeded, 30, "Client")
    {
        return Err(format!("annotation-triggered redrive: {r:?}"));
    }
    let c = redrive_condition(&cluster, ns, "annot", "True", "Succeeded").await?;
    for reason in ["RedriveStarted", "RedriveSucceeded"] {
        has_event(&cluster, ns, "annot", reason)
            .await?
            .ok_or(format!("no {reason} event"))?;
    }
    let back = sqs.drain(&src).await?;
    if back.len() != 30 || sqs.depth(&dlq).await? != (0, 0, 0) {
        return Err(format!("{} of 30 back on the source", back.len()));
    }
    println!("  annotation a1: 30 moved; {}", c.message);

    // No deadLetter section: refused, with a condition and an Event.
    annotate(&cluster, ns, "plain", json!({REQUEST: "p1"})).await?;
    let c = redrive_condition(&cluster, ns, "plain", "False", "NoDeadLetter").await?;
    if !c.message.contains("spec.source.sqs.deadLetter") || !c.message.contains("\"p1\"") {
        return Err(format!("unclear refusal: {c:?}"));
    }
    has_event(&cluster, ns, "plain", "NoDeadLetter")
        .await?
        .ok_or("no NoDeadLetter event")?;
    // Removing the annotation removes the refusal.
    annotate(&cluster, ns, "plain", json!({REQUEST: null})).await?;
    eventually("the refusal gone", Duration::from_secs(60), || async {
        let s = status(&cluster, ns, "plain").await?;
        Ok(condition(&s, "Redrive").is_none().then_some(()))
    })
    .await?;
    println!("  without deadLetter: {}", c.message);

    // An id that breaks the rule: a condition and an Event, nothing started.
    annotate(&cluster, ns, "annot", json!({REQUEST: "not a valid id!"})).await?;
    let c = redrive_condition(&cluster, ns, "annot", "False", "InvalidRedriveAnnotation").await?;
    if !c.message.contains(REQUEST) || !c.message.contains("1-63") {
        return Err(format!("unclear invalid-annotation condition: {c:?}"));
    }
    has_event(&cluster, ns, "annot", "InvalidRedriveAnnotation")
        .await?
        .ok_or("no InvalidRedriveAnnotation event")?;
    let r = redrive_status(&cluster, ns, "annot")
        .await?
        .ok_or("no redrive status")?;
    if r.progress.request_id != "a1" {
        return Err(format!("an invalid annotation started a redrive: {r:?}"));
    }
    println!("  invalid annotation: {}", c.message);

    // A slow spec-triggered redrive, cancelled by the annotation mid-way.
    let second = bodies("s", 100);
    sqs.send(&dlq, &second, None, None, None).await?;
    let mut slow = with_dl;
    slow["deadLetter"]["redrive"] =
        json!({"requestId": "s1", "mode": "Client", "maxMessagesPerSecond": 2});
    cluster
        .patch_scaled_consumer(
            ns,
            "annot",
            json!({"metadata": {"annotations": {REQUEST: null}}, "spec": {"source": {"sqs": slow}}}),
        )
        .await?;
    eventually("s1 moving", Duration::from_secs(60), || async {
        let r = redrive_status(&cluster, ns, "annot").await?;
        Ok(
            r.filter(|r| r.progress.request_id == "s1" && r.progress.moved > 0)
                .map(drop),
        )
    })
    .await?;
    annotate(&cluster, ns, "annot", json!({CANCEL: "s1"})).await?;
    let r = completed(&cluster, ns, "annot", "s1", Duration::from_secs(120)).await?;
    if r.progress.phase != RedrivePhase::Cancelled || r.progress.moved >= 100 {
        return Err(format!("cancel by annotation: {r:?}"));
    }
    redrive_condition(&cluster, ns, "annot", "True", "Cancelled").await?;
    has_event(&cluster, ns, "annot", "RedriveCancelled")
        .await?
        .ok_or("no RedriveCancelled event")?;
    // Every message in exactly one of the two queues (released ones become visible).
    let moved = r.progress.moved;
    eventually("DLQ + source = 100", Duration::from_secs(60), || async {
        let (v_src, f_src, _) = sqs.depth(&src).await?;
        let (v_dlq, f_dlq, _) = sqs.depth(&dlq).await?;
        Ok((v_src == moved && f_src == 0 && v_dlq == 100 - moved && f_dlq == 0).then_some(()))
    })
    .await?;
    let on_source: BTreeSet<String> = sqs.drain(&src).await?.into_iter().map(|m| m.body).collect();
    let in_dlq: BTreeSet<String> = sqs.drain(&dlq).await?.into_iter().map(|m| m.body).collect();
    let all: BTreeSet<String> = on_source.union(&in_dlq).cloned().collect();
    let want: BTreeSet<String> = second.iter().cloned().collect();
    if all != want || !on_source.is_disjoint(&in_dlq) {
        return Err(format!(
            "after the cancel: {} on the source, {} in the DLQ, {} of 100 distinct",
            on_source.len(),
            in_dlq.len(),
            all.len()
        ));
    }
    println!(
        "  s1 cancelled by annotation at {moved} moved; {} in the DLQ, nothing lost",
        in_dlq.len()
    );
    Ok(())
}
