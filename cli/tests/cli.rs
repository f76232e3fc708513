//! The `immuboot` tool against a state directory and boot facts made here,
//! as it would see them on a booted system.

mod common;

use common::Sandbox;
use std::path::Path;
use std::process::Command;

/// `grub-editenv PATH list`. grub-editenv is a declared host dependency
/// (package grub-common, xtask/src/host.rs): missing, it fails the test.
fn grub_editenv_list(path: &Path) -> String {
    let out = Command::new("grub-editenv")
        .arg(path)
        .arg("list")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run grub-editenv ({e}): install grub-common, a host dependency \
                 (`cargo xtask deps`)"
            )
        });
    assert!(
        out.status.success(),
        "grub-editenv {} list failed ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn new_slot_on_trial_is_marked_good() {
    let sb = Sandbox::new("good", Some("b"));
    sb.ok(&["mark-active", "b", "--tries", "3"]);
    let status = sb.ok(&["status"]);
    assert!(
        status.contains("active slot:  b")
            && status.contains("slot b:       on trial, 3 tries left"),
        "{status}"
    );
    sb.ok(&["mark-good"]);
    let status = sb.ok(&["status"]);
    assert!(
        status.contains("slot b:       good") && status.contains("slot a:       good"),
        "{status}"
    );
    // Stock GRUB tools read what we wrote.
    let list = grub_editenv_list(&sb.env());
    assert!(
        list.contains("immuboot_active_slot=b") && list.contains("immuboot_b_state=good"),
        "{list}"
    );
}

#[test]
fn failing_health_check_marks_the_boot_bad() {
    let sb = Sandbox::new("check", Some("b"));
    sb.ok(&["mark-active", "b"]);
    let checks = sb.dir.join("health.d");
    std::fs::create_dir_all(&checks).unwrap();
    let script = checks.join("10-network");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = sb.run(&["mark-good", "--checks", checks.to_str().unwrap()]);
    assert!(!ok, "{out}");
    let status = sb.ok(&["status"]);
    assert!(
        status.contains("slot b:       bad") && status.contains("10-network failed"),
        "{status}"
    );
}

#[test]
fn rollback_and_one_shot() {
    let sb = Sandbox::new("rollback", Some("a"));
    sb.ok(&["rollback"]);
    assert!(sb.ok(&["status"]).contains("active slot:  b"));
    sb.ok(&["next-boot", "recovery"]);
    assert!(sb
        .ok(&["status"])
        .contains("next boot:    recovery (one-shot)"));
    sb.ok(&["mark-bad", "testing"]);
    let (ok, out) = sb.run(&["rollback"]);
    assert!(!ok && out.contains("not known good"), "{out}");
}

#[test]
fn torn_primary_is_read_from_the_backup_and_repaired_on_write() {
    let sb = Sandbox::new("torn", Some("a"));
    sb.ok(&["rollback"]);
    std::fs::write(sb.env(), vec![b'#'; 1024]).unwrap();
    let status = sb.ok(&["status"]);
    assert!(
        status.contains("from the backup copy") && status.contains("active slot:  b"),
        "{status}"
    );
    sb.ok(&["next-boot", "passive"]);
    assert!(!sb.ok(&["status"]).contains("backup copy"));
}

#[test]
fn recovery_boot_has_no_slot_to_mark() {
    let sb = Sandbox::new("recovery", None);
    let (ok, out) = sb.run(&["mark-good"]);
    assert!(!ok && out.contains("recovery"), "{out}");
}

#[test]
fn missing_facts_are_reported_in_the_facts_directory_given() {
    let sb = Sandbox::new("nofacts", Some("a"));
    std::fs::remove_file(sb.dir.join("facts/boot.json")).unwrap();
    let facts_dir = sb.dir.join("facts").display().to_string();
    let (ok, out) = sb.run(&["mark-good"]);
    assert!(
        !ok && out.contains(&format!("no boot facts in {facts_dir}")),
        "{out}"
    );
    assert!(!out.contains("/run/immuboot"), "{out}");
    let status = sb.ok(&["status"]);
    assert!(
        status.contains(&format!("no boot facts in {facts_dir}")),
        "{status}"
    );
}

