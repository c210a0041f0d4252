//! The plugin's own network config (what libcni hands the `flannel`
//! plugin on stdin). Pure.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::Error;

/// Where subnet.env is read from unless the config says `subnetFile`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Where delegate configs are saved unless the config says `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// One attachment from a GC request's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// CNI_CONTAINERID of the attachment.
    pub container_id: String,
    /// CNI_IFNAME of the attachment.
    pub ifname: String,
}

/// The `flannel` plugin's network config.
///
/// Top-level keys are matched without regard to case and the last of two
/// spellings wins, as Go's `encoding/json` does for upstream's struct;
/// keys inside `delegate` and `ipam` are passed on as written.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` as written ("" when absent).
    pub cni_version: String,
    /// `name`: the network name, the delegate's name.
    pub name: String,
    /// `subnetFile` (default [`DEFAULT_SUBNET_FILE`]).
    pub subnet_file: PathBuf,
    /// `dataDir` (default [`DEFAULT_DATA_DIR`]).
    pub data_dir: PathBuf,
    /// `delegate`: keys for the delegate's config.
    pub delegate: Option<Map<String, Value>>,
    /// `ipam`: keys for the delegate's IPAM section.
    pub ipam: Option<Map<String, Value>>,
    /// `runtimeConfig`: copied into the delegate.
    pub runtime_config: Option<Map<String, Value>>,
    /// `prevResult` (CHECK passes it to the delegate).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decodes the config. A wrong JSON type for a known key is a decode
    /// error, as for upstream.
    ///
    /// ```
    /// use flannel_embed::cni::NetConf;
    /// let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel"}"#)?;
    /// assert_eq!(conf.subnet_file.to_str(), Some("/run/flannel/subnet.env"));
    /// assert_eq!(conf.data_dir.to_str(), Some("/var/lib/cni/flannel"));
    /// # Ok::<(), flannel_embed::cni::Error>(())
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<NetConf, Error> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(Error::Decode(
                "the network config is not a JSON object".into(),
            ));
        };
        let string = |key: &str| -> Result<Option<String>, Error> {
            match lookup(&map, key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(Error::Decode(format!(
                    "{key} must be a string, not {other}"
                ))),
            }
        };
        let object = |key: &str| -> Result<Option<Map<String, Value>>, Error> {
            match lookup(&map, key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Object(o)) => Ok(Some(o.clone())),
                Some(other) => Err(Error::Decode(format!(
                    "{key} must be an object, not {other}"
                ))),
            }
        };
        Ok(NetConf {
            cni_version: string("cniVersion")?.unwrap_or_default(),
            name: string("name")?.unwrap_or_default(),
            subnet_file: string("subnetFile")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into())
                .into(),
            data_dir: string("dataDir")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
                .into(),
            delegate: object("delegate")?,
            ipam: object("ipam")?,
            runtime_config: object("runtimeConfig")?,
            prev_result: lookup(&map, "prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments: attachments(lookup(&map, "cni.dev/valid-attachments"))?,
        })
    }
}

/// The cniVersion of a config, before anything else is decoded (so that an
/// unsupported version is reported as such even when the rest is odd).
/// `None` when the key is absent; libcni then means "0.1.0".
pub fn config_version(bytes: &[u8]) -> Result<Option<String>, Error> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Decode(format!("decoding version from network config: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::Decode(
            "decoding version from network config: not a JSON object".into(),
        ));
    };
    match lookup(&map, "cniVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::Decode(format!(
            "decoding version from network config: cniVersion must be a string, not {other}"
        ))),
    }
}

/// The last value whose key equals `key` ignoring ASCII case.
fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.iter()
        .rfind(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn attachments(value: Option<&Value>) -> Result<Option<Vec<Attachment>>, Error> {
    let bad = |what: &str| Error::Decode(format!("cni.dev/valid-attachments: {what}"));
    let list = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad("not a list")),
    };
    list.iter()
        .map(|entry| {
            let field = |key: &str| {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| bad(&format!("an entry has no string {key:?}: {entry}")))
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: entry
                    .get("ifname")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_explicit_locations() {
        let conf = NetConf::parse(br#"{"name":"cni-flannel","type":"flannel"}"#).unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(conf.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(conf.cni_version, "");
        assert_eq!(conf.delegate, None);

        let conf = NetConf::parse(
            br#"{"name":"n","type":"flannel","subnetFile":"/tmp/s.env","dataDir":"/tmp/d","delegate":{"hairpinMode":true}}"#,
        )
        .unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(conf.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(
            conf.delegate.unwrap(),
            json!({"hairpinMode": true}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn top_level_keys_ignore_case_last_wins() {
        let conf = NetConf::parse(
            br#"{"Name":"first","name":"second","SUBNETFILE":"/a","Delegate":{"Type":"ptp"}}"#,
        )
        .unwrap();
        assert_eq!(conf.name, "second");
        assert_eq!(conf.subnet_file, PathBuf::from("/a"));
        // Keys inside delegate are kept exactly as written.
        assert!(conf.delegate.unwrap().contains_key("Type"));
    }

    #[test]
    fn decode_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "failed to load netconf"),
            (b"[1]", "not a JSON object"),
            (br#"{"name":5}"#, "name must be a string"),
            (br#"{"delegate":"bridge"}"#, "delegate must be an object"),
            (br#"{"ipam":[1]}"#, "ipam must be an object"),
            (br#"{"cni.dev/valid-attachments":{}}"#, "not a list"),
            (
                br#"{"cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                "containerID",
            ),
        ];
        for (input, wanted) in cases {
            let error = NetConf::parse(input).unwrap_err();
            assert_eq!(error.code(), 6);
            let message = error.to_string();
            assert!(message.contains(wanted), "{message}");
        }
    }

    #[test]
    fn gc_attachments_and_prev_result() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"cbr0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"prevResult":{"cniVersion":"1.1.0"}}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments,
            Some(vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
        assert_eq!(conf.prev_result, Some(json!({"cniVersion": "1.1.0"})));
    }

    #[test]
    fn version_is_read_first() {
        assert_eq!(
            config_version(br#"{"cniVersion":"0.2.0","x":[}"#).map_err(|e| e.code()),
            Err(6)
        );
        assert_eq!(
            config_version(br#"{"CNIVersion":"1.0.0"}"#)
                .unwrap()
                .as_deref(),
            Some("1.0.0")
        );
        assert_eq!(config_version(br#"{"name":"x"}"#).unwrap(), None);
    }
}
