//! CNI spec versions: which ones the plugin speaks, which one to ask of the
//! delegate, and converting results between them. All pure.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

/// A CNI spec version this plugin speaks, oldest first (the order is the
/// spec's order, so `<` compares versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0
    V0_3_0,
    /// 0.3.1
    V0_3_1,
    /// 0.4.0: adds CHECK.
    V0_4_0,
    /// 1.0.0: drops `version` from result IPs.
    V1_0_0,
    /// 1.1.0: adds STATUS and GC, more route and interface fields.
    V1_1_0,
}

/// Every version the plugin accepts, as `VERSION` reports them.
pub const SUPPORTED_VERSIONS: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The newest version the plugin speaks.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// The version string (`"1.0.0"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The supported versions as strings, for messages and `VERSION`.
    pub fn supported_strings() -> Vec<&'static str> {
        SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of [`SUPPORTED_VERSIONS`] (the match is exact, as
/// libcni's is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnsupportedVersion(pub String);

impl FromStr for CniVersion {
    type Err = UnsupportedVersion;

    fn from_str(text: &str) -> Result<CniVersion, UnsupportedVersion> {
        SUPPORTED_VERSIONS
            .into_iter()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| UnsupportedVersion(text.to_string()))
    }
}

/// Which version to put into the delegate's config: the requested one when
/// the delegate speaks it (upstream always copies it), otherwise the newest
/// version both speak. `None` when they share none.
///
/// ```
/// use flannel_embed::cni::{negotiate_delegate_version, CniVersion};
/// // bridge v1.1.1 stops at 1.0.0.
/// let bridge = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// assert_eq!(negotiate_delegate_version(CniVersion::V1_1_0, &bridge), Some(CniVersion::V1_0_0));
/// assert_eq!(negotiate_delegate_version(CniVersion::V0_3_1, &bridge), Some(CniVersion::V0_3_1));
/// ```
pub fn negotiate_delegate_version(
    requested: CniVersion,
    delegate_supports: &[impl AsRef<str>],
) -> Option<CniVersion> {
    let theirs: Vec<CniVersion> = delegate_supports
        .iter()
        .filter_map(|v| v.as_ref().parse().ok())
        .collect();
    if theirs.contains(&requested) {
        return Some(requested);
    }
    theirs.into_iter().max()
}

/// A result that cannot be converted (not a CNI result of a version we know).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConversionError(pub String);

/// Converts a CNI result (0.3.0 … 1.1.0) to `to`, the way libcni's
/// converters do: `ips[].version` exists before 1.0.0 only (derived from the
/// address family), and the fields 1.1.0 added to routes (`mtu`, `advmss`,
/// `priority`, `table`, `scope`) and interfaces (`mtu`, `socketPath`,
/// `pciID`) are dropped for older versions. Everything else is kept as is.
pub fn convert_result(result: &Value, to: CniVersion) -> Result<Value, ConversionError> {
    let bad = ConversionError;
    let Some(object) = result.as_object() else {
        return Err(bad(format!("the result is not a JSON object: {result}")));
    };
    let from = match object.get("cniVersion") {
        Some(Value::String(v)) => v
            .parse::<CniVersion>()
            .map_err(|_| bad(format!("cannot convert a result of CNI version {v:?}")))?,
        _ => return Err(bad("the result has no cniVersion".into())),
    };
    let mut out = object.clone();
    out.insert("cniVersion".into(), Value::String(to.as_str().into()));

    if let Some(Value::Array(ips)) = out.get_mut("ips") {
        for ip in ips.iter_mut() {
            let Some(ip) = ip.as_object_mut() else {
                return Err(bad(format!("an entry of ips is not an object: {ip}")));
            };
            if to >= CniVersion::V1_0_0 {
                ip.remove("version");
            } else if from >= CniVersion::V1_0_0 || !ip.contains_key("version") {
                let family = address_family(ip)
                    .ok_or_else(|| bad(format!("ips entry without a valid address: {ip:?}")))?;
                ip.insert("version".into(), Value::String(family.into()));
            }
        }
    }
    if to < CniVersion::V1_1_0 {
        strip_keys(
            &mut out,
            "routes",
            &["mtu", "advmss", "priority", "table", "scope"],
        );
        strip_keys(&mut out, "interfaces", &["mtu", "socketPath", "pciID"]);
    }
    Ok(Value::Object(out))
}

