//! The RabbitMQ source's AMQP-only mode (`amqpUrl`) against a real broker: the reader on its
//! own, then the operator with the fake API server.
//!
//! The shared broker has the management plugin (the trials use it to set up queues and to
//! count connections), but nerite's reads here go through AMQP only.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use nerite::brokers::rabbitmq::amqp::{AmqpReader, AmqpTarget};
use nerite::core::error::SourceError;
use nerite::core::observation::Credentials;
use serde_json::{Value, json};

use crate::support::cluster::{Cluster, blocking, condition, eventually};
use crate::support::probe::Probe;
use crate::support::rabbitmq::{Consumer, RabbitMq, free_ports, wait_for, wait_until};
use crate::support::{Env, expect};

/// The reader's timeout in trials that expect an answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for a reading to reach a value (AMQP counts are current at once; leave room for a
/// busy machine).
const SETTLE: Duration = Duration::from_secs(20);
/// The prefix nerite names its AMQP connections with.
const CONNECTION_NAME: &str = "nerite/";

/// A trial body that uses the shared broker.
type SharedTrial = fn(&RabbitMq) -> Result<(), String>;

pub fn trials(env: &Env) -> Vec<Trial> {
    let shared: [(&str, SharedTrial); 7] = [
        ("rabbitmq_amqp::ready_and_consumers", ready_and_consumers),
        (
            "rabbitmq_amqp::one_connection_per_vhost_and_login",
            one_connection_per_vhost_and_login,
        ),
        ("rabbitmq_amqp::wrong_password", wrong_password),
        ("rabbitmq_amqp::unknown_vhost", unknown_vhost),
        (
            "rabbitmq_amqp::unknown_queue_then_fresh_channel",
            unknown_queue_then_fresh_channel,
        ),
        (
            "rabbitmq_amqp::user_without_vhost_access",
            user_without_vhost_access,
        ),
        ("rabbitmq_amqp::least_privilege_user", least_privilege_user),
    ];
    let mut trials: Vec<Trial> = shared
        .into_iter()
        .map(|(name, body)| {
            let env = env.clone();
            Trial::test(name, move || {
                let rabbit = env.rabbitmq()?;
                body(&rabbit).map_err(Failed::from)
            })
        })
        .collect();
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_amqp::operator_scales_from_amqp_backlog",
        move || {
            let rabbit = e.rabbitmq()?;
            run_async(operator_scales(rabbit)).map_err(Failed::from)
        },
    ));
    let e = env.clone();
    trials.push(Trial::test(
        "rabbitmq_amqp::operator_bad_inputs_hold_the_count",
        move || {
            let rabbit = e.rabbitmq()?;
            run_async(operator_bad_inputs(rabbit)).map_err(Failed::from)
        },
    ));
    trials.extend([
        Trial::test("rabbitmq_amqp::nothing_listening", || {
            nothing_listening().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_amqp::silent_server", || {
            silent_server().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_amqp::reconnects_after_broker_restart", || {
            reconnects_after_broker_restart().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_amqp::api_server_refuses_bad_amqp_specs", || {
            run_async(admission()).map_err(Failed::from)
        }),
    ]);
    trials
}

