//! The RabbitMQ source against a real broker.
//!
//! Every trial uses its own queue (and vhost or user where it needs one), so they run in
//! parallel on the shared broker. The outage trial starts a private broker.
//!
//! Not covered here: unacknowledged messages. The management API can only get-and-ack or
//! get-and-requeue, so without an AMQP client no delivery stays unacknowledged; the
//! `include_unacked` counting rule is covered by the source's unit tests on a recorded answer.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use nerite::brokers::rabbitmq::{ManagementApi, RabbitMqTarget};
use nerite::core::error::SourceError;
use nerite::core::observation::Credentials;

use crate::support::probe::Probe;
use crate::support::rabbitmq::{QueueKind, RabbitMq, free_ports, wait_for, wait_until};
use crate::support::{Env, expect};

/// Statistics settle within 1–2 s with the test broker's settings; leave room for a busy machine.
const SETTLE: Duration = Duration::from_secs(20);
/// The source's timeout in trials that expect an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A trial body that uses the shared broker.
type SharedTrial = fn(&RabbitMq) -> Result<(), String>;

pub fn trials(env: &Env) -> Vec<Trial> {
    let shared: [(&str, SharedTrial); 11] = [
        ("rabbitmq_source::depth_classic", depth_classic),
        ("rabbitmq_source::depth_quorum", depth_quorum),
        ("rabbitmq_source::depth_thousand", depth_thousand),
        ("rabbitmq_source::rates_after_traffic", rates_after_traffic),
        ("rabbitmq_source::encoded_names", encoded_names),
        ("rabbitmq_source::wrong_password", wrong_password),
        ("rabbitmq_source::unknown_vhost", unknown_vhost),
        ("rabbitmq_source::unknown_queue", unknown_queue),
        ("rabbitmq_source::monitoring_user", monitoring_user),
        ("rabbitmq_source::user_without_tag", user_without_tag),
        (
            "rabbitmq_source::user_without_vhost_access",
            user_without_vhost_access,
        ),
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
    trials.extend([
        Trial::test("rabbitmq_source::nothing_listening", || {
            nothing_listening().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_source::unknown_host", || {
            unknown_host().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_source::silent_server", || {
            silent_server().map_err(Failed::from)
        }),
        Trial::test("rabbitmq_source::broker_outage", || {
            broker_outage().map_err(Failed::from)
        }),
    ]);
    trials
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The management-API source with this timeout, driven from a blocking trial.
fn probe(timeout: Duration) -> Result<Probe<ManagementApi>, String> {
    Probe::new(ManagementApi::new(timeout))
}

fn target(url: &str, vhost: &str, queue: &str) -> RabbitMqTarget {
    RabbitMqTarget {
        management_url: url.to_owned(),
        vhost: vhost.to_owned(),
        queue: queue.to_owned(),
        include_unacked: true,
        credentials: Credentials::new("guest", "guest"),
    }
}

// ---------------------------------------------------------------------------------------------
// Trials on the shared broker

fn depth(rabbit: &RabbitMq, queue: &str, kind: QueueKind) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue_of("/", queue, kind)?;
    let mut t = target(&rabbit.management_url(), "/", queue);
    probe.await_backlog(&t, 0)?;

    let sent = Instant::now();
    rabbit.publish("/", queue, 25)?;
    let (o, lag) = probe.await_backlog(&t, 25)?;
    eprintln!(
        "rabbitmq: {kind:?} queue: depth visible {:.1?} after publishing (publish took {:.1?})",
        lag,
        sent.elapsed() - lag
    );
    expect("ready after publish", &o.ready, |r| *r == Some(25))?;
    expect("unacked after publish", &o.unacked, |u| *u == Some(0))?;
    expect("consumers", &o.consumers, |c| *c == Some(0))?;

    let got = rabbit.get("/", queue, 10)?;
    expect("messages got", &got, |g| *g == 10)?;
    probe.await_backlog(&t, 15)?;
    t.include_unacked = false;
    let (o, _) = probe.await_backlog(&t, 15)?;
    expect("ready after get", &o.ready, |r| *r == Some(15))?;

    rabbit.purge("/", queue)?;
    probe.await_backlog(&t, 0)?;
    Ok(())
}

fn depth_classic(rabbit: &RabbitMq) -> Result<(), String> {
    depth(rabbit, "depth-classic", QueueKind::Classic)
}

fn depth_quorum(rabbit: &RabbitMq) -> Result<(), String> {
    depth(rabbit, "depth-quorum", QueueKind::Quorum)
}

fn depth_thousand(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let queue = "depth-thousand";
    rabbit.declare_queue("/", queue)?;
    let t = target(&rabbit.management_url(), "/", queue);
    let started = Instant::now();
    rabbit.publish("/", queue, 1000)?;
    let published = started.elapsed();
    let (_, lag) = probe.await_backlog(&t, 1000)?;
    eprintln!(
        "rabbitmq: published 1000 messages in {published:.1?}; depth visible {lag:.1?} later"
    );
    let got = rabbit.get("/", queue, 400)?;
    expect("messages got", &got, |g| *g == 400)?;
    probe.await_backlog(&t, 600)?;
    Ok(())
}

fn rates_after_traffic(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let queue = "rates";
    rabbit.declare_queue("/", queue)?;
    let t = target(&rabbit.management_url(), "/", queue);
    let (idle, _) = probe.await_backlog(&t, 0)?;
    expect("publish rate before traffic", &idle.publish_rate, |r| {
        r.is_none_or(|v| v == 0.0)
    })?;

    // Keep traffic flowing until the rates show it.
    let (o, took) = wait_for(SETTLE, || {
        rabbit.publish("/", queue, 5)?;
        rabbit.get("/", queue, 5)?;
        let o = probe.observe(&t).map_err(|e| e.to_string())?;
        let positive = |r: Option<f64>| r.is_some_and(|v| v > 0.0);
        // Gets through the management API acknowledge without counting toward the ack rate
        // (that takes a consumer), so the ack rate only has to be present.
        if positive(o.publish_rate) && positive(o.deliver_rate) && o.ack_rate.is_some() {
            Ok(o)
        } else {
            Err(format!(
                "rates publish {:?} deliver {:?} ack {:?}",
                o.publish_rate, o.deliver_rate, o.ack_rate
            ))
        }
    })?;
    eprintln!(
        "rabbitmq: rates publish {:?} deliver {:?} ack {:?} after {took:.1?} of traffic",
        o.publish_rate, o.deliver_rate, o.ack_rate
    );
    Ok(())
}

fn encoded_names(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let vhost = "team/a b%";
    let queue = "orders.ü #1?x=y";
    rabbit.add_vhost(vhost)?;
    rabbit.declare_queue(vhost, queue)?;
    rabbit.publish(vhost, queue, 3)?;
    let t = target(&rabbit.management_url(), vhost, queue);
    probe.await_backlog(&t, 3)?;
    Ok(())
}

fn wrong_password(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "wrong-password")?;
    let mut t = target(&rabbit.management_url(), "/", "wrong-password");
    t.credentials = Credentials::new("guest", "Wr0ng-Secret-42");
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::Unauthorized { .. })
    })?;
    // An unknown user is the same failure.
    t.credentials = Credentials::new("nobody", "Wr0ng-Secret-42");
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::Unauthorized { .. })
    })
}

