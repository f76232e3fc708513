//! The boot facts (`/run/immuboot/boot.json`), written by the init and read
//! by every `immuboot` command.
//!
//! Invariant: facts that parse serialise and parse back to the same JSON.
#![no_main]

use immuboot_mount::facts::BootFacts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(facts) = BootFacts::parse(text) else {
        return;
    };
    let _ = facts.booted_slot();
    let json = facts.to_json().expect("parsed facts must serialise");
    let again = BootFacts::parse(&json).expect("serialised facts must parse");
    assert_eq!(
        again.to_json().unwrap(),
        json,
        "facts changed in a round trip"
    );
});