/// Run an async trial body on a two-thread runtime of its own (lapin's I/O threads need a
/// multi-thread runtime to drive their sockets).
fn run_async(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    crate::support::run(fut)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The AMQP reader with this timeout, driven from a blocking trial.
fn probe(timeout: Duration) -> Result<Probe<AmqpReader>, String> {
    Probe::new(AmqpReader::new(timeout))
}

fn target(url: &str, vhost: &str, queue: &str) -> AmqpTarget {
    AmqpTarget {
        amqp_url: url.to_owned(),
        vhost: vhost.to_owned(),
        queue: queue.to_owned(),
        credentials: Credentials::new("guest", "guest"),
    }
}

// ---------------------------------------------------------------------------------------------
// The reader against the shared broker

/// Ready messages are the backlog; messages a consumer holds unacknowledged are not counted
/// (AMQP does not tell them), and the consumer count is read.
fn ready_and_consumers(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let queue = "amqp-ready";
    rabbit.declare_queue("/", queue)?;
    let t = target(&rabbit.amqp_url(), "/", queue);
    let (o, _) = probe.await_backlog(&t, 0)?;
    expect("consumers of an idle queue", &o.consumers, |c| {
        *c == Some(0)
    })?;

    rabbit.publish("/", queue, 25)?;
    let (o, _) = probe.await_backlog(&t, 25)?;
    expect("ready", &o.ready, |r| *r == Some(25))?;
    expect(
        "unacked (unknown through AMQP)",
        &o.unacked,
        Option::is_none,
    )?;
    expect(
        "rates (unknown through AMQP)",
        &(o.publish_rate, o.deliver_rate, o.ack_rate),
        |r| *r == (None, None, None),
    )?;

    // A slow consumer with prefetch 5 holds five messages: 20 stay ready.
    let consumer = Consumer::start(rabbit.amqp_port, queue, 5, Duration::from_secs(120))?;
    let (o, took) = probe.await_reading(&t, "20 ready, 1 consumer", |o| {
        o.backlog == 20 && o.consumers == Some(1)
    })?;
    eprintln!("rabbitmq_amqp: consumer seen after {took:.1?}: {o:?}");
    drop(consumer);
    probe.await_reading(&t, "25 ready, no consumer", |o| {
        o.backlog == 25 && o.consumers == Some(0)
    })?;
    rabbit.purge("/", queue)?;
    probe.await_backlog(&t, 0)?;
    Ok(())
}

/// Many queues, many reads, concurrent askers: one connection per (vhost, login).
fn one_connection_per_vhost_and_login(rabbit: &RabbitMq) -> Result<(), String> {
    let vhost = "amqp-sharing";
    rabbit.add_vhost(vhost)?;
    // A user of this trial's own, so connections are counted apart from other trials'.
    let (user, password) = ("amqp-share", "Share-Pass-30");
    rabbit.add_user(user, password, "")?;
    for v in ["/", vhost] {
        rabbit.set_permissions(v, user, ".*", ".*", ".*")?;
    }
    let mut targets = Vec::new();
    for (v, q, n) in [
        ("/", "amqp-share-a", 1),
        ("/", "amqp-share-b", 2),
        ("/", "amqp-share-c", 3),
        (vhost, "amqp-share-d", 4),
        (vhost, "amqp-share-e", 5),
    ] {
        rabbit.declare_queue(v, q)?;
        rabbit.publish(v, q, n)?;
        let mut t = target(&rabbit.amqp_url(), v, q);
        t.credentials = Credentials::new(user, password);
        targets.push((t, i64::try_from(n).unwrap_or(0)));
    }
    let probe = probe(TIMEOUT)?;
    let reader = Arc::new(AmqpReader::new(TIMEOUT));
    // Three rounds of 5 queues × 4 concurrent askers each.
    for _ in 0..3 {
        let results: Vec<Result<(i64, i64), String>> = probe.rt.block_on(async {
            let mut tasks = Vec::new();
            for (t, want) in &targets {
                for _ in 0..4 {
                    let reader = reader.clone();
                    let t = t.clone();
                    let want = *want;
                    tasks.push(tokio::spawn(async move {
                        reader
                            .observe(&t, Duration::ZERO)
                            .await
                            .map(|o| (o.backlog, want))
                            .map_err(|e| e.to_string())
                    }));
                }
            }
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.map_err(|e| e.to_string()).and_then(|r| r));
            }
            out
        });
        for r in results {
            let (got, want) = r?;
            expect("backlog", &got, |g| *g == want)?;
        }
    }
    let traffic = reader.traffic();
    expect("connections opened", &traffic.connections, |c| *c == 2)?;
    expect("passive declares", &traffic.declares, |d| *d == 60)?;
    expect("connections kept", &reader.connection_count(), |c| *c == 2)?;
    // The broker sees the same: two nerite connections of this user while the reader lives.
    wait_for(SETTLE, || {
        let n = rabbit.connections_of(user, CONNECTION_NAME)?;
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} nerite connections of {user} at the broker"))
        }
    })?;
    // Another login is another connection.
    rabbit.add_user("amqp-share-user", "Share-Pass-31", "")?;
    rabbit.set_permissions("/", "amqp-share-user", ".*", ".*", ".*")?;
    let mut other = targets[0].0.clone();
    other.credentials = Credentials::new("amqp-share-user", "Share-Pass-31");
    probe
        .rt
        .block_on(reader.observe(&other, Duration::ZERO))
        .map_err(|e| e.to_string())?;
    expect(
        "connections after a second login",
        &reader.traffic().connections,
        |c| *c == 3,
    )?;
    drop(probe);
    drop(reader);
    wait_for(SETTLE, || {
        let n = rabbit.connections_of(user, CONNECTION_NAME)?;
        if n == 0 {
            Ok(())
        } else {
            Err(format!(
                "{n} nerite connections of {user} left after the reader"
            ))
        }
    })?;
    Ok(())
}

