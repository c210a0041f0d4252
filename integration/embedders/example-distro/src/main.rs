//! A Kubernetes distribution's agent in miniature, linking flannel-embed
//! the way k3s links flannel: its own command line (clap, with
//! `FlannelFlags` flattened in), its own Kubernetes API version
//! (k8s-openapi `v1_34`), its own tokio runtime and logger. It waits for
//! its API server, starts the network task, and stops it on SIGTERM.
//! Run as `flannel` (a link in CNI_PATH, as k3s installs itself), the same
//! binary is the CNI plugin.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flannel_embed::cli::FlannelFlags;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Runs this node's agent: for now, only its pod network.
#[derive(Debug, Parser)]
#[command(name = "example-distro", version)]
struct Args {
    /// kubeconfig of this node's agent (k3s: the kubelet's).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// k3s's --flannel-* flags, --cluster-cidr, --data-dir, --node-name.
    #[command(flatten)]
    flannel: FlannelFlags,
}

fn main() -> ExitCode {
    // One binary, several programs: the container runtime runs
    // CNI_PATH/flannel, a link to this binary.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0).file_name() == Some("flannel".as_ref()) {
        return flannel_embed::cni::main();
    }

    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // A bad flag stops start-up with a message naming it.
    let config = match args.flannel.to_config() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent(&args.kubeconfig, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn agent(kubeconfig: &Path, config: flannel_embed::Config) -> Result<(), String> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let client = kube_client(kubeconfig).await?;
    // k3s starts flannel once its API server answers.
    tokio::select! {
        () = api_server_ready(&client) => {}
        _ = sigterm.recv() => return Ok(()),
    }
    if !config.backend().starts_network() {
        info!("flannel is disabled (--flannel-backend=none)");
        sigterm.recv().await;
        return Ok(());
    }

    let mut flannel = flannel_embed::spawn(client, config);
    tokio::select! {
        ready = flannel.ready() => {
            ready.map_err(|e| format!("flannel exited: {e}"))?;
            info!("pod network ready: the kubelet would start here");
        }
        _ = sigterm.recv() => return stop(flannel).await,
    }
    tokio::select! {
        // The task ends only on an error: fatal for the host, as in k3s.
        outcome = flannel.wait() => Err(match outcome {
            Ok(()) => "flannel exited".to_string(),
            Err(e) => format!("flannel exited: {e}"),
        }),
        _ = sigterm.recv() => stop(flannel).await,
    }
}

/// Stops the network task; interfaces, routes and files stay for the pods.
async fn stop(flannel: flannel_embed::Handle) -> Result<(), String> {
    info!("SIGTERM: stopping");
    flannel
        .shutdown()
        .await
        .map_err(|e| format!("flannel exited: {e}"))?;
    info!("stopped");
    Ok(())
}

/// Waits until the API server lists Nodes (with this host's own
/// Kubernetes types), retrying each second.
async fn api_server_ready(client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut warned = false;
    while let Err(e) = nodes.list(&ListParams::default().limit(1)).await {
        if !std::mem::replace(&mut warned, true) {
            warn!("waiting for the API server: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn kube_client(path: &Path) -> Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| format!("cannot use kubeconfig {}: {e}", path.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}
