//! subnet.env + the plugin's config → the delegate plugin's config, as
//! upstream's flannel CNI plugin builds it. Pure.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use super::{Error, NetConf};
use crate::files::SubnetEnv;

/// Builds the delegate config.
///
/// - every key of `delegate` is passed through; `name` and `ipam` there
///   are errors, a non-string `type` too;
/// - `runtimeConfig` of the plugin's config is copied in;
/// - `name` = the network name; `type` defaults to `bridge`;
/// - `ipMasq` defaults to `!FLANNEL_IPMASQ`, `mtu` to `FLANNEL_MTU`;
/// - `isGateway` defaults to true for `bridge`;
/// - `cniVersion` is the plugin config's (when it has one);
/// - `ipam` is the plugin config's `ipam` with `type` defaulting to
///   `host-local`, `ranges` = one range set per family holding the lease,
///   and `routes` = the given routes plus one per cluster network.
///
/// Keys come out sorted at every level (routes in libcni's field order), as
/// Go's `encoding/json` writes them, so [`render_delegate`] gives upstream's
/// bytes.
pub fn build_delegate(conf: &NetConf, env: &SubnetEnv) -> Result<Map<String, Value>, Error> {
    let mut delegate = conf.delegate.clone().unwrap_or_default();
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(Error::InvalidConfig(
            "'delegate' dictionary, if present, must have (string) 'type' field".into(),
        ));
    }
    for key in ["name", "ipam"] {
        if delegate.contains_key(key) {
            return Err(Error::InvalidConfig(format!(
                "'delegate' dictionary must not have '{key}' field, it'll be set by flannel"
            )));
        }
    }
    if let Some(runtime_config) = &conf.runtime_config {
        delegate.insert(
            "runtimeConfig".into(),
            Value::Object(runtime_config.clone()),
        );
    }
    delegate.insert("name".into(), Value::String(conf.name.clone()));
    delegate
        .entry("type")
        .or_insert_with(|| Value::String("bridge".into()));
    delegate.entry("ipMasq").or_insert(Value::Bool(!env.ipmasq));
    delegate.entry("mtu").or_insert(Value::from(env.mtu));
    if delegate.get("type").and_then(Value::as_str) == Some("bridge") {
        delegate.entry("isGateway").or_insert(Value::Bool(true));
    }
    if !conf.cni_version.is_empty() {
        delegate.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }

    let mut ipam = conf.ipam.clone().unwrap_or_default();
    let routes = ipam_routes(&ipam, env)?;
    ipam.entry("type")
        .or_insert_with(|| Value::String("host-local".into()));
    let mut ranges = Vec::new();
    if let Some(subnet) = env.subnet {
        ranges.push(range(IpNetwork::V4(v4_network(subnet))));
    }
    if let Some(subnet) = env.ipv6_subnet {
        ranges.push(range(IpNetwork::V6(v6_network(subnet))));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    ipam.insert("routes".into(), Value::Null);
    delegate.insert("ipam".into(), Value::Object(ipam));

    let mut delegate = sorted_map(delegate);
    // Routes are libcni structs, not maps: their own field order.
    if let Some(Value::Object(ipam)) = delegate.get_mut("ipam") {
        ipam.insert("routes".into(), Value::Array(routes));
    }
    Ok(delegate)
}

/// The delegate config's bytes: compact JSON in the given key order.
pub fn render_delegate(delegate: &Map<String, Value>) -> Vec<u8> {
    // Serializing a Value cannot fail.
    serde_json::to_vec(delegate).unwrap_or_default()
}

/// The `type` of a delegate config (`bridge` unless set).
pub fn delegate_type(delegate: &Map<String, Value>) -> &str {
    delegate
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
}

fn range(subnet: IpNetwork) -> Value {
    let mut entry = Map::new();
    entry.insert("subnet".into(), Value::String(subnet.to_string()));
    Value::Array(vec![Value::Object(entry)])
}

