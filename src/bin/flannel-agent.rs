//! A small host that embeds the flannel network task, with k3s-style flags:
//! what a distribution binary does, minus everything else it runs.

use std::convert::Infallible;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flannel_embed::cli::FlannelFlags;
use flannel_embed::cni::install;
use flannel_embed::Status;
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

/// Run flannel's pod network for one node, as k3s's embedded flannel does.
#[derive(Debug, Parser)]
#[command(
    name = "flannel-agent",
    version,
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    flannel: FlannelFlags,
    /// kubeconfig to reach the API server (default: $KUBECONFIG,
    /// ~/.kube/config, then in-cluster service account).
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Serve `GET /healthz` (200 while the network task runs) and
    /// `GET /readyz` (200 once ready and nothing is failing), else 503,
    /// over HTTP on this address (flanneld's --healthz-ip and
    /// --healthz-port in one). Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    healthz_bind: Option<SocketAddr>,
}

#[derive(Debug, clap::Subcommand)]
enum AgentCommand {
    /// Install the CNI plugins and the conflist this node needs into the
    /// host's CNI directories, then exit (the DaemonSet's init container).
    /// Our `flannel` plugin always comes from the image; a delegate only
    /// where the node has no working one.
    InstallCni(InstallCniArgs),
}

#[derive(Debug, clap::Args)]
struct InstallCniArgs {
    /// The host's CNI plugin directory.
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// The host's CNI configuration directory.
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// The conflist to install, copied verbatim (default: k3s's
    /// flannel + portmap + bandwidth conflist).
    #[arg(long, value_name = "FILE")]
    cni_conf: Option<PathBuf>,
    /// The conflist's file name in --cni-conf-dir.
    #[arg(long, value_name = "NAME", default_value = install::CONFLIST_NAME)]
    conflist_name: String,
    /// Where the plugins to install are (the image's copies).
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_PLUGINS_DIR)]
    plugins_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = match AgentArgs::try_parse() {
        Ok(args) => args,
        // --help and --version print to stdout and succeed; a bad flag or
        // value exits 1 like every other start-up error (and k3s).
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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

    if let Some(AgentCommand::InstallCni(install)) = args.command {
        return install_cni(install);
    }
    let credential = describe_credential(args.kubeconfig.as_deref());
    let config = match args
        .flannel
        .to_builder()
        .and_then(|builder| builder.api_credential(credential).build())
    {
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
    runtime.block_on(run(config, args.kubeconfig, args.healthz_bind))
}

/// `flannel-agent install-cni`: one line per plugin and one for the
/// conflist; exit 1 with the reason when the node cannot be served.
fn install_cni(args: InstallCniArgs) -> ExitCode {
    let mut installer = install::Installer {
        plugins_dir: args.plugins_dir,
        bin_dir: args.cni_bin_dir,
        conf_dir: args.cni_conf_dir,
        conflist_name: args.conflist_name,
        ..install::Installer::new()
    };
    if let Some(path) = &args.cni_conf {
        installer = match installer.conflist_from(path) {
            Ok(installer) => installer,
            Err(e) => {
                error!("install-cni: --cni-conf: {e}");
                return ExitCode::FAILURE;
            }
        };
    }
    let report = match installer.run() {
        Ok(report) => report,
        Err(e) => {
            error!("install-cni: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bin_dir = installer.bin_dir.display();
    for (plugin, action) in &report.plugins {
        match action {
            install::Action::Install => {
                info!("installed {plugin} into {bin_dir}: the node had none")
            }
            install::Action::UpToDate => info!("{bin_dir}/{plugin} is up to date"),
            install::Action::Replace(why) => info!("replaced {bin_dir}/{plugin}: {why}"),
            install::Action::Keep(why) => info!("kept {bin_dir}/{plugin}: {why}"),
        }
    }
    let conflist = report.conflist_path.display();
    if report.conflist_changed {
        info!("wrote {conflist} ({})", installer.conflist_source);
    } else {
        info!("{conflist} is up to date ({})", installer.conflist_source);
    }
    ExitCode::SUCCESS
}

async fn run(
    config: flannel_embed::Config,
    kubeconfig: Option<PathBuf>,
    healthz_bind: Option<SocketAddr>,
) -> ExitCode {
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

    // Bound before the task starts: a port in use stops start-up before
    // anything is written.
    let listener = match healthz_bind {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some((addr, listener)),
            Err(e) => {
                error!("--healthz-bind {addr}: cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let mut handle = flannel_embed::spawn(client, config);
    let health = listener.map(|(addr, listener)| {
        info!("serving /healthz and /readyz on http://{addr}");
        HealthServer::start(listener, handle.watch_status())
    });
    let code = tokio::select! {
        outcome = handle.wait() => match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("flannel exited: {e}");
                ExitCode::FAILURE
            }
        },
        _ = sigterm.recv() => shutdown(handle, "SIGTERM").await,
        _ = sigint.recv() => shutdown(handle, "SIGINT").await,
    };
    // Up to here the probes saw the task stop (503); now nothing of ours
    // runs any more when main returns.
    if let Some(health) = health {
        health.stop().await;
    }
    code
}

/// The `--healthz-bind` server: an accept loop and its connections, all
/// owned here and ended by [`HealthServer::stop`].
struct HealthServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A client gets this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl HealthServer {
    fn start(listener: TcpListener, status: watch::Receiver<Status>) -> HealthServer {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve_health(listener, status, stopped));
        HealthServer { stop, task }
    }

    /// Stops accepting, aborts open connections and waits for all of it.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            error!("the --healthz-bind server ended abnormally: {e}");
        }
    }
}

async fn serve_health(
    listener: TcpListener,
    status: watch::Receiver<Status>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A value or a dropped sender: either way, stop.
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let status = status.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let response = respond(&request, &status.borrow());
                            async move { Ok::<_, Infallible>(response) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            debug!(%peer, "health probe connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: pass, then retry.
                    warn!("--healthz-bind: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

/// `GET /healthz`: 200 while the task is live; `GET /readyz`: 200 when
/// ready and nothing fails; else 503 with the verdict and the problems,
/// one per line. Other paths 404, other methods 405.
fn respond(request: &Request<Incoming>, status: &Status) -> Response<String> {
    let check: fn(&Status) -> bool = match request.uri().path() {
        "/healthz" => Status::is_live,
        "/readyz" => Status::is_ready,
        _ => return text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if check(status) {
        return text(StatusCode::OK, "ok\n".into());
    }
    let mut body = format!("{}\n", status.health);
    for problem in &status.problems {
        body.push_str(&format!("{problem}\n"));
    }
    if let Some(error) = &status.last_error {
        body.push_str(&format!("error: {error}\n"));
    }
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn text(code: StatusCode, body: String) -> Response<String> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
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

/// Where kube-rs looks when no kubeconfig is given, after `$KUBECONFIG`.
const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Names the credential the client will present, for the task's 401/403
/// messages: the kubeconfig, its user and the kind of credential, or the
/// in-cluster service-account token (the order `kube::Config::infer`
/// tries them in).
fn describe_credential(kubeconfig: Option<&Path>) -> String {
    describe_credential_with_home(kubeconfig, std::env::var_os("HOME").map(PathBuf::from))
}

fn describe_credential_with_home(kubeconfig: Option<&Path>, home: Option<PathBuf>) -> String {
    let home_config = home.map(|home| home.join(".kube/config"));
    let path = match kubeconfig {
        Some(path) => Some(path.to_path_buf()),
        None => home_config.filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return format!("the in-cluster service account token {IN_CLUSTER_TOKEN}");
    };
    let Ok(kubeconfig) = kube::config::Kubeconfig::read_from(&path) else {
        return format!("kubeconfig {}", path.display());
    };
    let user = kubeconfig
        .current_context
        .as_ref()
        .and_then(|current| kubeconfig.contexts.iter().find(|c| &c.name == current))
        .and_then(|named| named.context.as_ref())
        .and_then(|context| context.user.clone());
    let auth = user.as_ref().and_then(|user| {
        kubeconfig
            .auth_infos
            .iter()
            .find(|a| &a.name == user)
            .and_then(|a| a.auth_info.as_ref())
    });
    let kind = match auth {
        Some(a) if a.client_certificate.is_some() || a.client_certificate_data.is_some() => {
            "client certificate".to_string()
        }
        Some(a) if a.token_file.is_some() => {
            format!("token file {}", a.token_file.as_deref().unwrap_or_default())
        }
        Some(a) if a.token.is_some() => "bearer token".to_string(),
        Some(a) if a.exec.is_some() => "exec credential plugin".to_string(),
        Some(a) if a.username.is_some() => "basic auth".to_string(),
        _ => "no credential".to_string(),
    };
    match user {
        Some(user) => format!("kubeconfig {} (user {user:?}, {kind})", path.display()),
        None => format!("kubeconfig {} ({kind})", path.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(dir: &Path, user: &str) -> PathBuf {
        let path = dir.join(format!(
            "kubeconfig-{}",
            dir.read_dir().map(|d| d.count()).unwrap_or(0)
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: flannel\ncurrent-context: x\nusers:\n- name: flannel\n  user:\n{user}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_credential_is_named_as_the_client_will_use_it() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "    client-certificate-data: AAAA\n    client-key-data: AAAA\n",
                "(user \"flannel\", client certificate)",
            ),
            (
                "    tokenFile: /run/token\n",
                "(user \"flannel\", token file /run/token)",
            ),
            ("    token: abc\n", "(user \"flannel\", bearer token)"),
            ("    {}\n", "(user \"flannel\", no credential)"),
        ];
        for (user, wanted) in cases {
            let path = kubeconfig(dir.path(), user);
            let text = describe_credential_with_home(Some(&path), None);
            assert_eq!(text, format!("kubeconfig {} {wanted}", path.display()));
        }
        // No kubeconfig and none in $HOME: kube-rs goes in-cluster.
        let empty_home = tempfile::tempdir().unwrap();
        assert_eq!(
            describe_credential_with_home(None, Some(empty_home.path().to_path_buf())),
            format!("the in-cluster service account token {IN_CLUSTER_TOKEN}")
        );
        // An unreadable file is still named.
        let missing = dir.path().join("missing");
        assert_eq!(
            describe_credential_with_home(Some(&missing), None),
            format!("kubeconfig {}", missing.display())
        );
    }
}
