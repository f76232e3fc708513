//! The GRUB environment block (written by GRUB's save_env, grub-editenv and
//! us) and the boot state read from it.
//!
//! Invariants: a block that parses is written back into the same size and
//! parses back to the same variables; the boot state stored into it reads
//! back as the same state (its failure text cut as `store` cuts it).
#![no_main]

use immuboot_assess::grubenv::GrubEnv;
use immuboot_assess::{resolve_target, BootRequest, BootState, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = GrubEnv::parse(data) else {
        return;
    };
    let block = env
        .to_block()
        .expect("a parsed block must fit its own size when written back");
    assert_eq!(block.len(), data.len());
    let back = GrubEnv::parse(&block).expect("a written block must parse");
    assert!(
        back.iter_bytes().eq(env.iter_bytes()),
        "variables changed in a write/parse round trip"
    );

    let (state, _warnings) = BootState::from_env(&env);
    for mode in [Mode::Active, Mode::Passive, Mode::Recovery] {
        let req = BootRequest {
            mode: Some(mode),
            ..Default::default()
        };
        let target = resolve_target(&req, &state);
        let mut s = state.clone();
        let _ = s.assess_boot(&target, false);
        let _ = s.fallback_reason(mode, target.slot);
    }
    let mut stored = env.clone();
    if state.store(&mut stored).is_ok() {
        // `store` keeps the block fitting: the failure text is cut to 200
        // characters on one line. Everything else must read back as it was.
        let mut expected = state.clone();
        expected.last_failure = state
            .last_failure
            .as_ref()
            .map(|f| f.chars().take(200).collect::<String>().replace('\n', " "));
        let (again, _) = BootState::from_env(&stored);
        assert_eq!(
            again, expected,
            "the boot state changed in a store/read round trip"
        );
    }
});
