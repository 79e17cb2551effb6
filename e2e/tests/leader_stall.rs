//! A leader frozen (SIGSTOP) past its Lease in the middle of an SQS client-mode redrive,
//! then resumed, as a long GC pause or a stalled VM does: the standby takes the Lease and
//! resumes the redrive from the progress recorded in the status; the frozen replica, once it
//! runs again, neither moves a message nor writes progress. Every message reaches the
//! source, `moved` counts each once and never goes back, and the rate limit holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use libtest_mimic::{Failed, Trial};
use nerite::spec::api::{RedrivePhase, SqsRedriveStatus};
use serde_json::json;

use crate::support::cluster::{Cluster, blocking, eventually};
use crate::support::moto::{Moto, REGION, queue_url};
use crate::support::ops::OperatorProcess;
use crate::support::{Env, binary_copy, dump, run};

const NS: &str = "stall";
const LEASE_NS: &str = "stall-system";
const LEASE: &str = "nerite-stall";
/// Messages to move, and the rate limit they move at.
const MESSAGES: usize = 400;
const RATE: f64 = 20.0;

type Binary = Arc<Result<(tempfile::TempDir, PathBuf), String>>;

pub fn trials(env: &Env) -> Vec<Trial> {
    let e = env.clone();
    let binary: Binary = Arc::new(binary_copy());
    vec![Trial::test(
        "leader_stall::a_frozen_leader_stops_and_the_new_leader_resumes_the_redrive",
        move || {
            let moto = e.moto()?;
            run(stall(moto, binary.clone())).map_err(Failed::from)
        },
    )]
}

fn start(
    bin: &Path,
    kubeconfig: &Path,
    identity: &str,
    dir: &Path,
) -> Result<OperatorProcess, String> {
    OperatorProcess::start(
        bin,
        kubeconfig,
        identity,
        &[
            "--namespace",
            NS,
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

fn signal(p: &OperatorProcess, sig: &str) -> Result<(), String> {
    let pid = p.pid().ok_or("the process is gone")?.to_string();
    let ok = Command::new("kill")
        .args([sig, &pid])
        .status()
        .map_err(|e| format!("kill {sig} {pid}: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid} failed"))
    }
}

async fn holder(cluster: &Cluster) -> Result<Option<String>, String> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), LEASE_NS);
    Ok(api
        .get_opt(LEASE)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

async fn progress(cluster: &Cluster) -> Result<Option<SqsRedriveStatus>, String> {
    Ok(cluster
        .status(NS, "stall")
        .await?
        .sqs
        .and_then(|s| s.redrive))
}

/// `moved` as seen over time, to check it never goes back and stays within the rate.
#[derive(Default)]
struct Samples(Vec<(Instant, i64)>);

impl Samples {
    fn note(&mut self, r: &SqsRedriveStatus) {
        self.0.push((Instant::now(), r.progress.moved));
    }

    /// The first time `moved` went down, if it did.
    fn went_back(&self) -> Option<(i64, i64)> {
        self.0
            .windows(2)
            .find(|w| w[1].1 < w[0].1)
            .map(|w| (w[0].1, w[1].1))
    }

    /// The highest rate over any stretch of at least `window`, allowing one batch of 10
    /// (a batch is counted at once when it is sent).
    fn peak_rate(&self, window: Duration) -> f64 {
        let mut peak: f64 = 0.0;
        for (i, (t0, m0)) in self.0.iter().enumerate() {
            if let Some((t1, m1)) = self.0[i..]
                .iter()
                .find(|(t, _)| t.duration_since(*t0) >= window)
            {
                let secs = t1.duration_since(*t0).as_secs_f64();
                peak = peak.max(((m1 - m0 - 10).max(0)) as f64 / secs);
            }
        }
        peak
    }
}

/// Poll the redrive every 250 ms (noting each sample) until `done` holds.
async fn watch(
    cluster: &Cluster,
    samples: &std::sync::Mutex<Samples>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&SqsRedriveStatus) -> bool,
) -> Result<SqsRedriveStatus, String> {
    eventually(what, timeout, || async {
        let r = progress(cluster).await?;
        if let Some(r) = &r {
            samples.lock().map_err(|e| e.to_string())?.note(r);
        }
        Ok(r.filter(|r| done(r)))
    })
    .await
}

