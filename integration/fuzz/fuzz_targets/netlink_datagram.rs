//! The netlink decoding we wrote ourselves (netlink-packet-route has no
//! nexthop messages): a datagram split into messages, each decoded as an
//! error/acknowledgement or a nexthop, as the batch, dump and monitor
//! readers do. Anything the kernel could send must decode or be skipped,
//! without a panic, and in time linear in its length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = flannel_embed::fuzz::netlink_datagram(data);
    // Every message has a 16-byte header.
    assert!(decoded <= data.len() / 16);
});
