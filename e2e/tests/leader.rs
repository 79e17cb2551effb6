//! Two (then three) `nerite run` processes against the fake API server and a real RabbitMQ:
//! exactly one acts; when the leader is killed another takes over within the lease duration
//! and scales exactly once; a leader stopped with SIGTERM hands over at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use libtest_mimic::{Failed, Trial};
use serde_json::json;

use crate::support::Env;
use crate::support::cluster::{Cluster, blocking, eventually};
use crate::support::ops::{OperatorProcess, Sample, http_get, metric};
use crate::support::rabbitmq::RabbitMq;

const NS: &str = "ha";
/// A second watched namespace (`--namespace ha,ha-two`).
const NS2: &str = "ha-two";
const LEASE_NS: &str = "nerite-system";
const LEASE: &str = "nerite-leader";
/// Short lease for the test (deployments use 15 s).
const LEASE_DURATION: Duration = Duration::from_secs(3);
/// How long a leader acts without renewing (`--renew-deadline 1500ms`).
const RENEW_DEADLINE: Duration = Duration::from_millis(1500);
/// How often the Lease is read (`--retry-period 500ms`).
const RETRY_PERIOD: Duration = Duration::from_millis(500);

pub fn trials(env: &Env) -> Vec<Trial> {
    let e = env.clone();
    vec![Trial::test(
        "leader::one_replica_acts_and_a_new_leader_takes_over",
        move || {
            let rabbit = e.rabbitmq()?;
            run(async move { hand_over(&rabbit).await })
        },
    )]
}

fn run(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    rt.block_on(fut).map_err(Failed::from)
}

/// A private copy of the `nerite` binary cargo built for this test run. Copying keeps a
/// build from another checkout that shares `CARGO_TARGET_DIR` from replacing it mid-trial;
/// the flag check catches one that replaced it before.
fn nerite_bin(dir: &Path) -> Result<PathBuf, String> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_nerite"));
    let copy = dir.join("nerite");
    std::fs::copy(&built, &copy).map_err(|e| format!("copy {}: {e}", built.display()))?;
    let help = std::process::Command::new(&copy)
        .args(["run", "--help"])
        .output()
        .map_err(|e| format!("{}: {e}", copy.display()))?;
    if !String::from_utf8_lossy(&help.stdout).contains("--leader-elect") {
        return Err(format!(
            "{} has no --leader-elect: it was rebuilt from another checkout sharing the target directory; build again",
            built.display()
        ));
    }
    Ok(copy)
}

fn start(kubeconfig: &Path, identity: &str, dir: &Path) -> Result<OperatorProcess, String> {
    OperatorProcess::start(
        &dir.join("nerite"),
        kubeconfig,
        identity,
        &[
            "--namespace",
            "ha,ha-two",
            "--leader-elect",
            "--lease-name",
            LEASE,
            "--lease-namespace",
            LEASE_NS,
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "1500ms",
            "--retry-period",
            "500ms",
            "--source-timeout",
            "2",
            "--log-format",
            "json",
        ],
        dir,
    )
}

async fn scrape(p: &OperatorProcess) -> Result<Vec<Sample>, String> {
    let url = p.url("/metrics");
    let (status, body) = blocking(move || http_get(&url)).await??;
    if status != 200 {
        return Err(format!("{}: /metrics answered {status}", p.identity));
    }
    Ok(crate::support::ops::parse_metrics(&body))
}

async fn lease(cluster: &Cluster) -> Result<Option<Lease>, String> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), LEASE_NS);
    api.get_opt(LEASE).await.map_err(|e| e.to_string())
}

fn holder(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

async fn wait_holder(cluster: &Cluster, want: &str, timeout: Duration) -> Result<Lease, String> {
    eventually(&format!("{want} to hold the Lease"), timeout, || async {
        Ok(lease(cluster)
            .await?
            .filter(|l| holder(l).as_deref() == Some(want)))
    })
    .await
}

/// Seconds from `since` to the Lease's acquireTime (written by the new holder).
fn acquired_after(l: &Lease, since: Timestamp) -> Result<f64, String> {
    let at = l
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.as_ref())
        .ok_or("Lease has no acquireTime")?
        .0;
    Ok(at.duration_since(since).as_secs_f64())
}

async fn generation(cluster: &Cluster, name: &str) -> Result<i64, String> {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), NS);
    let d = api.get(name).await.map_err(|e| e.to_string())?;
    d.metadata.generation.ok_or_else(|| "no generation".into())
}

/// `Scaled` Events as action (`Scale1To3`) → the instances that reported it.
async fn scaled_by(cluster: &Cluster) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in cluster.events_for(NS, "jobs").await? {
        if e.reason.as_deref() == Some("Scaled") {
            by.entry(e.action.clone().unwrap_or_default())
                .or_default()
                .push(e.reporting_instance.clone().unwrap_or_default());
        }
    }
    Ok(by)
}

