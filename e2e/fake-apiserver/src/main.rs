//! `nerite-fake-apiserver --port N [--crds DIR] [--kubeconfig FILE]`: run the fake API
//! server standalone on 127.0.0.1 until interrupted.

use std::path::PathBuf;

use clap::Parser;
use nerite_fake_apiserver::FakeApiServer;

/// An in-memory fake Kubernetes API server for nerite's tests (not a cluster).
#[derive(Debug, Parser)]
#[command(name = "nerite-fake-apiserver", version)]
struct Args {
    /// Port to listen on (127.0.0.1); 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Directory of CRD manifests to register at startup.
    #[arg(long)]
    crds: Option<PathBuf>,
    /// Write a kubeconfig pointing at the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Do not validate custom resources against their schema and CEL rules.
    #[arg(long)]
    no_validate: bool,
    /// Do not emulate workload controllers (ready replicas).
    #[arg(long)]
    no_emulate: bool,
    /// Number of events watches can replay.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut builder = FakeApiServer::builder()
        .port(args.port)
        .validate_schemas(!args.no_validate)
        .emulate_workloads(!args.no_emulate)
        .watch_history(args.watch_history);
    if let Some(dir) = &args.crds {
        builder = builder.crds_dir(dir);
    }
    let server = builder.start().await?;
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, server.kubeconfig_yaml())?;
    }
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