fn wrong_password(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "amqp-wrong-password")?;
    let mut t = target(&rabbit.amqp_url(), "/", "amqp-wrong-password");
    t.credentials = Credentials::new("guest", "Wr0ng-Amqp-Secret-42");
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::Unauthorized { .. })
    })?;
    eprintln!("rabbitmq_amqp: wrong password: {e}");
    t.credentials = Credentials::new("nobody-amqp", "Wr0ng-Amqp-Secret-42");
    let e = probe.expect_error(&t)?;
    expect("error for an unknown user", &e, |e| {
        matches!(e, SourceError::Unauthorized { .. })
    })
}

fn unknown_vhost(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let t = target(&rabbit.amqp_url(), "no-such-amqp-vhost", "q");
    let e = probe.expect_error(&t)?;
    eprintln!("rabbitmq_amqp: unknown vhost: {e}");
    expect(
        "error",
        &e,
        |e| matches!(e, SourceError::VhostNotFound { vhost, .. } if vhost == "no-such-amqp-vhost"),
    )
}

/// The broker closes the channel on a passive declare of a missing queue; the next read, of a
/// queue that exists, opens a fresh channel on the same connection.
fn unknown_queue_then_fresh_channel(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "amqp-present")?;
    rabbit.publish("/", "amqp-present", 3)?;
    let missing = target(&rabbit.amqp_url(), "/", "no-such-amqp-queue");
    let present = target(&rabbit.amqp_url(), "/", "amqp-present");
    for _ in 0..3 {
        let e = probe.expect_error(&missing)?;
        expect(
            "error",
            &e,
            |e| matches!(e, SourceError::QueueNotFound { queue, .. } if queue == "no-such-amqp-queue"),
        )?;
        let o = probe.observe(&present).map_err(|e| e.to_string())?;
        expect("backlog after the closed channel", &o.backlog, |b| *b == 3)?;
    }
    eprintln!(
        "rabbitmq_amqp: unknown queue: {}",
        probe.expect_error(&missing)?
    );
    expect(
        "connections opened",
        &probe.source.traffic().connections,
        |c| *c == 1,
    )
}

fn user_without_vhost_access(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let vhost = "amqp-closed-vhost";
    rabbit.add_vhost(vhost)?;
    rabbit.declare_queue(vhost, "closed")?;
    rabbit.add_user("amqp-outsider", "Outsider-Amqp-99", "")?;
    let mut t = target(&rabbit.amqp_url(), vhost, "closed");
    t.credentials = Credentials::new("amqp-outsider", "Outsider-Amqp-99");
    let e = probe.expect_error(&t)?;
    eprintln!("rabbitmq_amqp: no vhost access: {e}");
    expect("error", &e, |e| matches!(e, SourceError::Forbidden { .. }))
}

