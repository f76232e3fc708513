//! `immuboot verify` against a state directory and a recovery directory:
//! the verdict per image, the exit status, and what the boot state records.

mod common;

use common::Sandbox;
use std::path::PathBuf;
use std::process::Command;

fn sha256(bytes: &[u8]) -> String {
    immuboot_assess::digest::sha256_hex(bytes).unwrap().0
}

/// Slots a and b and the recovery image, each with its digest list, as an
/// upgrade leaves them; slot a active and good.
fn installed(sb: &Sandbox) {
    for (dir, name) in [("state", "a"), ("state", "b"), ("recovery", "recovery")] {
        let cos = sb.dir.join(dir).join("cOS");
        std::fs::create_dir_all(&cos).unwrap();
        let bytes = image_bytes(name);
        std::fs::write(cos.join(format!("{name}.img")), &bytes).unwrap();
        std::fs::write(
            cos.join(format!("{name}.img.sha256")),
            format!("{}  {name}.img\n", sha256(&bytes)),
        )
        .unwrap();
    }
    sb.ok(&["mark-active", "a"]);
    sb.ok(&["mark-good"]);
}

fn image_bytes(name: &str) -> Vec<u8> {
    format!("image {name} ").repeat(50_000).into_bytes()
}

fn image(sb: &Sandbox, name: &str) -> PathBuf {
    let dir = if name == "recovery" {
        "recovery"
    } else {
        "state"
    };
    sb.dir.join(dir).join(format!("cOS/{name}.img"))
}

/// 4 KiB flipped in the middle of the image.
fn corrupt(sb: &Sandbox, name: &str) {
    let path = image(sb, name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b = !*b;
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Runs `immuboot verify ARGS`: exit code and output.
fn verify(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_immuboot"))
        .arg("--facts-dir")
        .arg(sb.dir.join("facts"))
        .arg("--state-dir")
        .arg(sb.dir.join("state"))
        .arg("verify")
        .arg("--recovery-dir")
        .arg(sb.dir.join("recovery"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn intact_images_pass_and_the_state_is_not_written() {
    let sb = Sandbox::new("verify-ok", Some("a"));
    installed(&sb);
    let before = std::fs::read(sb.env()).unwrap();
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 0, "{out}");
    for line in ["slot a:   ok (0 MiB", "slot b:   ok", "recovery: ok"] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(
        out.contains("no image differs from its recorded digest"),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), before);
}

#[test]
fn a_corrupted_passive_slot_fails_and_is_marked_bad() {
    let sb = Sandbox::new("verify-b", Some("a"));
    installed(&sb);
    corrupt(&sb, "b");
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 3, "{out}");
    let good = sha256(&image_bytes("b"));
    assert!(
        out.contains("slot b:   CORRUPTED: sha256 ")
            && out.contains(&format!("but {good} was recorded")),
        "{out}"
    );
    assert!(
        out.contains("slot a:   ok") && out.contains("recorded: slot b marked bad"),
        "{out}"
    );
    let st = sb.ok(&["status"]);
    assert!(
        st.contains("slot b:       bad")
            && st.contains("slot a:       good")
            && st.contains("last failure: slot b: immuboot verify: image differs from the digest recorded when it was written"),
        "{st}"
    );
    // A second run finds the same and records nothing new.
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(!out.contains("recorded:"), "{out}");
}

#[test]
fn the_running_slot_is_reported_but_not_marked_bad() {
    let sb = Sandbox::new("verify-a", Some("a"));
    installed(&sb);
    corrupt(&sb, "a");
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("THE RUNNING SLOT IS CORRUPTED"), "{out}");
    let st = sb.ok(&["status"]);
    assert!(
        st.contains("slot a:       good")
            && st.contains("active slot:  a")
            && st.contains("last failure: slot a: immuboot verify")
            && st.contains("running, not marked bad"),
        "{st}"
    );
}

#[test]
fn a_corrupted_recovery_image_is_shown_until_it_checks_ok_again() {
    let sb = Sandbox::new("verify-rec", Some("a"));
    installed(&sb);
    let good = std::fs::read(image(&sb, "recovery")).unwrap();
    corrupt(&sb, "recovery");
    let (code, out) = verify(&sb, &["--json"]);
    assert_eq!(code, 3, "{out}");
    let done: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no result line:\n{out}"));
    let result = &done["result"];
    assert_eq!(result["failed"], serde_json::json!(["recovery"]), "{out}");
    let images = result["images"].as_array().unwrap();
    assert_eq!(images[2]["image"], "recovery");
    assert_eq!(images[2]["verdict"], "corrupted");
    assert_eq!(images[2]["bytes"], good.len() as u64);
    assert_eq!(images[0]["verdict"], "ok");
    let st = sb.ok(&["status"]);
    assert!(
        st.contains("recovery:     CORRUPTED: immuboot verify: image differs")
            && st.contains("slot a:       good")
            && st.contains("slot b:       good"),
        "{st}"
    );
    let env = std::fs::read_to_string(sb.env()).unwrap();
    assert!(
        env.contains("immuboot_recovery_failure=immuboot verify"),
        "{env}"
    );
    // Repaired: the next check clears it.
    std::fs::write(image(&sb, "recovery"), good).unwrap();
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("recorded: recovery image ok again"), "{out}");
    let st = sb.ok(&["status"]);
    assert!(!st.contains("recovery:"), "{st}");
}

#[test]
fn missing_images_and_images_without_a_digest_are_reported_not_failed() {
    let sb = Sandbox::new("verify-missing", Some("a"));
    installed(&sb);
    std::fs::remove_file(image(&sb, "b")).unwrap();
    std::fs::remove_file(sb.dir.join("recovery/cOS/recovery.img.sha256")).unwrap();
    let before = std::fs::read(sb.env()).unwrap();
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("slot b:   missing (") && out.contains("b.img does not exist"),
        "{out}"
    );
    assert!(
        out.contains("recovery: not checked: no digest recorded"),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), before);
}

#[test]
fn a_finding_that_cannot_be_recorded_is_still_reported() {
    let sb = Sandbox::new("verify-norecord", Some("a"));
    installed(&sb);
    corrupt(&sb, "b");
    // No boot state directory: nothing can be recorded.
    std::fs::remove_dir_all(sb.dir.join("state/grub")).unwrap();
    let (code, out) = verify(&sb, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("slot b:   CORRUPTED")
            && out.contains("NOT RECORDED in the boot state: no boot state directory"),
        "{out}"
    );
}
