//! The image, run the way kubelet runs the DaemonSet, on two lab nodes:
//! integration/build-image.sh builds it, `umoci unpack` makes the bundle,
//! Debian's crun runs each container with what
//! integration/deploy/flannel-embed.yaml says (command, args with `$(VAR)`
//! expanded, env from the downward API and the ConfigMap, capabilities,
//! hostPath, ConfigMap and emptyDir volumes, the service-account token,
//! hostNetwork as the node's network namespace, a read-only root and a
//! read-only `/proc/sys`).
//!
//! Node 0 starts with an empty `/opt/cni/bin` (k3d's node image); node 1
//! with Debian's host-local, loopback and portmap there (kind's node image
//! ships those three). The init container installs what each lacks and
//! the conflist; the agent container comes up in-cluster against the test
//! API server (reached through the node's loopback, as a pod reaches the
//! `kubernetes` Service); its readiness probe answers 200; pods attached
//! with the installed conflist and plugins ping across nodes; the plugins
//! the image installed run in a root without libc; a deleted conflist comes
//! back; SIGTERM ends the agent with status 0.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flannel_embed::cni::install::{required_plugins, CONFLIST_NAME, DEFAULT_PLUGINS_DIR};
use integration::lab::auth::{AgentCredential, ApiSecurity};
use integration::lab::{Lab, Options};
use integration::oci::{Bind, ContainerSpec, Crun, RunningContainer, UnpackedImage};
use integration::relay::{http_get_in_netns, NetnsRelay};
use integration::{builds, deploy};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Volume};

/// kind's node image: these three, static, in /opt/cni/bin.
const KIND_NODE_PLUGINS: [&str; 3] = ["host-local", "loopback", "portmap"];
/// Debian's (dynamically linked) plugins, standing in for kind's.
const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";

/// Builds the image with the repository's own script (incremental: the
/// cargo builds and the delegate build are cached); returns the archive
/// and the layout directory.
fn build_image() -> (PathBuf, PathBuf) {
    let archive = builds::image().unwrap_or_else(|e| panic!("{e}"));
    let layout = archive.with_file_name("layout");
    (archive, layout)
}

/// The image name the layout's index gives containerd.
fn index_image_names(layout: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// What a node's "host" paths are in the lab: `/run` and `/var/lib` are
/// the node's sandbox directories (what its pods and CNI plugins see),
/// anything else a directory of the node's own.
fn host_path(lab: &Lab, index: usize, path: &str) -> PathBuf {
    let sandbox = lab.sandbox(index);
    let node_dir = sandbox.run_dir.parent().expect("a node dir").to_path_buf();
    if let Some(rest) = path.strip_prefix("/run/") {
        sandbox.run_dir.join(rest)
    } else if let Some(rest) = path.strip_prefix("/var/lib/") {
        sandbox.var_lib_dir.join(rest)
    } else {
        node_dir.join("host").join(path.trim_start_matches('/'))
    }
}

/// The container `container` of the DaemonSet's pod on node `index`, as
/// kubelet would make it.
fn container_spec(
    lab: &Lab,
    index: usize,
    container: &Container,
    volumes: &[Volume],
    configmap: &ConfigMap,
    api_port: u16,
    scratch: &Path,
) -> ContainerSpec {
    let node = lab.node(index);
    let mut env = deploy::container_env(container, configmap, &node.name).unwrap();
    // kubelet's service environment for the `kubernetes` Service.
    env.insert("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into());
    env.insert("KUBERNETES_SERVICE_PORT".into(), api_port.to_string());
    let args = deploy::command_line(container, &env);
    let mut binds = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name));
        let source = if let Some(host) = &volume.host_path {
            let source = host_path(lab, index, &host.path);
            match host.type_.as_deref() {
                Some("FileOrCreate") => {
                    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
                    if !source.exists() {
                        std::fs::write(&source, b"").unwrap();
                    }
                }
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&source).unwrap(),
                other => panic!("hostPath type {other:?} for {}", host.path),
            }
            source
        } else if let Some(source) = &volume.config_map {
            // kubelet writes each key of the ConfigMap as a file.
            assert_eq!(Some(&source.name), configmap.metadata.name.as_ref());
            let dir = scratch.join(format!("{}-{}", node.name, volume.name));
            std::fs::create_dir_all(&dir).unwrap();
            for (key, value) in configmap.data.iter().flatten() {
                std::fs::write(dir.join(key), value).unwrap();
            }
            dir
        } else if volume.empty_dir.is_some() {
            let dir = scratch.join(format!("{}-{}", node.name, volume.name));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        } else {
            panic!("unsupported volume {volume:?}")
        };
        binds.push(Bind {
            source,
            destination: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
        });
    }
    // The projected service-account token (automountServiceAccountToken).
    binds.push(Bind {
        source: lab.service_account_dir(index),
        destination: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        read_only: true,
    });
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.privileged, Some(false), "{}", container.name);
    ContainerSpec {
        id: format!("{}-{}-{index}", lab.id(), container.name),
        args,
        env: env.into_iter().collect(),
        add_capabilities: security
            .capabilities
            .and_then(|c| c.add)
            .unwrap_or_default(),
        binds,
        netns: PathBuf::from(format!("/run/netns/{}", node.netns)),
    }
}

fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs each plugin with `CNI_COMMAND=VERSION` chrooted into a directory
/// that holds nothing but the plugins: no libc, no loader.
fn assert_run_without_libc(plugins_dir: &Path, names: &[&str], scratch: &Path) {
    let root = scratch.join("no-libc-root");
    std::fs::create_dir_all(&root).unwrap();
    for name in names {
        let target = root.join(name);
        std::fs::copy(plugins_dir.join(name), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let listing: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listing.len(), names.len(), "only the plugins: {listing:?}");
    for name in names {
        let output = integration::oci::run_with_timeout(
            Command::new("/usr/sbin/chroot")
                .arg(&root)
                .arg(format!("/{name}"))
                .env_clear()
                .env("CNI_COMMAND", "VERSION"),
            Duration::from_secs(10),
        )
        .unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && answer.contains("\"supportedVersions\""),
            "{name} in a root without libc: {:?} {answer} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_daemonset_from_the_image_gives_two_lab_nodes_their_pod_network() {
    let (archive, layout) = build_image();
    let image_name = deploy::image_name().unwrap();
    let version = deploy::image_version().unwrap();
    assert!(
        archive.ends_with(format!("flannel-embed-{version}.tar")),
        "{}",
        archive.display()
    );
    assert_eq!(
        index_image_names(&layout),
        std::slice::from_ref(&image_name)
    );
    let scratch = tempfile::tempdir().unwrap();
    let image = UnpackedImage::unpack(&layout, &version, scratch.path()).unwrap();

    let (daemonset, configmap) = deploy::daemonset_and_configmap().unwrap();
    let pod = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod template");
    assert_eq!(pod.host_network, Some(true));
    let volumes = pod.volumes.clone().unwrap_or_default();
    let init = pod.init_containers.clone().unwrap_or_default()[0].clone();
    let agent = pod.containers[0].clone();
    assert_eq!(init.image.as_deref(), Some(image_name.as_str()));
    assert_eq!(agent.image.as_deref(), Some(image_name.as_str()));

    // The image carries every plugin the shipped conflist needs.
    let conflist = configmap.data.as_ref().unwrap()["cni-conf.json"].clone();
    let required = required_plugins(conflist.as_bytes()).unwrap();
    let image_plugins = image
        .rootfs
        .join(DEFAULT_PLUGINS_DIR.trim_start_matches('/'));
    for plugin in required.names() {
        assert!(
            image_plugins.join(plugin).is_file(),
            "the image has no {plugin} in {DEFAULT_PLUGINS_DIR}"
        );
    }

    let lab_dir = tempfile::tempdir().unwrap();
    let mut options = Options::for_tests("image", lab_dir.path());
    options.nodes = 2;
    options.pods_per_node = 0;
    options.without_agent = [0, 1].into();
    options.api = ApiSecurity {
        tls: Some("ecdsa".into()),
        credential: AgentCredential::InCluster,
    };
    let mut lab = Lab::up(&options, &mut |line| eprintln!("{line}")).unwrap();
    let api_port: u16 = lab
        .api_url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the API URL has a port");
    let crun = Crun::new(&scratch.path().join("crun")).unwrap();
    let probe_port = agent
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|g| match &g.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p as u16,
            other => panic!("named probe port {other:?}"),
        })
        .expect("a readiness probe");

    // Node 1 is kind-shaped: its own host-local, loopback and portmap.
    let kind_bin = host_path(&lab, 1, "/opt/cni/bin");
    std::fs::create_dir_all(&kind_bin).unwrap();
    for plugin in KIND_NODE_PLUGINS {
        std::fs::copy(
            Path::new(SYSTEM_CNI_DIR).join(plugin),
            kind_bin.join(plugin),
        )
        .unwrap();
    }

    let mut relays = Vec::new();
    let mut agents: Vec<RunningContainer> = Vec::new();
    for index in 0..2 {
        let netns = PathBuf::from(format!("/run/netns/{}", lab.node(index).netns));
        relays.push(
            NetnsRelay::start(
                &netns,
                api_port,
                SocketAddr::from(([127, 0, 0, 1], api_port)),
            )
            .unwrap(),
        );
        let spec = container_spec(
            &lab,
            index,
            &init,
            &volumes,
            &configmap,
            api_port,
            scratch.path(),
        );
        let output = crun
            .run_to_end(&image, &spec, Duration::from_secs(60))
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "install-cni on node {index}: {log}"
        );
        let bin_dir = host_path(&lab, index, "/opt/cni/bin");
        for plugin in required.names() {
            let installed = std::fs::read(bin_dir.join(plugin)).unwrap_or_else(|e| {
                panic!("node {index}: {plugin}: {e}; install-cni said:\n{log}")
            });
            let from_image = std::fs::read(image_plugins.join(plugin)).unwrap();
            let nodes_own = index == 1 && KIND_NODE_PLUGINS.contains(&plugin);
            if nodes_own {
                // Kept: kind's copy works with cniVersion 1.0.0.
                assert_eq!(
                    installed,
                    std::fs::read(Path::new(SYSTEM_CNI_DIR).join(plugin)).unwrap(),
                    "node {index}: {plugin} was not kept"
                );
                assert!(
                    log.contains(&format!("kept /opt/cni/bin/{plugin}")),
                    "{log}"
                );
            } else {
                assert!(
                    installed == from_image,
                    "node {index}: {plugin} is not the image's"
                );
            }
        }
        let conf_dir = host_path(&lab, index, "/etc/cni/net.d");
        assert_eq!(
            std::fs::read_to_string(conf_dir.join(CONFLIST_NAME)).unwrap(),
            conflist
        );
        let spec = container_spec(
            &lab,
            index,
            &agent,
            &volumes,
            &configmap,
            api_port,
            scratch.path(),
        );
        let log = scratch.path().join(format!("agent-{index}.log"));
        agents.push(crun.start(&image, &spec, &log).unwrap());
    }

    // What the image installed on the k3d-shaped node runs without libc.
    let all: Vec<&str> = required.names().collect();
    assert_run_without_libc(&host_path(&lab, 0, "/opt/cni/bin"), &all, scratch.path());

    // Ready as kubelet sees it: /readyz on the probe port answers 200.
    for (index, agent) in agents.iter_mut().enumerate() {
        let netns = PathBuf::from(format!("/run/netns/{}", lab.node(index).netns));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match http_get_in_netns(&netns, probe_port, "/readyz") {
                Ok((200, _)) => break,
                other => {
                    assert!(
                        agent.running() && Instant::now() < deadline,
                        "node {index}'s agent not ready ({other:?}); its log:\n{}",
                        agent.log()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        assert!(
            lab.subnet_env(index).is_some(),
            "node {index} has no subnet.env"
        );
        // The pod's /proc/sys is read-only: one warning, and it is up.
        assert!(
            agent.log().contains("/proc/sys is read-only here"),
            "{}",
            agent.log()
        );
    }

    // Pods attached by the installed conflist and plugins, as containerd
    // on the node would run them: ping across, both ways.
    for (index, agent) in agents.iter().enumerate() {
        let bin_dir = host_path(&lab, index, "/opt/cni/bin");
        let conflist = host_path(&lab, index, "/etc/cni/net.d").join(CONFLIST_NAME);
        lab.attach_pod_with(index, 0, &[bin_dir], Some(&conflist))
            .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    }
    let pods: Vec<(String, String)> = lab
        .pods()
        .iter()
        .map(|p| (p.name.clone(), p.ip.clone().unwrap_or_default()))
        .collect();
    for (from, to) in [(0, 1), (1, 0)] {
        wait_for(
            Duration::from_secs(30),
            &format!("pod {} pings pod {}", pods[from].0, pods[to].1),
            || lab.ping(&pods[from].0, &pods[to].1),
        );
    }

    // The rules went where --iptables-mode=detect looked (nothing in
    // either variant on a fresh node: nft, as iptables-wrappers decides).
    let rules = lab
        .exec(0, "iptables-nft", &["-t", "nat", "-S", "FLANNEL-POSTRTG"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("flanneld masq"),
        "{rules:?}"
    );

    // The agent keeps the runtime's conflist (--cni-conf-dir): deleted, it
    // is back, with the ConfigMap's bytes.
    let host_conflist = host_path(&lab, 0, "/etc/cni/net.d").join(CONFLIST_NAME);
    std::fs::remove_file(&host_conflist).unwrap();
    wait_for(Duration::from_secs(10), "the conflist is back", || {
        std::fs::read_to_string(&host_conflist).is_ok_and(|text| text == conflist)
    });

    for agent in agents {
        let log = agent.log();
        let status = agent.stop();
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM must end the agent cleanly ({status:?}); its log:\n{log}"
        );
    }
    drop(relays);
    lab.down().unwrap();
}
