//! The answers of a userspace WireGuard (wireguard-go, boringtun) on its
//! API socket: `get=1` (`parse_get`) and `set=1` (`parse_errno`). A bad
//! answer is an error naming the line, never quoting the private key or
//! a preshared key; a good one gives each peer once, sorted by public key.
#![no_main]

use flannel_embed::wireguard::uapi::{parse_errno, parse_get};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(answer) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_errno(answer);
    match parse_get(answer) {
        Err(problem) => {
            for line in answer.lines() {
                let secret = line
                    .strip_prefix("private_key=")
                    .or_else(|| line.strip_prefix("preshared_key="));
                if let Some(secret) = secret {
                    // Keys are 64 hex digits; shorter "secrets" can be
                    // made of the message's own words (or the marker).
                    if secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
                        assert!(!problem.contains(secret), "{problem}");
                    }
                }
            }
        }
        Ok((state, _errno)) => {
            let keys: Vec<_> = state.peers.iter().map(|p| p.public_key).collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]), "peers sorted");
        }
    }
});