/// Fills `gw` of every route that has none with the gateway of the first
/// `ips` entry of the same family: what the IPAM code of the reference
/// plugins installs for such a route (`10.42.0.0/16 via 10.42.0.1`). The
/// flannel plugin hands the delegate's CHECK a prevResult patched this way,
/// because bridge before v1.3.0 (containernetworking/plugins#886) looks for
/// a route without a gateway and so fails CHECK for every flannel pod.
pub fn fill_route_gateways(result: &mut Value) {
    let gateways: Vec<(&'static str, String)> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| {
            let ip = ip.as_object()?;
            let family = address_family(ip)?;
            let gateway = ip.get("gateway")?.as_str()?.to_string();
            Some((family, gateway))
        })
        .collect();
    let Some(Value::Array(routes)) = result.get_mut("routes") else {
        return;
    };
    for route in routes.iter_mut().filter_map(Value::as_object_mut) {
        if route.get("gw").is_some_and(|gw| !gw.is_null()) {
            continue;
        }
        let family = match route
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|dst| dst.parse::<ipnetwork::IpNetwork>().ok())
        {
            Some(ipnetwork::IpNetwork::V4(_)) => "4",
            Some(ipnetwork::IpNetwork::V6(_)) => "6",
            None => continue,
        };
        if let Some((_, gateway)) = gateways.iter().find(|(f, _)| *f == family) {
            route.insert("gw".into(), Value::String(gateway.clone()));
        }
    }
}

fn address_family(ip: &Map<String, Value>) -> Option<&'static str> {
    let address = ip.get("address")?.as_str()?;
    match address.parse::<ipnetwork::IpNetwork>().ok()? {
        ipnetwork::IpNetwork::V4(_) => Some("4"),
        ipnetwork::IpNetwork::V6(_) => Some("6"),
    }
}

