//! The files a kind or k3d user applies (integration/deploy/): valid for
//! the Kubernetes versions we support, and saying what the agent, the image
//! and install-cni expect. What a user would otherwise find out on a
//! cluster: a hostPath that is not where the agent writes, an image name
//! `kind load` does not match, RBAC that differs from what the tests
//! proved, a conflist plugin nobody installs, a probe on the wrong port.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use flannel_embed::cli::FlannelFlags;
use flannel_embed::cni::install::{self, required_plugins};
use flannel_embed::config::{DEFAULT_CLUSTER_CIDR, DEFAULT_SUBNET_FILE};
use flannel_embed::files::K3S_CNI_CONFLIST;
use integration::{builds, deploy};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

/// What kind's node image has in /opt/cni/bin (static, CNI plugins v1.9.1).
const KIND_NODE_PLUGINS: [&str; 4] = ["host-local", "loopback", "ptp", "portmap"];

fn pod_spec(daemonset: &DaemonSet) -> PodSpec {
    daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("the DaemonSet has a pod template")
}

fn configmap_value(configmap: &ConfigMap, key: &str) -> String {
    configmap
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"))
        .clone()
}

/// The hostPath volume mounted at `mount_path` in `container`, and
/// whether the mount is writable.
fn host_path_at(pod: &PodSpec, container: &Container, mount_path: &str) -> (String, bool) {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == mount_path)
        .unwrap_or_else(|| panic!("{} mounts nothing at {mount_path}", container.name));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {}", mount.name));
    let host = volume
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{mount_path} is not a hostPath"));
    (host.path.clone(), !mount.read_only.unwrap_or(false))
}

/// Whether `path` lies in a writable volume mount of `container`.
fn in_writable_mount(container: &Container, path: &Path) -> bool {
    container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| path.starts_with(&m.mount_path) && !m.read_only.unwrap_or(false))
}

/// The agent's command line as the library reads it (the flags the
/// manifest passes besides FlannelFlags are the agent binary's own).
#[derive(Debug, Parser)]
struct AgentLine {
    #[command(flatten)]
    flannel: FlannelFlags,
    #[arg(long)]
    healthz_bind: Option<std::net::SocketAddr>,
}