async fn stall(moto: Arc<Moto>, binary: Binary) -> Result<(), String> {
    let bin = match binary.as_ref() {
        Ok((_, path)) => path.clone(),
        Err(e) => return Err(e.clone()),
    };
    let cluster = Cluster::fake(true).await?;
    cluster.namespace(NS).await?;
    cluster.namespace(LEASE_NS).await?;
    cluster.secret(NS, "aws", "test", "test").await?;
    cluster.deployment(NS, "stall", 1).await?;
    let sqs = moto.sqs();
    let src = sqs.create_queue("stall-src", &[]).await?;
    let dlq = sqs.create_queue("stall-dlq", &[]).await?;
    let sent: Vec<String> = (0..MESSAGES).map(|i| format!("stall-{i:04}")).collect();
    sqs.send(&dlq, &sent, None, None, None).await?;
    cluster
        .scaled_consumer(
            NS,
            "stall",
            json!({
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stall"},
                "minReplicas": 1,
                "maxReplicas": 1,
                "source": {"sqs": {
                    "queueUrl": queue_url(REGION, "stall-src"),
                    "region": REGION,
                    "endpoint": moto.endpoint(),
                    "credentialsSecretRef": {
                        "name": "aws", "accessKeyIdKey": "username", "secretAccessKeyKey": "password"
                    },
                    "deadLetter": {"queue": "stall-dlq", "maxReceiveCount": 5, "redrive": {
                        "requestId": "s1", "mode": "Client", "maxMessagesPerSecond": RATE as i64
                    }}
                }},
                "objective": {"backlogPerReplica": 100_000},
                "behavior": {"pollInterval": "1s"}
            }),
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
    let a = start(&bin, &kubeconfig, "stall-a", dir.path())?;
    let b = start(&bin, &kubeconfig, "stall-b", dir.path())?;
    let res = frozen_leader(&cluster, &a, &b, &sqs, &src, &dlq, &sent).await;
    // Never leave a stopped process behind.
    let _ = signal(&a, "-CONT");
    let _ = signal(&b, "-CONT");
    if let Err(e) = res {
        let mut out = format!("{e}{}", dump(&cluster, NS, "stall").await);
        for p in [&a, &b] {
            out.push_str(&format!(
                "\n--- {} output ---\n{}",
                p.identity,
                p.log_tail(30)
            ));
        }
        return Err(out);
    }
    Ok(())
}

async fn frozen_leader(
    cluster: &Cluster,
    a: &OperatorProcess,
    b: &OperatorProcess,
    sqs: &crate::support::moto::Sqs,
    src: &str,
    dlq: &str,
    sent: &[String],
) -> Result<(), String> {
    let samples = std::sync::Mutex::new(Samples::default());
    let before = watch(
        cluster,
        &samples,
        "the redrive to move 60 messages",
        Duration::from_secs(90),
        |r| r.progress.moved >= 60,
    )
    .await?;
    let leader_id = holder(cluster).await?.ok_or("the Lease has no holder")?;
    let (leader, standby) = if leader_id == a.identity {
        (a, b)
    } else {
        (b, a)
    };
    signal(leader, "-STOP")?;
    let frozen = progress(cluster).await?.unwrap_or(before);
    println!(
        "  froze the leader {} (SIGSTOP) at {} moved",
        leader.identity, frozen.progress.moved
    );
    eventually(
        &format!("{} to take the Lease", standby.identity),
        Duration::from_secs(20),
        || async {
            Ok(
                (holder(cluster).await?.as_deref() == Some(standby.identity.as_str()))
                    .then_some(()),
            )
        },
    )
    .await?;
    let resumed_by_standby = watch(
        cluster,
        &samples,
        "the new leader to move 60 more",
        Duration::from_secs(60),
        |r| r.progress.moved >= frozen.progress.moved + 60,
    )
    .await?;
    signal(leader, "-CONT")?;
    println!(
        "  {} took over and moved on to {}; resumed {} (SIGCONT)",
        standby.identity, resumed_by_standby.progress.moved, leader.identity
    );
    let done = watch(
        cluster,
        &samples,
        "the redrive to complete",
        Duration::from_secs(180),
        |r| !r.progress.phase.is_active(),
    )
    .await?;
    // The resumed replica noticed it no longer leads and stopped its run.
    if !leader
        .log_tail(400)
        .contains("this replica no longer leads")
    {
        return Err(format!(
            "{} did not report that its redrive stopped after it was resumed",
            leader.identity
        ));
    }

    let got = sqs.drain(src).await?;
    let unique: BTreeSet<&str> = got.iter().map(|m| m.body.as_str()).collect();
    let want: BTreeSet<&str> = sent.iter().map(String::as_str).collect();
    let missing = want.difference(&unique).count();
    let copies = got.len() - unique.len();
    let left = sqs.depth(dlq).await?;
    let samples = samples.into_inner().map_err(|e| e.to_string())?;
    let peak = samples.peak_rate(Duration::from_secs(5));
    let url = leader.url("/metrics");
    let (_, metrics) = blocking(move || crate::support::ops::http_get(&url)).await??;
    let dropped: f64 = crate::support::ops::parse_metrics(&metrics)
        .iter()
        .filter(|s| s.name == "nerite_writes_dropped_total")
        .map(|s| s.value)
        .fold(0.0, |a, b| a + b);
    println!(
        "  {}: moved {}, duplicates reported {}; on the source {} copies of {} unique, {missing} missing; DLQ {left:?}; peak rate over 5 s {peak:.1}/s (limit {RATE}); writes dropped by the resumed replica: {dropped}",
        done.progress.phase,
        done.progress.moved,
        done.duplicates,
        got.len(),
        unique.len()
    );
    if missing > 0 {
        return Err(format!("{missing} messages never reached the source"));
    }
    if done.progress.phase != RedrivePhase::Succeeded {
        return Err(format!(
            "the redrive ended {}: {:?}",
            done.progress.phase, done.progress.message
        ));
    }
    if usize::try_from(done.progress.moved).ok() != Some(unique.len()) {
        return Err(format!(
            "status says {} moved but {} distinct messages reached the source",
            done.progress.moved,
            unique.len()
        ));
    }
    if i64::try_from(copies).unwrap_or(i64::MAX) > done.duplicates {
        return Err(format!(
            "{copies} extra copies on the source but only {} duplicates reported",
            done.duplicates
        ));
    }
    if left != (0, 0, 0) {
        return Err(format!("the DLQ is not empty: {left:?}"));
    }
    if let Some((from, to)) = samples.went_back() {
        return Err(format!(
            "moved went back from {from} to {to}: progress was overwritten"
        ));
    }
    if peak > RATE * 1.25 {
        return Err(format!(
            "moved {peak:.1} messages/s over 5 s, above the limit of {RATE}/s: two movers ran at once"
        ));
    }
    Ok(())
}