/// A passive declare needs no permission on the queue: a user whose permissions on the vhost
/// match nothing reads it (what `docs/rabbitmq.md` recommends for the AMQP-only mode).
fn least_privilege_user(rabbit: &RabbitMq) -> Result<(), String> {
    let vhost = "amqp-privilege";
    rabbit.add_vhost(vhost)?;
    rabbit.declare_queue(vhost, "watched")?;
    rabbit.publish(vhost, "watched", 2)?;
    rabbit.add_user("amqp-reader", "Reader-Amqp-12", "")?;
    let mut t = target(&rabbit.amqp_url(), vhost, "watched");
    t.credentials = Credentials::new("amqp-reader", "Reader-Amqp-12");
    for (configure, write, read) in [("^$", "^$", "^$"), ("^$", "^$", ".*")] {
        rabbit.set_permissions(vhost, "amqp-reader", configure, write, read)?;
        // A new reader: a new connection, so no permission the broker cached for a channel.
        let probe = probe(TIMEOUT)?;
        let o = probe
            .observe(&t)
            .map_err(|e| format!("permissions {configure:?} {write:?} {read:?}: {e}"))?;
        expect("backlog", &o.backlog, |b| *b == 2)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The reader without the shared broker

const SECRET: &str = "Amqp-Net-Secret-1234";

fn nothing_listening() -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let [port] = free_ports::<1>()?;
    let mut t = target(&format!("amqp://127.0.0.1:{port}"), "/", "q");
    t.credentials = Credentials::new("guest", SECRET);
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::Unreachable { .. })
    })
}

fn silent_server() -> Result<(), String> {
    let timeout = Duration::from_millis(800);
    let probe = probe(timeout)?;
    // Connections complete in the kernel's backlog; nothing ever answers the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut t = target(&format!("amqp://127.0.0.1:{port}"), "/", "q");
    t.credentials = Credentials::new("guest", SECRET);
    let started = Instant::now();
    let e = probe.expect_error(&t)?;
    let took = started.elapsed();
    drop(listener);
    expect("error", &e, |e| matches!(e, SourceError::Timeout { .. }))?;
    expect("time to give up", &took, |d| {
        *d < timeout + Duration::from_millis(500)
    })
}

/// A private broker: stop it, the reader says Unreachable; start it again, the reader opens a
/// new connection and reads the durable queue as before.
fn reconnects_after_broker_restart() -> Result<(), String> {
    let rabbit = RabbitMq::start()?;
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "amqp-outage")?;
    rabbit.publish("/", "amqp-outage", 7)?;
    let t = target(&rabbit.amqp_url(), "/", "amqp-outage");
    probe.await_backlog(&t, 7)?;

    rabbit.stop()?;
    let e = probe.expect_error(&t)?;
    expect("error while stopped", &e, |e| {
        matches!(e, SourceError::Unreachable { .. })
    })?;
    eprintln!("rabbitmq_amqp: broker stopped: {e}");

    rabbit.start_again()?;
    wait_until(SETTLE, || rabbit.is_running())?;
    // The broker was killed (SIGKILL): whether the queue and its messages were on disk yet
    // is up to its flush timing, so the queue is declared and filled afresh.
    rabbit.declare_queue("/", "amqp-outage")?;
    rabbit.purge("/", "amqp-outage")?;
    rabbit.publish("/", "amqp-outage", 5)?;
    probe.await_backlog(&t, 5)?;
    expect(
        "connections opened",
        &probe.source.traffic().connections,
        |c| *c == 2,
    )
}

// ---------------------------------------------------------------------------------------------
// The operator