fn strip_keys(result: &mut Map<String, Value>, list: &str, keys: &[&str]) {
    if let Some(Value::Array(entries)) = result.get_mut(list) {
        for entry in entries.iter_mut().filter_map(Value::as_object_mut) {
            for key in keys {
                entry.remove(*key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_parse_exactly_and_order_like_the_spec() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(v.as_str().parse::<CniVersion>(), Ok(v));
        }
        for bad in ["0.1.0", "0.2.0", "1.0", "1.2.0", "", " 1.0.0", "v1.0.0"] {
            assert!(bad.parse::<CniVersion>().is_err(), "{bad:?}");
        }
        assert!(CniVersion::V0_3_1 < CniVersion::V0_4_0);
        assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
        assert_eq!(
            CniVersion::supported_strings(),
            ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        );
    }

    #[test]
    fn negotiation_table() {
        let bridge_111 = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
        let modern = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
        let ancient = ["0.1.0", "0.2.0"];
        let cases: &[(CniVersion, &[&str], Option<CniVersion>)] = &[
            (CniVersion::V1_1_0, &bridge_111, Some(CniVersion::V1_0_0)),
            (CniVersion::V1_0_0, &bridge_111, Some(CniVersion::V1_0_0)),
            (CniVersion::V0_3_0, &bridge_111, Some(CniVersion::V0_3_0)),
            (CniVersion::V1_1_0, &modern, Some(CniVersion::V1_1_0)),
            (CniVersion::V1_1_0, &ancient, None),
            (CniVersion::V0_4_0, &[], None),
        ];
        for (requested, theirs, wanted) in cases {
            assert_eq!(
                negotiate_delegate_version(*requested, theirs),
                *wanted,
                "{requested} vs {theirs:?}"
            );
        }
    }

    /// What bridge v1.1.1 printed for the seed's pod, at 1.0.0.
    fn bridge_result_100() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "6a:0f:94:28:9b:e7"},
                {"name": "veth38b50fb4", "mac": "ca:b4:a9:83:0f:d4"},
                {"name": "eth0", "mac": "0a:01:c5:6f:57:67", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [
                {"interface": 2, "address": "10.42.0.5/24", "gateway": "10.42.0.1"},
                {"interface": 2, "address": "fd00:42::5/64", "gateway": "fd00:42::1"}
            ],
            "routes": [{"dst": "10.42.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.42.0.1"}],
            "dns": {}
        })
    }

    #[test]
    fn conversion_table() {
        let r100 = bridge_result_100();
        let mut r040 = r100.clone();
        r040["cniVersion"] = json!("0.4.0");
        r040["ips"][0]["version"] = json!("4");
        r040["ips"][1]["version"] = json!("6");
        let mut r031 = r040.clone();
        r031["cniVersion"] = json!("0.3.1");
        let mut r110 = r100.clone();
        r110["cniVersion"] = json!("1.1.0");

        let cases = [
            (&r100, CniVersion::V0_3_0, {
                let mut v = r040.clone();
                v["cniVersion"] = json!("0.3.0");
                v
            }),
            (&r100, CniVersion::V0_3_1, r031.clone()),
            (&r100, CniVersion::V0_4_0, r040.clone()),
            (&r100, CniVersion::V1_0_0, r100.clone()),
            (&r100, CniVersion::V1_1_0, r110.clone()),
            (&r040, CniVersion::V1_0_0, r100.clone()),
            (&r031, CniVersion::V0_4_0, r040.clone()),
            (&r110, CniVersion::V0_3_1, r031.clone()),
        ];
        for (input, to, wanted) in cases {
            assert_eq!(
                convert_result(input, to).unwrap(),
                wanted,
                "{input} -> {to}"
            );
        }
    }

    #[test]
    fn fields_new_in_1_1_0_are_dropped_for_older_versions() {
        let r110 = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mtu": 1450, "socketPath": "/s", "pciID": "0000:00:01.0"}],
            "ips": [{"address": "10.42.0.5/24"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 7, "scope": 0}]
        });
        let r100 = convert_result(&r110, CniVersion::V1_0_0).unwrap();
        assert_eq!(
            r100,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0"}],
                "ips": [{"address": "10.42.0.5/24"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.42.0.1"}]
            })
        );
        assert_eq!(
            convert_result(&r110, CniVersion::V1_1_0).unwrap()["routes"][0]["table"],
            7
        );
    }

    #[test]
    fn route_gateways_are_filled_per_family() {
        let mut result = json!({
            "cniVersion": "1.0.0",
            "ips": [
                {"address": "10.42.0.5/24", "gateway": "10.42.0.1"},
                {"address": "fd00:42::5/64", "gateway": "fd00:42::1"}
            ],
            "routes": [
                {"dst": "10.42.0.0/16"},
                {"dst": "fd00:42::/56"},
                {"dst": "0.0.0.0/0", "gw": "10.42.0.254"},
                {"dst": "10.96.0.0/12", "gw": null},
                {"dst": "bogus"}
            ]
        });
        fill_route_gateways(&mut result);
        assert_eq!(
            result["routes"],
            json!([
                {"dst": "10.42.0.0/16", "gw": "10.42.0.1"},
                {"dst": "fd00:42::/56", "gw": "fd00:42::1"},
                {"dst": "0.0.0.0/0", "gw": "10.42.0.254"},
                {"dst": "10.96.0.0/12", "gw": "10.42.0.1"},
                {"dst": "bogus"}
            ])
        );
        // No gateway of that family: left alone.
        let mut v6_only = json!({
            "ips": [{"address": "fc00::2/64", "gateway": "fc00::1"}],
            "routes": [{"dst": "10.0.0.0/8"}]
        });
        fill_route_gateways(&mut v6_only);
        assert_eq!(v6_only["routes"], json!([{"dst": "10.0.0.0/8"}]));
    }

    #[test]
    fn unconvertible_results_are_errors() {
        let cases = [
            (json!([1]), "not a JSON object"),
            (json!({"ips": []}), "no cniVersion"),
            (json!({"cniVersion": "0.2.0", "ip4": {}}), "\"0.2.0\""),
            (
                json!({"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]}),
                "without a valid address",
            ),
        ];
        for (input, wanted) in cases {
            let message = convert_result(&input, CniVersion::V0_3_1)
                .unwrap_err()
                .to_string();
            assert!(message.contains(wanted), "{input}: {message}");
        }
    }
}
