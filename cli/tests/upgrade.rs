//! `immuboot upgrade` and `immuboot reset` against a state directory: the
//! slot written, the digests recorded, the boot state before and after, and
//! what is refused. Needs mksquashfs/unsquashfs (squashfs-tools) and, for
//! the signature tests, minisign.

mod common;

use common::Sandbox;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small immuboot-shaped root file system.
fn rootfs(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("root-{version}"));
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), format!("kernel {version}")).unwrap();
    std::fs::write(root.join("boot/initrd.img"), format!("initrd {version}")).unwrap();
    std::fs::write(
        root.join("usr/lib/os-release"),
        format!("ID=debian\nIMAGE_VERSION={version}\n"),
    )
    .unwrap();
    root
}

fn squashfs(dir: &Path, version: &str) -> PathBuf {
    let root = rootfs(dir, version);
    let out = dir.join(format!("os-{version}.img"));
    let st = Command::new("mksquashfs")
        .arg(&root)
        .arg(&out)
        .args(["-comp", "gzip", "-noappend", "-quiet", "-no-progress"])
        .status()
        .expect("mksquashfs (squashfs-tools)");
    assert!(st.success());
    out
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

fn state_dir(sb: &Sandbox) -> PathBuf {
    sb.dir.join("state")
}

/// Two known-good slots, a active, as the installer leaves them.
fn installed(sb: &Sandbox) {
    let cos = state_dir(sb).join("cOS");
    std::fs::create_dir_all(&cos).unwrap();
    for slot in ["a", "b"] {
        std::fs::write(cos.join(format!("{slot}.img")), format!("old {slot}")).unwrap();
    }
    sb.ok(&["mark-active", "a"]);
    sb.ok(&["mark-good"]);
}

fn status(sb: &Sandbox) -> String {
    sb.ok(&["status"])
}

#[test]
fn squashfs_goes_into_the_other_slot_on_trial_with_digests() {
    let sb = Sandbox::new("up-sqfs", Some("a"));
    installed(&sb);
    let img = squashfs(&sb.dir, "3");
    let out = sb.ok(&["upgrade", img.to_str().unwrap(), "--tries", "2"]);
    assert!(out.contains("slot b written"), "{out}");
    let cos = state_dir(&sb).join("cOS");
    assert_eq!(sha256(&cos.join("b.img")), sha256(&img));
    assert_eq!(std::fs::read_to_string(cos.join("a.img")).unwrap(), "old a");
    // The digest lists check with coreutils, as GRUB and the init check them.
    let list = std::fs::read_to_string(cos.join("b.img.sha256")).unwrap();
    assert_eq!(list, format!("{}  b.img\n", sha256(&img)));
    let check = Command::new("sha256sum")
        .args(["-c", "b.img.sha256"])
        .current_dir(&cos)
        .output()
        .unwrap();
    assert!(check.status.success());
    let boot = std::fs::read_to_string(cos.join("b.img.boot.sha256")).unwrap();
    assert!(
        boot.contains("  boot/vmlinuz\n") && boot.contains("  boot/initrd.img\n"),
        "{boot}"
    );
    let st = status(&sb);
    assert!(
        st.contains("active slot:  b")
            && st.contains("slot b:       on trial, 2 tries left")
            && st.contains("slot a:       good"),
        "{st}"
    );
    // No temporary file is left.
    let leftovers: Vec<_> = std::fs::read_dir(&cos)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn booted_into_the_fallback_writes_the_failed_slot() {
    let sb = Sandbox::new("up-fallback", Some("a"));
    installed(&sb);
    // b was tried and failed; a (good) booted as the fallback.
    sb.ok(&["mark-active", "b"]);
    sb.write_facts(&Sandbox::facts(Some("b")));
    sb.ok(&["mark-bad", "kernel panic"]);
    sb.write_facts(&Sandbox::facts(Some("a")));
    let img = squashfs(&sb.dir, "4");
    let out = sb.ok(&["upgrade", img.to_str().unwrap()]);
    assert!(out.contains("slot b written"), "{out}");
    assert_eq!(
        std::fs::read_to_string(state_dir(&sb).join("cOS/a.img")).unwrap(),
        "old a"
    );
}

#[test]
fn a_booted_slot_not_yet_marked_good_is_not_the_only_fallback() {
    let sb = Sandbox::new("up-trial", Some("a"));
    installed(&sb);
    sb.ok(&["mark-active", "a", "--tries", "3"]);
    let before = std::fs::read(sb.env()).unwrap();
    let img = squashfs(&sb.dir, "3");
    let (ok, out) = sb.run(&["upgrade", img.to_str().unwrap()]);
    assert!(!ok && out.contains("not marked good yet"), "{out}");
    assert_eq!(std::fs::read(sb.env()).unwrap(), before);
}

#[test]
fn directory_is_squashed_into_the_slot() {
    let sb = Sandbox::new("up-dir", Some("b"));
    installed(&sb);
    sb.ok(&["mark-active", "b"]);
    sb.ok(&["mark-good"]);
    let root = rootfs(&sb.dir, "5");
    let out = sb.ok(&["upgrade", root.to_str().unwrap()]);
    assert!(out.contains("slot a written"), "{out}");
    let cat = Command::new("unsquashfs")
        .arg("-cat")
        .arg(state_dir(&sb).join("cOS/a.img"))
        .arg("usr/lib/os-release")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&cat.stdout).contains("IMAGE_VERSION=5"));
    assert!(status(&sb).contains("active slot:  a"));
}

