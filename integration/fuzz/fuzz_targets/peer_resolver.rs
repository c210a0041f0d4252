//! The incremental peer set (`PeerResolver`, one Node event at a time,
//! overlaps resolved older-first) against the full build over the same
//! Nodes: after every event both must be the same set with the same skip
//! reasons, whatever the Nodes claim (duplicate leases, nested CIDRs, our
//! own lease, flapping between valid and invalid).
#![no_main]

#[path = "nodes.rs"]
mod nodes;

use std::collections::HashMap;

use flannel_embed::kube_subnet::{assemble_peer_set, Candidate, PeerResolver};
use libfuzzer_sys::fuzz_target;

/// Leases a Node may claim: equal, nested, adjacent, ours, outside.
const CIDRS: [&str; 8] = [
    "10.42.1.0/24",
    "10.42.1.0/24",
    "10.42.1.128/25",
    "10.42.0.0/23",
    "10.42.2.0/24",
    "10.42.0.0/24",
    "10.43.0.0/24",
    "10.42.0.0/16",
];

fuzz_target!(|data: &[u8]| {
    let ctx = &nodes::contexts()[0];
    let mut resolver = PeerResolver::new(ctx.own_lease);
    let mut current: HashMap<String, Candidate> = HashMap::new();
    // Each event is two bytes: which of 6 Nodes, and what it becomes.
    for event in data.chunks_exact(2).take(64) {
        let name = format!("node-{}", event[0] % 6);
        let what = event[1];
        let candidate = if what == 0xff {
            None
        } else {
            let cidr = CIDRS[usize::from(what % 8)];
            let valid = what & 0x08 == 0;
            let fields = format!(
                "{name}\ntrue\nvxlan\n{}\n192.168.1.{}\n\n\n\n\n{cidr}\n\n{}",
                if valid {
                    r#"{"VNI":1,"VtepMAC":"0a:58:0a:2a:01:00"}"#
                } else {
                    "not json"
                },
                what % 200 + 1,
                what >> 4,
            );
            let node = nodes::node(&[&[1u8][..], fields.as_bytes()].concat())
                .expect("a structured Node always decodes");
            Some(Candidate::from_node(&node, ctx))
        };
        match &candidate {
            Some(c) => current.insert(name.clone(), c.clone()),
            None => current.remove(&name),
        };
        resolver.set(&name, candidate);
        let full = assemble_peer_set(current.values(), &ctx.own_lease);
        assert_eq!(resolver.build(), &full, "after {name} became {what}");
    }
});
