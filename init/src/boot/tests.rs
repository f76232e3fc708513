//! The boot's steps against a recording `Syscall`: which calls, with which
//! flags, and what happens when one of them fails.

use super::*;
use immuboot_assess::digest;
use immuboot_assess::grubenv::GrubEnv;
use immuboot_assess::{BootTarget, Health, Mode, Slot};
use immuboot_mount::probe::BlockDevice;
use immuboot_mount::syscall::{Call, RecordingSyscall};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("immuboot-boot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("state/grub")).unwrap();
    std::fs::create_dir_all(d.join("state/cOS")).unwrap();
    d
}

fn boot(dir: &Path, sys: RecordingSyscall) -> Boot<RecordingSyscall> {
    Boot::new(
        sys,
        Paths {
            sysroot: dir.join("sysroot"),
            state_mount: dir.join("state"),
            recovery_mount: dir.join("recovery"),
            facts_dir: dir.join("facts"),
        },
    )
}

fn state_dev() -> BlockDevice {
    BlockDevice {
        path: "/dev/vda3".into(),
        label: Some("COS_STATE".into()),
        fstype: Some("ext4".into()),
        ..Default::default()
    }
}

/// Slot b active on trial with 3 tries, slot a good.
fn b_on_trial(dir: &Path) {
    let mut s = BootState::default();
    s.activate_on_trial(Slot::B, 3);
    store::save(&dir.join("state"), &GrubEnv::new(), &s).unwrap();
}

/// A file that passes the image checks (squashfs magic, 4 KiB), with its
/// digest list recorded beside it unless `digest` says otherwise.
fn image(dir: &Path, slot: Slot, digest_of: Option<&[u8]>) -> Vec<u8> {
    let mut bytes = b"hsqs".to_vec();
    bytes.resize(8192, 7);
    let path = dir
        .join("state")
        .join(slot.image_path().trim_start_matches('/'));
    std::fs::write(&path, &bytes).unwrap();
    if let Some(content) = digest_of {
        let (sha, _) = digest::sha256_hex(content).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(
            digest::image_digest_path(&path.display().to_string()),
            digest::render(&[digest::Entry { sha256: sha, name }]),
        )
        .unwrap();
    }
    bytes
}

fn mounts(calls: &[Call]) -> Vec<(String, PathBuf, String, MountFlags)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Mount {
                source,
                target,
                fstype,
                flags,
                ..
            } => Some((source.clone(), target.clone(), fstype.clone(), *flags)),
            _ => None,
        })
        .collect()
}