fn unknown_vhost(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let t = target(&rabbit.management_url(), "no-such-vhost", "q");
    let e = probe.expect_error(&t)?;
    expect(
        "error",
        &e,
        |e| matches!(e, SourceError::VhostNotFound { vhost, .. } if vhost == "no-such-vhost"),
    )
}

fn unknown_queue(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let t = target(&rabbit.management_url(), "/", "no-such-queue");
    let e = probe.expect_error(&t)?;
    expect(
        "error",
        &e,
        |e| matches!(e, SourceError::QueueNotFound { queue, .. } if queue == "no-such-queue"),
    )
}

/// The least a user needs: the monitoring tag and any permission on the vhost. Also checks
/// the vhost/queue distinction works without the administrator tag.
fn monitoring_user(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let vhost = "monitoring-vhost";
    rabbit.add_vhost(vhost)?;
    rabbit.declare_queue(vhost, "watched")?;
    rabbit.publish(vhost, "watched", 4)?;
    rabbit.add_user("nerite-monitor", "M0nitor-Pass-77", "monitoring")?;
    rabbit.set_permissions(vhost, "nerite-monitor", "", "", "")?;
    let creds = Credentials::new("nerite-monitor", "M0nitor-Pass-77");

    let mut t = target(&rabbit.management_url(), vhost, "watched");
    t.credentials = creds.clone();
    probe.await_backlog(&t, 4)?;

    t.queue = "missing".into();
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::QueueNotFound { .. })
    })?;

    t.vhost = "missing-vhost".into();
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::VhostNotFound { .. })
    })
}

