//! Registry credential files (`auth.json`, docker's `config.json`: written
//! by `podman login`, `docker login` or an operator), looked up as a pull
//! does. The input is the file, then optionally the registry and the
//! repository, joined by the separator line.
//!
//! Invariants: an error never shows a password it decoded; a found entry's
//! key is one of the file's keys.
#![no_main]

use immuboot_fuzz::split;
use immuboot_oci::auth::lookup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let text = String::from_utf8_lossy(parts[0]);
    let registry = parts
        .get(1)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "reg.example:5000".into());
    let repository = parts
        .get(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "fleet/os".into());
    match lookup(&text, "auth.json", &registry, &repository) {
        Ok(Some((credentials, key))) => {
            assert!(text.contains(key.as_str()) || text.contains(&key.replace('/', "\\/")));
            let _ = credentials;
        }
        Ok(None) => {}
        Err(e) => {
            let message = format!("{e:#}");
            // Every base64 "auth" value in the file, decoded: none may
            // appear in the message.
            if let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) {
                    for entry in auths.values() {
                        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
                            continue;
                        };
                        use base64::Engine as _;
                        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(auth.trim())
                        else {
                            continue;
                        };
                        let decoded = String::from_utf8_lossy(&raw);
                        if let Some((_, password)) = decoded.split_once(':') {
                            if password.len() >= 4 {
                                assert!(!message.contains(password), "a password in: {message}");
                            }
                        }
                    }
                }
            }
        }
    }
});
