//! subnet.env as the CNI plugin reads it (`SubnetEnv::parse`): a rejected
//! file is an error naming the line or the missing key; an accepted one
//! renders to the agent's canonical file, which parses back to the same
//! value (render(parse(x)) is a fixed point).
#![no_main]

use flannel_embed::files::SubnetEnv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SubnetEnv::parse(text) {
        Err(problem) => assert!(
            problem.starts_with("line ") || problem.contains("FLANNEL_"),
            "{problem}"
        ),
        Ok(env) => {
            let canonical = env.render();
            let again = SubnetEnv::parse(&canonical)
                .unwrap_or_else(|e| panic!("the rendered file does not parse: {e}\n{canonical}"));
            assert_eq!(again, env, "{canonical}");
            assert_eq!(again.render(), canonical);
        }
    }
});
