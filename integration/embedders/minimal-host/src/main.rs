//! The smallest host: flannel-embed with `default-features = false` and
//! `network` only, so its dependency tree holds no clap, no
//! tracing-subscriber and no multi-threaded tokio runtime. Settings come
//! from the environment (NODE_NAME, FLANNEL_BACKEND, CLUSTER_CIDR and the
//! usual kubeconfig lookup); it runs until the network task ends.

use std::process::ExitCode;

use flannel_embed::{Backend, Config};

fn main() -> ExitCode {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let config = setting("FLANNEL_BACKEND", "vxlan")
        .parse::<Backend>()
        .map_err(|e| e.to_string())
        .and_then(|backend| {
            Config::builder(setting("NODE_NAME", "node-a"))
                .backend(backend)
                .cluster_cidr(setting("CLUSTER_CIDR", "10.42.0.0/16"))
                .build()
                .map_err(|e| e.to_string())
        });
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("minimal-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("minimal-host: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no Kubernetes client: {e}"))?;
        let mut handle = flannel_embed::spawn(client, config);
        handle.ready().await.map_err(|e| e.to_string())?;
        handle
            .wait()
            .await
            .map_err(|e| format!("flannel exited: {e}"))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minimal-host: {e}");
            ExitCode::FAILURE
        }
    }
}