/// The lease as a network (`10.42.0.1/24` → `10.42.0.0/24`).
fn v4_network(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

fn v6_network(net: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// The given `ipam.routes` (re-encoded as libcni's Route struct: `dst`,
/// `gw`, `mtu`, `advmss`, `priority`, `table`, `scope`; other keys are
/// dropped) followed by one route per cluster network, v4 first, each
/// network once.
fn ipam_routes(ipam: &Map<String, Value>, env: &SubnetEnv) -> Result<Vec<Value>, Error> {
    let bad = |problem: String| {
        Error::InvalidConfig(format!(
            "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {problem}"
        ))
    };
    let mut routes = Vec::new();
    match ipam.get("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(given)) => {
            for route in given {
                let Some(route) = route.as_object() else {
                    return Err(bad(format!("a route is not an object: {route}")));
                };
                routes.push(libcni_route(route).map_err(bad)?);
            }
        }
        Some(other) => return Err(bad(format!("not a list: {other}"))),
    }
    let mut networks: Vec<IpNetwork> = Vec::new();
    let all = (env.networks.iter().map(|n| IpNetwork::V4(v4_network(*n)))).chain(
        env.ipv6_networks
            .iter()
            .map(|n| IpNetwork::V6(v6_network(*n))),
    );
    for network in all {
        if !networks.contains(&network) {
            networks.push(network);
        }
    }
    for network in networks {
        let mut route = Map::new();
        route.insert("dst".into(), Value::String(network.to_string()));
        routes.push(Value::Object(route));
    }
    Ok(routes)
}

fn libcni_route(route: &Map<String, Value>) -> Result<Value, String> {
    let mut out = Map::new();
    let dst = route
        .get("dst")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("route without a string dst: {route:?}"))?;
    let dst: IpNetwork = dst
        .contains('/')
        .then(|| dst.parse().ok())
        .flatten()
        .ok_or_else(|| format!("invalid CIDR address: {dst}"))?;
    out.insert("dst".into(), Value::String(dst.to_string()));
    match route.get("gw") {
        None | Some(Value::Null) => {}
        Some(Value::String(gw)) if gw.is_empty() => {}
        Some(Value::String(gw)) => {
            let gw: IpAddr = gw
                .parse()
                .map_err(|_| format!("invalid IP address: {gw}"))?;
            out.insert("gw".into(), Value::String(gw.to_string()));
        }
        Some(other) => return Err(format!("gw must be a string, not {other}")),
    }
    for key in ["mtu", "advmss", "priority", "table", "scope"] {
        match route.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_i64() == Some(0) => {} // omitempty
            Some(value @ Value::Number(n)) if n.is_i64() || n.is_u64() => {
                out.insert(key.into(), value.clone());
            }
            Some(other) => return Err(format!("{key} must be an integer, not {other}")),
        }
    }
    Ok(Value::Object(out))
}

