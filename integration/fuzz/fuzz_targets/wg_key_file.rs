//! The WireGuard private key file (`parse_key_file`) and the key encodings
//! the annotations and the API socket use: a bad file is an error that
//! never quotes it; a good key survives base64 and hex both ways.
#![no_main]

use flannel_embed::wireguard::keys::{parse_key_file, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_key_file(data) {
        // The message is fixed but for the length: nothing of the file.
        Err(problem) => assert_eq!(
            problem,
            format!(
                "expected 44 characters of base64 (as `wg genkey` writes), found {} bytes",
                data.len()
            )
        ),
        Ok(private) => {
            let key = private.as_key();
            assert_eq!(Key::from_base64(&key.to_base64()).ok(), Some(key));
            assert_eq!(Key::from_hex(&key.to_hex()).ok(), Some(key));
            assert_eq!(
                parse_key_file(key.to_base64().as_bytes())
                    .map(|k| k.as_key())
                    .ok(),
                Some(key)
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = Key::from_hex(text) {
            assert_eq!(key.to_hex(), text.to_ascii_lowercase());
        }
        if let Ok(key) = Key::from_base64(text) {
            assert_eq!(Key::from_base64(&key.to_base64()).ok(), Some(key));
        }
    }
});
