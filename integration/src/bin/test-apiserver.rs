//! `test-apiserver`: the test Kubernetes API server for Nodes as a process,
//! for labs and manual poking with kubectl.
//!
//! ```text
//! test-apiserver [--listen 127.0.0.1:0] [--kubeconfig PATH] [--nodes-file FILE]
//! ```
//!
//! Prints the server's URL (`http://127.0.0.1:PORT`) as the first line on
//! stdout once it accepts connections (and the kubeconfig is written), then
//! serves until SIGTERM or SIGINT, and exits 0.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration::apiserver::{write_kubeconfig_file, Options, TestApiServer};

#[derive(Parser, Debug)]
#[command(
    name = "test-apiserver",
    about = "A test Kubernetes API server for Nodes (plain HTTP)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for the server to this file.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Load Nodes from this JSON file first (a Node, a NodeList or an array,
    /// e.g. `kubectl get nodes -o json` output).
    #[arg(long)]
    nodes_file: Option<PathBuf>,
    /// Change events kept for watches and consistent lists.
    #[arg(long, default_value_t = 20_000)]
    history_limit: usize,
    /// Milliseconds between watch bookmarks.
    #[arg(long, default_value_t = 1000)]
    bookmark_interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("test-apiserver: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let options = Options::default()
        .listen(args.listen)
        .history_limit(args.history_limit)
        .bookmark_interval(Duration::from_millis(args.bookmark_interval_ms));
    let server = TestApiServer::start(options).map_err(|e| e.to_string())?;
    if let Some(path) = &args.nodes_file {
        let count = server.load_nodes_file(path).map_err(|e| e.to_string())?;
        eprintln!(
            "test-apiserver: loaded {count} nodes from {}",
            path.display()
        );
    }
    if let Some(path) = &args.kubeconfig {
        write_kubeconfig_file(path, &server.url()).map_err(|e| e.to_string())?;
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", server.url())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<(), String>(())
    })?;
    drop(server);
    Ok(())
}
