//! Command line: parsing and dispatch. Each subcommand is a thin call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::controller::{self, OperatorConfig};

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
    Run(RunArgs),
    /// Print the ScaledConsumer CustomResourceDefinition as YAML.
    Crd,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path to a kubeconfig. Default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "NERITE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "NERITE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Deadline for one broker read, in seconds.
    #[arg(long, default_value_t = 5.0, env = "NERITE_SOURCE_TIMEOUT")]
    pub source_timeout: f64,
    /// Most reconciles running at once.
    #[arg(long, default_value_t = 64, env = "NERITE_CONCURRENCY")]
    pub concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "NERITE_LOG_FORMAT")]
    pub log_format: LogFormat,
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
        Command::Crd => match crate::crdgen::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nerite: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(args),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
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
        let client = match crate::client::connect(args.kubeconfig.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("nerite: {e}");
                return ExitCode::FAILURE;
            }
        };
        let config = OperatorConfig {
            namespace: args.namespace,
            source_timeout: Duration::from_secs_f64(args.source_timeout),
            concurrency: args.concurrency,
            instance: std::env::var("POD_NAME").ok(),
            ..OperatorConfig::default()
        };
        controller::run(client, config, shutdown_signal()).await;
        ExitCode::SUCCESS
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