/// A squashfs without a kernel inside: an upgrade writes it, then refuses
/// it (after the slot was marked), so the state must be restored.
fn image_without_kernel(sb: &Sandbox) -> std::path::PathBuf {
    let root = sb.dir.join("nokernel");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let img = sb.dir.join("nokernel.img");
    assert!(Command::new("mksquashfs")
        .arg(&root)
        .arg(&img)
        .args(["-noappend", "-quiet", "-no-progress"])
        .status()
        .unwrap()
        .success());
    img
}

#[test]
fn failure_after_marking_restores_the_state_and_removes_the_temporary() {
    let sb = Sandbox::new("up-fail", Some("a"));
    installed(&sb);
    let before = status(&sb);
    let img = image_without_kernel(&sb);
    let (ok, out) = sb.run(&["upgrade", img.to_str().unwrap()]);
    assert!(
        !ok && out.contains("boot/vmlinuz") && out.contains("unchanged"),
        "{out}"
    );
    assert_eq!(status(&sb), before);
    assert_eq!(
        std::fs::read_to_string(state_dir(&sb).join("cOS/b.img")).unwrap(),
        "old b"
    );
    assert!(!state_dir(&sb).join("cOS/.b.img.new").exists());
}

#[test]
fn wrong_digest_is_refused_and_nothing_changes() {
    let sb = Sandbox::new("up-digest", Some("a"));
    installed(&sb);
    let before = status(&sb);
    let img = squashfs(&sb.dir, "3");
    let (ok, out) = sb.run(&[
        "upgrade",
        img.to_str().unwrap(),
        "--sha256",
        &"0".repeat(64),
    ]);
    assert!(!ok && out.contains("expected"), "{out}");
    assert_eq!(status(&sb), before);
}

#[test]
fn leftovers_of_an_interrupted_upgrade_are_removed() {
    let sb = Sandbox::new("up-leftover", Some("a"));
    installed(&sb);
    let cos = state_dir(&sb).join("cOS");
    std::fs::write(cos.join(".b.img.new"), "half").unwrap();
    std::fs::create_dir_all(cos.join(".upgrade-99/etc")).unwrap();
    let img = squashfs(&sb.dir, "3");
    let out = sb.ok(&["upgrade", img.to_str().unwrap()]);
    assert!(out.contains("interrupted upgrade"), "{out}");
    assert!(!cos.join(".upgrade-99").exists());
}

/// `immuboot upgrade --recovery --recovery-dir DIR IMAGE`'s arguments.
fn recovery_upgrade<'a>(dir: &'a str, image: &'a Path) -> [&'a str; 5] {
    [
        "upgrade",
        "--recovery",
        "--recovery-dir",
        dir,
        image.to_str().unwrap(),
    ]
}

#[test]
fn recovery_image_is_never_written_from_recovery_and_slots_are_reset() {
    let sb = Sandbox::new("up-reset", None);
    installed_from_recovery(&sb);
    let img = squashfs(&sb.dir, "7");
    let recovery = sb.dir.join("recovery");
    std::fs::create_dir_all(&recovery).unwrap();
    let (ok, out) = sb.run(&recovery_upgrade(recovery.to_str().unwrap(), &img));
    assert!(!ok && out.contains("while running from it"), "{out}");
    let out = sb.ok(&["reset", img.to_str().unwrap(), "--tries", "2"]);
    assert!(out.contains("reset done"), "{out}");
    let cos = state_dir(&sb).join("cOS");
    assert_eq!(sha256(&cos.join("a.img")), sha256(&img));
    assert_eq!(sha256(&cos.join("b.img")), sha256(&img));
    let st = status(&sb);
    assert!(
        st.contains("active slot:  a") && st.contains("slot a:       on trial, 2 tries left"),
        "{st}"
    );
}

fn installed_from_recovery(sb: &Sandbox) {
    let cos = state_dir(sb).join("cOS");
    std::fs::create_dir_all(&cos).unwrap();
    std::fs::write(cos.join("a.img"), "old a").unwrap();
    std::fs::write(cos.join("b.img"), "old b").unwrap();
}

#[test]
fn reset_needs_recovery_mode() {
    let sb = Sandbox::new("up-reset-normal", Some("a"));
    installed(&sb);
    let img = squashfs(&sb.dir, "7");
    let (ok, out) = sb.run(&["reset", img.to_str().unwrap()]);
    assert!(!ok && out.contains("only in recovery mode"), "{out}");
}

/// A minisign key pair without a password; None when minisign is missing.
fn keypair(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (public, secret) = (dir.join("trusted.pub"), dir.join("trusted.key"));
    let st = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .ok()?;
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    Some((public, secret))
}