async fn hand_over(rabbit: &Arc<RabbitMq>) -> Result<(), String> {
    let cluster = Cluster::fake(true).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    nerite_bin(dir.path())?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        cluster.kubeconfig_yaml().ok_or("no kubeconfig")?,
    )
    .map_err(|e| e.to_string())?;
    cluster.namespace(NS).await?;
    cluster.namespace(LEASE_NS).await?;
    cluster.secret(NS, "rabbit-creds", "guest", "guest").await?;
    cluster.deployment(NS, "worker", 1).await?;
    let r = rabbit.clone();
    blocking(move || r.declare_queue("/", "ha-jobs")).await??;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "ha-jobs", 300)).await??;
    // The management API's counts lag the publishes: start the replicas only once it shows
    // all 300, so the first reading asks for 3 replicas at once (one Scaled Event).
    let r = rabbit.clone();
    blocking(move || {
        crate::support::rabbitmq::wait_for(Duration::from_secs(30), || {
            match r.depth("/", "ha-jobs")? {
                300 => Ok(()),
                n => Err(format!("{n} of 300 messages counted")),
            }
        })
    })
    .await??;
    let spec = json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
                "minReplicas": 1,
                "maxReplicas": 10,
                "source": {"rabbitmq": {
                    "managementUrl": rabbit.management_url(),
                    "queue": "ha-jobs",
                    "credentialsSecretRef": {"name": "rabbit-creds"}
                }},
                "objective": {"backlogPerReplica": 100},
                "behavior": {"pollInterval": "1s"}
    });
    for ns in [NS, NS2] {
        if ns != NS {
            cluster.namespace(ns).await?;
            cluster.secret(ns, "rabbit-creds", "guest", "guest").await?;
            cluster.deployment(ns, "worker", 1).await?;
        }
        cluster
            .scaled_consumer(ns, "jobs", spec.clone())
            .await
            .map_err(|e| e.to_string())?;
    }

    let mut a = start(&kubeconfig, "nerite-a", dir.path())?;
    let mut b = start(&kubeconfig, "nerite-b", dir.path())?;
    let res = two_replicas(&cluster, rabbit, &mut a, &mut b, &kubeconfig, dir.path()).await;
    if res.is_err() {
        for p in [&a, &b] {
            eprintln!("--- {} output ---\n{}", p.identity, p.log_tail(30));
        }
    }
    res
}

