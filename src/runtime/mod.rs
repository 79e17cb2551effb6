//! The process: the command line, the Kubernetes client, leader election, the metrics and
//! health server, and one kube-runtime controller per watched namespace running
//! [`crate::reconcile::reconcile`].

pub mod cli;
pub mod client;
pub mod http;
pub mod leader;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::watcher;

use crate::core::leadership::Leadership;
use crate::kubeio::{KubeIo, Write};
use crate::reconcile::metrics::Metrics;
use crate::reconcile::{Context, Settings, error_policy, reconcile};
use crate::spec::api::ScaledConsumer;
use http::Health;
use leader::LeaseSettings;

/// Operator settings (from the command line).
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Deadline for one broker read.
    pub source_timeout: Duration,
    /// Most reconciles running at once.
    pub concurrency: u16,
    /// Longest delay between retries after failures.
    pub max_backoff: Duration,
    /// Name of this operator instance, shown in Events.
    pub instance: Option<String>,
    /// Watch each of these namespaces (one watch each); when not empty it replaces
    /// `namespace`.
    pub namespaces: Vec<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address.
    pub metrics_addr: Option<SocketAddr>,
    /// Elect a leader on a Lease: every replica observes, only the leader writes. `None`:
    /// this process always acts.
    pub leader_election: Option<LeaseSettings>,
    /// How long a workload's `/scale` read stays good while the decision would not change
    /// the count and the workload is not converging. Zero: read it every poll.
    pub scale_refresh: Duration,
    /// How often a status that has not changed (only the observation time and rates move)
    /// is written anyway. Zero: write it every poll.
    pub status_heartbeat: Duration,
}

/// Default of [`OperatorConfig::scale_refresh`].
pub const DEFAULT_SCALE_REFRESH: Duration = Duration::from_secs(60);
/// Default of [`OperatorConfig::status_heartbeat`].
pub const DEFAULT_STATUS_HEARTBEAT: Duration = Duration::from_secs(300);

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            source_timeout: Duration::from_secs(5),
            concurrency: 64,
            max_backoff: Duration::from_secs(60),
            instance: None,
            namespaces: Vec::new(),
            metrics_addr: None,
            leader_election: None,
            scale_refresh: DEFAULT_SCALE_REFRESH,
            status_heartbeat: DEFAULT_STATUS_HEARTBEAT,
        }
    }
}

/// Run the operator until `shutdown` completes. Startup failures (a metrics address that
/// cannot be bound, bad leader election settings) are logged; see [`try_run`].
pub async fn run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    if let Err(e) = try_run(client, config, shutdown).await {
        tracing::error!(error = %e, "nerite operator could not start");
    }
}

/// Run the operator until `shutdown` completes: metrics server, leader election and the
/// controller. On shutdown the controller stops first, then the Lease is released, then the
/// metrics server stops.
pub async fn try_run(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    if let Some(settings) = &config.leader_election {
        settings.check().map_err(StartError::LeaderElection)?;
    }
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = match config.metrics_addr {
        Some(addr) => {
            let stopped = async move {
                let _ = server_stopped.await;
            };
            let (_, task) = http::serve(addr, metrics.clone(), health.clone(), stopped)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            Some(task)
        }
        None => None,
    };
    let (leadership, elector) = match config.leader_election.clone() {
        Some(settings) => {
            let leadership = Leadership::elected();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(leader::run(
                client.clone(),
                settings,
                leadership.clone(),
                metrics.clone(),
                async move {
                    let _ = stopped.await;
                },
            ));
            (leadership, Some((stop, task)))
        }
        None => {
            metrics.set_leader(true);
            (Leadership::always(), None)
        }
    };

    // One controller per watched namespace (or one for all), sharing metrics and leadership.
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![config.namespace.clone()]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let (stop_all, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_all.send(true);
    });
    let syncing = Arc::new(AtomicUsize::new(scopes.len()));
    futures::future::join_all(scopes.into_iter().map(|namespace| {
        let mut stopping = stopping.clone();
        run_controller(
            client.clone(),
            OperatorConfig {
                namespace,
                ..config.clone()
            },
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            },
            metrics.clone(),
            (health.clone(), syncing.clone()),
            leadership.clone(),
        )
    }))
    .await;

    health.set_ready(false);
    if let Some((stop, task)) = elector {
        let _ = stop.send(());
        let _ = task.await;
    }
    let _ = stop_server.send(());
    if let Some(task) = server {
        let _ = task.await;
    }
    tracing::info!("nerite operator stopped");
    Ok(())
}

async fn run_controller(
    client: Client,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    metrics: Arc<Metrics>,
    (health, syncing): (Health, Arc<AtomicUsize>),
    leadership: Leadership,
) {
    // Only ScaledConsumers are watched: each one reads its workload's count through `/scale`
    // every poll, so nerite needs no list/watch on workloads (least privilege) and keeps no
    // cache of every Deployment in the cluster.
    let scs: Api<ScaledConsumer> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(scs, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(config.concurrency));
    let store = controller.store();
    let dropped = metrics.clone();
    let kube = Arc::new(KubeIo::new(
        client.clone(),
        config.instance.clone(),
        leadership.clone(),
        Arc::new(move |w: Write| dropped.write_dropped(w.name())),
    ));
    let ctx = Arc::new(Context::new(
        kube,
        Settings {
            source_timeout: config.source_timeout,
            max_backoff: config.max_backoff,
            scale_refresh: config.scale_refresh,
            status_heartbeat: config.status_heartbeat,
        },
        store.clone(),
        metrics,
        leadership,
    ));
    let ready_store = store.clone();
    tokio::spawn(async move {
        // Ready once the first list of ScaledConsumers is in the cache. The store wakes only
        // one waiter (the controller's own), so ask again every 200 ms.
        loop {
            match tokio::time::timeout(Duration::from_millis(200), ready_store.wait_until_ready())
                .await
            {
                Ok(Ok(())) => {
                    // Ready when every watched namespace has synced.
                    if syncing.fetch_sub(1, Ordering::Relaxed) == 1 {
                        health.set_ready(true);
                    }
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
    });
    tracing::info!(namespace = ?config.namespace, "nerite operator starting");
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::trace!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The metrics/health address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Leader election settings that would let two replicas act at once.
    #[error("invalid leader election settings: {0}")]
    LeaderElection(String),
}