fn amqp_spec(rabbit: &RabbitMq, deployment: &str, vhost: &str, queue: &str, secret: &str) -> Value {
    json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment},
        "minReplicas": 1,
        "maxReplicas": 10,
        "source": {"rabbitmq": {
            "amqpUrl": rabbit.amqp_url(),
            "vhost": vhost,
            "queue": queue,
            "credentialsSecretRef": {"name": secret}
        }},
        "objective": {"backlogPerReplica": 100},
        "behavior": {
            "pollInterval": "1s",
            "scaleDown": {"stabilizationWindow": "5s"}
        }
    })
}

/// Two ScaledConsumers read through AMQP: 1,000 messages at 100/replica → 10, 300 → 3, with
/// the reason in the status; both share one connection; a purge scales back down; a redrive
/// request gets a condition saying why it cannot run.
async fn operator_scales(rabbit: Arc<RabbitMq>) -> Result<(), String> {
    let ns = "amqp-shop";
    let cluster = Cluster::fake(true).await?;
    cluster.namespace(ns).await?;
    // A user of this trial's own, so its connections are counted apart from other trials'.
    let (user, password) = ("amqp-shop", "Shop-Pass-41");
    cluster.secret(ns, "rabbit-creds", user, password).await?;
    let r = rabbit.clone();
    blocking(move || {
        r.add_user(user, password, "")?;
        r.set_permissions("/", user, ".*", ".*", ".*")
    })
    .await??;
    cluster.deployment(ns, "orders-consumer", 1).await?;
    cluster.deployment(ns, "invoices-consumer", 1).await?;
    for q in ["amqp-orders", "amqp-invoices"] {
        let r = rabbit.clone();
        blocking(move || r.declare_queue("/", q)).await??;
    }
    for (name, deploy, queue) in [
        ("orders", "orders-consumer", "amqp-orders"),
        ("invoices", "invoices-consumer", "amqp-invoices"),
    ] {
        cluster
            .scaled_consumer(
                ns,
                name,
                amqp_spec(&rabbit, deploy, "/", queue, "rabbit-creds"),
            )
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    let _operator = cluster.start_operator(ns);
    eventually(
        "Ready=True on the idle queues",
        Duration::from_secs(30),
        || async {
            for name in ["orders", "invoices"] {
                let s = cluster.status(ns, name).await?;
                if condition(&s, "Ready").is_none_or(|c| c.status != "True") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    let r = rabbit.clone();
    blocking(move || r.publish("/", "amqp-orders", 1000)).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "amqp-invoices", 300)).await??;
    let published = Instant::now();
    eventually(
        "orders at 10, invoices at 3",
        Duration::from_secs(30),
        || async {
            let orders = cluster.replicas(ns, "orders-consumer").await?;
            let invoices = cluster.replicas(ns, "invoices-consumer").await?;
            Ok((orders == 10 && invoices == 3).then_some(()))
        },
    )
    .await?;
    println!(
        "  scaled {:.1}s after publishing",
        published.elapsed().as_secs_f64()
    );
    // The first reading may come while the last publishes are still being enqueued (954 of
    // 1000 is 10 replicas too): wait for the reason of a reading of all of them.
    let s = eventually(
        "status to explain the scale-up from a backlog of 1000",
        Duration::from_secs(20),
        || async {
            let s = cluster.status(ns, "orders").await?;
            let full = s
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("backlog 1000"));
            Ok((s.desired_replicas == Some(10) && full).then_some(s))
        },
    )
    .await?;
    let reason = s.reason.clone().unwrap_or_default();
    if !(reason.contains("backlog 1000")
        && reason.contains("100/replica")
        && reason.contains("→ 10"))
    {
        return Err(format!("reason does not explain the decision: {reason:?}"));
    }
    println!("  status.reason: {reason}");
    let reachable = condition(&s, "SourceReachable").ok_or("no SourceReachable condition")?;
    if !(reachable.status == "True" && reachable.message.contains("through AMQP")) {
        return Err(format!(
            "SourceReachable does not say how it read: {reachable:?}"
        ));
    }
    println!("  SourceReachable: {}", reachable.message);
    let last = s.last_observation.as_ref().ok_or("no lastObservation")?;
    if last.backlog != 1000 || last.ready != Some(1000) || last.unacked.is_some() {
        return Err(format!("lastObservation is not ready-only: {last:?}"));
    }
    // One connection serves both objects (same endpoint, vhost and login).
    let r = rabbit.clone();
    blocking(move || {
        wait_for(SETTLE, || {
            let n = r.connections_of(user, CONNECTION_NAME)?;
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} nerite connections of {user}, not 1"))
            }
        })
    })
    .await??;
    println!("  one nerite connection at the broker serves both objects");

    // A redrive request cannot run without the management API: a condition says so.
    cluster
        .patch_scaled_consumer(
            ns,
            "orders",
            json!({"metadata": {"annotations": {"nerite.dev/redrive-request": "r1"}}}),
        )
        .await?;
    let c = eventually("Redrive=False", Duration::from_secs(20), || async {
        let s = cluster.status(ns, "orders").await?;
        Ok(condition(&s, "Redrive")
            .filter(|c| c.status == "False")
            .cloned())
    })
    .await?;
    if c.reason != "NeedsManagementApi" || !c.message.contains("managementUrl") {
        return Err(format!("unclear redrive refusal: {c:?}"));
    }
    println!("  Redrive: {}: {}", c.reason, c.message);

    let r = rabbit.clone();
    blocking(move || r.purge("/", "amqp-orders")).await??;
    eventually("orders back to 1", Duration::from_secs(40), || async {
        Ok((cluster.replicas(ns, "orders-consumer").await? == 1).then_some(()))
    })
    .await?;
    Ok(())
}