#[test]
fn the_manifests_validate_strictly_for_the_oldest_and_newest_kubernetes() {
    let script = builds::repo_dir().join("integration/deploy/validate.sh");
    let output = Command::new("bash").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for version in ["1.33", "1.37"] {
        for resource in [
            "daemonset/flannel-embed",
            "clusterrole/flannel",
            "namespace/kube-flannel",
        ] {
            assert!(
                stdout.contains(&format!(
                    "passed for resource {resource} against version {version}"
                )),
                "{stdout}"
            );
        }
    }
    // The validator is strict: a misspelt field fails.
    let dir = tempfile::tempdir().unwrap();
    let misspelt = dir.path().join("misspelt.yaml");
    std::fs::write(
        &misspelt,
        deploy::MANIFEST.replacen("hostNetwork: true", "hostNetwrok: true", 1),
    )
    .unwrap();
    let output = Command::new("bash")
        .arg(&script)
        .arg(&misspelt)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("'hostNetwrok' was unexpected"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_rbac_is_the_file_the_api_tests_use_and_binds_the_pods_account() {
    // Verbatim: everything of rbac.yaml from its first document on.
    let body = &deploy::RBAC[deploy::RBAC.find("apiVersion:").unwrap()..];
    assert!(
        deploy::MANIFEST.contains(body),
        "flannel-embed.yaml must carry integration/deploy/rbac.yaml verbatim"
    );
    let namespace: Namespace = deploy::object("Namespace").unwrap();
    let namespace_name = namespace.metadata.name.clone().unwrap();
    assert_eq!(
        namespace.metadata.labels.as_ref().unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let account: ServiceAccount = deploy::object("ServiceAccount").unwrap();
    let role: ClusterRole = deploy::object("ClusterRole").unwrap();
    let binding: ClusterRoleBinding = deploy::object("ClusterRoleBinding").unwrap();
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace.as_ref(), Some(&namespace_name));
    assert_eq!(account.metadata.namespace.as_ref(), Some(&namespace_name));
    let (daemonset, configmap) = deploy::daemonset_and_configmap().unwrap();
    assert_eq!(daemonset.metadata.namespace.as_ref(), Some(&namespace_name));
    assert_eq!(configmap.metadata.namespace.as_ref(), Some(&namespace_name));
    assert_eq!(
        pod_spec(&daemonset).service_account_name,
        account.metadata.name
    );
    // The lab's in-cluster agents authenticate as this same account.
    assert_eq!(
        integration::lab::auth::SERVICE_ACCOUNT,
        (namespace_name.as_str(), subjects[0].name.as_str())
    );
}

#[test]
fn the_daemonset_matches_the_agent_the_image_and_install_cni() {
    let (daemonset, configmap) = deploy::daemonset_and_configmap().unwrap();
    let pod = pod_spec(&daemonset);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let image = deploy::image_name().unwrap();
    assert!(!image.ends_with(":latest"));
    let init = &pod.init_containers.clone().unwrap_or_default()[0];
    let agent = &pod.containers[0];
    for container in [init, agent] {
        assert_eq!(container.image.as_ref(), Some(&image), "{}", container.name);
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let security = container.security_context.clone().unwrap();
        assert_eq!(security.privileged, Some(false), "{}", container.name);
    }
    let caps = agent
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .and_then(|c| c.add)
        .unwrap_or_default();
    assert_eq!(caps, ["NET_ADMIN", "NET_RAW"]);

    // The agent's flags, as kubelet expands them on node "node-a".
    let env = deploy::container_env(agent, &configmap, "node-a").unwrap();
    assert_eq!(env["NODE_NAME"], "node-a");
    let line = deploy::command_line(agent, &env);
    assert_eq!(line[0], "/usr/bin/flannel-agent");
    let mut parsed = AgentLine::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    // clap reads NODE_NAME from the process environment, which kubelet
    // sets from the downward API.
    parsed.flannel.node_name = Some(env["NODE_NAME"].clone());
    let config = parsed
        .flannel
        .to_builder()
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(config.node_name(), "node-a");
    assert_eq!(
        config.backend().to_string(),
        configmap_value(&configmap, "backend")
    );
    assert_eq!(
        config.cluster_cidrs().to_string(),
        configmap_value(&configmap, "cluster-cidr")
    );
    assert_eq!(
        config.iptables_mode(),
        "detect".parse().unwrap(),
        "an image with both iptables variants must pick the node's"
    );

    // hostPaths are the agent's and the CNI plugin's defaults, mounted at
    // the same paths, writable.
    let subnet_dir = Path::new(DEFAULT_SUBNET_FILE).parent().unwrap();
    assert_eq!(config.subnet_file(), Path::new(DEFAULT_SUBNET_FILE));
    assert_eq!(
        host_path_at(&pod, agent, &subnet_dir.to_string_lossy()),
        (subnet_dir.to_string_lossy().into_owned(), true)
    );
    assert!(config
        .wireguard()
        .key_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("/run/flannel/wgkey"))
        .starts_with(subnet_dir));
    assert_eq!(
        config.cni_conflist_path(),
        Path::new(install::DEFAULT_CONF_DIR).join(install::CONFLIST_NAME)
    );
    assert_eq!(
        host_path_at(&pod, agent, install::DEFAULT_CONF_DIR),
        (install::DEFAULT_CONF_DIR.to_string(), true)
    );
    assert!(
        in_writable_mount(agent, &config.netconf_path()),
        "net-conf.json {} must go to a writable volume (the root is read-only)",
        config.netconf_path().display()
    );
    assert_eq!(
        host_path_at(&pod, agent, "/run/xtables.lock"),
        ("/run/xtables.lock".to_string(), true)
    );
    // The agent keeps the same conflist install-cni writes.
    let config_dir = config.cni_conf_override().expect("--flannel-cni-conf");
    assert_eq!(config_dir.file_name().unwrap(), "cni-conf.json");

    // The probes reach --healthz-bind on the node's loopback.
    let bind = parsed.healthz_bind.expect("--healthz-bind");
    assert!(bind.ip().is_loopback());
    for (probe, path) in [
        (agent.liveness_probe.as_ref(), "/healthz"),
        (agent.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.clone())
            .expect("an httpGet probe");
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(bind.port().into())
        );
    }

    // install-cni: the defaults of the subcommand, mounted at the same
    // paths, and the ConfigMap's conflist.
    let init_env = deploy::container_env(init, &configmap, "node-a").unwrap();
    let init_line = deploy::command_line(init, &init_env);
    assert_eq!(init_line[..2], ["/usr/bin/flannel-agent", "install-cni"]);
    let flag = |name: &str| {
        init_line
            .iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .map(str::to_string)
    };
    assert_eq!(
        flag("cni-bin-dir").as_deref(),
        Some(install::DEFAULT_BIN_DIR)
    );
    assert_eq!(
        flag("cni-conf-dir").as_deref(),
        Some(install::DEFAULT_CONF_DIR)
    );
    assert_eq!(
        flag("cni-conf").as_deref(),
        Some(&*config_dir.to_string_lossy())
    );
    for dir in [install::DEFAULT_BIN_DIR, install::DEFAULT_CONF_DIR] {
        assert_eq!(host_path_at(&pod, init, dir), (dir.to_string(), true));
    }
}