fn sign(secret: &Path, file: &Path) {
    let st = Command::new("minisign")
        .arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn with_a_trusted_key_only_signed_untampered_images_install() {
    let sb = Sandbox::new("up-sign", Some("a"));
    installed(&sb);
    let (public, secret) =
        keypair(&sb.dir).expect("minisign is needed (cargo xtask deps installs it)");
    let key = public.to_str().unwrap().to_string();
    let img = squashfs(&sb.dir, "3");
    let before = status(&sb);

    // Unsigned: refused.
    let (ok, out) = sb.run(&["upgrade", img.to_str().unwrap(), "--trusted-key", &key]);
    assert!(!ok && out.contains("unsigned images are refused"), "{out}");
    assert_eq!(status(&sb), before);

    // Tampered after signing: refused, nothing changed.
    sign(&secret, &img);
    let tampered = sb.dir.join("tampered.img");
    let mut bytes = std::fs::read(&img).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    let sig = format!("{}.minisig", img.display());
    let (ok, out) = sb.run(&[
        "upgrade",
        tampered.to_str().unwrap(),
        "--signature",
        &sig,
        "--trusted-key",
        &key,
    ]);
    assert!(!ok && out.contains("tampered"), "{out}");
    assert_eq!(status(&sb), before);
    assert_eq!(
        std::fs::read_to_string(state_dir(&sb).join("cOS/b.img")).unwrap(),
        "old b"
    );

    // A directory cannot carry a signature: refused.
    let root = rootfs(&sb.dir, "9");
    let (ok, out) = sb.run(&["upgrade", root.to_str().unwrap(), "--trusted-key", &key]);
    assert!(!ok && out.contains("only signed images"), "{out}");

    // Signed and intact: installed.
    let out = sb.ok(&[
        "upgrade",
        img.to_str().unwrap(),
        "--trusted-key",
        &key,
        "--json",
    ]);
    assert!(
        out.contains("\"signed_by\"") && out.contains("trusted.pub"),
        "{out}"
    );
    assert!(status(&sb).contains("active slot:  b"));
}

/// A file's inode number and bytes.
type FileId = (u64, Vec<u8>);

/// The bytes of the boot state (both copies) and of the slots, with their
/// inode numbers: a file rewritten with the same bytes (replaced by
/// rename) counts as changed too.
fn snapshot(sb: &Sandbox) -> Vec<(PathBuf, Option<FileId>)> {
    use std::os::unix::fs::MetadataExt;
    let state = state_dir(sb);
    ["grub/grubenv", "grub/grubenv.bak", "cOS/a.img", "cOS/b.img"]
        .iter()
        .map(|p| {
            let path = state.join(p);
            let file = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.ino(), std::fs::read(&path).unwrap()));
            (path, file)
        })
        .collect()
}

#[test]
fn a_tampered_signed_image_is_refused_before_anything_changes() {
    let sb = Sandbox::new("up-tamper-bytes", Some("a"));
    installed(&sb);
    let (public, secret) =
        keypair(&sb.dir).expect("minisign is needed (cargo xtask deps installs it)");
    let img = squashfs(&sb.dir, "3");
    sign(&secret, &img);
    let tampered = sb.dir.join("tampered.img");
    let mut bytes = std::fs::read(&img).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    let before = snapshot(&sb);
    assert!(
        before[..2].iter().all(|(_, b)| b.is_some()),
        "both copies of the boot state exist: {:?}",
        before
            .iter()
            .map(|(p, b)| (p, b.is_some()))
            .collect::<Vec<_>>()
    );
    let (ok, out) = sb.run(&[
        "upgrade",
        tampered.to_str().unwrap(),
        "--signature",
        &format!("{}.minisig", img.display()),
        "--trusted-key",
        public.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("tampered"), "{out}");
    for ((path, was), (_, is)) in before.iter().zip(snapshot(&sb)) {
        assert!(*was == is, "{} changed", path.display());
    }
    assert!(!state_dir(&sb).join("cOS/.b.img.new").exists());
}

#[test]
fn oci_layout_is_flattened_and_squashed_into_the_slot() {
    use immuboot_oci::{LayerEntry, LayerSource};
    let sb = Sandbox::new("up-oci", Some("a"));
    installed(&sb);
    let root = rootfs(&sb.dir, "4");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/motd"), "hello").unwrap();
    let layout = sb.dir.join("layout");
    immuboot_oci::write_layout(
        &layout,
        "v5",
        &[
            LayerSource::Dir(root),
            LayerSource::Entries(vec![
                LayerEntry::dir("usr", 0o755),
                LayerEntry::dir("usr/lib", 0o755),
                LayerEntry::file("usr/lib/os-release", "IMAGE_VERSION=5\n", 0o644),
                LayerEntry::dir("etc", 0o755),
                LayerEntry::whiteout("etc/motd"),
            ]),
        ],
        Default::default(),
    )
    .unwrap();
    // A download directory left by an interrupted pull is cleaned up.
    let work = sb.dir.join("work");
    std::fs::create_dir_all(work.join(".immuboot-oci-download-x")).unwrap();
    let spec = format!("oci:{}:v5", layout.display());
    let out = sb.ok(&[
        "upgrade",
        &spec,
        "--work-dir",
        work.to_str().unwrap(),
        "--compression-level",
        "1",
    ]);
    assert!(out.contains("slot b written"), "{out}");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    let image = state_dir(&sb).join("cOS/b.img");
    let list = Command::new("unsquashfs")
        .arg("-l")
        .arg(&image)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("boot/vmlinuz") && !list.contains("motd"),
        "{list}"
    );
    assert!(status(&sb).contains("slot b:       on trial, 3 tries left  (image version 5)"));
}

#[test]
fn reset_without_a_source_uses_the_recovery_image_the_boot_mounted() {
    let sb = Sandbox::new("up-reset-recovery", None);
    installed_from_recovery(&sb);
    let img = squashfs(&sb.dir, "8");
    let recovery = sb.dir.join("recovery-mount");
    std::fs::create_dir_all(recovery.join("cOS")).unwrap();
    std::fs::copy(&img, recovery.join("cOS/recovery.img")).unwrap();
    let mut facts = Sandbox::facts(None);
    facts.recovery_mount = Some(recovery.display().to_string());
    sb.write_facts(&facts);
    let out = sb.ok(&["reset"]);
    assert!(
        out.contains("reset done") && out.contains(&recovery.display().to_string()),
        "{out}"
    );
    let cos = state_dir(&sb).join("cOS");
    assert_eq!(sha256(&cos.join("a.img")), sha256(&img));
    assert_eq!(sha256(&cos.join("b.img")), sha256(&img));
    let st = status(&sb);
    assert!(
        st.contains("active slot:  a")
            && st.contains("slot a:       good")
            && st.contains("slot b:       good"),
        "{st}"
    );
}