/// Each broken object gets a clear SourceReachable=False condition and keeps its count.
async fn operator_bad_inputs(rabbit: Arc<RabbitMq>) -> Result<(), String> {
    let ns = "amqp-bad";
    let cluster = Cluster::fake(true).await?;
    cluster.namespace(ns).await?;
    cluster.secret(ns, "good", "guest", "guest").await?;
    cluster
        .secret(ns, "wrong-password", "guest", "not-the-amqp-password")
        .await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", "amqp-bad-inputs")).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "amqp-bad-inputs", 500)).await??;
    let [closed_port] = free_ports::<1>()?;

    let mut cases: Vec<(&str, Value, &str)> = vec![
        (
            "wrong-password",
            amqp_spec(
                &rabbit,
                "w-password",
                "/",
                "amqp-bad-inputs",
                "wrong-password",
            ),
            "Unauthorized",
        ),
        (
            "unknown-queue",
            amqp_spec(&rabbit, "w-queue", "/", "no-such-amqp-queue", "good"),
            "QueueNotFound",
        ),
        (
            "unknown-vhost",
            amqp_spec(
                &rabbit,
                "w-vhost",
                "no-such-amqp-vhost",
                "amqp-bad-inputs",
                "good",
            ),
            "VhostNotFound",
        ),
    ];
    let mut nothing = amqp_spec(&rabbit, "w-closed", "/", "amqp-bad-inputs", "good");
    nothing["source"]["rabbitmq"]["amqpUrl"] = json!(format!("amqp://127.0.0.1:{closed_port}"));
    cases.push(("nothing-listening", nothing, "Unreachable"));

    // Every workload runs 4 replicas; the queue's 500 messages would ask for 5.
    for (_, spec, _) in &cases {
        let deploy = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        cluster.deployment(ns, deploy, 4).await?;
    }
    cluster.deployment(ns, "healthy", 4).await?;
    for (name, spec, _) in &cases {
        cluster
            .scaled_consumer(ns, name, spec.clone())
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    cluster
        .scaled_consumer(
            ns,
            "healthy",
            amqp_spec(&rabbit, "healthy", "/", "amqp-bad-inputs", "good"),
        )
        .await
        .map_err(|e| format!("healthy: {e}"))?;
    let _operator = cluster.start_operator(ns);

    eventually(
        "the healthy object at 5",
        Duration::from_secs(30),
        || async { Ok((cluster.replicas(ns, "healthy").await? == 5).then_some(())) },
    )
    .await?;
    for (name, spec, reason) in &cases {
        let s = eventually(
            &format!("{name}: SourceReachable=False/{reason} after 3 failures"),
            Duration::from_secs(40),
            || async {
                let s = cluster.status(ns, name).await?;
                let failing = condition(&s, "SourceReachable")
                    .is_some_and(|c| c.status == "False" && c.reason == *reason);
                Ok((failing && s.consecutive_failures.unwrap_or(0) >= 3).then_some(s))
            },
        )
        .await?;
        let c = condition(&s, "SourceReachable").ok_or("no SourceReachable")?;
        if c.message.is_empty() || c.message.contains("not-the-amqp-password") {
            return Err(format!(
                "{name}: unclear or leaking message {:?}",
                c.message
            ));
        }
        let ready = condition(&s, "Ready").ok_or("no Ready")?;
        if ready.status != "False" || ready.reason != "SourceUnavailable" {
            return Err(format!("{name}: Ready is {ready:?}"));
        }
        let reason_text = s.reason.clone().unwrap_or_default();
        if !reason_text.contains("holding 4") {
            return Err(format!(
                "{name}: status.reason does not hold: {reason_text:?}"
            ));
        }
        println!("  {name}: SourceReachable=False {reason}: {}", c.message);
        let events = cluster.events_for(ns, name).await?;
        if !events
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(*reason))
        {
            return Err(format!("{name}: no Warning event with reason {reason}"));
        }
        let deploy = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        let n = cluster.replicas(ns, deploy).await?;
        if n != 4 {
            return Err(format!(
                "{name}: {deploy} has {n} replicas, not the 4 it had"
            ));
        }
    }
    Ok(())
}

