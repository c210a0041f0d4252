//! `test-apiserver`: the test Kubernetes API server for Nodes as a process,
//! for labs and manual poking with kubectl.
//!
//! ```text
//! test-apiserver [--listen 127.0.0.1:0] [--kubeconfig PATH] [--nodes-file FILE]
//!     [--tls ecdsa|rsa] [--cert-dir DIR] [--token-auth-file FILE] [--rbac FILE]
//!     [--authz-log FILE] [--no-watch-list]
//!     [--client-kubeconfig USER[/GROUP[,GROUP]]=FILE]...
//!     [--token-kubeconfig TOKEN=FILE]... [--token-file-kubeconfig TOKEN_FILE=FILE]...
//!     [--service-account NAMESPACE/NAME=DIR]...
//! ```
//!
//! Prints the server's URL (`http://127.0.0.1:PORT`, `https://` with
//! `--tls`) as the first line on stdout once it accepts connections (and
//! every requested file is written), then serves until SIGTERM or SIGINT,
//! and exits 0.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration::apiserver::{Credential, KeyAlgorithm, Options, TestApiServer};

#[derive(Parser, Debug)]
#[command(
    name = "test-apiserver",
    about = "A test Kubernetes API server for Nodes (plain HTTP by default; HTTPS, authentication and RBAC on request)",
    after_help = "Credentials for other users are written at start, before the URL is printed:\n  --client-kubeconfig system:node:node-a/system:nodes=node-a.kubeconfig\n  --client-kubeconfig flannel=flannel.kubeconfig            (no groups)\n  --client-kubeconfig ops/devs,system:masters=ops.kubeconfig\n  --token-kubeconfig s3cret=token.kubeconfig               (token: embedded)\n  --token-file-kubeconfig /run/token=tf.kubeconfig         (tokenFile: /run/token)\n  --service-account kube-flannel/flannel=/run/sa           (token, ca.crt, namespace)\nThe first '/' separates the user (CN) from its comma-separated groups (O, at most\ntwo); the last '=' separates the file. Tokens in a kubeconfig must be valid in --token-auth-file\n(service-account tokens are registered by the server itself)."
)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the admin kubeconfig to this file: no credentials over plain
    /// HTTP; with --tls the CA and a client certificate for system:admin in
    /// system:masters.
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
    /// Serve HTTPS with a CA generated at start whose keys (and those of the
    /// server and client certificates) are `ecdsa` (P-256, as k3s) or `rsa`
    /// (2048, as kind). Turns authentication on; --kubeconfig then holds an
    /// admin client certificate (system:admin in system:masters).
    #[arg(long, value_name = "ecdsa|rsa")]
    tls: Option<KeyAlgorithm>,
    /// Write the CA certificate to DIR/ca.crt (with --tls).
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Authenticate requests (implied by --tls, --token-auth-file and
    /// --rbac): anonymous requests get 401 except GET /healthz, /livez,
    /// /readyz.
    #[arg(long)]
    authentication: bool,
    /// Bearer tokens, kube-apiserver's --token-auth-file CSV
    /// (`token,user,uid,"group1,group2"`), re-read when it changes.
    #[arg(long, value_name = "FILE")]
    token_auth_file: Option<PathBuf>,
    /// RBAC: ClusterRoles and ClusterRoleBindings (multi-document YAML or
    /// `kind: List`), re-read when the file changes. Without it every
    /// authenticated request is allowed. Group system:masters is always
    /// allowed; discovery paths are allowed to every authenticated user.
    #[arg(long, value_name = "FILE")]
    rbac: Option<PathBuf>,
    /// Append every authorization decision as a JSON line: {"user",
    /// "groups", "verb", "api_group", "resource", "subresource", "name",
    /// "path", "allowed"}.
    #[arg(long, value_name = "FILE")]
    authz_log: Option<PathBuf>,
    /// Answer streaming lists (sendInitialEvents) 422 Invalid, as Kubernetes
    /// 1.33 does with its WatchList gate off.
    #[arg(long)]
    no_watch_list: bool,
    /// Write a kubeconfig with a client certificate for USER in GROUPs
    /// (subject CN and O, at most two groups) to FILE (with --tls).
    /// Repeatable.
    #[arg(long, value_name = "USER[/GROUP,...]=FILE")]
    client_kubeconfig: Vec<String>,
    /// Write a kubeconfig with the bearer token TOKEN embedded to FILE.
    /// Repeatable.
    #[arg(long, value_name = "TOKEN=FILE")]
    token_kubeconfig: Vec<String>,
    /// Write a kubeconfig whose user reads its token from TOKEN_FILE
    /// (`tokenFile:`) to FILE. Repeatable.
    #[arg(long, value_name = "TOKEN_FILE=FILE")]
    token_file_kubeconfig: Vec<String>,
    /// Register a token for service account NAMESPACE/NAME and write DIR/token,
    /// DIR/ca.crt and DIR/namespace as in a pod. Repeatable.
    #[arg(long, value_name = "NAMESPACE/NAME=DIR")]
    service_account: Vec<String>,
}