#[test]
fn the_real_binary_accepts_the_manifests_command_lines() {
    let (daemonset, configmap) = deploy::daemonset_and_configmap().unwrap();
    let pod = pod_spec(&daemonset);
    let agent_bin = integration::lab::workspace_bin_dir().join("flannel-agent");

    // install-cni with the manifest's flags, its paths moved under a
    // scratch root, the image's plugins faked.
    let root = tempfile::tempdir().unwrap();
    let init = &pod.init_containers.clone().unwrap_or_default()[0];
    let env = deploy::container_env(init, &configmap, "node-a").unwrap();
    let line = deploy::command_line(init, &env);
    let moved: Vec<String> = line[2..]
        .iter()
        .map(|arg| match arg.split_once("=/") {
            Some((flag, path)) => format!("{flag}={}/{path}", root.path().display()),
            None => arg.clone(),
        })
        .collect();
    let conf = root.path().join("etc/flannel-embed/cni-conf.json");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, configmap_value(&configmap, "cni-conf.json")).unwrap();
    let plugins = root.path().join("image-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let conflist = configmap_value(&configmap, "cni-conf.json");
    for plugin in required_plugins(conflist.as_bytes()).unwrap().names() {
        std::fs::write(plugins.join(plugin), "#!/bin/sh\n").unwrap();
    }
    let output = Command::new(&agent_bin)
        .arg("install-cni")
        .args(&moved)
        .arg(format!("--plugins-dir={}", plugins.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{moved:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(root.path().join("opt/cni/bin/bridge").is_file());
    assert!(root
        .path()
        .join("etc/cni/net.d/10-flannel.conflist")
        .is_file());

    // The agent with the manifest's flags gets as far as the credential:
    // every flag is known and the configuration is valid.
    let agent = &pod.containers[0];
    let env = deploy::container_env(agent, &configmap, "node-a").unwrap();
    let line = deploy::command_line(agent, &env);
    let missing = root.path().join("no-kubeconfig");
    let output = Command::new(&agent_bin)
        .args(&line[1..])
        .arg(format!("--kubeconfig={}", missing.display()))
        .env("NODE_NAME", "node-a")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read kubeconfig {}", missing.display())),
        "{stderr}"
    );
}

#[test]
fn every_plugin_the_conflist_names_is_installed_by_install_cni() {
    let (_, configmap) = deploy::daemonset_and_configmap().unwrap();
    let conflist = configmap_value(&configmap, "cni-conf.json");
    // k3s's conflist, byte for byte.
    assert_eq!(conflist, K3S_CNI_CONFLIST);
    let required: BTreeSet<String> = required_plugins(conflist.as_bytes())
        .unwrap()
        .names()
        .map(str::to_string)
        .collect();
    // What the image carries: our plugin and the static delegates.
    let delegates = builds::static_delegates().unwrap_or_else(|e| panic!("{e}"));
    let mut carried: BTreeSet<String> = std::fs::read_dir(&delegates)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    carried.insert(install::OWN_PLUGIN.to_string());
    for plugin in &required {
        let path = delegates.join(plugin);
        if plugin != install::OWN_PLUGIN {
            assert_eq!(
                builds::elf_interpreter(&path).unwrap(),
                None,
                "{} must be static (k3d's nodes have no libc)",
                path.display()
            );
        }
    }
    // k3d's nodes have nothing: the image must carry all of it.
    let missing: Vec<&String> = required.difference(&carried).collect();
    assert!(missing.is_empty(), "nobody installs {missing:?}");
    // kind's nodes lack bridge and bandwidth (flannel #1847): those come
    // from the image there too.
    let kind_lacks: BTreeSet<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|p| !KIND_NODE_PLUGINS.contains(p))
        .collect();
    assert_eq!(kind_lacks, ["bandwidth", "bridge", "flannel"].into());
}

#[test]
fn the_cluster_configs_match_the_configmap() {
    let (_, configmap) = deploy::daemonset_and_configmap().unwrap();
    let cidr = configmap_value(&configmap, "cluster-cidr");

    let kind: Value = serde_saphyr::from_str(deploy::KIND_CONFIG).unwrap();
    assert_eq!(kind["kind"], "Cluster");
    assert_eq!(kind["apiVersion"], "kind.x-k8s.io/v1alpha4");
    assert_eq!(kind["networking"]["disableDefaultCNI"], true);
    assert_eq!(kind["networking"]["podSubnet"], cidr.as_str());
    let roles: Vec<&str> = kind["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["role"].as_str())
        .collect();
    assert_eq!(roles, ["control-plane", "worker"]);

    let k3d: Value = serde_saphyr::from_str(deploy::K3D_CONFIG).unwrap();
    assert_eq!(k3d["apiVersion"], "k3d.io/v1alpha5");
    assert_eq!(k3d["kind"], "Simple");
    let args: BTreeMap<String, Vec<String>> = k3d["options"]["k3s"]["extraArgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let filters = a["nodeFilters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (a["arg"].as_str().unwrap().to_string(), filters)
        })
        .collect();
    assert_eq!(args["--flannel-backend=none"], ["server:*"]);
    // k3s allocates podCIDRs from its default --cluster-cidr.
    assert_eq!(cidr, DEFAULT_CLUSTER_CIDR);
}

#[test]
fn the_readme_walks_through_kind_and_k3d_with_the_repositorys_files() {
    let readme = std::fs::read_to_string(builds::repo_dir().join("README.md")).unwrap();
    let section = |title: &str| {
        let start = readme
            .find(title)
            .unwrap_or_else(|| panic!("README has no {title:?} section"));
        let rest = &readme[start + title.len()..];
        let end = ["\n## ", "\n### "]
            .iter()
            .filter_map(|marker| rest.find(marker))
            .min()
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let image = deploy::image_name().unwrap();
    let version = deploy::image_version().unwrap();
    let archive = format!("flannel-embed-{version}.tar");
    for (title, commands) in [
        (
            "### kind",
            &[
                "bash integration/build-image.sh",
                "kind create cluster --name flannel-embed --config integration/deploy/kind-config.yaml",
                "kind load image-archive",
                "kubectl apply -f integration/deploy/flannel-embed.yaml",
                "kubectl -n kube-flannel rollout status daemonset/flannel-embed",
                "ping",
            ][..],
        ),
        (
            "### k3d",
            &[
                "bash integration/build-image.sh",
                "k3d cluster create --config integration/deploy/k3d-config.yaml",
                "k3d image import",
                "kubectl apply -f integration/deploy/flannel-embed.yaml",
                "kubectl -n kube-flannel rollout status daemonset/flannel-embed",
                "ping",
            ][..],
        ),
    ] {
        let text = section(title);
        for command in commands {
            assert!(text.contains(command), "README {title} lacks {command:?}");
        }
        assert!(text.contains(&archive), "README {title} names another archive");
        // Every repository file it names exists.
        for word in text.split(|c: char| c.is_whitespace() || "`()'\"".contains(c)) {
            if word.starts_with("integration/") {
                assert!(
                    builds::repo_dir().join(word).exists(),
                    "README {title} names {word}, which does not exist"
                );
            }
        }
    }
    assert!(readme.contains(&image));
}