#[test]
fn a_reset_from_a_refused_source_changes_nothing() {
    let sb = Sandbox::new("up-reset-refused", None);
    installed_from_recovery(&sb);
    sb.ok(&["mark-active", "b"]);
    let img = squashfs(&sb.dir, "7");
    let before = snapshot(&sb);
    let (ok, out) = sb.run(&["reset", img.to_str().unwrap(), "--sha256", &"0".repeat(64)]);
    assert!(!ok && out.contains("unchanged"), "{out}");
    for ((path, was), (_, is)) in before.iter().zip(snapshot(&sb)) {
        assert!(*was == is, "{} changed", path.display());
    }
}

/// immuboot with the sandbox's facts and state directories and `args`,
/// stdin closed: for the tests that start it themselves (to close its
/// output, or to kill it).
fn immuboot_command(sb: &Sandbox, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_immuboot"));
    command
        .arg("--facts-dir")
        .arg(sb.dir.join("facts"))
        .arg("--state-dir")
        .arg(state_dir(sb))
        .args(args)
        .stdin(std::process::Stdio::null());
    command
}

/// Runs immuboot with stdout and stderr on pipes whose readers are gone
/// (`immuboot upgrade --json SRC | head -1`, a closed terminal): every write
/// fails with EPIPE.
fn run_with_closed_output(sb: &Sandbox, args: &[&str]) -> std::process::ExitStatus {
    use std::process::Stdio;
    let mut child = immuboot_command(sb, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The readers go before the tool has written anything.
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().unwrap()
}

fn temporaries(sb: &Sandbox) -> Vec<String> {
    std::fs::read_dir(state_dir(sb).join("cOS"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn closed_output_does_not_stop_an_upgrade() {
    let sb = Sandbox::new("up-closed", Some("a"));
    installed(&sb);
    for (json, version) in [(true, "3"), (false, "4")] {
        // Another image each round: the same one again would be a no-op.
        let img = squashfs(&sb.dir, version);
        let mut args = vec!["upgrade", img.to_str().unwrap(), "--tries", "2"];
        if json {
            args.push("--json");
        }
        // Booted a: slot b is written; the second round (booted b) writes a.
        let st = run_with_closed_output(&sb, &args);
        assert_eq!(st.code(), Some(0), "json {json}: {st}");
        let target = if json { "b" } else { "a" };
        let status = status(&sb);
        assert!(
            status.contains(&format!("active slot:  {target}"))
                && status.contains(&format!("slot {target}:       on trial, 2 tries left")),
            "json {json}: {status}"
        );
        assert_eq!(
            sha256(&state_dir(&sb).join(format!("cOS/{target}.img"))),
            sha256(&img)
        );
        assert!(temporaries(&sb).is_empty(), "{:?}", temporaries(&sb));
        if json {
            // Booted b, which works: the next upgrade writes a.
            sb.write_facts(&Sandbox::facts(Some("b")));
            sb.ok(&["mark-good"]);
        }
    }
}

#[test]
fn closed_output_does_not_skip_the_restore_of_a_failed_upgrade() {
    let sb = Sandbox::new("up-closed-fail", Some("a"));
    installed(&sb);
    let before = status(&sb);
    let img = image_without_kernel(&sb);
    for json in [true, false] {
        let mut args = vec!["upgrade", img.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let st = run_with_closed_output(&sb, &args);
        // Refused (exit 1), not killed or aborted by the closed output.
        assert_eq!(st.code(), Some(1), "json {json}: {st}");
        assert_eq!(status(&sb), before);
        assert_eq!(
            std::fs::read_to_string(state_dir(&sb).join("cOS/b.img")).unwrap(),
            "old b"
        );
        assert!(temporaries(&sb).is_empty(), "{:?}", temporaries(&sb));
    }
}

#[test]
fn status_with_a_closed_output_exits_cleanly() {
    let sb = Sandbox::new("status-closed", Some("a"));
    installed(&sb);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["next-boot", "recovery"],
    ] {
        let st = run_with_closed_output(&sb, args);
        assert_eq!(st.code(), Some(0), "{args:?}: {st}");
    }
    assert!(status(&sb).contains("recovery"), "{}", status(&sb));
}

#[test]
fn a_rewritten_recovery_image_clears_the_failure_verify_recorded() {
    let sb = Sandbox::new("up-rec-clear", Some("a"));
    installed(&sb);
    let recovery = sb.dir.join("recovery");
    std::fs::create_dir_all(recovery.join("cOS")).unwrap();
    // A recovery image whose bytes differ from its digest list.
    let old = squashfs(&sb.dir, "5");
    std::fs::copy(&old, recovery.join("cOS/recovery.img")).unwrap();
    std::fs::write(
        recovery.join("cOS/recovery.img.sha256"),
        format!("{}  recovery.img\n", "0".repeat(64)),
    )
    .unwrap();
    let rec = recovery.to_str().unwrap();
    let (ok, out) = sb.run(&["verify", "--recovery-dir", rec]);
    assert!(!ok, "{out}");
    assert!(status(&sb).contains("recovery:     CORRUPTED"), "{out}");
    let img = squashfs(&sb.dir, "6");
    let out = sb.ok(&recovery_upgrade(rec, &img));
    assert!(out.contains("recorded failure is cleared"), "{out}");
    let st = status(&sb);
    assert!(
        !st.contains("recovery:") && st.contains("slot b:       good"),
        "{st}"
    );
    assert!(!std::fs::read_to_string(sb.env())
        .unwrap()
        .contains("immuboot_recovery_failure"));
}

/// Modification time and bytes of a slot's files, to prove a no-op.
fn slot_files(sb: &Sandbox, slot: &str) -> Vec<(String, std::time::SystemTime, Vec<u8>)> {
    let cos = state_dir(sb).join("cOS");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&cos).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{slot}.img")) {
            let meta = e.metadata().unwrap();
            out.push((
                name,
                meta.modified().unwrap(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn the_same_squashfs_twice_is_a_no_op_and_check_tells_without_changing_anything() {
    let sb = Sandbox::new("up-same-sqfs", Some("a"));
    installed(&sb);
    let img = squashfs(&sb.dir, "3");
    let img = img.to_str().unwrap();
    let (code, out) = sb.run_code(&["upgrade", "--check", img]);
    assert_eq!(code, Some(100), "{out}");
    assert!(out.contains("an upgrade would write it"), "{out}");
    sb.ok(&["upgrade", img]);

    // b is on trial with this image and boots next: a rerun writes nothing.
    let env = std::fs::read(sb.env()).unwrap();
    let files = slot_files(&sb, "b");
    let out = sb.ok(&["upgrade", img, "--reboot"]);
    assert!(
        out.contains("slot b (on trial, boots next) already holds")
            && out.contains("nothing to do"),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);
    assert_eq!(slot_files(&sb, "b"), files);
    let (code, out) = sb.run_code(&["upgrade", "--check", "--json", img]);
    assert_eq!(code, Some(0), "{out}");
    let result: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(result["result"]["up_to_date"], true, "{out}");
    assert_eq!(result["result"]["held_by"]["slot"], "b", "{out}");
    assert_eq!(result["result"]["held_by"]["role"], "on-trial", "{out}");
    // Each upgrade's outcome is recorded for `status --json`.
    let last = |sb: &Sandbox| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&sb.ok(&["status", "--json"])).unwrap()
            ["last_upgrade"]
            .clone()
    };
    assert_eq!(last(&sb)["result"], "unchanged");
    let (ok, _) = sb.run(&["upgrade", "/nonexistent.img"]);
    assert!(!ok);
    assert_eq!(last(&sb)["result"], "failed");
    assert!(last(&sb)["error"].as_str().unwrap().contains("nonexistent"));

    // Booted from b and marked good: b is the booted slot holding it.
    sb.write_facts(&Sandbox::facts(Some("b")));
    sb.ok(&["mark-good"]);
    let out = sb.ok(&["upgrade", img]);
    assert!(out.contains("slot b (booted) already holds"), "{out}");
    assert_eq!(
        std::fs::read_to_string(state_dir(&sb).join("cOS/a.img")).unwrap(),
        "old a"
    );

    // Another image is an upgrade; --force rewrites even the same one.
    let other = squashfs(&sb.dir, "4");
    let (code, _) = sb.run_code(&["upgrade", "--check", other.to_str().unwrap()]);
    assert_eq!(code, Some(100));
    let out = sb.ok(&["upgrade", img, "--force"]);
    assert!(out.contains("slot a written"), "{out}");
    assert_eq!(last(&sb)["result"], "written");
    assert_eq!(last(&sb)["target"], "slot a");
    assert_eq!(
        sha256(&state_dir(&sb).join("cOS/a.img")),
        sha256(Path::new(img))
    );
    // --check never combines with what writes.
    let (code, _) = sb.run_code(&["upgrade", "--check", "--force", img]);
    assert_eq!(code, Some(2));
}

#[test]
fn the_same_oci_image_twice_is_a_no_op_and_a_new_manifest_is_an_upgrade() {
    use immuboot_oci::LayerSource;
    let sb = Sandbox::new("up-same-oci", Some("a"));
    installed(&sb);
    let layout = sb.dir.join("layout");
    let write = |version: &str| {
        immuboot_oci::write_layout(
            &layout,
            "stable",
            &[LayerSource::Dir(rootfs(&sb.dir, version))],
            Default::default(),
        )
        .unwrap();
    };
    write("6");
    let work = sb.dir.join("work");
    let spec = format!("oci:{}:stable", layout.display());
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v = vec!["upgrade".to_string(), spec.clone()];
        v.extend(["--work-dir".to_string(), work.display().to_string()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        sb.run_code(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, out) = run(&["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let result: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let digest = result["result"][0]["manifest_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{out}");
    let record = std::fs::read_to_string(state_dir(&sb).join("cOS/b.img.source")).unwrap();
    assert!(
        record.contains(&digest) && record.contains(&spec),
        "{record}"
    );
    let st: serde_json::Value = serde_json::from_str(&sb.ok(&["status", "--json"])).unwrap();
    let b = &st["slots"]["b"];
    assert_eq!(b["source"]["manifest_digest"], digest.as_str(), "{st}");
    assert_eq!(b["health"], "trial");
    assert_eq!(b["image_version"], "6");
    assert_eq!(
        b["sha256"],
        sha256(&state_dir(&sb).join("cOS/b.img")).as_str()
    );
    assert_eq!(st["next_boot"]["pending_trial"], true);

    let env = std::fs::read(sb.env()).unwrap();
    let files = slot_files(&sb, "b");
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("already holds") && out.contains(&digest),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);
    assert_eq!(slot_files(&sb, "b"), files);
    assert_eq!(run(&["--check"]).0, Some(0));

    // The tag moves to a new image: --check says so, and nothing changed.
    write("7");
    let (code, out) = run(&["--check"]);
    assert_eq!(code, Some(100), "{out}");
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);
    assert_eq!(slot_files(&sb, "b"), files);
    let (code, out) = run(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("slot b written"), "{out}");
    assert!(
        !std::fs::read_to_string(state_dir(&sb).join("cOS/b.img.source"))
            .unwrap()
            .contains(&digest)
    );

    // A squashfs written over it drops the OCI record: the old tag's
    // identity no longer matches.
    sb.ok(&[
        "upgrade",
        squashfs(&sb.dir, "8").to_str().unwrap(),
        "--force",
    ]);
    assert!(!state_dir(&sb).join("cOS/b.img.source").exists());
}

#[test]
fn a_directory_is_always_written() {
    let sb = Sandbox::new("up-same-dir", Some("a"));
    installed(&sb);
    let root = rootfs(&sb.dir, "5");
    sb.ok(&["upgrade", root.to_str().unwrap()]);
    let (code, out) = sb.run_code(&["upgrade", "--check", root.to_str().unwrap()]);
    assert_eq!(code, Some(100), "{out}");
    assert!(out.contains("no identity"), "{out}");
    let out = sb.ok(&["upgrade", root.to_str().unwrap()]);
    assert!(out.contains("slot b written"), "{out}");
}

fn auto(sb: &Sandbox, config: &Path) -> String {
    sb.ok(&["auto-upgrade", "--config", config.to_str().unwrap()])
}

#[test]
fn unattended_upgrades_install_once_and_never_reinstall_what_failed() {
    let sb = Sandbox::new("auto", Some("a"));
    installed(&sb);
    let config = sb.dir.join("upgrade.yaml");
    assert!(auto(&sb, &config).contains("unattended upgrades are off"));
    let v3 = squashfs(&sb.dir, "3");
    std::fs::write(&config, format!("source: {}\ntries: 2\n", v3.display())).unwrap();

    // Something new: slot b written, on trial, remembered as pending.
    let out = auto(&sb, &config);
    assert!(
        out.contains("slot b written") && out.contains("boots when the machine reboots next"),
        "{out}"
    );
    assert!(status(&sb).contains("slot b:       on trial, 2 tries left"));
    let memory = std::fs::read_to_string(state_dir(&sb).join("cOS/auto-upgrade.json")).unwrap();
    assert!(
        memory.contains(&sha256(&v3)) && memory.contains("\"pending\""),
        "{memory}"
    );
    // The next run (not rebooted yet): nothing to do.
    let files = slot_files(&sb, "b");
    assert!(auto(&sb, &config).contains("already holds"));
    assert_eq!(slot_files(&sb, "b"), files);

    // Its trial boots fail: b is marked bad, a boots as the fallback.
    sb.write_facts(&Sandbox::facts(Some("b")));
    sb.ok(&["mark-bad", "systemd did not start"]);
    sb.write_facts(&Sandbox::facts(Some("a")));
    let env = std::fs::read(sb.env()).unwrap();
    let out = auto(&sb, &config);
    assert!(
        out.contains("failed (") && out.contains("will not be installed again"),
        "{out}"
    );
    assert!(
        out.contains("not installing") && out.contains("systemd did not start"),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);
    assert_eq!(slot_files(&sb, "b"), files);
    // And again on the run after: still not reinstalled.
    assert!(auto(&sb, &config).contains("not installing"));
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);

    // A new release is installed; the failed one stays remembered.
    let v4 = squashfs(&sb.dir, "4");
    std::fs::write(&config, format!("source: {}\n", v4.display())).unwrap();
    assert!(auto(&sb, &config).contains("slot b written"));
    // It boots and is marked good: settled, and up to date.
    sb.write_facts(&Sandbox::facts(Some("b")));
    sb.ok(&["mark-good"]);
    let out = auto(&sb, &config);
    assert!(
        out.contains("was marked good") && out.contains("slot b (booted) already holds"),
        "{out}"
    );

    // The operator forgets the failure: the old image may come back.
    std::fs::write(&config, format!("source: {}\n", v3.display())).unwrap();
    assert!(auto(&sb, &config).contains("not installing"));
    let out = sb.ok(&["auto-upgrade", "--forget-failed"]);
    assert!(out.contains(&sha256(&v3)), "{out}");
    assert!(auto(&sb, &config).contains("slot a written"));

    // A directory is refused: it would be rewritten on every run.
    let root = rootfs(&sb.dir, "9");
    std::fs::write(&config, format!("source: {}\n", root.display())).unwrap();
    let (ok, out) = sb.run(&["auto-upgrade", "--config", config.to_str().unwrap()]);
    assert!(!ok && out.contains("has no identity"), "{out}");
}

#[test]
fn the_generator_enables_the_timer_only_with_a_valid_config() {
    let sb = Sandbox::new("auto-gen", Some("a"));
    let config = sb.dir.join("upgrade.yaml");
    let gen = sb.dir.join("generated");
    // As systemd runs it: its three directories.
    let run = |extra: &[&str]| {
        let _ = std::fs::remove_dir_all(&gen);
        std::fs::create_dir_all(&gen).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_immuboot-upgrade-generator"))
            .arg(&gen)
            .args(["/early", "/late", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&[]), (true, String::new()));
    assert_eq!(std::fs::read_dir(&gen).unwrap().count(), 0);
    std::fs::write(
        &config,
        "source: reg.example/os:stable\nschedule: \"*-*-* 03:00\"\n",
    )
    .unwrap();
    assert_eq!(run(&[]), (true, String::new()));
    let dropin =
        std::fs::read_to_string(gen.join("immuboot-upgrade.timer.d/50-schedule.conf")).unwrap();
    assert!(
        dropin.contains("OnCalendar=\nOnCalendar=*-*-* 03:00\n"),
        "{dropin}"
    );
    assert_eq!(
        std::fs::read_link(gen.join("timers.target.wants/immuboot-upgrade.timer")).unwrap(),
        Path::new("/etc/systemd/system/immuboot-upgrade.timer")
    );
    assert!(run(&["--unit-dir", "/usr/lib/systemd/system"]).0);
    assert_eq!(
        std::fs::read_link(gen.join("timers.target.wants/immuboot-upgrade.timer")).unwrap(),
        Path::new("/usr/lib/systemd/system/immuboot-upgrade.timer")
    );
    // A broken configuration: reported, the timer stays off, and systemd's
    // generators do not fail.
    std::fs::write(&config, "source: x\nreboot: later\n").unwrap();
    let (ok, err) = run(&[]);
    assert!(
        ok && err.contains("stay off") && err.contains("reboot"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&gen).unwrap().count(), 0);
    // --help prints the usage and succeeds; arguments it cannot use are an
    // error, with the usage.
    let help = Command::new(env!("CARGO_BIN_EXE_immuboot-upgrade-generator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: immuboot-upgrade-generator"));
    let (ok, err) = run(&["--schedule"]);
    assert!(
        !ok && err.contains("unknown option --schedule") && err.contains("usage:"),
        "{err}"
    );
}

#[path = "../../oci/tests/common/signing.rs"]
mod signing;

#[test]
fn oci_images_need_a_cosign_signature_by_a_trusted_key() {
    use immuboot_oci::LayerSource;
    let sb = Sandbox::new("up-cosign", Some("a"));
    installed(&sb);
    let layout = sb.dir.join("layout");
    let write = |tag: &str, version: &str| {
        immuboot_oci::write_layout(
            &layout,
            tag,
            &[LayerSource::Dir(rootfs(&sb.dir, version))],
            Default::default(),
        )
        .unwrap();
        immuboot_oci::resolve(&immuboot_oci::ImageSource::Layout {
            dir: layout.clone(),
            tag: Some(tag.into()),
        })
        .unwrap()
    };
    let (signing, pem) = signing::key_pair();
    let key = sb.dir.join("cosign.pub");
    std::fs::write(&key, &pem).unwrap();
    let key = key.to_str().unwrap().to_string();
    let work = sb.dir.join("work");
    let work = work.to_str().unwrap().to_string();
    let spec = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let before = status(&sb);
    let files = slot_files(&sb, "b");
    let refused = |tag: &str, key: &str, want: &str| {
        let (ok, out) = sb.run(&[
            "upgrade",
            &spec(tag),
            "--cosign-key",
            key,
            "--work-dir",
            &work,
        ]);
        assert!(!ok && out.contains(want), "{tag}: {out}");
        assert_eq!(status(&sb), before);
        assert_eq!(slot_files(&sb, "b"), files);
    };

    // Unsigned: refused, nothing changed.
    let v6 = write("v6", "6");
    refused("v6", &key, "is not signed");
    // Signed with another key.
    let (other, _) = signing::key_pair();
    signing::store_signature(&layout, &v6, &signing::payload(&v6), &other);
    refused("v6", &key, "not made by a trusted cosign key");
    // Changed after signing: the tag now names another manifest, and the
    // signature of the old one was copied to its signature tag.
    let v7 = write("v6", "7");
    signing::store_signature(&layout, &v7, &signing::payload(&v6), &signing);
    refused("v6", &key, "changed after it was signed");
    // With only a cosign key, a squashfs cannot be verified.
    let img = squashfs(&sb.dir, "3");
    let (ok, out) = sb.run(&["upgrade", img.to_str().unwrap(), "--cosign-key", &key]);
    assert!(!ok && out.contains("no minisign key"), "{out}");

    // Signed by the trusted key: installed, and said so.
    signing::store_signature(&layout, &v7, &signing::payload(&v7), &signing);
    let out = sb.ok(&[
        "upgrade",
        &spec("v6"),
        "--cosign-key",
        &key,
        "--work-dir",
        &work,
    ]);
    assert!(
        out.contains("slot b written")
            && out.contains(&format!("signature verified with cosign key {key}")),
        "{out}"
    );
    assert!(status(&sb).contains("slot b:       on trial, 3 tries left  (image version 7)"));
}

#[path = "../../oci/tests/common/registry.rs"]
mod registry;

/// An image named after a registry that does not exist, served by the
/// mirror registries.conf names (the first mirror is down): written, its
/// identity the same as when pulled directly, where it came from recorded;
/// a blocked registry is refused before anything changes.
#[test]
fn a_registry_image_through_a_mirror_is_the_same_image_as_pulled_directly() {
    use immuboot_oci::LayerSource;
    use registry::{need, skopeo, start_registry, REGISTRY, SKOPEO};
    need(REGISTRY, "docker-registry");
    need(SKOPEO, "skopeo");
    let mut sb = Sandbox::new("up-mirror", Some("a"));
    installed(&sb);
    let storage = sb.dir.join("registry");
    std::fs::create_dir_all(&storage).unwrap();
    let mirror = start_registry(&storage, None);
    let layout = sb.dir.join("layout");
    let digest = immuboot_oci::write_layout(
        &layout,
        "stable",
        &[LayerSource::Dir(rootfs(&sb.dir, "6"))],
        Default::default(),
    )
    .unwrap();
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--preserve-digests",
        &format!("oci:{}:stable", layout.display()),
        &format!("docker://{}/os:stable", mirror.addr),
    ]);
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let conf = sb.dir.join("registries.conf");
    let configure = |blocked: bool| {
        std::fs::write(
            &conf,
            format!(
                "[[registry]]\nprefix = \"fleet.invalid:5000\"\nblocked = {blocked}\n\
                 [[registry.mirror]]\nlocation = \"{down}\"\ninsecure = true\n\
                 [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
                mirror.addr
            ),
        )
        .unwrap();
    };
    configure(false);
    sb.vars
        .push(("CONTAINERS_REGISTRIES_CONF".into(), conf.clone()));
    let work = sb.dir.join("work");
    let work = work.to_str().unwrap();
    let spec = "fleet.invalid:5000/os:stable";

    let (code, out) = sb.run_code(&["upgrade", spec, "--work-dir", work, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    // The mirror that is down is said on stderr; stdout stays JSON lines.
    assert!(
        out.contains(&format!(
            "immuboot: warning: {spec}: mirror {down}/os does not serve it"
        )),
        "{out}"
    );
    let result: serde_json::Value = serde_json::from_str(
        out.lines()
            .rfind(|l| l.starts_with("{\"event\":\"done\""))
            .unwrap(),
    )
    .unwrap();
    let pulled_from = format!("{}/os", mirror.addr);
    assert_eq!(result["result"][0]["manifest_digest"], digest.as_str());
    assert_eq!(result["result"][0]["pulled_from"], pulled_from.as_str());
    let st: serde_json::Value = serde_json::from_str(&sb.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["slots"]["b"]["source"]["source"], spec, "{st}");
    assert_eq!(
        st["slots"]["b"]["source"]["manifest_digest"],
        digest.as_str()
    );
    assert_eq!(st["last_upgrade"]["source"], spec, "{st}");
    assert_eq!(st["last_upgrade"]["pulled_from"], pulled_from.as_str());

    // Through the mirror or from the registry directly: the same image.
    let env = std::fs::read(sb.env()).unwrap();
    let (code, out) = sb.run_code(&["upgrade", "--check", spec]);
    assert_eq!(code, Some(0), "{out}");
    let direct = format!("{}/os:stable", mirror.addr);
    let (code, out) = sb.run_code(&["upgrade", "--check", &direct, "--plain-http"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("already holds") && out.contains(&digest),
        "{out}"
    );

    // Blocked: refused, naming the file; nothing changed.
    configure(true);
    let files = slot_files(&sb, "b");
    let (code, out) = sb.run_code(&["upgrade", spec, "--work-dir", work, "--force"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("is blocked") && out.contains(&conf.display().to_string()),
        "{out}"
    );
    assert_eq!(std::fs::read(sb.env()).unwrap(), env);
    assert_eq!(slot_files(&sb, "b"), files);
}

/// Runs immuboot with `IMMUBOOT_PAUSE_AT=point` and kills it once it says it
/// paused there: a crash at that point, the file system as the process
/// left it.
fn crash_at(sb: &Sandbox, point: &str, args: &[&str]) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = immuboot_command(sb, args)
        .env("IMMUBOOT_PAUSE_AT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        said.push_str(&line);
        said.push('\n');
        if line.contains(&format!("paused at checkpoint {point}")) {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("immuboot {args:?} ended without pausing at {point}:\n{said}");
}

/// A crash between the recovery image's rename and the recording of its
/// digest lists left the new image beside the old image's digests:
/// `verify` then called the recovery image corrupted, and `reset` from
/// recovery refused it as a source (its digest list did not match), the
/// one way back for a machine whose slots are broken, until the recovery
/// upgrade was rerun from a booting slot. The old digests go before the
/// rename.
#[test]
fn a_crash_after_the_recovery_image_is_renamed_leaves_no_stale_digest() {
    let sb = Sandbox::new("up-recovery-crash", Some("a"));
    installed(&sb);
    let recovery = sb.dir.join("recovery");
    std::fs::create_dir_all(&recovery).unwrap();
    let rec = recovery.to_str().unwrap();
    let old = squashfs(&sb.dir, "5");
    let out = sb.ok(&recovery_upgrade(rec, &old));
    assert!(out.contains("recovery written"), "{out}");
    let new = squashfs(&sb.dir, "6");
    crash_at(&sb, "renamed", &recovery_upgrade(rec, &new));
    let image = recovery.join("cOS/recovery.img");
    assert_eq!(sha256(&image), sha256(&new));
    let list = recovery.join("cOS/recovery.img.sha256");
    if let Ok(text) = std::fs::read_to_string(&list) {
        assert!(
            text.contains(&sha256(&new)),
            "the new recovery image beside another image's digest list:\n{text}"
        );
    }
    // From recovery, reset takes that image as its source.
    let mut facts = Sandbox::facts(None);
    facts.recovery_mount = Some(rec.to_string());
    sb.write_facts(&facts);
    let out = sb.ok(&["reset"]);
    assert!(out.contains("reset done"), "{out}");
    let cos = state_dir(&sb).join("cOS");
    assert_eq!(sha256(&cos.join("a.img")), sha256(&new));
}