/// Object keys sorted at every level.
fn sorted_map(map: Map<String, Value>) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect()
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(sorted_map(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(text).unwrap()
    }

    fn conf(text: &str) -> NetConf {
        NetConf::parse(text.as_bytes()).unwrap()
    }

    fn build(conf_text: &str, env_text: &str) -> Value {
        Value::Object(build_delegate(&conf(conf_text), &env(env_text)).unwrap())
    }

    // The four subnet.env files of upstream's flannel_linux_test.go.
    const V4: &str =
        "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V4_TWO_NETWORKS: &str = "\nFLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const V6: &str =
        "\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
    const DUAL: &str = "\nFLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";

    /// Upstream's test input (no cniVersion, no delegate, no ipam).
    const UPSTREAM_INPUT: &str = r#"{
        "name": "cni-flannel",
        "type": "flannel",
        "subnetFile": "/tmp/subnet.env",
        "dataDir": "/tmp/dataDir"
    }"#;

    /// Golden: the expected saved delegate of upstream's
    /// flannel_linux_test.go "CNI lifecycle" cases, for the same inputs.
    #[test]
    fn golden_upstream_lifecycle_delegates() {
        let cases = [
            (
                V4,
                json!({
                    "ipMasq": false,
                    "ipam": {
                        "routes": [{"dst": "10.1.0.0/16"}],
                        "ranges": [[{"subnet": "10.1.17.0/24"}]],
                        "type": "host-local"
                    },
                    "isGateway": true,
                    "mtu": 1472,
                    "name": "cni-flannel",
                    "type": "bridge"
                }),
            ),
            (
                V4_TWO_NETWORKS,
                json!({
                    "ipMasq": false,
                    "ipam": {
                        "routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}],
                        "ranges": [[{"subnet": "10.1.17.0/24"}]],
                        "type": "host-local"
                    },
                    "isGateway": true,
                    "mtu": 1472,
                    "name": "cni-flannel",
                    "type": "bridge"
                }),
            ),
            (
                V6,
                json!({
                    "ipMasq": false,
                    "ipam": {
                        "routes": [{"dst": "fc00::/48"}],
                        "ranges": [[{"subnet": "fc00::/64"}]],
                        "type": "host-local"
                    },
                    "isGateway": true,
                    "mtu": 1472,
                    "name": "cni-flannel",
                    "type": "bridge"
                }),
            ),
            (
                DUAL,
                json!({
                    "ipMasq": false,
                    "ipam": {
                        "routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                        "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]],
                        "type": "host-local"
                    },
                    "isGateway": true,
                    "mtu": 1472,
                    "name": "cni-flannel",
                    "type": "bridge"
                }),
            ),
        ];
        for (subnet_env, wanted) in cases {
            assert_eq!(build(UPSTREAM_INPUT, subnet_env), wanted, "{subnet_env}");
        }
    }

    /// Golden: upstream's getDelegateIPAM cases with an input ipam (type,
    /// unknown key, routes with and without gw).
    #[test]
    fn golden_upstream_delegate_ipam() {
        let input_routes = json!([
            {"dst": "10.96.0.0/12"},
            {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}
        ]);
        let input = |ipam_type: Option<&str>| {
            let mut ipam = json!({"unknown-param": "unknown-value", "routes": input_routes});
            if let Some(t) = ipam_type {
                ipam["type"] = json!(t);
            }
            json!({"name": "cni-flannel", "type": "flannel", "ipam": ipam}).to_string()
        };
        let expected = |ipam_type: &str, pod_routes: Value, ranges: Value| {
            let mut routes = input_routes.as_array().unwrap().clone();
            routes.extend(pod_routes.as_array().unwrap().iter().cloned());
            json!({
                "type": ipam_type,
                "unknown-param": "unknown-value",
                "routes": routes,
                "ranges": ranges
            })
        };
        let v4_ranges = json!([[{"subnet": "10.1.17.0/24"}]]);
        let v6_ranges = json!([[{"subnet": "fc00::/64"}]]);
        let dual_ranges = json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]);
        let v4_routes = json!([{"dst": "10.1.0.0/16"}]);
        let v6_routes = json!([{"dst": "fc00::/48"}]);
        let dual_routes = json!([{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]);
        let cases = [
            (Some("my-ipam"), V4, "my-ipam", &v4_routes, &v4_ranges),
            (Some("my-ipam"), V6, "my-ipam", &v6_routes, &v6_ranges),
            (Some("my-ipam"), DUAL, "my-ipam", &dual_routes, &dual_ranges),
            (None, V4, "host-local", &v4_routes, &v4_ranges),
            (None, V6, "host-local", &v6_routes, &v6_ranges),
            (None, DUAL, "host-local", &dual_routes, &dual_ranges),
        ];
        for (given_type, subnet_env, wanted_type, routes, ranges) in cases {
            let delegate = build(&input(given_type), subnet_env);
            assert_eq!(
                delegate["ipam"],
                expected(wanted_type, routes.clone(), ranges.clone()),
                "{given_type:?} {subnet_env}"
            );
        }
        // Upstream's "two networks" ipam case: host-local type, no routes.
        let delegate = build(
            r#"{"name":"cni-flannel","type":"flannel","ipam":{"type":"host-local"}}"#,
            V4_TWO_NETWORKS,
        );
        assert_eq!(
            delegate["ipam"],
            json!({
                "ranges": [[{"subnet": "10.1.17.0/24"}]],
                "routes": [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}],
                "type": "host-local"
            })
        );
    }

    /// Golden, byte for byte: the seed article's
    /// `/var/lib/cni/flannel/<id>` for its conflist and subnet.env.
    #[test]
    fn golden_seed_article_bytes() {
        // What libcni hands the flannel plugin for the seed's conflist.
        let input = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
        let subnet_env = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let delegate = build_delegate(&conf(input), &env(subnet_env)).unwrap();
        assert_eq!(
            String::from_utf8(render_delegate(&delegate)).unwrap(),
            r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    /// k3s's conflist (cniVersion 1.0.0, forceAddress) on k3s's subnet.env.
    #[test]
    fn k3s_conflist_delegate_bytes() {
        let input = r#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}}"#;
        let subnet_env = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let delegate = build_delegate(&conf(input), &env(subnet_env)).unwrap();
        assert_eq!(
            String::from_utf8(render_delegate(&delegate)).unwrap(),
            r#"{"cniVersion":"1.0.0","forceAddress":true,"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.42.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
    }

    #[test]
    fn delegate_keys_table() {
        let v4 = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        // (input delegate/extra keys, key, wanted value)
        let cases: &[(&str, &str, Value)] = &[
            // FLANNEL_IPMASQ=false: the bridge masquerades.
            (r#"{}"#, "ipMasq", json!(true)),
            // Given values win over subnet.env.
            (r#"{"delegate":{"ipMasq":false}}"#, "ipMasq", json!(false)),
            (r#"{"delegate":{"mtu":1400}}"#, "mtu", json!(1400)),
            (
                r#"{"delegate":{"isGateway":false}}"#,
                "isGateway",
                json!(false),
            ),
            // isGateway only for bridge.
            (
                r#"{"delegate":{"type":"ipvlan"}}"#,
                "isGateway",
                Value::Null,
            ),
            (r#"{"delegate":{"type":"ipvlan"}}"#, "type", json!("ipvlan")),
            // Pass-through of anything else, nested maps sorted.
            (
                r#"{"delegate":{"vlan":7,"args":{"z":1,"a":2}}}"#,
                "args",
                json!({"a": 2, "z": 1}),
            ),
            // runtimeConfig is copied in; the config's wins over the
            // delegate's.
            (
                r#"{"runtimeConfig":{"portMappings":[]},"delegate":{"runtimeConfig":{"x":1}}}"#,
                "runtimeConfig",
                json!({"portMappings": []}),
            ),
            // The config's cniVersion wins; without one the delegate
            // dictionary's own (if any) stays.
            (
                r#"{"delegate":{"cniVersion":"0.3.1"}}"#,
                "cniVersion",
                json!("0.3.1"),
            ),
            (
                r#"{"cniVersion":"1.0.0","delegate":{"cniVersion":"0.3.1"}}"#,
                "cniVersion",
                json!("1.0.0"),
            ),
            (r#"{}"#, "cniVersion", Value::Null),
            (r#"{}"#, "name", json!("cbr0")),
        ];
        for (extra, key, wanted) in cases {
            let mut input: Value = serde_json::from_str(extra).unwrap();
            input["name"] = json!("cbr0");
            input["type"] = json!("flannel");
            let delegate = build(&input.to_string(), v4);
            assert_eq!(
                delegate.get(*key).unwrap_or(&Value::Null),
                wanted,
                "{extra} {key}"
            );
        }
    }

    #[test]
    fn invalid_delegates_are_config_errors() {
        let v4 = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let cases = [
            (r#"{"delegate":{"name":"x"}}"#, "must not have 'name' field"),
            (r#"{"delegate":{"ipam":{}}}"#, "must not have 'ipam' field"),
            (
                r#"{"delegate":{"type":5}}"#,
                "must have (string) 'type' field",
            ),
            (
                r#"{"ipam":{"routes":[{"gw":"1.2.3.4"}]}}"#,
                "failed to parse ipam.routes",
            ),
            (
                r#"{"ipam":{"routes":[{"dst":"10.0.0.0"}]}}"#,
                "invalid CIDR address",
            ),
            (
                r#"{"ipam":{"routes":[{"dst":"10.0.0.0/8","gw":"x"}]}}"#,
                "invalid IP address",
            ),
            (r#"{"ipam":{"routes":"all"}}"#, "not a list"),
        ];
        for (input, wanted) in cases {
            let error = build_delegate(&conf(input), &env(v4)).unwrap_err();
            assert_eq!(error.code(), 7, "{input}");
            assert!(error.to_string().contains(wanted), "{input}: {error}");
        }
    }

    #[test]
    fn given_routes_take_libcni_route_shape() {
        let v4 = "FLANNEL_NETWORK=10.42.0.0/16,10.42.0.0/16\nFLANNEL_SUBNET=10.42.0.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let delegate = build_delegate(
            &conf(
                r#"{"name":"n","ipam":{"routes":[{"table":7,"gw":"10.42.0.9","dst":"10.96.0.1/12","junk":1,"mtu":0}]}}"#,
            ),
            &env(v4),
        )
        .unwrap();
        let ipam = serde_json::to_string(&delegate["ipam"]).unwrap();
        // Field order dst, gw, ..., the host bits of dst kept (types.IPNet),
        // zero values omitted, unknown keys dropped, and a duplicated
        // cluster network routed once.
        assert_eq!(
            ipam,
            r#"{"ranges":[[{"subnet":"10.42.0.0/24"}]],"routes":[{"dst":"10.96.0.1/12","gw":"10.42.0.9","table":7},{"dst":"10.42.0.0/16"}],"type":"host-local"}"#
        );
    }

    #[test]
    fn delegate_type_defaults_to_bridge() {
        assert_eq!(delegate_type(&Map::new()), "bridge");
        let mut m = Map::new();
        m.insert("type".into(), json!("macvlan"));
        assert_eq!(delegate_type(&m), "macvlan");
    }
}
