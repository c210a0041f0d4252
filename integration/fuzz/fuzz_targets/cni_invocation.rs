//! The CNI plugin up to the delegate's exec: the CNI_* environment, the
//! network config on stdin and subnet.env, as a container runtime and the
//! agent give them. Input: environment lines (`KEY=VALUE`), a NUL, the
//! stdin bytes, a NUL, the subnet.env text. Whatever comes in, the plugin
//! answers with a CNI error object (code and msg) or, for ADD, with the
//! delegate config it saves, which DEL can read back (checked inside).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let env_text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let stdin = parts.next().unwrap_or_default();
    let subnet_env = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let env: HashMap<String, String> = env_text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.get(name).cloned();
    match flannel_embed::fuzz::cni_invocation(&lookup, stdin, &subnet_env) {
        Ok(Some(saved)) => {
            let value: Value = serde_json::from_slice(&saved).expect("the saved config is JSON");
            assert!(
                value["type"].is_string() && value["ipam"].is_object(),
                "{value}"
            );
        }
        Ok(None) => {}
        Err(error) => {
            let value: Value = serde_json::from_str(&error).expect("the error is JSON");
            assert!(
                value["code"].is_u64() && value["msg"].is_string(),
                "{value}"
            );
        }
    }
});
