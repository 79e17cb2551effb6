//! Command line: parsing and dispatch. Each subcommand is a thin call into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::core::duration::parse_duration;
use crate::runtime::leader::LeaseSettings;
use crate::runtime::{self, OperatorConfig};

#[derive(Parser, Debug)]
#[command(
    name = "nerite",
    version,
    about = "Keeps message-queue consumers sized to their work"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the ScaledConsumer CustomResourceDefinition as YAML.
    Crd,
    /// Replay a traffic trace through nerite's policy, KEDA + HPA and others, side by side.
    Simulate(Box<SimulateArgs>),
}

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Built-in scenario (flash-sale, order-surge, diurnal, on-off); repeatable. Default:
    /// all of them, unless --trace is given.
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// CSV trace `t_seconds,arrivals_per_second` (the rate holds until the next row).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// End of the trace in seconds (default: the last row's time).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Mean seconds to process one message.
    #[arg(long)]
    pub mean_service: Option<f64>,
    /// Gamma shape of the service time (1 = exponential).
    #[arg(long)]
    pub service_shape: Option<f64>,
    /// Messages one replica processes at once (prefetch).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Seconds from creating a replica to its first message (default 20).
    #[arg(long)]
    pub startup_delay: Option<f64>,
    #[arg(long)]
    pub min_replicas: Option<i32>,
    #[arg(long)]
    pub max_replicas: Option<i32>,
    /// The user's backlogPerReplica (KEDA's target).
    #[arg(long)]
    pub backlog_per_replica: Option<i64>,
    /// Message-wait SLO in seconds (nerite's maxMessageWait).
    #[arg(long, default_value_t = 90.0)]
    pub slo: f64,
    /// Age of the broker's statistics, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub stats_delay: f64,
    /// nerite's poll interval, seconds.
    #[arg(long, default_value_t = 5)]
    pub poll_interval: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also print the KEDA target sweep.
    #[arg(long)]
    pub show_sweep: bool,
    /// Also print every change nerite made, with its reason (as `status.reason` says it).
    #[arg(long)]
    pub explain: bool,
    /// Write one SVG chart per scenario into this directory.
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path to a kubeconfig. Default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "NERITE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch only these namespaces, comma-separated or repeated (default: all namespaces).
    #[arg(long, short = 'n', env = "NERITE_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Deadline for one broker read, in seconds.
    #[arg(long, default_value_t = 5.0, env = "NERITE_SOURCE_TIMEOUT")]
    pub source_timeout: f64,
    /// Most reconciles running at once.
    #[arg(long, default_value_t = 64, env = "NERITE_CONCURRENCY")]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NERITE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Serve /metrics, /healthz and /readyz on this address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:8080", value_parser = parse_metrics_addr, env = "NERITE_METRICS_ADDR")]
    pub metrics_addr: MetricsAddr,
    /// Elect a leader on a Lease: every replica observes, only the leader acts.
    #[arg(long, env = "NERITE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, default_value = "nerite-leader", env = "NERITE_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the leader Lease. Default: $POD_NAMESPACE, the service account's
    /// namespace in a pod, then `default`.
    #[arg(long, env = "NERITE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease that is not renewed stays valid (whole seconds).
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "NERITE_LEASE_DURATION")]
    pub lease_duration: Duration,
    /// How long the leader keeps acting without renewing the Lease.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "NERITE_RENEW_DEADLINE")]
    pub renew_deadline: Duration,
    /// How often the Lease is read and renewed.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "NERITE_RETRY_PERIOD")]
    pub retry_period: Duration,
    /// How long a workload's `/scale` read is reused while the decision keeps the count and
    /// the workload is not converging; a hand-made change is seen within this time. `0s`:
    /// read `/scale` every poll.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "NERITE_SCALE_REFRESH")]
    pub scale_refresh: Duration,
    /// How often a status that has not changed is rewritten anyway (only the observation
    /// time and the rates move). Any change a user reads (counts, conditions, reason, a
    /// job's progress) is written at once. `0s`: write the status every poll.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "NERITE_STATUS_HEARTBEAT")]
    pub status_heartbeat: Duration,
    /// This replica's identity in the Lease and in Events. Default: $POD_NAME, then the host
    /// name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    match s.trim() {
        "" | "off" | "0" => Ok(MetricsAddr(None)),
        a => a
            .parse::<SocketAddr>()
            .map(|a| MetricsAddr(Some(a)))
            .map_err(|e| format!("{e} (expected HOST:PORT such as 0.0.0.0:8080, or off)")),
    }
}