#[test]
fn select_image_mounts_state_read_only_counts_the_try_and_commits() {
    let d = temp("select");
    b_on_trial(&d);
    let mut b = boot(&d, RecordingSyscall::default());
    let target = image::select(&mut b, &InitConfig::default(), Some(&state_dev())).unwrap();
    assert_eq!((target.mode, target.slot), (Mode::Active, Some(Slot::B)));
    let state = d.join("state");
    assert_eq!(
        b.sys.recorded(),
        vec![
            Call::MkdirAll(state.clone()),
            Call::Mount {
                source: "/dev/vda3".into(),
                target: state.clone(),
                fstype: "ext4".into(),
                flags: MountFlags::RO,
                data: String::new(),
            },
            // The init counted this boot (no immuboot.counted): one commit
            // with COS_STATE briefly read-write.
            Call::Remount {
                target: state.clone(),
                flags: MountFlags::RW
            },
            Call::Remount {
                target: state.clone(),
                flags: MountFlags::RO
            },
        ]
    );
    assert_eq!(store::load(&state).state.b, Health::Trial { tries: 2 });
    assert_eq!(
        b.facts.state_mount.as_deref(),
        Some(&*state.display().to_string())
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn select_image_leaves_the_state_alone_when_grub_counted() {
    let d = temp("counted");
    b_on_trial(&d);
    let mut b = boot(&d, RecordingSyscall::default());
    let cfg = InitConfig {
        counted_by_bootloader: true,
        ..Default::default()
    };
    image::select(&mut b, &cfg, Some(&state_dev())).unwrap();
    assert!(!b
        .sys
        .recorded()
        .iter()
        .any(|c| matches!(c, Call::Remount { .. })));
    std::fs::remove_dir_all(&d).unwrap();
}

/// GRUB fell back to slot b because the good slot a did not finish its
/// last 3 boots: the init gives a up, with the reason, in one commit.
#[test]
fn select_image_gives_up_a_good_slot_that_stopped_finishing_its_boots() {
    let d = temp("unfinished");
    let s = BootState {
        a_unfinished: 3,
        ..Default::default()
    };
    store::save(&d.join("state"), &GrubEnv::new(), &s).unwrap();
    let mut b = boot(&d, RecordingSyscall::default());
    let cfg = InitConfig::from_cmdline(&crate::cmdline::Cmdline::parse(
        "immuboot.mode=passive immuboot.slot=b immuboot.counted=1",
    ));
    let target = image::select(&mut b, &cfg, Some(&state_dev())).unwrap();
    assert_eq!(target.slot, Some(Slot::B));
    let after = store::load(&d.join("state")).state;
    assert_eq!((after.a, after.a_unfinished), (Health::Bad, 0));
    assert!(
        after
            .last_failure
            .as_deref()
            .unwrap()
            .contains("its last 3 boots did not finish"),
        "{after:?}"
    );
    assert!(b
        .facts
        .fallback
        .as_deref()
        .unwrap()
        .starts_with("fallback to slot b"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// COS_STATE that cannot be made writable (an ext4 error, a read-only
/// medium): the boot goes on with a warning, the state file as it was.
#[test]
fn a_state_that_cannot_be_written_is_a_warning_not_a_failed_boot() {
    let d = temp("state-ro");
    b_on_trial(&d);
    let before = std::fs::read(d.join("state/grub/grubenv")).unwrap();
    // Calls: mkdir, the read-only mount, then the remount for the commit.
    let mut b = boot(&d, RecordingSyscall::failing_call(3, 5)); // EIO
    let target = image::select(&mut b, &InitConfig::default(), Some(&state_dev())).unwrap();
    assert_eq!(target.slot, Some(Slot::B));
    assert!(
        b.facts
            .warnings
            .iter()
            .any(|w| w.contains("cannot write the boot state")),
        "{:?}",
        b.facts.warnings
    );
    assert_eq!(std::fs::read(d.join("state/grub/grubenv")).unwrap(), before);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn select_image_fails_with_the_device_when_the_state_cannot_be_mounted() {
    let d = temp("nomount");
    b_on_trial(&d);
    // Call 1 creates the mount point, call 2 mounts.
    let mut b = boot(&d, RecordingSyscall::failing_call(2, 5)); // EIO
    let e = image::select(&mut b, &InitConfig::default(), Some(&state_dev())).unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("cannot mount /dev/vda3 read-only"), "{text}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn no_state_partition_boots_the_defaults_with_a_warning() {
    let d = temp("nostate");
    let mut b = boot(&d, RecordingSyscall::default());
    let target = image::select(&mut b, &InitConfig::default(), None).unwrap();
    assert_eq!(target.slot, Some(Slot::A));
    assert!(b.sys.recorded().is_empty());
    assert!(
        b.facts.warnings[0].contains("COS_STATE"),
        "{:?}",
        b.facts.warnings
    );
    std::fs::remove_dir_all(&d).unwrap();
}

fn target_b() -> BootTarget {
    BootTarget {
        mode: Mode::Active,
        slot: Some(Slot::B),
        image: Slot::B.image_path().into(),
    }
}

#[test]
fn mount_image_attaches_a_loop_device_and_mounts_it_read_only() {
    let d = temp("mount");
    image(&d, Slot::B, None);
    let mut b = boot(&d, RecordingSyscall::default());
    let fstab = image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        false,
    )
    .unwrap();
    let calls = b.sys.recorded();
    let Some(Call::AttachLoop { image, device }) = calls.first().cloned() else {
        panic!("{calls:?}");
    };
    assert_eq!(image, d.join("state/cOS/b.img"));
    assert_eq!(
        mounts(&calls),
        vec![(
            device.display().to_string(),
            d.join("sysroot"),
            "squashfs".to_string(),
            MountFlags::RO
        )]
    );
    assert_eq!((fstab.target.as_str(), fstab.options.as_str()), ("/", "ro"));
    assert_eq!(b.facts.loop_device, Some(device));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn recovery_mounts_its_own_partition_first() {
    let d = temp("recovery");
    std::fs::create_dir_all(d.join("recovery/cOS")).unwrap();
    let mut bytes = b"hsqs".to_vec();
    bytes.resize(4096, 0);
    std::fs::write(d.join("recovery/cOS/recovery.img"), bytes).unwrap();
    let mut b = boot(&d, RecordingSyscall::default());
    let dev = BlockDevice {
        path: "/dev/vda4".into(),
        label: Some("COS_RECOVERY".into()),
        fstype: Some("ext4".into()),
        ..Default::default()
    };
    let target = BootTarget {
        mode: Mode::Recovery,
        slot: None,
        image: immuboot_assess::RECOVERY_IMAGE.into(),
    };
    image::mount(&mut b, &dev, &policy(Mode::Recovery), &target, false).unwrap();
    let m = mounts(&b.sys.recorded());
    assert_eq!(
        m[0],
        (
            "/dev/vda4".into(),
            d.join("recovery"),
            "ext4".into(),
            MountFlags::RO
        )
    );
    assert_eq!(m[1].1, d.join("sysroot"));
    assert_eq!(
        b.facts.recovery_mount,
        Some(d.join("recovery").display().to_string())
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_missing_or_foreign_image_is_refused_before_any_call() {
    let d = temp("foreign");
    let mut b = boot(&d, RecordingSyscall::default());
    let e = image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        false,
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("/cOS/b.img on COS_STATE (/dev/vda3) is missing"),
        "{e:#}"
    );
    std::fs::write(d.join("state/cOS/b.img"), vec![0u8; 8192]).unwrap();
    let e = image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        false,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("bad superblock magic"), "{e:#}");
    assert!(b.sys.recorded().is_empty());
    std::fs::remove_dir_all(&d).unwrap();
}

/// The loop attach fails: the slot is marked bad through the commit path,
/// so the next boot falls back at once.
#[test]
fn a_failing_loop_attach_marks_the_slot_bad() {
    let d = temp("noloop");
    b_on_trial(&d);
    image(&d, Slot::B, None);
    // select: mkdir, mount, remount rw, remount ro; then the attach is call 5.
    let mut b = boot(&d, RecordingSyscall::failing_call(5, 16)); // EBUSY
    let target = image::select(&mut b, &InitConfig::default(), Some(&state_dev())).unwrap();
    let e = image::mount(&mut b, &state_dev(), &policy(Mode::Active), &target, false).unwrap_err();
    assert!(format!("{e:#}").contains("loop device"), "{e:#}");
    image::record_failure(&mut b, target.slot, &e);
    let state = store::load(&d.join("state")).state;
    assert_eq!(state.b, Health::Bad);
    assert!(state.last_failure.unwrap().contains("loop device"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn digest_check_fails_a_slot_and_only_warns_for_the_last_resort() {
    let d = temp("digest");
    b_on_trial(&d);
    image(&d, Slot::B, Some(b"other content"));
    let mut b = boot(&d, RecordingSyscall::default());
    image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        true,
    )
    .unwrap();
    let e = image::verify(&mut b, &policy(Mode::Active)).unwrap_err();
    assert!(format!("{e:#}").contains("is corrupted"), "{e:#}");

    image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        true,
    )
    .unwrap();
    image::verify(&mut b, &policy(Mode::Recovery)).unwrap();
    assert!(b.facts.warnings.iter().any(|w| w.contains("last resort")));

    // The right digest passes.
    let bytes = image(&d, Slot::B, None);
    image(&d, Slot::B, Some(&bytes));
    image::mount(
        &mut b,
        &state_dev(),
        &policy(Mode::Active),
        &target_b(),
        true,
    )
    .unwrap();
    image::verify(&mut b, &policy(Mode::Active)).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

/// A boot of slot b whose root is the squashfs on /dev/loop0, and that
/// root's fstab entry: what the facts step writes about.
fn booted_slot_b_on_loop0(d: &Path) -> (Boot<RecordingSyscall>, immuboot_mount::plan::FstabEntry) {
    let mut b = boot(d, RecordingSyscall::default());
    b.facts.mode = Some(Mode::Active);
    b.facts.target = Some(target_b());
    let root = immuboot_mount::plan::FstabEntry {
        source: "/dev/loop0".into(),
        target: "/".into(),
        fstype: "squashfs".into(),
        options: "ro".into(),
    };
    (b, root)
}

/// The files the boot wrote through its syscalls, in order, as text.
fn written_files(b: &Boot<RecordingSyscall>) -> Vec<(PathBuf, String)> {
    b.sys
        .recorded()
        .iter()
        .filter_map(|c| match c {
            Call::WriteFile { path, contents } => {
                Some((path.clone(), String::from_utf8_lossy(contents).into_owned()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn boot_facts_and_fstab_are_written_through_the_syscalls() {
    let d = temp("facts");
    let (mut b, root) = booted_slot_b_on_loop0(&d);
    handover::write_facts(&mut b, &root, &[]).unwrap();
    let written = written_files(&b);
    assert_eq!(written[0].0, d.join("sysroot/etc/fstab"));
    assert!(
        written[0].1.contains("/dev/loop0 / squashfs ro"),
        "{}",
        written[0].1
    );
    assert_eq!(written[1].0, d.join("facts/boot.json"));
    let facts = BootFacts::parse(&written[1].1).unwrap();
    assert_eq!(facts.booted_slot(), Some(Slot::B));
    assert_eq!(written[2].1, "IMMUBOOT_MODE=active\nIMMUBOOT_SLOT=b\nIMMUBOOT_IMAGE=/cOS/b.img\nIMMUBOOT_PERSISTENCE=no\n");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_step_that_writes_the_facts_is_in_them_once() {
    let d = temp("facts-step");
    let (mut b, root) = booted_slot_b_on_loop0(&d);
    b.step("arm watchdog", |_| Ok(()));
    b.step("write boot facts", |b| handover::write_facts(b, &root, &[]));
    let (_, json) = written_files(&b)
        .into_iter()
        .find(|(path, _)| path.ends_with("boot.json"))
        .unwrap();
    let names: Vec<String> = BootFacts::parse(&json)
        .unwrap()
        .steps
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["arm watchdog", "write boot facts"]);
    // Recorded before the write, not again after it.
    let in_memory: Vec<&str> = b.facts.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(in_memory, ["arm watchdog", "write boot facts"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn uptime_is_the_clock_of_proc_uptime() {
    // The standalone init reads it before /proc is mounted; it must be the
    // clock /proc/uptime shows (where /proc is there to compare).
    let ours = uptime();
    let proc: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        ours > 0.0 && (ours - proc).abs() < 1.0,
        "{ours} against {proc}"
    );
}