async fn two_replicas(
    cluster: &Cluster,
    rabbit: &Arc<RabbitMq>,
    a: &mut OperatorProcess,
    b: &mut OperatorProcess,
    kubeconfig: &Path,
    dir: &Path,
) -> Result<(), String> {
    // Exactly one acts: 300 messages → 3 replicas, all by the Lease holder, in both
    // watched namespaces.
    eventually("scale to 3", Duration::from_secs(40), || async {
        Ok((cluster.replicas(NS, "worker").await? == 3
            && cluster.replicas(NS2, "worker").await? == 3)
            .then_some(()))
    })
    .await?;
    let l = lease(cluster).await?.ok_or("no Lease")?;
    let leader_id = holder(&l).ok_or("the Lease has no holder")?;
    let (leader, follower) = if leader_id == a.identity {
        (a, b)
    } else {
        (b, a)
    };
    for p in [&*leader, &*follower] {
        let url = p.url("/healthz");
        let (status, _) = blocking(move || http_get(&url)).await??;
        if status != 200 {
            return Err(format!("{}/healthz: {status}", p.identity));
        }
        // Readiness follows the first list of every watched namespace, which a replica may
        // finish after another one has already acted.
        eventually(
            &format!("{}/readyz to answer 200", p.identity),
            Duration::from_secs(20),
            || async {
                let url = p.url("/readyz");
                Ok(blocking(move || http_get(&url))
                    .await?
                    .ok()
                    .filter(|(s, _)| *s == 200)
                    .map(|_| ()))
            },
        )
        .await?;
    }
    // The follower observes (its /metrics shows the backlog) but never acts.
    let fm = eventually(
        "the follower to observe the backlog",
        Duration::from_secs(20),
        || async {
            let m = scrape(follower).await?;
            let seen = metric(
                &m,
                "nerite_observed_backlog",
                &[("namespace", NS), ("name", "jobs")],
            );
            Ok((seen == Some(300.0)).then_some(m))
        },
    )
    .await?;
    let lm = scrape(leader).await?;
    let actions = |m: &[Sample]| {
        m.iter()
            .filter(|s| s.name == "nerite_scale_actions_total")
            .filter(|s| s.labels.get("namespace").map(String::as_str) == Some(NS))
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0
    };
    println!(
        "  leader {}: nerite_leader {:?}, scale actions {}; follower {}: nerite_leader {:?}, scale actions {}",
        leader.identity,
        metric(&lm, "nerite_leader", &[]),
        actions(&lm),
        follower.identity,
        metric(&fm, "nerite_leader", &[]),
        actions(&fm),
    );
    if metric(&lm, "nerite_leader", &[]) != Some(1.0)
        || metric(&fm, "nerite_leader", &[]) != Some(0.0)
        // The leader may take more than one step when the broker's statistics catch up in
        // stages; what matters is that only it acts.
        || actions(&lm) < 1.0
        || actions(&fm) != 0.0
    {
        return Err("expected exactly one acting replica (see the line above)".into());
    }
    let by = scaled_by(cluster).await?;
    if by.get("Scale1To3") != Some(&vec![leader.identity.clone()]) || by.len() != 1 {
        return Err(format!(
            "Scaled events should come from {} only: {by:?}",
            leader.identity
        ));
    }
    let gen_before = generation(cluster, "worker").await?;

    // Kill the leader; the backlog doubles while nobody leads.
    let killed_at = Timestamp::now();
    leader.kill()?;
    let r = rabbit.clone();
    blocking(move || r.publish("/", "ha-jobs", 300)).await??;
    let l = wait_holder(cluster, &follower.identity, Duration::from_secs(15)).await?;
    let took = acquired_after(&l, killed_at)?;
    println!(
        "  killed {}; {} acquired the Lease {took:.2}s later (lease duration {}s)",
        leader.identity,
        follower.identity,
        LEASE_DURATION.as_secs()
    );
    // A standby counts the Lease from the first read that showed its last renewal, so it
    // takes over within the lease duration plus one retry period (and one API call).
    let bound = (LEASE_DURATION + RETRY_PERIOD * 2).as_secs_f64();
    if took > bound {
        return Err(format!(
            "take-over took {took:.2}s, longer than the lease duration + 2 retry periods ({bound}s)"
        ));
    }
    if took < RENEW_DEADLINE.as_secs_f64() {
        return Err(format!(
            "take-over after {took:.2}s: before the renew deadline of the killed leader ran out"
        ));
    }
    eventually("scale to 6", Duration::from_secs(30), || async {
        Ok((cluster.replicas(NS, "worker").await? == 6).then_some(()))
    })
    .await?;
    // No double scaling: one more write to the Deployment, one Event, by the new leader.
    let gen_after = generation(cluster, "worker").await?;
    let by = scaled_by(cluster).await?;
    if gen_after != gen_before + 1 {
        return Err(format!(
            "expected exactly one scale write during the hand-over: generation {gen_before} → {gen_after}"
        ));
    }
    if by.get("Scale3To6") != Some(&vec![follower.identity.clone()]) || by.len() != 2 {
        return Err(format!(
            "the scale-up after the hand-over should be reported once, by {}: {by:?}",
            follower.identity
        ));
    }
    let m = scrape(follower).await?;
    if metric(&m, "nerite_leader", &[]) != Some(1.0)
        || metric(&m, "nerite_leader_acquisitions_total", &[]) != Some(1.0)
        || actions(&m) != 1.0
    {
        return Err(format!(
            "the new leader's metrics do not show the take-over: {:?}",
            m.iter()
                .filter(|s| s.name.starts_with("nerite_leader") || s.name.contains("actions"))
                .collect::<Vec<_>>()
        ));
    }

    // Graceful: SIGTERM releases the Lease, so a standby takes over at once.
    let mut c = start(kubeconfig, "nerite-c", dir)?;
    let res = graceful(cluster, follower, &c).await;
    if res.is_err() {
        eprintln!("--- {} output ---\n{}", c.identity, c.log_tail(30));
    }
    let _ = c.kill();
    res
}

async fn graceful(
    cluster: &Cluster,
    leader: &mut OperatorProcess,
    standby: &OperatorProcess,
) -> Result<(), String> {
    eventually(
        "the standby to be ready",
        Duration::from_secs(20),
        || async {
            let url = standby.url("/readyz");
            Ok(blocking(move || http_get(&url))
                .await?
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        },
    )
    .await?;
    let asked = Timestamp::now();
    let pid = leader.pid();
    // The stopping leader releases the Lease through the API server running on this runtime:
    // wait for it without holding a runtime thread.
    let status = tokio::task::block_in_place(|| leader.terminate(Duration::from_secs(15)))?;
    if status != Some(0) {
        return Err(format!(
            "{} (pid {pid:?}) exited with {status:?} after SIGTERM",
            leader.identity
        ));
    }
    let l = wait_holder(cluster, &standby.identity, Duration::from_secs(10)).await?;
    let took = acquired_after(&l, asked)?;
    println!(
        "  SIGTERM to {}: exit 0, {} acquired the released Lease {took:.2}s later",
        leader.identity, standby.identity
    );
    if took >= LEASE_DURATION.as_secs_f64() {
        return Err(format!(
            "after a graceful stop the hand-over took {took:.2}s: the Lease was not released"
        ));
    }
    if !leader.log_tail(50).contains("released the leader Lease") {
        return Err("the stopping leader did not log the release".into());
    }
    Ok(())
}
