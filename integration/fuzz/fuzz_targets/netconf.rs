//! net-conf.json as flanneld reads it (`NetConf::parse`): a rejected file
//! is an error that names net-conf.json (and the field); an accepted one
//! has a canonical form that parses back to the same configuration.
#![no_main]

use flannel_embed::config::NetConf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match NetConf::parse(text) {
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("net-conf.json"), "{message}");
        }
        Ok(conf) => {
            let canonical = conf.render();
            let again = NetConf::parse(&canonical)
                .unwrap_or_else(|e| panic!("the canonical form {canonical} does not parse: {e}"));
            assert_eq!(again, conf, "{canonical}");
            assert_eq!(again.render(), canonical);
        }
    }
});
