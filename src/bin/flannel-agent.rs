//! A small host that embeds the flannel network task, with k3s-style flags:
//! what a distribution binary does, minus everything else it runs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flannel_embed::cli::FlannelFlags;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// Run flannel's pod network for one node, as k3s's embedded flannel does.
#[derive(Debug, Parser)]
#[command(name = "flannel-agent", version, args_override_self = true)]
struct AgentArgs {
    #[command(flatten)]
    flannel: FlannelFlags,
    /// kubeconfig to reach the API server (default: $KUBECONFIG,
    /// ~/.kube/config, then in-cluster service account).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube's client logs every failed connection attempt as an
                // error; the task already reports the failure once, with
                // context, so keep that noise out unless RUST_LOG asks.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
                }),
        )
        .init();

    let config = match args.flannel.to_config() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !config.backend().starts_network() {
        info!("flannel backend is none: the network task is disabled and was not started");
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flannel-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, args.kubeconfig))
}

async fn run(config: flannel_embed::Config, kubeconfig: Option<PathBuf>) -> ExitCode {
    let client = match kube_client(kubeconfig).await {
        Ok(client) => client,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut handle = flannel_embed::spawn(client, config);
    tokio::select! {
        outcome = handle.wait() => match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("flannel exited: {e}");
                ExitCode::FAILURE
            }
        },
        _ = sigterm.recv() => shutdown(handle, "SIGTERM").await,
        _ = sigint.recv() => shutdown(handle, "SIGINT").await,
    }
}

async fn shutdown(handle: flannel_embed::Handle, signal: &str) -> ExitCode {
    info!("received {signal}, shutting down");
    match handle.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("flannel exited: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<kube::Client, String> {
    let config = match &kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("cannot use kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no kubeconfig given (--kubeconfig or KUBECONFIG) and none found: {e}")
        })?,
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}