fn user_without_tag(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "untagged")?;
    rabbit.add_user("nerite-untagged", "Untagged-Pass-88", "")?;
    rabbit.set_permissions("/", "nerite-untagged", ".*", ".*", ".*")?;
    let mut t = target(&rabbit.management_url(), "/", "untagged");
    t.credentials = Credentials::new("nerite-untagged", "Untagged-Pass-88");
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| matches!(e, SourceError::Forbidden { .. }))
}

fn user_without_vhost_access(rabbit: &RabbitMq) -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let vhost = "closed-vhost";
    rabbit.add_vhost(vhost)?;
    rabbit.declare_queue(vhost, "closed")?;
    rabbit.add_user("nerite-outsider", "Outsider-Pass-99", "monitoring")?;
    let mut t = target(&rabbit.management_url(), vhost, "closed");
    t.credentials = Credentials::new("nerite-outsider", "Outsider-Pass-99");
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| matches!(e, SourceError::Forbidden { .. }))
}

// ---------------------------------------------------------------------------------------------
// Trials without the shared broker

const SECRET: &str = "Net-Secret-1234";

fn with_secret(mut t: RabbitMqTarget) -> RabbitMqTarget {
    t.credentials = Credentials::new("guest", SECRET);
    t
}

fn nothing_listening() -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let [port] = free_ports::<1>()?;
    let t = with_secret(target(&format!("http://127.0.0.1:{port}"), "/", "q"));
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| {
        matches!(e, SourceError::Unreachable { .. })
    })
}

fn unknown_host() -> Result<(), String> {
    let probe = probe(TIMEOUT)?;
    let t = with_secret(target("http://nonexistent.invalid:15672", "/", "q"));
    let e = probe.expect_error(&t)?;
    expect("error", &e, |e| matches!(e, SourceError::Dns { .. }))
}

fn silent_server() -> Result<(), String> {
    let timeout = Duration::from_millis(800);
    let probe = probe(timeout)?;
    // Connections complete in the kernel's backlog; nothing ever reads or answers.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let t = with_secret(target(&format!("http://127.0.0.1:{port}"), "/", "q"));
    let started = Instant::now();
    let e = probe.expect_error(&t)?;
    let took = started.elapsed();
    drop(listener);
    expect("error", &e, |e| matches!(e, SourceError::Timeout { .. }))?;
    expect("time to give up", &took, |d| {
        *d < timeout + Duration::from_millis(500)
    })
}

/// A private broker: stop it, the source says Unreachable; start it again, the durable queue
/// and its persistent messages read as before.
fn broker_outage() -> Result<(), String> {
    let rabbit = Arc::new(RabbitMq::start()?);
    let probe = probe(TIMEOUT)?;
    rabbit.declare_queue("/", "outage")?;
    rabbit.publish("/", "outage", 7)?;
    let t = target(&rabbit.management_url(), "/", "outage");
    probe.await_backlog(&t, 7)?;

    rabbit.stop()?;
    expect("running after stop", &rabbit.is_running(), |r| !*r)?;
    let e = probe.expect_error(&t)?;
    expect("error while stopped", &e, |e| {
        matches!(e, SourceError::Unreachable { .. })
    })?;

    let restart = rabbit.start_again()?;
    wait_until(SETTLE, || rabbit.is_running())?;
    let (_, lag) = probe.await_backlog(&t, 7)?;
    eprintln!(
        "rabbitmq: restart took {restart:.1?}, depth readable {lag:.1?} after (cold start {:.1?})",
        rabbit.cold_start
    );
    Ok(())
}
