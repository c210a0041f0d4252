//! `flannel-lab`: a local multi-node flannel cluster in network namespaces.
//!
//! ```text
//! flannel-lab up [--nodes 2] [--backend vxlan|host-gw|wireguard-native] [--cluster-cidr 10.42.0.0/16] [--pods-per-node 1] [--outside-host]
//! flannel-lab up --backend host-gw --nodes 3                  # routes via the peers' uplinks, no flannel.1
//! flannel-lab up --cluster-cidr 10.42.0.0/16,fd00:42::/56     # dual-stack: flannel.1 + flannel-v6.1
//! flannel-lab status            # the node table and the pod ping matrices again
//! flannel-lab exec node-0 -- ip route
//! flannel-lab kubectl get nodes -o wide
//! flannel-lab stop-agent node-1 # and start-agent: restart a node's agent
//! flannel-lab down              # removes every namespace, process and file it made
//! ```
//!
//! Everything lives in network namespaces the lab creates (`fl-<id>-*`) and
//! in its directory (`--dir`, default /tmp/flannel-lab); see
//! `integration::lab` for how a lab node looks like a real node to the agent
//! and the CNI plugins without touching the machine's files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use integration::lab::{self, Lab, Options};

#[derive(Parser, Debug)]
#[command(
    name = "flannel-lab",
    about = "A local multi-node flannel cluster: node namespaces on a bridge underlay, one flannel-agent per node, pods attached with the agents' CNI conflists",
    after_help = "Examples:\n  flannel-lab up                                           2 nodes, vxlan, 10.42.0.0/16\n  flannel-lab up --backend host-gw --nodes 3               host-gw: a route per peer via its uplink, no flannel.1\n  flannel-lab up --backend wireguard-native                flannel-wg per node (wireguard-go here), `exec node-0 -- wg show`\n  flannel-lab up --cluster-cidr 10.42.0.0/16,fd00:42::/56  dual-stack: IPv6 underlay too, pods get both\n  flannel-lab up --outside-host                            plus an \"internet\" host 203.0.113.10\n  flannel-lab exec node-0 -- iptables -t nat -S\n  flannel-lab down\n\nEverything lives in network namespaces fl-<id>-* and in --dir; `down` removes it all."
)]
struct Cli {
    /// Lab directory (state, logs, kubeconfig, the nodes' /run and /var/lib).
    #[arg(long, global = true, env = "FLANNEL_LAB_DIR", default_value = lab::DEFAULT_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the lab, start the API server and one agent per node, attach
    /// pods, then print the status table and the pod ping matrix (one per
    /// address family).
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// --flannel-backend for every agent: vxlan (flannel.1, and
        /// flannel-v6.1 when dual-stack), host-gw (one route per peer via
        /// its uplink address, no device) or wireguard-native (flannel-wg,
        /// flannel-wg-v6; wireguard-go when the kernel has no WireGuard).
        #[arg(long, default_value = "vxlan")]
        backend: String,
        /// --cluster-cidr: an IPv4 CIDR, or an IPv4 and an IPv6 CIDR for a
        /// dual-stack lab (10.42.0.0/16,fd00:42::/56). Node i gets the i-th
        /// /24 (and /64) as podCIDRs; dual-stack also puts fd00:1::/64 on
        /// the underlay (node i fd00:1::(10+i)) and gives pods an IPv6
        /// address.
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: String,
        /// Pods per node.
        #[arg(long, default_value_t = 1)]
        pods_per_node: usize,
        /// Lab id, part of every namespace name (fl-ID-n0, ...).
        #[arg(long, default_value = lab::DEFAULT_ID)]
        id: String,
        /// Seconds to wait for each stage (annotations, subnet.env, peers).
        #[arg(long, default_value_t = 30)]
        wait: u64,
        /// Tear down a lab already set up in --dir first.
        #[arg(long)]
        replace: bool,
        /// Add an "internet" host (netns fl-ID-ext, 203.0.113.10 and,
        /// dual-stack, 2001:db8:1::10) behind the underlay gateway: pod
        /// traffic to it leaves masqueraded as the node's uplink address.
        #[arg(long)]
        outside_host: bool,
        /// The API server: https with an ecdsa (as k3s) or rsa (as kind)
        /// CA, client authentication and the shipped RBAC
        /// (integration/deploy/rbac.yaml, copied to DIR/auth/rbac.yaml and
        /// re-read when edited), or none for plain HTTP without
        /// authentication.
        #[arg(long, default_value = "ecdsa", value_parser = ["ecdsa", "rsa", "none"])]
        api_tls: String,
        /// How each agent authenticates (HTTPS only): client-cert (a
        /// kubeconfig with its own certificate, as k3s), token (the
        /// kube-flannel/flannel service account's token in a kubeconfig)
        /// or in-cluster (no kubeconfig: the token and CA under its
        /// /run/secrets/kubernetes.io/serviceaccount and
        /// KUBERNETES_SERVICE_HOST/PORT, as in a DaemonSet pod).
        #[arg(long, default_value = "client-cert")]
        agent_credential: lab::auth::AgentCredential,
    },
    /// Stop every process, delete every namespace and remove the lab's files.
    Down {
        /// Lab id, to clean up namespaces when the state file is gone.
        #[arg(long, default_value = lab::DEFAULT_ID)]
        id: String,
    },
    /// Print the status table (and the pod ping matrices) again.
    Status {
        /// Skip the ping matrices.
        #[arg(long)]
        no_ping: bool,
    },
    /// Run a command inside a node (its network namespace and its /run and
    /// /var/lib): `flannel-lab exec node-0 -- cat /run/flannel/subnet.env`.
    Exec {
        /// node-0, 0, n0 or the namespace name.
        node: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a node's agent (SIGTERM: the data path stays, as after a crash
    /// or an upgrade of the host binary).
    StopAgent {
        /// node-0, 0, n0 or the namespace name.
        node: String,
    },
    /// Start a node's agent again.
    StartAgent {
        /// node-0, 0, n0 or the namespace name.
        node: String,
    },
    /// Run kubectl against the lab's API server.
    Kubectl {
        /// kubectl's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// (internal) Run the node's conflist for a pod; runs inside the node.
    #[command(hide = true)]
    Cni {
        /// ADD or DEL.
        cni_command: String,
        #[arg(long)]
        container_id: String,
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cni_path: String,
        /// The conflist (default: the agent's under its data dir).
        #[arg(long)]
        conflist: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("flannel-lab: {message}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Cmd::Cni {
        cni_command,
        container_id,
        netns,
        cni_path,
        conflist,
    } = &cli.command
    {
        let path = std::env::split_paths(cni_path).collect();
        let result =
            lab::cni::run_on_node(cni_command, container_id, netns, path, conflist.as_deref())?;
        println!("{result}");
        return Ok(ExitCode::SUCCESS);
    }
    if !is_root() {
        return Err("the lab creates network namespaces and mounts: run it as root".into());
    }
    match cli.command {
        Cmd::Up {
            nodes,
            backend,
            cluster_cidr,
            pods_per_node,
            id,
            wait,
            replace,
            outside_host,
            api_tls,
            agent_credential,
        } => {
            let mut options = Options::new(&lab::workspace_bin_dir());
            options.dir = cli.dir;
            options.nodes = nodes;
            options.backend = backend;
            options.cluster_cidr = cluster_cidr;
            options.pods_per_node = pods_per_node;
            options.id = id;
            options.wait = Duration::from_secs(wait);
            options.replace = replace;
            options.outside_host = outside_host;
            options.api = lab::auth::ApiSecurity {
                tls: (api_tls != "none").then_some(api_tls),
                credential: agent_credential,
            };
            if let Ok(filter) = std::env::var("RUST_LOG") {
                options.rust_log = filter;
            }
            up(&options)
        }
        Cmd::Down { id } => down(&cli.dir, &id),
        Cmd::Status { no_ping } => {
            let lab = Lab::open(&cli.dir).map_err(|e| e.to_string())?;
            print_report(&lab, !no_ping)
        }
        Cmd::Exec { node, command } => {
            let lab = Lab::open(&cli.dir).map_err(|e| e.to_string())?;
            let index = find_node(&lab, &node)?;
            let (program, args) = command
                .split_first()
                .ok_or_else(|| "exec needs a command after --".to_string())?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let status = lab
                .node_command(index, program, &args)
                .status()
                .map_err(|e| format!("running {program} in {node}: {e}"))?;
            Ok(exit_code(status.code()))
        }
        Cmd::StopAgent { node } => {
            let mut lab = Lab::open(&cli.dir).map_err(|e| e.to_string())?;
            let index = find_node(&lab, &node)?;
            lab.stop_agent(index);
            println!("flannel-lab: stopped the agent of {}", lab.node(index).name);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::StartAgent { node } => {
            let mut lab = Lab::open(&cli.dir).map_err(|e| e.to_string())?;
            let index = find_node(&lab, &node)?;
            lab.start_agent(index).map_err(|e| e.to_string())?;
            let pid = lab.node(index).agent.as_ref().map_or(0, |p| p.pid);
            println!(
                "flannel-lab: started the agent of {} (pid {pid}, log {})",
                lab.node(index).name,
                lab.agent_log(index).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kubectl { args } => {
            let lab = Lab::open(&cli.dir).map_err(|e| e.to_string())?;
            let status = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(lab.kubeconfig())
                .args(&args)
                .status()
                .map_err(|e| format!("running kubectl: {e}"))?;
            Ok(exit_code(status.code()))
        }
        Cmd::Cni { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn find_node(lab: &Lab, node: &str) -> Result<usize, String> {
    lab.find_node(node).ok_or_else(|| {
        let names: Vec<&str> = lab.nodes().iter().map(|n| n.name.as_str()).collect();
        format!("no node {node:?} in this lab (nodes: {})", names.join(", "))
    })
}

fn exit_code(code: Option<i32>) -> ExitCode {
    ExitCode::from(code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
}

fn up(options: &Options) -> Result<ExitCode, String> {
    println!(
        "flannel-lab: bringing up {} nodes (backend {}, cluster CIDR {}{}) in {}",
        options.nodes,
        options.backend,
        options.cluster_cidr,
        if options.outside_host {
            ", outside host"
        } else {
            ""
        },
        options.dir.display()
    );
    let lab = Lab::up(options, &mut |line| println!("  {line}")).map_err(|e| e.to_string())?;
    let code = print_report(&lab, true);
    let dir = if lab.dir() == std::path::Path::new(lab::DEFAULT_DIR) {
        String::new()
    } else {
        format!(" --dir {}", lab.dir().display())
    };
    let mut examples = vec!["exec node-0 -- ip route"];
    if lab.dual_stack() {
        examples.push("exec node-0 -- ip -6 route");
    }
    examples.push("exec node-1 -- cat /run/flannel/subnet.env");
    if lab.backend() == "vxlan" {
        examples.push("exec node-1 -- bridge fdb show dev flannel.1");
    }
    if lab.backend() == "wireguard-native" {
        examples.push("exec node-1 -- wg show");
    }
    examples.push("exec node-0 -- iptables -t nat -S FLANNEL-POSTRTG");
    let outside_ping = format!(
        "exec node-0 -- ip netns exec {} ping -c 1 {}",
        lab.pods_on(0)
            .first()
            .map_or("<pod>".to_string(), |p| p.name.clone()),
        lab::OUTSIDE_IP
    );
    if lab.outside().is_some() {
        examples.push(&outside_ping);
    }
    examples.extend(["kubectl get nodes -o wide", "status", "down"]);
    lab.keep();
    // How to call us again: lab.sh tells us, else our own path.
    let me = std::env::var("FLANNEL_LAB_CMD").unwrap_or_else(|_| {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "flannel-lab".into())
    });
    println!();
    println!("The lab keeps running in the background. Try:");
    for example in examples {
        println!("  {me}{dir} {example}");
    }
    code
}

fn print_report(lab: &Lab, ping: bool) -> Result<ExitCode, String> {
    let table = lab.status().map_err(|e| e.to_string())?;
    println!();
    print!("{}", table.render());
    if !ping {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    if lab.pods().is_empty() {
        println!(
            "No pods: they are attached once the agents have written /run/flannel/subnet.env."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut all_ok = true;
    for (n, matrix) in lab.ping_matrices().iter().enumerate() {
        if n > 0 {
            println!();
        }
        println!("Pod ping matrix ({}):", matrix.family);
        print!("{}", matrix.render());
        all_ok &= matrix.all_ok();
    }
    if all_ok {
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "Some pods cannot reach each other; the agents' logs are in {}/logs.",
            lab.dir().display()
        );
        Ok(ExitCode::from(2))
    }
}

fn down(dir: &std::path::Path, id: &str) -> Result<ExitCode, String> {
    match lab::state::LabState::load(dir).map_err(|e| e.to_string())? {
        Some(state) => {
            println!(
                "flannel-lab: tearing down lab {} ({} nodes) in {}",
                state.id,
                state.nodes.len(),
                dir.display()
            );
            let lab = Lab::open(dir).map_err(|e| e.to_string())?;
            lab.down().map_err(|e| e.to_string())?;
        }
        None => {
            println!(
                "flannel-lab: no lab state in {}; removing leftovers of lab id {id}",
                dir.display()
            );
            let problems = lab::remove_leftovers(id, dir);
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
        }
    }
    println!("flannel-lab: nothing left");
    Ok(ExitCode::SUCCESS)
}