/// `LEFT=RIGHT`, split at the last '='.
fn split_assignment<'a>(flag: &str, text: &'a str) -> Result<(&'a str, &'a str), String> {
    text.rsplit_once('=')
        .filter(|(left, right)| !left.is_empty() && !right.is_empty())
        .ok_or_else(|| format!("--{flag} {text:?}: expected LEFT=RIGHT"))
}

fn write_credentials(server: &TestApiServer, args: &Args) -> Result<(), String> {
    if let Some(path) = &args.kubeconfig {
        server
            .write_kubeconfig_for(path, &server.admin_credential())
            .map_err(|e| e.to_string())?;
    }
    if let Some(dir) = &args.cert_dir {
        let ca = server
            .ca_pem()
            .ok_or("--cert-dir needs --tls (plain HTTP has no CA)")?;
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("ca.crt"), ca))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for spec in &args.client_kubeconfig {
        let (identity, file) = split_assignment("client-kubeconfig", spec)?;
        let (user, groups) = match identity.split_once('/') {
            Some((user, groups)) => (user, groups.split(',').filter(|g| !g.is_empty()).collect()),
            None => (identity, Vec::new()),
        };
        let cert = server
            .issue_client_cert(user, &groups, None)
            .map_err(|e| format!("--client-kubeconfig {spec:?}: {e}"))?;
        server
            .write_kubeconfig_for(Path::new(file), &Credential::ClientCert(cert))
            .map_err(|e| e.to_string())?;
    }
    for spec in &args.token_kubeconfig {
        let (token, file) = split_assignment("token-kubeconfig", spec)?;
        server
            .write_kubeconfig_for(Path::new(file), &Credential::Token(token.to_string()))
            .map_err(|e| e.to_string())?;
    }
    for spec in &args.token_file_kubeconfig {
        let (token_file, file) = split_assignment("token-file-kubeconfig", spec)?;
        server
            .write_kubeconfig_for(
                Path::new(file),
                &Credential::TokenFile(PathBuf::from(token_file)),
            )
            .map_err(|e| e.to_string())?;
    }
    for spec in &args.service_account {
        let (account, dir) = split_assignment("service-account", spec)?;
        let (namespace, name) = account
            .split_once('/')
            .ok_or_else(|| format!("--service-account {spec:?}: expected NAMESPACE/NAME=DIR"))?;
        server
            .write_service_account_dir(Path::new(dir), namespace, name)
            .map_err(|e| format!("--service-account {spec:?}: {e}"))?;
    }
    Ok(())
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
    let mut options = Options::default()
        .listen(args.listen)
        .history_limit(args.history_limit)
        .bookmark_interval(Duration::from_millis(args.bookmark_interval_ms))
        .authentication(args.authentication)
        .watch_list(!args.no_watch_list);
    if let Some(algorithm) = args.tls {
        options = options.tls(algorithm);
    }
    if let Some(path) = &args.token_auth_file {
        options = options.token_auth_file(path);
    }
    if let Some(path) = &args.rbac {
        options = options.rbac_file(path);
    }
    if let Some(path) = &args.authz_log {
        options = options.authz_log_file(path);
    }
    let server = TestApiServer::start(options).map_err(|e| e.to_string())?;
    if let Some(path) = &args.nodes_file {
        let count = server.load_nodes_file(path).map_err(|e| e.to_string())?;
        eprintln!(
            "test-apiserver: loaded {count} nodes from {}",
            path.display()
        );
    }
    write_credentials(&server, &args)?;
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