#[test]
fn garbled_facts_warn_in_status_and_stop_what_needs_the_booted_slot() {
    let sb = Sandbox::new("garbled", Some("a"));
    std::fs::write(sb.dir.join("facts/boot.json"), "{\"mode\": \"act").unwrap();
    let status = sb.ok(&["status"]);
    assert!(
        status.contains("warning:") && status.contains("boot.json"),
        "{status}"
    );
    assert!(status.contains("active slot:  a"), "{status}");
    let json = sb.ok(&["status", "--json"]);
    assert!(json.contains("\"active_slot\""), "{json}");
    let (ok, out) = sb.run(&["mark-good"]);
    assert!(
        !ok && out.contains("boot.json") && out.contains("not valid JSON"),
        "{out}"
    );
    let (ok, out) = sb.run(&["mark-bad", "x"]);
    assert!(!ok && out.contains("not valid JSON"), "{out}");
    // Commands that do not need the booted slot still work.
    sb.ok(&["next-boot", "passive"]);
}

#[test]
fn the_state_directory_is_where_the_boot_mounted_it() {
    let sb = Sandbox::new("statemount", Some("a"));
    let mut facts = Sandbox::facts(Some("a"));
    facts.state_mount = Some(sb.dir.join("state").display().to_string());
    sb.write_facts(&facts);
    let (ok, out) = sb.run_with(&["rollback"]);
    assert!(ok && out.contains("slot b is active"), "{out}");
    assert!(sb.ok(&["status"]).contains("active slot:  b"));
}

#[test]
fn status_json_carries_the_typed_facts() {
    let sb = Sandbox::new("json", Some("b"));
    let out = sb.ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["boot"]["mode"], "active");
    assert_eq!(v["boot"]["target"]["slot"], "b");
    assert_eq!(v["boot"]["labels"]["recovery"], "COS_RECOVERY");
    assert_eq!(v["state"]["active_slot"], "a");
    // The versioned part a controller reads (README, "Status for controllers").
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["booted_slot"], "b");
    assert_eq!(v["mode"], "active");
    assert_eq!(v["slots"]["a"]["health"], "good");
    assert_eq!(v["slots"]["a"]["active"], true);
    assert_eq!(v["slots"]["b"]["booted"], true);
    assert_eq!(v["slots"]["b"]["image_present"], false);
    assert_eq!(v["next_boot"]["active_slot"], "a");
    assert_eq!(v["next_boot"]["pending_trial"], false);
    assert!(v["last_failure"].is_null());
    sb.ok(&["mark-active", "a", "--tries", "2"]);
    let v: serde_json::Value = serde_json::from_str(&sb.ok(&["status", "--json"])).unwrap();
    assert_eq!(v["slots"]["a"]["health"], "trial");
    assert_eq!(v["slots"]["a"]["tries_left"], 2);
    assert_eq!(v["next_boot"]["pending_trial"], true);
}

/// `next-boot` and `mark-active` run at the same time, many rounds: both
/// changes are there after every round, and the two copies are equal
/// (without the state lock, changes reported done were lost and the two
/// commands collided on their temporary file names).
#[test]
fn concurrent_state_commands_lose_no_change() {
    use immuboot_assess::{store, Health, Mode, Slot};
    let sb = Sandbox::new("concurrent", Some("b"));
    let state = sb.dir.join("state");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_immuboot"))
            .arg("--facts-dir")
            .arg(sb.dir.join("facts"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for round in 0..20 {
        let (mode, slot) = if round % 2 == 0 {
            ("recovery", "a")
        } else {
            ("passive", "b")
        };
        // Several of each, so that their reads and writes overlap.
        let children: Vec<_> = (0..4)
            .flat_map(|_| {
                [
                    run(&["next-boot", mode]),
                    run(&["mark-active", slot, "--tries", "2"]),
                ]
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let loaded = store::load(&state);
        let slot: Slot = slot.parse().unwrap();
        assert_eq!(
            loaded.state.next_entry,
            Some(mode.parse::<Mode>().unwrap()),
            "round {round}"
        );
        assert_eq!(loaded.state.active_slot, slot, "round {round}");
        assert_eq!(
            loaded.state.health(slot),
            Health::Trial { tries: 2 },
            "round {round}"
        );
        assert_eq!(
            std::fs::read(store::primary(&state)).unwrap(),
            std::fs::read(store::backup(&state)).unwrap(),
            "round {round}: primary and backup differ"
        );
    }
}