/// This replica's identity: the flag / $POD_NAME, else host name and process id.
fn identity(flag: Option<String>) -> String {
    flag.filter(|s| !s.is_empty()).unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "nerite".to_string());
        format!("{host}-{}", std::process::id())
    })
}

/// The Lease namespace: the flag, $POD_NAMESPACE, the pod's service account namespace, or
/// `default`.
fn lease_namespace(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parse arguments and run the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crate::spec::crdgen::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nerite: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(*args),
        Command::Simulate(args) => simulate(*args),
    }
}

fn simulate(a: SimulateArgs) -> ExitCode {
    use crate::simulate;
    let trace = match &a.trace {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let name = path
                    .file_stem()
                    .map_or_else(|| "trace".to_string(), |s| s.to_string_lossy().into_owned());
                Some((name, text))
            }
            Err(e) => {
                eprintln!("nerite: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let req = simulate::Request {
        scenarios: a.scenarios,
        trace,
        duration: a.duration,
        mean_service: a.mean_service,
        service_shape: a.service_shape,
        concurrency: a.concurrency,
        startup_delay: a.startup_delay,
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        backlog_per_replica: a.backlog_per_replica,
        settings: simulate::Settings {
            seed: a.seed,
            slo: a.slo,
            stats_delay: a.stats_delay,
            poll_interval: a.poll_interval,
            explain: a.explain,
            ..simulate::Settings::default()
        },
    };
    match simulate::execute(&req, a.json, a.show_sweep, a.svg_dir.as_deref()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nerite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // lapin (the AMQP-only RabbitMQ source) logs every broker refusal at error level, each
    // poll; nerite reports the same failures once, classified, as conditions, Events and a
    // warning. RUST_LOG still turns lapin's own lines on.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,lapin=off"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    if !(args.source_timeout.is_finite() && args.source_timeout > 0.0) {
        eprintln!("nerite: --source-timeout must be a positive number of seconds");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nerite: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let client = match crate::runtime::client::connect(args.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("nerite: {e}");
                return ExitCode::FAILURE;
            }
        };
        let identity = identity(args.identity);
        let leader_election = args.leader_elect.then(|| LeaseSettings {
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
            ..LeaseSettings::new(
                &args.lease_name,
                &lease_namespace(args.lease_namespace),
                &identity,
            )
        });
        let config = OperatorConfig {
            namespaces: args
                .namespace
                .into_iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            source_timeout: Duration::from_secs_f64(args.source_timeout),
            concurrency: args.concurrency,
            instance: Some(identity),
            metrics_addr: args.metrics_addr.0,
            leader_election,
            scale_refresh: args.scale_refresh,
            status_heartbeat: args.status_heartbeat,
            ..OperatorConfig::default()
        };
        match runtime::try_run(client, config, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nerite: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "nerite",
            "run",
            "--leader-elect",
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "1500ms",
            "--retry-period",
            "500ms",
            "--metrics-addr",
            "127.0.0.1:9090",
            "--identity",
            "nerite-0",
            "--namespace",
            "shop,billing",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("flags did not parse: {cli:?}");
        };
        assert!(args.leader_elect);
        assert_eq!(args.lease_duration, Duration::from_secs(3));
        assert_eq!(args.renew_deadline, Duration::from_millis(1500));
        assert_eq!(
            args.metrics_addr.0,
            "127.0.0.1:9090".parse::<SocketAddr>().ok()
        );
        assert_eq!(args.identity.as_deref(), Some("nerite-0"));
        assert_eq!(args.namespace, ["shop", "billing"]);
        assert_eq!(parse_metrics_addr("off"), Ok(MetricsAddr(None)));
        assert!(parse_metrics_addr("localhost").is_err());
    }

    #[test]
    fn api_traffic_flags_default_to_the_operator_defaults() {
        let run = |extra: &[&str]| {
            let args = ["nerite", "run"].iter().chain(extra).copied();
            match Cli::try_parse_from(args) {
                Ok(Cli {
                    command: Command::Run(a),
                }) => (a.scale_refresh, a.status_heartbeat),
                other => panic!("flags did not parse: {other:?}"),
            }
        };
        assert_eq!(
            run(&[]),
            (
                runtime::DEFAULT_SCALE_REFRESH,
                runtime::DEFAULT_STATUS_HEARTBEAT
            )
        );
        assert_eq!(
            run(&["--scale-refresh", "0s", "--status-heartbeat", "0s"]),
            (Duration::ZERO, Duration::ZERO)
        );
    }
}