/// With schema validation on, the API server refuses AMQP-only specs that cannot work, with
/// the CEL rules' messages.
async fn admission() -> Result<(), String> {
    let ns = "amqp-admission";
    let cluster = Cluster::fake(true).await?;
    let base = json!({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 3,
        "source": {"rabbitmq": {"amqpUrl": "amqp://r:5672", "queue": "q",
                    "credentialsSecretRef": {"name": "s"}}},
        "objective": {"backlogPerReplica": 100}
    });
    let mut both = base.clone();
    both["source"]["rabbitmq"]["managementUrl"] = json!("http://r:15672");
    let mut neither = base.clone();
    if let Some(r) = neither["source"]["rabbitmq"].as_object_mut() {
        r.remove("amqpUrl");
    }
    let mut prefetch = base.clone();
    prefetch["source"]["rabbitmq"]["prefetch"] = json!({"mode": "Recommend"});
    let mut dead_letter = base.clone();
    dead_letter["source"]["rabbitmq"]["deadLetter"] = json!({"redrive": {"requestId": "r1"}});
    let mut http = base.clone();
    http["source"]["rabbitmq"]["amqpUrl"] = json!("http://r:15672");
    for (name, spec, message) in [
        (
            "both",
            both,
            "exactly one of managementUrl and amqpUrl must be set",
        ),
        (
            "neither",
            neither,
            "exactly one of managementUrl and amqpUrl must be set",
        ),
        ("prefetch", prefetch, "prefetch needs managementUrl"),
        (
            "dead-letter",
            dead_letter,
            "deadLetter (dead-lettering and redrive) needs managementUrl",
        ),
        ("http", http, "amqpUrl must be an amqp:// or amqps:// URL"),
    ] {
        match cluster.raw_scaled_consumer(ns, name, spec).await {
            Err(e) if e.contains(message) => println!("  {name}: refused: {message}"),
            other => {
                return Err(format!(
                    "{name}: expected a refusal with {message:?}, got {other:?}"
                ));
            }
        }
    }
    cluster
        .raw_scaled_consumer(ns, "fine", base)
        .await
        .map_err(|e| format!("an AMQP-only spec was refused: {e}"))
}
