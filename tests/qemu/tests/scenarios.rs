//! End-to-end scenarios: each is a real boot (or several) of the demo disk,
//! OVMF → GRUB → kernel → immuboot init → systemd, checked from a root shell
//! on the serial console. Run by `cargo xtask test` (they are `#[ignore]`d
//! in a plain `cargo test` because they need the built disk).

use anyhow::{bail, ensure, Context, Result};
// The points of one boot-state commit, as the CLI names them.
use immuboot_assess::crashpoint::STATE_COMMIT;
use immuboot_qemu_tests::{dmesg_interval, kernel_timestamp, record_result, Machine, Vm};
use serde_json::json;

fn boot(m: &mut Machine) -> Result<Vm> {
    let mut vm = m.boot()?;
    vm.login()?;
    Ok(vm)
}

fn env_of(vm: &mut Vm) -> Result<String> {
    vm.run_ok("cat /run/immuboot/env")
}

fn root_backing_file(vm: &mut Vm) -> Result<String> {
    Ok(vm
        .run_ok("cat /sys/block/$(basename $(findmnt -n -o SOURCE /))/loop/backing_file")?
        .trim()
        .to_string())
}

fn image_version(vm: &mut Vm) -> Result<String> {
    Ok(vm
        .run_ok(". /etc/os-release; echo $IMAGE_VERSION")?
        .trim()
        .to_string())
}

/// Boots, logs in, and checks that multi-user.target is reached with `/`
/// a read-only squashfs. Returns the VM and when the login prompt came.
fn boot_to_multi_user_on_read_only_squashfs(m: &mut Machine) -> Result<(Vm, Duration)> {
    let mut vm = m.boot()?;
    let login_after = vm.login()?;
    let state = vm.run_ok("systemctl is-active multi-user.target")?;
    ensure!(state.trim() == "active", "multi-user.target: {state}");
    let root = vm.run_ok("findmnt -n -o FSTYPE,OPTIONS /")?;
    ensure!(root.starts_with("squashfs ro"), "/ is {root}");
    Ok((vm, login_after))
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s1_boots_active_slot_from_read_only_squashfs() -> Result<()> {
    let mut m = Machine::new("s1-active")?;
    let (mut vm, login_after) = boot_to_multi_user_on_read_only_squashfs(&mut m)?;
    let backing = root_backing_file(&mut vm)?;
    ensure!(
        backing == "/run/initramfs/cos-state/cOS/a.img",
        "root image {backing}"
    );
    let (rc, _) = vm.run("touch /usr/bin/x 2>/dev/null")?;
    ensure!(rc != 0, "/usr is writable");
    // A good slot is loaded without GRUB's digest check (trial boots only).
    ensure!(
        !vm.console().contains("Checking slot a's kernel"),
        "GRUB checked a good slot's kernel and initramfs"
    );
    // The disk is on virtio: the init left AHCI to udev (s31 boots from it).
    ensure!(
        vm.console()
            .contains("disk drivers not needed for this boot left to udev: ahci"),
        "the init did not leave AHCI to udev"
    );
    let cmdline = vm.run_ok("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("immuboot.slot=a") && cmdline.contains("immuboot.mode=active"),
        "{cmdline}"
    );
    let env = env_of(&mut vm)?;
    ensure!(
        env.contains("IMMUBOOT_MODE=active") && env.contains("IMMUBOOT_SLOT=a"),
        "{env}"
    );
    ensure!(env.contains("IMMUBOOT_PERSISTENCE=yes"), "{env}");
    ensure!(image_version(&mut vm)? == "2");
    // The layout as mounted, and what systemd and findmnt see.
    let etc = vm.run_ok("findmnt -n -o FSTYPE /etc")?;
    ensure!(etc.trim() == "overlay", "/etc is {etc}");
    let usr_local = vm.run_ok("findmnt -n -o SOURCE,FSTYPE /usr/local")?;
    ensure!(
        usr_local.contains("/dev/vda5") && usr_local.contains("ext4"),
        "/usr/local is {usr_local}"
    );
    let fstab = vm.run_ok("findmnt --fstab -n -o TARGET")?;
    for t in [
        "/",
        "/etc",
        "/usr/local",
        "/oem",
        "/var",
        "/var/log",
        "/root",
    ] {
        ensure!(
            fstab.lines().any(|l| l.trim() == t),
            "{t} missing from fstab:\n{fstab}"
        );
    }
    // bpffs, which the init mounts for systemd (see init's mount_bpffs), with
    // systemd's own options; and efivarfs, which systemd mounts with the
    // module the init loaded.
    let api = vm.run_ok("findmnt -n -o TARGET,FSTYPE,OPTIONS -t bpf,efivarfs")?;
    ensure!(
        api.lines().any(|l| l.starts_with("/sys/fs/bpf ")
            && l.contains(" bpf ")
            && l.contains("nosuid,nodev,noexec")
            && l.contains("mode=700"))
            && api
                .lines()
                .any(|l| l.starts_with("/sys/firmware/efi/efivars ")),
        "API file systems:\n{api}"
    );
    let unit = vm.run_ok("systemctl is-active usr-local.mount var-log.mount oem.mount")?;
    ensure!(
        unit.lines().all(|l| l.trim() == "active"),
        "mount units: {unit}"
    );
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("booted:       active (slot a) /cOS/a.img  version 2"),
        "{status}"
    );
    ensure!(status.contains("next boot:    automatic"), "{status}");
    // Boot assessment ran after boot-complete.target and kept slot a good.
    vm.run_ok("systemctl is-active immuboot-mark-good.service")?;
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot a:       good") && !status.contains("FALLBACK"),
        "{status}"
    );
    // The init's lines reach the journal under the identifier immuboot.
    let journal = vm.run_ok("journalctl -b -t immuboot -o cat")?;
    ensure!(
        journal.lines().filter(|l| l.starts_with("step '")).count() >= 8,
        "init lines in the journal:\n{journal}"
    );

    // The boot's timeline: the init's steps and systemd until the boot
    // finished, as a table and as a chart (kept beside the results).
    vm.run_ok("timeout 240 systemctl is-system-running --wait >/dev/null; true")?;
    let timeline = vm.run_ok("immuboot timeline --svg /run/timeline.svg")?;
    ensure!(
        timeline.contains("  find partitions")
            && timeline.contains("  write boot facts")
            && timeline.contains("systemd until the boot finished"),
        "{timeline}"
    );
    let chart = vm.run_ok("cat /run/timeline.svg")?;
    let bars = chart.matches(r#"<rect class="bar""#).count();
    ensure!(
        bars >= 10 && chart.trim_end().ends_with("</svg>"),
        "{bars} bars:\n{chart}"
    );
    let results = immuboot_qemu_tests::artifacts_dir().join("results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("s1-timeline.svg"), chart.replace("\r\n", "\n"))?;

    // The initramfs phase, on the kernel's clock.
    let dmesg = vm.run_ok("dmesg")?;
    let phase = dmesg_interval(&dmesg, "Run /init as init process", "systemd[1]: systemd ")
        .ok_or_else(|| anyhow::anyhow!("no timing lines in dmesg"))?;
    // The facts place the init on the kernel's clock (the timeline's
    // kernel row ends there): where the kernel started it, not at 0.
    let facts: serde_json::Value =
        serde_json::from_str(&vm.run_ok("cat /run/immuboot/boot.json")?)?;
    let init_start = facts["uptime_start_s"].as_f64().unwrap_or(0.0);
    let run_init = dmesg
        .lines()
        .find(|l| l.contains("Run /init as init process"))
        .and_then(kernel_timestamp)
        .unwrap_or(f64::NAN);
    ensure!(
        (init_start - run_init).abs() < 0.5,
        "the facts start the init at {init_start} s, the kernel ran /init at {run_init} s"
    );
    let result = json!({
        "initramfs_phase_s": (phase * 1000.0).round() / 1000.0,
        "initramfs_bytes": m.manifest.initramfs_bytes,
        "reference_busybox_phase_s": 0.89,
        "target_phase_s (1.2x busybox)": 1.07,
        "target_initramfs_bytes": 4_000_000,
        "qemu_start_to_login_prompt_s": login_after.as_secs(),
    });
    println!("initramfs: {result}");
    record_result("s1-initramfs-phase", result)?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s2_etc_is_ephemeral_and_persistent_paths_survive_reboot() -> Result<()> {
    let mut m = Machine::new("s2-persistence")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok(
        "echo etc > /etc/immuboot-test && echo ul > /usr/local/immuboot-test && echo oem > /oem/immuboot-test \
         && echo demo > /var/lib/immuboot-demo/data && echo home > /root/immuboot-test \
         && echo var > /var/immuboot-test && sync",
    )?;
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    let (rc, _) = vm.run("test -e /etc/immuboot-test")?;
    ensure!(rc != 0, "/etc change survived the reboot");
    let (rc, _) = vm.run("test -e /var/immuboot-test")?;
    ensure!(rc != 0, "ephemeral /var change survived the reboot");
    let kept = vm.run_ok(
        "cat /usr/local/immuboot-test /oem/immuboot-test /var/lib/immuboot-demo/data /root/immuboot-test",
    )?;
    let lines: Vec<&str> = kept.lines().map(str::trim).collect();
    ensure!(
        lines == ["ul", "oem", "demo", "home"],
        "persistent files: {kept}"
    );
    // The image's own content is still under the persistent bind (seeded on first boot).
    vm.run_ok("test -f /root/.bashrc")?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s3_one_shot_passive_then_recovery_then_back_to_active() -> Result<()> {
    let mut m = Machine::new("s3-one-shot")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok("immuboot next-boot passive")?;
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("next boot:    passive (one-shot)"),
        "{status}"
    );
    vm.reboot()?;

    let mut vm = boot(&mut m)?;
    let env = env_of(&mut vm)?;
    ensure!(
        env.contains("IMMUBOOT_MODE=passive") && env.contains("IMMUBOOT_SLOT=b"),
        "{env}"
    );
    ensure!(root_backing_file(&mut vm)? == "/run/initramfs/cos-state/cOS/b.img");
    ensure!(image_version(&mut vm)? == "1");
    vm.run_ok("immuboot next-boot recovery")?;
    vm.reboot()?;

    let mut vm = boot(&mut m)?;
    let env = env_of(&mut vm)?;
    ensure!(env.contains("IMMUBOOT_MODE=recovery"), "{env}");
    ensure!(root_backing_file(&mut vm)? == "/run/initramfs/cos-recovery/cOS/recovery.img");
    ensure!(image_version(&mut vm)? == "1-recovery");
    let status = vm.run_ok("immuboot status")?;
    ensure!(status.contains("booted:       recovery"), "{status}");
    vm.reboot()?;

    let mut vm = boot(&mut m)?;
    let env = env_of(&mut vm)?;
    ensure!(
        env.contains("IMMUBOOT_MODE=active") && env.contains("IMMUBOOT_SLOT=a"),
        "{env}"
    );
    ensure!(image_version(&mut vm)? == "2");
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s4_missing_persistent_and_oem_partitions_still_boot() -> Result<()> {
    let mut m = Machine::new("s4-no-persistence")?;
    m.wipe_partition("COS_PERSISTENT")?;
    m.wipe_partition("COS_OEM")?;
    let mut vm = m.boot()?;
    vm.expect(
        r"immuboot: no partition labelled COS_OEM: /oem is an empty tmpfs",
        std::time::Duration::from_secs(300),
    )?;
    vm.expect(
        r"immuboot: persistence unavailable: no partition labelled COS_PERSISTENT",
        std::time::Duration::from_secs(60),
    )?;
    vm.login()?;
    let env = env_of(&mut vm)?;
    ensure!(env.contains("IMMUBOOT_PERSISTENCE=no"), "{env}");
    let fs = vm.run_ok("findmnt -n -o FSTYPE /usr/local; findmnt -n -o FSTYPE /oem")?;
    ensure!(fs.lines().map(str::trim).eq(["tmpfs", "tmpfs"]), "{fs}");
    vm.run_ok("echo ok > /var/log/still-writable")?;
    let status = vm.run_ok("immuboot status")?;
    ensure!(status.contains("persistence:  NO"), "{status}");
    let state = vm.run_ok("systemctl is-active multi-user.target")?;
    ensure!(state.trim() == "active");
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s5_broken_oem_layout_is_reported_and_image_layout_used() -> Result<()> {
    let mut m = Machine::new("s5-broken-layout")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok("mkdir -p /oem/immuboot && printf 'persistent: [/root\\nephemeral: /var\\n' > /oem/immuboot/layout.yaml && sync")?;
    vm.reboot()?;
    let mut vm = m.boot()?;
    let caps = vm.expect(
        r"immuboot: invalid layout file /oem/immuboot/layout\.yaml: ([^\n]*)",
        std::time::Duration::from_secs(300),
    )?;
    ensure!(
        caps[1].contains("line"),
        "the error does not say where: {}",
        caps[1]
    );
    vm.login()?;
    let facts = vm.run_ok("cat /run/immuboot/boot.json")?;
    ensure!(
        facts.contains("\"layout_source\": \"/etc/immuboot/layout.yaml\""),
        "{facts}"
    );
    let persistent = vm.run_ok("findmnt -n -o SOURCE /var/lib/immuboot-demo")?;
    ensure!(
        persistent.contains("/.state/var-lib-immuboot-demo.bind"),
        "{persistent}"
    );
    Ok(())
}

/// Shell to change files on COS_STATE from the booted system.
const STATE_RW: &str = "mount -o remount,rw /run/initramfs/cos-state";

fn booted(vm: &mut Vm) -> Result<(String, String)> {
    let env = env_of(vm)?;
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    Ok((get("IMMUBOOT_MODE"), get("IMMUBOOT_SLOT")))
}

/// Installs a health check on COS_OEM (so every slot runs it) whose body
/// runs with the init's boot facts (`IMMUBOOT_SLOT`, ...) in its
/// environment; returns its path.
fn install_health_check(vm: &mut Vm, name: &str, body: &str) -> Result<String> {
    let check = format!("/oem/immuboot/health.d/{name}");
    vm.run_ok(&format!(
        "mkdir -p /oem/immuboot/health.d && echo '#!/bin/sh' > {check} \
         && echo '. /run/immuboot/env; {body}' >> {check} && chmod +x {check}"
    ))?;
    Ok(check)
}

fn wait_marked_good(vm: &mut Vm) -> Result<String> {
    vm.run_ok("systemctl start immuboot-mark-good.service")?;
    vm.run_ok("immuboot status")
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s6_new_slot_on_trial_boots_is_marked_good_and_stays_active() -> Result<()> {
    let mut m = Machine::new("s6-trial-good")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok("immuboot mark-active b --tries 3")?;
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("active slot:  b") && status.contains("slot b:       good"),
        "{status}"
    );
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot a:       good") && !status.contains("FALLBACK"),
        "{status}"
    );
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s7_missing_slot_image_falls_back_in_the_same_boot() -> Result<()> {
    let mut m = Machine::new("s7-missing-image")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok(&format!(
        "{STATE_RW} && rm /run/initramfs/cos-state/cOS/b.img && immuboot mark-active b"
    ))?;
    vm.reboot()?;
    let started = std::time::Instant::now();
    let mut vm = m.boot()?;
    vm.expect(
        "slot b cannot be loaded",
        std::time::Duration::from_secs(120),
    )?;
    vm.login()?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("FALLBACK:     fallback to slot a: slot b is marked bad"),
        "{status}"
    );
    ensure!(
        status.contains("GRUB could not load its kernel or initramfs"),
        "{status}"
    );
    let status = wait_marked_good(&mut vm)?;
    ensure!(status.contains("active slot:  a"), "{status}");
    record_result(
        "s7-missing-image",
        json!({"reboots_to_good_slot": 0, "seconds_to_login": started.elapsed().as_secs()}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s8_failing_health_check_marks_slot_bad_and_falls_back() -> Result<()> {
    let mut m = Machine::new("s8-health-check")?;
    let mut vm = boot(&mut m)?;
    // A check (kept on COS_OEM) that fails only on slot b.
    let check = install_health_check(&mut vm, "50-not-b", "[ \"$IMMUBOOT_SLOT\" != b ]")?;
    vm.run_ok(&format!("{check} && immuboot mark-active b && sync"))?;
    vm.reboot()?;
    let started = std::time::Instant::now();
    // Slot b boots, its check fails, the service marks it bad and reboots.
    let mut vm = m.boot()?;
    vm.expect(
        r"immuboot: booting active image /cOS/b.img",
        std::time::Duration::from_secs(200),
    )?;
    vm.wait_exit(std::time::Duration::from_secs(400))?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("slot b:       bad") && status.contains("50-not-b failed"),
        "{status}"
    );
    ensure!(status.contains("active slot:  a"), "{status}");
    record_result(
        "s8-health-check",
        json!({"reboots_to_good_slot": 1, "seconds": started.elapsed().as_secs()}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s9_garbage_boot_state_uses_backup_and_is_repaired() -> Result<()> {
    let mut m = Machine::new("s9-garbage-env")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok(&format!(
        "immuboot rollback && {STATE_RW} && head -c 1024 /dev/urandom > /run/initramfs/cos-state/grub/grubenv && sync"
    ))?;
    vm.reboot()?;
    let started = std::time::Instant::now();
    let mut vm = boot(&mut m)?;
    // The backup said slot b is active: GRUB and the init used it.
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    record_result(
        "s9-garbage-env",
        json!({"reboots_to_good_slot": 0, "seconds_to_login": started.elapsed().as_secs()}),
    )?;
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        !status.contains("boot state:   from the backup copy")
            && status.contains("active slot:  b"),
        "repaired? {status}"
    );
    let warn = vm.run_ok("journalctl -b -t immuboot -o cat | grep -c 'using the backup copy'")?;
    ensure!(warn.trim() == "1", "{warn}");
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s10_both_slots_bad_boots_recovery() -> Result<()> {
    let mut m = Machine::new("s10-both-bad")?;
    let mut vm = boot(&mut m)?;
    // Slot a (booted) is given up; slot b goes on trial with its image gone.
    vm.run_ok(&format!(
        "immuboot mark-bad 'test: slot a given up' && immuboot mark-active b && {STATE_RW} \
         && rm /run/initramfs/cos-state/cOS/b.img && sync"
    ))?;
    vm.reboot()?;
    let started = std::time::Instant::now();
    let mut vm = m.boot()?;
    vm.expect(
        "slot b cannot be loaded",
        std::time::Duration::from_secs(120),
    )?;
    vm.login()?;
    ensure!(booted(&mut vm)?.0 == "recovery");
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("FALLBACK:     fallback to recovery: slot b is marked bad"),
        "{status}"
    );
    ensure!(
        status.contains("slot a:       bad") && status.contains("slot b:       bad"),
        "{status}"
    );
    record_result(
        "s10-both-bad",
        json!({"reboots_to_recovery": 0, "seconds_to_login": started.elapsed().as_secs()}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s11_slot_that_never_completes_a_boot_uses_its_tries_then_falls_back() -> Result<()> {
    let mut m = Machine::new("s11-tries")?;
    let mut vm = boot(&mut m)?;
    // On slot b, a health check resets the machine at once: like a crash or
    // a watchdog reset before the boot is marked good.
    install_health_check(
        &mut vm,
        "10-crash-on-b",
        "[ \"$IMMUBOOT_SLOT\" != b ] || echo b > /proc/sysrq-trigger",
    )?;
    vm.run_ok("immuboot mark-active b --tries 2 && sync")?;
    vm.reboot()?;
    let started = std::time::Instant::now();
    for attempt in 1..=2 {
        let mut vm = m.boot()?;
        vm.expect(
            r"immuboot: booting active image /cOS/b\.img",
            std::time::Duration::from_secs(200),
        )
        .map_err(|e| e.context(format!("attempt {attempt} of slot b")))?;
        vm.wait_exit(std::time::Duration::from_secs(400))?;
    }
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("FALLBACK:     fallback to slot a: slot b used up its tries"),
        "{status}"
    );
    ensure!(status.contains("slot b:       bad"), "{status}");
    record_result(
        "s11-tries-exhausted",
        json!({"reboots_to_good_slot": 2, "seconds": started.elapsed().as_secs()}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s12_manual_menu_choice_keeps_counters_working() -> Result<()> {
    let mut m = Machine::new("s12-manual")?;
    let mut vm = boot(&mut m)?;
    vm.run_ok("immuboot mark-active b --tries 2")?;
    vm.reboot()?;
    // GRUB's hidden menu opened with Esc; the second entry (passive,
    // slot a) picked by hand.
    let mut vm = m.boot()?;
    vm.open_boot_menu()?;
    // Esc again, as a person pressing it twice (or the harness, whose Esc
    // crossed the menu's drawing): the menu stays. GRUB's nested menus
    // (configfile) left for the GRUB prompt here, and the boot stopped.
    vm.send("\x1b")?;
    ensure!(
        vm.expect(r"grub>", Duration::from_secs(3)).is_err(),
        "Esc on the menu left it for GRUB's prompt; console log {}",
        vm.log.display()
    );
    // Ctrl-N, GRUB's "next entry": the down arrow is the escape sequence
    // ESC [ B, and on a loaded host GRUB's serial terminal once took its
    // ESC alone, which leaves the menu for GRUB's command line.
    vm.send("\x0e")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    vm.send("\r")?;
    vm.login()?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot b:       on trial, 2 tries left"),
        "manual boot cost a try: {status}"
    );
    vm.reboot()?;
    // The next boot is automatic again: the slot on trial boots and passes.
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("active slot:  b") && status.contains("slot b:       good"),
        "{status}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Failing slots (boot assessment) and upgrades. The test images come from
// the payload disk (label IMMUBOOT_TEST, see `cargo xtask build`) and are
// installed the way a user would: `immuboot upgrade`.

const PAYLOAD: &str = "/run/payload";

/// Mounts the payload disk; its by-label link may come after the login
/// prompt (udev's coldplug yields the CPU during the boot).
fn mount_payload(vm: &mut Vm) -> Result<()> {
    vm.run_ok(&format!(
        "mkdir -p {PAYLOAD} && (mountpoint -q {PAYLOAD} || (udevadm wait --timeout=180 /dev/disk/by-label/IMMUBOOT_TEST && mount -o ro /dev/disk/by-label/IMMUBOOT_TEST {PAYLOAD}))"
    ))?;
    Ok(())
}

fn upgrade(vm: &mut Vm, args: &str) -> Result<String> {
    vm.run_ok(&format!("immuboot upgrade {args} 2>&1"))
}

/// Waits for QEMU to exit after a failing boot of `slot` (the kernel panics,
/// the init reboots, or the watchdog resets the machine).
fn failing_boot(m: &mut Machine, slot: &str, sign: &str, within: Duration) -> Result<()> {
    let mut vm = m.boot()?;
    vm.expect(
        &format!(r"immuboot: booting active image /cOS/{slot}\.img"),
        Duration::from_secs(200),
    )?;
    vm.expect(sign, within)?;
    vm.wait_exit(within)
}

use std::time::{Duration, Instant};

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s13_slot_whose_kernel_panics_uses_its_tries_then_falls_back() -> Result<()> {
    let mut m = Machine::new("s13-panic")?.with_payload();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;
    upgrade(&mut vm, &format!("{PAYLOAD}/panic.img --tries 2"))?;
    vm.reboot()?;
    let started = Instant::now();
    for _ in 0..2 {
        failing_boot(
            &mut m,
            "b",
            "Kernel panic - not syncing",
            Duration::from_secs(200),
        )?;
    }
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("FALLBACK:     fallback to slot a: slot b used up its tries"),
        "{status}"
    );
    ensure!(image_version(&mut vm)? == "2");
    record_result(
        "s13-kernel-panic",
        json!({"reboots_to_good_slot": 2, "seconds": started.elapsed().as_secs()}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s14_slot_that_hangs_is_reset_by_the_watchdog_then_falls_back() -> Result<()> {
    let mut m = Machine::new("s14-hang")?.with_payload();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;
    upgrade(&mut vm, &format!("{PAYLOAD}/hang.img --tries 1"))?;
    vm.reboot()?;
    let started = Instant::now();
    // PID 1 sleeps forever: nothing pets the watchdog the init armed.
    failing_boot(
        &mut m,
        "b",
        "test image: PID 1 hangs",
        Duration::from_secs(200),
    )?;
    let hang_boot = started.elapsed().as_secs();
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("FALLBACK:     fallback to slot a: slot b used up its tries"),
        "{status}"
    );
    let armed = vm.run_ok("journalctl -b -t immuboot -o cat | grep 'watchdog:'")?;
    ensure!(armed.contains("armed, 60 s"), "{armed}");
    record_result(
        "s14-hang-watchdog",
        json!({"reboots_to_good_slot": 1, "seconds": started.elapsed().as_secs(), "seconds_until_watchdog_reset": hang_boot}),
    )?;
    Ok(())
}

/// Offsets in v3.img to corrupt: one in the root file system's data, away
/// from the kernel and initramfs, and one inside the kernel (squashfs keeps
/// incompressible files such as the kernel as raw blocks, so their bytes can
/// be found in the image).
fn corruption_offsets() -> Result<(u64, u64)> {
    corruption_offsets_in("images/test/v3.img")
}

/// [`corruption_offsets`] of an image of the artifacts directory.
fn corruption_offsets_in(name: &str) -> Result<(u64, u64)> {
    let dir = immuboot_qemu_tests::artifacts_dir();
    let image = std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"))?;
    let mut regions = Vec::new();
    let mut kernel_at = None;
    for f in ["boot/vmlinuz", "boot/initrd.img"] {
        let content = std::fs::read(dir.join("rootfs").join(f))?;
        // A block from the middle: the payload of a kernel or a compressed
        // initramfs does not compress, so it is stored raw.
        let middle = content.len() / 2 / 131072 * 131072;
        let probe = &content[middle..middle + 4096];
        let pos = image
            .windows(probe.len())
            .position(|w| w == probe)
            .with_context(|| format!("{f} is not stored raw in {name}"))? as u64;
        let start = pos.saturating_sub(middle as u64);
        regions.push(start..start + content.len() as u64);
        if f == "boot/vmlinuz" {
            kernel_at = Some(pos);
        }
    }
    let len = image.len() as u64;
    let root = [30, 50, 70, 85]
        .iter()
        .map(|pct| len * pct / 100)
        .find(|off| regions.iter().all(|r| !r.contains(off)))
        .context("no offset outside the kernel and initramfs")?;
    Ok((root, kernel_at.context("kernel offset")?))
}

fn corrupt_slot_b(vm: &mut Vm, offset: u64) -> Result<()> {
    vm.run_ok(&format!(
        "{STATE_RW} && printf 'CORRUPTED BY THE TEST' | dd of=/run/initramfs/cos-state/cOS/b.img \
         bs=1 seek={offset} conv=notrunc status=none && sync"
    ))?;
    Ok(())
}

/// Writes `image` into slot b, flips bytes at `offset` of it (the root
/// file system region) and reboots: the init's digest check on b's trial
/// boot must catch it, mark b bad and reboot; slot a boots. Returns the VM
/// logged in on slot a and the seconds it took.
fn corrupted_root_region_lands_on_slot_a(
    m: &mut Machine,
    mut vm: Vm,
    image: &str,
    offset: u64,
    within: Duration,
) -> Result<(Vm, u64)> {
    upgrade(&mut vm, image)?;
    corrupt_slot_b(&mut vm, offset)?;
    vm.reboot()?;
    let started = Instant::now();
    failing_boot(m, "b", "is corrupted", within)?;
    let mut vm = boot(m)?;
    let seconds = started.elapsed().as_secs();
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot b:       bad") && status.contains("is corrupted: its SHA-256 is"),
        "{status}"
    );
    Ok((vm, seconds))
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s15_corrupted_slot_image_is_caught_on_its_first_boot() -> Result<()> {
    let (root_offset, kernel_offset) = corruption_offsets()?;
    let mut m = Machine::new("s15-corrupted")?.with_payload();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;

    // Bytes flipped where the root file system lies: the init's digest check.
    let (mut vm, root_seconds) = corrupted_root_region_lands_on_slot_a(
        &mut m,
        vm,
        &format!("{PAYLOAD}/v3.img"),
        root_offset,
        Duration::from_secs(120),
    )?;

    // Bytes flipped inside the kernel: GRUB's check, same boot.
    mount_payload(&mut vm)?;
    upgrade(&mut vm, &format!("{PAYLOAD}/v3.img"))?;
    corrupt_slot_b(&mut vm, kernel_offset)?;
    vm.reboot()?;
    let started = Instant::now();
    let mut vm = m.boot()?;
    vm.expect("slot b cannot be loaded", Duration::from_secs(200))?;
    vm.login()?;
    let kernel_seconds = started.elapsed().as_secs();
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot b:       bad")
            && status.contains("GRUB found its kernel or initramfs corrupted"),
        "{status}"
    );
    record_result(
        "s15-corrupted-image",
        json!({
            "root_region": {"offset": root_offset, "reboots_to_good_slot": 1, "seconds": root_seconds},
            "kernel_region": {"offset": kernel_offset, "reboots_to_good_slot": 0, "seconds": kernel_seconds},
        }),
    )?;
    Ok(())
}

fn slot_b_digest(vm: &mut Vm) -> Result<String> {
    vm.run_ok("sha256sum /run/initramfs/cos-state/cOS/b.img | cut -d' ' -f1")
}

/// The offset in slot a's image of the first compressed block of systemd's
/// shared library (every systemd binary loads it first).
fn systemd_library_block_in_slot_a() -> Result<u64> {
    let image = immuboot_qemu_tests::artifacts_dir().join("images/a.img");
    let found = immuboot_qemu_tests::squashfs_first_block(&image, |p| {
        p.starts_with("/usr/lib/x86_64-linux-gnu/systemd")
            && p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("libsystemd-shared-") && n.ends_with(".so")
            })
    })?;
    let (_, at) = found.with_context(|| {
        format!(
            "no libsystemd-shared-*.so with a data block in {}",
            image.display()
        )
    })?;
    Ok(at)
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s26_good_slot_that_goes_bad_falls_back_after_three_unfinished_boots() -> Result<()> {
    let offset = systemd_library_block_in_slot_a()?;
    let mut m = Machine::new("s26-good-goes-bad")?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("slot a:       good  (image version") && !status.contains("not finished"),
        "slot a is not good with every boot finished: {status}"
    );
    // 64 bytes inside the compressed block of libsystemd-shared: the image
    // of a good slot is not hashed at boot, so only the boot counters can
    // notice. (The page cache still holds the good block: this boot goes
    // on; the next ones read the disk.)
    vm.run_ok(&format!(
        "{STATE_RW} && printf 'CORRUPTED BY THE TEST %.0s' 1 2 3 | head -c 64 \
         | dd of=/run/initramfs/cos-state/cOS/a.img bs=1 seek={} conv=notrunc status=none && sync",
        offset + 64
    ))?;
    vm.reboot()?;
    let started = Instant::now();
    for boot_nr in 1..=3 {
        failing_boot(&mut m, "a", "SQUASHFS error", Duration::from_secs(300))
            .map_err(|e| e.context(format!("failing boot {boot_nr} of slot a")))?;
    }
    // GRUB stops booting slot a; the passive slot b boots by itself.
    let mut vm = boot(&mut m)?;
    let seconds = started.elapsed().as_secs();
    ensure!(booted(&mut vm)? == ("passive".into(), "b".into()));
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains(
            "FALLBACK:     fallback to slot b: slot a, marked good before, did not finish its last 3 boots"
        ) && status.contains("slot a:       bad")
            && status.contains("last failure: slot a: was marked good, but its last 3 boots did not finish"),
        "{status}"
    );
    // The fallback finishes its boot and becomes the active slot.
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("active slot:  b") && status.contains("slot b:       good  (image version"),
        "{status}"
    );
    record_result(
        "s26-good-slot-goes-bad",
        json!({"failed_boots_before_fallback": 3, "seconds_to_good_slot": seconds}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s27_a_second_disk_with_our_labels_does_not_take_over_the_boot() -> Result<()> {
    let m = Machine::new("s27-look-alike")?;
    // Version 3 on the look-alike, version 2 in the machine's slot a; the
    // look-alike is attached first, so it is vda and GRUB's hd0.
    let foreign = m.make_look_alike_disk(&m.artifacts.join("images/test/v3.img"))?;
    let mut m = m.with_disk_first(&foreign);
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    ensure!(
        image_version(&mut vm)? == "2",
        "booted the look-alike's image"
    );
    let cmdline = vm.run_ok("cat /proc/cmdline")?;
    ensure!(cmdline.contains("immuboot.state_uuid="), "{cmdline}");
    // Every partition of the boot is on the machine's own disk (vdb).
    for at in ["/run/initramfs/cos-state", "/oem", "/usr/local"] {
        let source = vm.run_ok(&format!("findmnt -n -o SOURCE {at}"))?;
        ensure!(source.trim().starts_with("/dev/vdb"), "{at} is {source}");
    }
    for marker in ["/oem/FOREIGN", "/usr/local/FOREIGN"] {
        let (rc, _) = vm.run(&format!("test -e {marker}"))?;
        ensure!(rc != 0, "{marker}: the look-alike's partition is mounted");
    }
    let status = vm.run_ok("immuboot status")?;
    for label in ["COS_OEM", "COS_STATE", "COS_PERSISTENT"] {
        ensure!(
            status.contains(&format!("IGNORED:      {label} on /dev/vda")),
            "{label} look-alike not named: {status}"
        );
    }
    ensure!(
        status.contains("image from:   COS_STATE /dev/vdb"),
        "{status}"
    );
    // The state the CLI writes is the machine's own: a one-shot choice set
    // now is GRUB's next boot, read from the same disk.
    vm.run_ok("immuboot next-boot passive")?;
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "b".into()));
    ensure!(
        image_version(&mut vm)? != "3",
        "booted the look-alike's image"
    );
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s28_a_vfat_oem_partition_is_mounted_as_oem() -> Result<()> {
    let m = Machine::new("s28-vfat-oem")?;
    // COS_OEM made with vfat, as many installs of this field have it.
    let fat = m.dir.join("oem-vfat.img");
    let marker = m.dir.join("made-with-vfat");
    std::fs::write(&marker, "vfat\n")?;
    for (tool, args) in [
        (
            "mkfs.vfat",
            vec![
                "-n".into(),
                "COS_OEM".into(),
                "-C".into(),
                fat.display().to_string(),
                "32768".into(),
            ],
        ),
        (
            "mcopy",
            vec![
                "-i".into(),
                fat.display().to_string(),
                marker.display().to_string(),
                "::/made-with-vfat".into(),
            ],
        ),
    ] {
        let out = std::process::Command::new(tool).args(&args).output()?;
        ensure!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    m.replace_partition("COS_OEM", &fat)?;
    let mut m = m;
    let mut vm = boot(&mut m)?;
    let oem = vm.run_ok("findmnt -n -o FSTYPE,SOURCE /oem")?;
    ensure!(
        oem.split_whitespace().eq(["vfat", "/dev/vda2"]),
        "/oem is {oem}"
    );
    vm.run_ok("test -e /oem/made-with-vfat")?;
    let status = vm.run_ok("immuboot status")?;
    ensure!(status.contains("oem:          /dev/vda2"), "{status}");
    ensure!(
        !status
            .lines()
            .any(|l| l.starts_with("warning:") && l.to_lowercase().contains("oem")),
        "{status}"
    );
    Ok(())
}

/// `initrd` with `files` (path in the archive, contents) appended as a
/// second, uncompressed archive, which the kernel unpacks after the first
/// (as an early microcode archive is put before one).
fn initrd_with_files(
    initrd: &std::path::Path,
    files: &[(&str, &str)],
    out: &std::path::Path,
) -> Result<()> {
    use std::io::Write;
    let mut data = std::fs::read(initrd)?;
    // The kernel skips zeros between archives; a header starts 4-aligned.
    data.resize(data.len().next_multiple_of(4), 0);
    let mut ino = 0;
    let mut entry = |data: &mut Vec<u8>, name: &str, mode: u32, body: &[u8]| -> Result<()> {
        ino += 1;
        let mut w = cpio::newc::Builder::new(name)
            .ino(ino)
            .mode(mode)
            .nlink(1)
            .write(data, body.len() as u32);
        w.write_all(body)?;
        w.finish()?;
        Ok(())
    };
    for (path, contents) in files {
        let mut parent = String::new();
        for dir in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |p| p.1)
        {
            parent = if parent.is_empty() {
                dir.to_string()
            } else {
                format!("{parent}/{dir}")
            };
            entry(&mut data, &parent, 0o040755, b"")?;
        }
        entry(&mut data, path, 0o100644, contents.as_bytes())?;
    }
    cpio::newc::trailer(&mut data)?;
    std::fs::write(out, data)?;
    Ok(())
}

/// Module parameters and blacklists reach the modules the init loads as
/// modprobe applies them. A modprobe.d file in the initramfs (appended as a
/// second archive; the build copies the image's files the same way) gives
/// loop `max_loop=1 max_part=7` and blacklists the VM's hardware watchdog
/// driver; the command line's `loop.max_loop=3` comes after the file and
/// wins. So loop gets max_loop 3 and max_part 7 (loop rounds max_part up to
/// a power of two less one), and the init, not loading i6300esb for its
/// device, arms softdog instead. A value overlay does not take
/// (`overlay.redirect_dir=maybe`) makes the kernel refuse the load: the
/// init loads overlay with its defaults, `/etc` is still the overlay, and
/// the warning names the parameter.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s33_module_parameters_and_blacklists_from_modprobe_d_and_the_command_line() -> Result<()> {
    let mut m = Machine::new("s33-module-options")?;
    let image = m.artifacts.join("images/a.img");
    let (kernel, initrd) = (m.dir.join("vmlinuz"), m.dir.join("initrd.img"));
    extract_from_image(&image, "boot/vmlinuz", &kernel)?;
    extract_from_image(&image, "boot/initrd.img", &initrd)?;
    let with_conf = m.dir.join("initrd-modprobe-d.img");
    initrd_with_files(
        &initrd,
        &[(
            "etc/modprobe.d/s33.conf",
            "options loop max_loop=1 max_part=7\nblacklist i6300esb\n",
        )],
        &with_conf,
    )?;
    let mut vm = m.boot_kernel(
        &kernel,
        &with_conf,
        "root=LABEL=COS_STATE cos-img/filename=/cOS/a.img immuboot.mode=active \
         immuboot.slot=a console=ttyS0,115200 printk.devkmsg=on panic=10 loop.max_loop=3 \
         overlay.redirect_dir=maybe",
    )?;
    vm.login()?;
    let params =
        vm.run_ok("cat /sys/module/loop/parameters/max_loop /sys/module/loop/parameters/max_part")?;
    ensure!(
        params.split_whitespace().eq(["3", "7"]),
        "loop's max_loop and max_part: {params}"
    );
    let console = vm.console();
    ensure!(
        console
            .lines()
            .any(|l| l.contains("i6300esb (for pci:") && l.contains("not loaded: blacklisted")),
        "the init did not say it left the blacklisted watchdog driver out"
    );
    let facts = vm.run_ok("cat /run/immuboot/boot.json")?;
    ensure!(
        facts.contains("\"watchdog\": \"Software Watchdog, "),
        "the init did not arm softdog in place of the blacklisted driver:\n{facts}"
    );
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        !status.lines().any(|l| l.contains("module options")),
        "the initramfs' modprobe.d files gave warnings:\n{status}"
    );
    ensure!(
        status.contains("overlay: the kernel refused its parameters \"redirect_dir=maybe\""),
        "no warning about overlay's refused parameter:\n{status}"
    );
    let etc = vm.run_ok("findmnt -n -o FSTYPE /etc")?;
    ensure!(etc.trim() == "overlay", "/etc is {etc}");
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s16_signed_squashfs_upgrade_boots_and_a_tampered_one_is_refused() -> Result<()> {
    let mut m = Machine::new("s16-upgrade-squashfs")?.with_payload();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;
    vm.run_ok(&format!(
        "cp {PAYLOAD}/trusted.pub /oem/immuboot/trusted.pub"
    ))?;
    let before_status = vm.run_ok("immuboot status")?;
    let before_digest = slot_b_digest(&mut vm)?;

    // Tampered after signing: refused, nothing changed.
    vm.run_ok(&format!(
        "cp {PAYLOAD}/v3.img /usr/local/tampered.img && printf X | dd of=/usr/local/tampered.img \
         bs=1 seek=50000000 conv=notrunc status=none"
    ))?;
    let (rc, out) = vm.run(&format!(
        "immuboot upgrade /usr/local/tampered.img --signature {PAYLOAD}/v3.img.minisig 2>&1"
    ))?;
    ensure!(rc != 0 && out.contains("tampered"), "{out}");
    // Unsigned directory: refused while a key is configured.
    let (rc, out) = vm.run(&format!("immuboot upgrade {PAYLOAD}/rootfs-v4 2>&1"))?;
    ensure!(rc != 0 && out.contains("only signed images"), "{out}");
    ensure!(vm.run_ok("immuboot status")? == before_status);
    ensure!(slot_b_digest(&mut vm)? == before_digest);

    // Signed: installed, boots, is marked good.
    let started = Instant::now();
    let out = upgrade(&mut vm, &format!("{PAYLOAD}/v3.img"))?;
    let upgrade_seconds = started.elapsed().as_secs_f64();
    ensure!(out.contains("signature verified"), "{out}");
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    ensure!(image_version(&mut vm)? == "3");
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("slot b:       good  (image version 3)")
            && status.contains("slot a:       good  (image version 2)")
            && status.contains("active slot:  b"),
        "{status}"
    );
    // The same upgrade again: the booted slot holds it, nothing is written.
    mount_payload(&mut vm)?;
    let out = upgrade(&mut vm, &format!("{PAYLOAD}/v3.img"))?;
    ensure!(
        out.contains("slot b (booted) already holds") && out.contains("nothing to do"),
        "{out}"
    );
    ensure!(vm.run_ok("immuboot status")? == status);
    record_result(
        "s16-upgrade-squashfs",
        json!({"upgrade_seconds_in_guest": upgrade_seconds}),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s17_upgrades_from_a_directory_then_unattended_from_a_registry_tag() -> Result<()> {
    let registry = immuboot_qemu_tests::Registry::start("s17")?;
    let layout = immuboot_qemu_tests::artifacts_dir().join("images/oci-v5");
    registry.push_as(&layout, "v5", "immuboot/os", "stable")?;
    let mut m = Machine::new("s17-upgrade-dir-oci")?
        .with_payload()
        .with_network();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;
    // Unattended upgrades are off by default: nothing enables the timer.
    let wanted = "systemctl show -p WantedBy --value immuboot-upgrade.timer";
    ensure!(!vm.run_ok(wanted)?.contains("timers.target"));

    let started = Instant::now();
    upgrade(
        &mut vm,
        &format!("{PAYLOAD}/rootfs-v4 --compression-level 1"),
    )?;
    let dir_seconds = started.elapsed().as_secs_f64();
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
    ensure!(image_version(&mut vm)? == "4");
    wait_marked_good(&mut vm)?;

    // A cosign key on COS_OEM: from now on OCI images must be signed by it.
    // What is not is refused before anything changes (the boot state and
    // the slot images as they were, same inodes, sizes and times).
    let repo = "immuboot/os";
    let (trusted, pem) = signing::key_pair();
    let (other, _) = signing::key_pair();
    vm.run_ok(&format!(
        "mkdir -p /oem/immuboot && printf '%b' '{}' > /oem/immuboot/cosign.pub && sync",
        pem.replace('\n', "\\n")
    ))?;
    let v5 = registry_digest(&registry, repo, "stable")?;
    push_signature(&registry, repo, &v5, &v5, &trusted)?;
    registry.push_as(&layout, "v6-broken", repo, "candidate")?;
    let v6 = registry_digest(&registry, repo, "candidate")?;
    start_network(&mut vm)?;
    let fingerprint = "(cd /run/initramfs/cos-state && stat -c '%i %s %Y %n' cOS/*.img* \
                       && find grub -maxdepth 1 -type f | sort | xargs sha256sum)";
    let before = vm.run_ok(fingerprint)?;
    let candidate = format!("--plain-http 10.0.2.2:{}/{repo}:candidate", registry.port);
    for (case, signature, refusal) in [
        ("unsigned", None, "is not signed"),
        (
            "signed with another key",
            Some((&v6, &other)),
            "not made by a trusted cosign key",
        ),
        (
            "changed after signing (the signature of v5 under v6's tag)",
            Some((&v5, &trusted)),
            "changed after it was signed",
        ),
    ] {
        if let Some((payload_of, key)) = signature {
            push_signature(&registry, repo, &v6, payload_of, key)?;
        }
        let (rc, out) = vm.run(&format!("immuboot upgrade {candidate} 2>&1"))?;
        ensure!(rc != 0 && out.contains(refusal), "{case}: exit {rc}: {out}");
        ensure!(
            vm.run_ok(fingerprint)? == before,
            "{case}: the boot state or a slot image changed"
        );
    }

    // The configuration on COS_OEM follows the fleet registry's `stable`
    // tag; the fleet's registry is out of reach (a name that never
    // resolves), and registries.conf on COS_OEM sends its pulls to a local
    // plain-HTTP mirror, the test registry. The generator enables the timer
    // with its schedule (daemon-reload runs the generators again, as a
    // boot does).
    let reference = "fleet.example.invalid/immuboot/os:stable";
    let mirror = format!("10.0.2.2:{}", registry.port);
    vm.run_ok(&format!(
        "mkdir -p /oem/immuboot && printf '[[registry]]\\nprefix = \"fleet.example.invalid\"\\n\
         [[registry.mirror]]\\nlocation = \"{mirror}\"\\ninsecure = true\\n' \
         > /oem/immuboot/registries.conf \
         && printf 'source: {reference}\\n\
         schedule: \"*-*-* 04:00\"\\nreboot: now\\ntries: 1\\n' > /oem/immuboot/upgrade.yaml \
         && systemctl daemon-reload"
    ))?;
    ensure!(vm.run_ok(wanted)?.contains("timers.target"));
    let calendar = vm.run_ok("systemctl show -p TimersCalendar --value immuboot-upgrade.timer")?;
    ensure!(calendar.contains("04:00:00"), "{calendar}");

    // One run, started as the timer starts it: the OCI image's signature
    // is verified, it is pulled, squashed into slot a, and the machine
    // reboots into it.
    let started = Instant::now();
    vm.send("systemctl start --no-block immuboot-upgrade.service\n")?;
    vm.wait_exit(Duration::from_secs(900))?;
    let oci_seconds = started.elapsed().as_secs_f64();
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    ensure!(image_version(&mut vm)? == "5");
    // The top layer's whiteout removed /etc/motd.
    let (rc, _) = vm.run("test -e /etc/motd")?;
    ensure!(rc != 0, "/etc/motd survived its whiteout");
    let status = wait_marked_good(&mut vm)?;
    ensure!(
        status.contains("slot a:       good  (image version 5)")
            && status.contains("slot b:       good  (image version 4)"),
        "{status}"
    );
    // The mirror served it; the image is known by the fleet's name.
    let last = vm.run_ok("immuboot status --json | sed -n '/\"last_upgrade\"/,/}/p'")?;
    ensure!(
        last.contains(&format!("{mirror}/immuboot/os")) && last.contains(reference),
        "last_upgrade: {last}"
    );
    // The same image again (a controller retrying): the booted slot holds
    // that manifest; only the manifest is fetched, nothing is written.
    start_network(&mut vm)?;
    let (rc, out) = vm.run(&format!("immuboot upgrade --check {reference} 2>&1"))?;
    ensure!(
        rc == 0 && out.contains("slot a (booted) already holds"),
        "--check: exit {rc}: {out}"
    );
    // The command the Kubernetes Plan runs (README), run again after the
    // reboot it caused: nothing written, no reboot, exit 0.
    let out = upgrade(&mut vm, &format!("{reference} --reboot"))?;
    ensure!(out.contains("slot a (booted) already holds"), "{out}");
    ensure!(vm.run_ok("echo still-up")?.contains("still-up"));

    // A broken release under the same tag: the next run installs it into
    // slot b and reboots, its one try fails, the machine is back on slot a
    // by itself.
    push_signature(&registry, repo, &v6, &v6, &trusted)?;
    registry.push_as(&layout, "v6-broken", repo, "stable")?;
    vm.send("systemctl start --no-block immuboot-upgrade.service\n")?;
    vm.wait_exit(Duration::from_secs(900))?;
    failing_boot(
        &mut m,
        "b",
        "test image: systemd fails to start",
        Duration::from_secs(300),
    )?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
    let status = wait_marked_good(&mut vm)?;
    ensure!(status.contains("slot b:       bad"), "{status}");

    // The run after that does not install it again, and says why.
    start_network(&mut vm)?;
    vm.run_ok("systemctl start immuboot-upgrade.service")?;
    let log = vm.run_ok("journalctl -b -o cat -u immuboot-upgrade.service")?;
    ensure!(
        log.contains("will not be installed again") && log.contains("not installing"),
        "{log}"
    );
    ensure!(vm.run_ok("immuboot status")? == status);
    record_result(
        "s17-upgrade-dir-oci",
        json!({"directory_upgrade_seconds_in_guest": dir_seconds, "unattended_registry_upgrade_to_reboot_seconds": oci_seconds}),
    )?;
    Ok(())
}

#[path = "../../../oci/tests/common/signing.rs"]
mod signing;

/// The manifest digest REPO:TAG has in the test registry (from the host).
fn registry_digest(
    registry: &immuboot_qemu_tests::Registry,
    repo: &str,
    tag: &str,
) -> Result<String> {
    immuboot_oci::resolve(&immuboot_oci::ImageSource::Registry {
        reference: format!("127.0.0.1:{}/{repo}:{tag}", registry.port),
        plain_http: true,
    })
}

/// Pushes a cosign signature by `key` of a payload naming `payload_of`
/// under the signature tag of `signed` (normally the same digest).
fn push_signature(
    registry: &immuboot_qemu_tests::Registry,
    repo: &str,
    signed: &str,
    payload_of: &str,
    key: &p256::ecdsa::SigningKey,
) -> Result<()> {
    let dir = immuboot_qemu_tests::artifacts_dir()
        .join("registry")
        .join(format!("signature-{}", registry.port));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        dir.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )?;
    signing::store_signature(&dir, signed, &signing::payload(payload_of), key);
    let tag = format!("sha256-{}.sig", signed.trim_start_matches("sha256:"));
    registry.push_as(&dir, &tag, repo, &tag)
}

/// The guest's network through QEMU's user network (the registry on the
/// host is 10.0.2.2), configured in /run: once per boot.
fn start_network(vm: &mut Vm) -> Result<()> {
    vm.run_ok(
        "mkdir -p /run/systemd/network && printf '[Match]\\nName=en*\\n[Network]\\nDHCP=yes\\n' \
         > /run/systemd/network/10-test.network && systemctl start systemd-networkd \
         && /lib/systemd/systemd-networkd-wait-online --timeout=60",
    )?;
    Ok(())
}

/// The named points of `immuboot upgrade` (`IMMUBOOT_PAUSE_AT`) where s18
/// cuts the power, in the order the upgrade passes them, in two machines
/// that run side by side: until the image is written and verified (the
/// boot state untouched), and from marking the target to activation.
/// s18a adds cuts at random percentages of the write (see
/// [`random_write_points`]).
const POWER_CUTS_WRITING: &[&str] = &[
    "start", "write-10", "write-50", "write-90", "written", "verified",
];
const POWER_CUTS_INSTALLING: &[&str] = &["marked", "renamed", "synced", "activating", "activated"];
/// The points of the two lists a CI run cuts at (`--full`: all of them):
/// mid-write (the random percentage s18a adds), written but unverified (a
/// leftover the next run must remove), verified; the target marked, the
/// image renamed, the slot activated. Each cut costs a boot, about a
/// minute and a half under TCG.
const POWER_CUTS_WRITING_SAMPLE: &[&str] = &["written", "verified"];
const POWER_CUTS_INSTALLING_SAMPLE: &[&str] = &["marked", "renamed", "activated"];

/// `all` with `--full`, else `sample`.
fn sampled(all: &'static [&'static str], sample: &'static [&'static str]) -> Vec<&'static str> {
    if full_run() {
        all.to_vec()
    } else {
        sample.to_vec()
    }
}

/// The state-commit points a CI run cuts at, one per command, taking turns:
/// the new backup durable beside the old primary, or both durable in the
/// journal only (GRUB, which does not replay it, still sees the old state).
/// `cargo xtask test --full` cuts at all of [`STATE_COMMIT`].
const STATE_COMMIT_SAMPLE: [&str; 2] = ["state-saved", "state-backup-saved"];

/// The points a command is cut at: `sample` in CI, all with `--full`.
fn state_points(sample: &'static str) -> Vec<&'static str> {
    if full_run() {
        STATE_COMMIT.to_vec()
    } else {
        vec![sample]
    }
}

/// Whether this run is `cargo xtask test --full` (every power-cut point).
fn full_run() -> bool {
    std::env::var_os("IMMUBOOT_TEST_FULL").is_some_and(|v| v == "1")
}

/// `count` distinct `write-N` points at random whole percentages (not 10,
/// 50 or 90), in increasing order; the seed is printed so a failure can be
/// repeated (`IMMUBOOT_CUT_SEED`).
fn random_write_points(count: usize) -> Vec<String> {
    let seed = std::env::var("IMMUBOOT_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("random write points: IMMUBOOT_CUT_SEED={seed}");
    random_percentages(seed, count)
        .into_iter()
        .map(|n| format!("write-{n}"))
        .collect()
}

fn random_percentages(seed: u64, count: usize) -> Vec<u64> {
    // xorshift64*: enough to spread cuts over the write.
    // Any seed, 0 included, gives a non-zero state.
    let mut x = (seed ^ 0x9e37_79b9_7f4a_7c15).max(1);
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < count.min(96) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let n = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 99 + 1;
        if ![10, 50, 90].contains(&n) {
            picked.insert(n);
        }
    }
    picked.into_iter().collect()
}

#[test]
fn random_write_points_are_distinct_percentages_and_repeatable() {
    let a = random_percentages(42, 4);
    assert_eq!(a, random_percentages(42, 4));
    assert_eq!(a.len(), 4);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    assert!(a
        .iter()
        .all(|n| (1..=99).contains(n) && ![10, 50, 90].contains(n)));
    assert_ne!(a, random_percentages(43, 4));
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s18a_power_cut_while_the_image_is_written_leaves_a_bootable_system() -> Result<()> {
    let random = random_write_points(if full_run() { 4 } else { 1 });
    let mut points: Vec<&str> = sampled(POWER_CUTS_WRITING, POWER_CUTS_WRITING_SAMPLE);
    // In write order: after "start", with the fixed percentages.
    points.extend(random.iter().map(String::as_str));
    points.sort_by_key(|p| match p.strip_prefix("write-") {
        Some(n) => n.parse::<u64>().unwrap_or(0) + 1,
        None if *p == "start" => 0,
        None => 100 + POWER_CUTS_WRITING.iter().position(|q| q == p).unwrap_or(0) as u64,
    });
    power_cuts("s18a-power-cut-writing", &points)
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s18b_power_cut_while_the_image_is_installed_leaves_a_bootable_system() -> Result<()> {
    power_cuts(
        "s18b-power-cut-installing",
        &sampled(POWER_CUTS_INSTALLING, POWER_CUTS_INSTALLING_SAMPLE),
    )
}

/// Only in `cargo xtask test --full`: the upgrade cut inside its first
/// boot-state commit (the target slot marked not bootable), at each point.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test --full`"]
fn s18c_power_cut_while_the_upgrade_writes_the_boot_state() -> Result<()> {
    if !full_run() {
        println!("s18c: only in `cargo xtask test --full`");
        return Ok(());
    }
    power_cuts("s18c-power-cut-upgrade-state", STATE_COMMIT)
}

/// Waits until `vm` paused at `point` (`what` is paused there, for the
/// error), then cuts the power; returns when.
fn cut_at_pause(
    mut vm: Vm,
    point: &str,
    what: &str,
    within: Duration,
) -> Result<std::time::Instant> {
    vm.expect(&format!("paused at checkpoint {point}"), within)
        .with_context(|| format!("{what} did not reach {point}"))?;
    vm.power_cut()?;
    Ok(std::time::Instant::now())
}

/// The boot after a power cut, once marked good.
struct AfterCut {
    vm: Vm,
    mode: String,
    slot: String,
    status: String,
    /// From the cut to the boot marked good.
    seconds: u64,
}

fn boot_after_cut(m: &mut Machine, cut: std::time::Instant) -> Result<AfterCut> {
    let mut vm = boot(m)?;
    let (mode, slot) = booted(&mut vm)?;
    let status = wait_marked_good(&mut vm)?;
    Ok(AfterCut {
        vm,
        mode,
        slot,
        status,
        seconds: cut.elapsed().as_secs(),
    })
}

/// After a completed boot: both copies of the boot state are equal and no
/// temporary is left beside them (`what` names the cut, for the error).
fn state_settled(vm: &mut Vm, what: &str) -> Result<()> {
    let (rc, cmp) = vm.run(
        "cmp /run/initramfs/cos-state/grub/grubenv /run/initramfs/cos-state/grub/grubenv.bak",
    )?;
    let listing = vm.run_ok("ls -a1 --color=never /run/initramfs/cos-state/grub")?;
    ensure!(
        rc == 0 && temporaries(&listing).is_empty(),
        "after a power cut {what} and a completed boot: copies of the boot state \
         differ ({}) or temporaries are left:\n{listing}",
        cmp.trim()
    );
    Ok(())
}

/// A boot-state command cut by a power cut inside its commit: what runs
/// first (so the command has a change to write), the command, and what its
/// rerun prints. `{booted}` and `{passive}` are replaced by the booted slot
/// and the other one.
struct StateCommand {
    name: &'static str,
    prepare: Option<&'static str>,
    command: &'static str,
    rerun_says: &'static str,
    /// The point CI cuts at (`--full`: every point).
    sample: &'static str,
    /// Run after the rerun, so the next cut's command has a change to write.
    undo: Option<&'static str>,
}

const STATE_COMMANDS: &[StateCommand] = &[
    StateCommand {
        name: "mark-active",
        prepare: None,
        command: "immuboot mark-active {passive}",
        rerun_says: "slot {passive} active on trial",
        sample: STATE_COMMIT_SAMPLE[0],
        undo: Some("immuboot rollback"),
    },
    StateCommand {
        name: "next-boot",
        prepare: Some("immuboot next-boot active"),
        command: "immuboot next-boot passive",
        rerun_says: "next boot: passive (once)",
        sample: STATE_COMMIT_SAMPLE[1],
        undo: None,
    },
    StateCommand {
        name: "rollback",
        prepare: None,
        command: "immuboot rollback",
        rerun_says: "is active",
        sample: STATE_COMMIT_SAMPLE[0],
        undo: None,
    },
    StateCommand {
        name: "mark-good",
        // The booted slot on trial, as after an upgrade.
        prepare: Some("immuboot mark-active {booted}"),
        command: "immuboot mark-good",
        rerun_says: "slot {booted} marked good",
        sample: STATE_COMMIT_SAMPLE[1],
        undo: None,
    },
];

/// Cuts the power inside each state command's commit, at each point:
/// every next boot lands on a good slot (active or passive entry, never
/// recovery, no person), both copies of the boot state are equal and no
/// temporary is left once that boot completed, and a rerun of the
/// interrupted command succeeds. Records the outcomes and the time from
/// the cut to a completed boot.
fn state_power_cuts(name: &str, commands: &[&StateCommand]) -> Result<()> {
    let mut m = Machine::new(name)?.for_power_cuts();
    let mut vm = boot(&mut m)?;
    let mut outcomes = Vec::new();
    for cmd in commands {
        for point in state_points(cmd.sample) {
            wait_marked_good(&mut vm)?;
            let slot = booted(&mut vm)?.1;
            let fill = |text: &str| {
                text.replace("{booted}", &slot)
                    .replace("{passive}", &other_slot(&slot))
            };
            if let Some(prepare) = cmd.prepare {
                vm.run_ok(&fill(prepare))?;
            }
            let command = fill(cmd.command);
            vm.send(&format!("IMMUBOOT_PAUSE_AT={point} {command}\n"))?;
            let cut = cut_at_pause(vm, point, &command, Duration::from_secs(120))?;
            let after = boot_after_cut(&mut m, cut)?;
            let (mode, now, status, seconds) =
                (after.mode, after.slot, after.status, after.seconds);
            vm = after.vm;
            ensure!(
                (mode == "active" || mode == "passive")
                    && status.contains(&format!("slot {now}:       good")),
                "after a power cut in `{command}` at {point}: booted {mode} slot {now}:\n{status}"
            );
            state_settled(&mut vm, &format!("in `{command}` at {point}"))?;
            // The rerun, from the state the cut left, on the slot now
            // booted, prepared as the first run was.
            let slot = now.clone();
            let fill = |text: &str| {
                text.replace("{booted}", &slot)
                    .replace("{passive}", &other_slot(&slot))
            };
            if let Some(prepare) = cmd.prepare {
                vm.run_ok(&fill(prepare))?;
            }
            let rerun = fill(cmd.command);
            let (rc, out) = vm.run(&format!("{rerun} 2>&1"))?;
            let says = fill(cmd.rerun_says);
            ensure!(
                rc == 0 && out.contains(&says),
                "the rerun of `{rerun}` after a power cut at {point} (exit {rc}) did not say {says:?}:\n{out}"
            );
            if let Some(undo) = cmd.undo {
                vm.run_ok(&fill(undo))?;
            }
            outcomes.push(json!({
                "command": cmd.name, "point": point, "booted": format!("{mode} {now}"),
                "seconds_to_a_completed_boot": seconds,
            }));
        }
    }
    println!("power cuts in boot-state commits:");
    for o in &outcomes {
        println!("  {o}");
    }
    record_result(name, json!({"points": outcomes}))?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s29a_power_cuts_in_mark_active_and_next_boot() -> Result<()> {
    state_power_cuts(
        "s29a-power-cut-state",
        &[&STATE_COMMANDS[0], &STATE_COMMANDS[1]],
    )
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s29b_power_cuts_in_rollback_and_mark_good() -> Result<()> {
    state_power_cuts(
        "s29b-power-cut-state",
        &[&STATE_COMMANDS[2], &STATE_COMMANDS[3]],
    )
}

/// Where CI cuts `immuboot upgrade --recovery` and `immuboot reset`: the
/// image renamed over the old one, its directory not fsynced yet.
/// `cargo xtask test --full` cuts at every point of the write, and `reset`
/// also inside its first boot-state commit (both slots taken out of
/// service).
const RECOVERY_CUTS_SAMPLE: &[&str] = &["renamed"];
const RECOVERY_CUTS: &[&str] = &["write-50", "written", "verified", "renamed", "synced"];
const RESET_CUTS_SAMPLE: &[&str] = &["renamed"];
const RESET_CUTS: &[&str] = &[
    "written",
    "verified",
    "state-backup-saved",
    "state-saved",
    "renamed",
    "synced",
];

/// One-shot recovery, a reboot, and the boot that follows: recovery.
fn reboot_into_recovery(m: &mut Machine, mut vm: Vm) -> Result<Vm> {
    vm.run_ok("immuboot next-boot recovery")?;
    vm.reboot()?;
    let mut vm = boot(m)?;
    ensure!(booted(&mut vm)?.0 == "recovery");
    Ok(vm)
}

/// `immuboot upgrade --recovery` and `immuboot reset` cut by a power cut.
/// The recovery upgrade: every next boot is the active slot, marked good
/// (the slots are not touched), and the recovery entry still boots (the
/// old image or the new one, never a torn one). `reset`, run from
/// recovery: every next boot lands on recovery or on a slot, without a
/// person (before the reset takes the slots out of service they still
/// boot; after, recovery does), with both copies of the boot state equal
/// and no temporary left; a rerun of `reset` then succeeds and slot a
/// boots the recovery's image, and so does a rerun of the recovery upgrade.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s32_power_cuts_in_the_recovery_upgrade_and_in_reset() -> Result<()> {
    let name = "s32-power-cut-recovery";
    let mut m = Machine::new(name)?.with_payload().for_power_cuts();
    let mut vm = boot(&mut m)?;
    let mut outcomes = Vec::new();
    for point in sampled(RECOVERY_CUTS, RECOVERY_CUTS_SAMPLE) {
        wait_marked_good(&mut vm)?;
        mount_payload(&mut vm)?;
        let command = format!("immuboot upgrade --recovery {PAYLOAD}/v3.img");
        vm.send(&format!("IMMUBOOT_PAUSE_AT={point} {command}\n"))?;
        let cut = cut_at_pause(vm, point, &command, Duration::from_secs(300))?;
        let after = boot_after_cut(&mut m, cut)?;
        vm = after.vm;
        ensure!(
            (after.mode.as_str(), after.slot.as_str()) == ("active", "a")
                && after.status.contains("slot a:       good"),
            "after a power cut in `{command}` at {point}: booted {} slot {}:\n{}",
            after.mode,
            after.slot,
            after.status
        );
        state_settled(&mut vm, &format!("in `{command}` at {point}"))?;
        outcomes.push(json!({
            "command": "upgrade --recovery", "point": point,
            "booted": format!("{} {}", after.mode, after.slot),
            "seconds_to_a_completed_boot": after.seconds,
        }));
    }
    // The recovery entry boots what the cuts left.
    vm = reboot_into_recovery(&mut m, vm)?;
    let recovery_version = image_version(&mut vm)?;
    println!("recovery runs image version {recovery_version} after the cuts");
    // reset, cut at each point; after a cut that left the slots in
    // service, back to recovery for the next one.
    for point in sampled(RESET_CUTS, RESET_CUTS_SAMPLE) {
        let command = "immuboot reset";
        vm.send(&format!("IMMUBOOT_PAUSE_AT={point} {command}\n"))?;
        let cut = cut_at_pause(vm, point, command, Duration::from_secs(300))?;
        vm = boot(&mut m)?;
        let (mode, slot) = booted(&mut vm)?;
        ensure!(
            mode == "recovery" || mode == "active",
            "after a power cut in `{command}` at {point}: booted {mode} {slot}"
        );
        state_settled(&mut vm, &format!("in `{command}` at {point}"))?;
        let listing = vm.run_ok("ls -a1 --color=never /run/initramfs/cos-state/cOS")?;
        outcomes.push(json!({
            "command": "reset", "point": point, "booted": format!("{mode} {slot}"),
            "seconds_to_a_completed_boot": cut.elapsed().as_secs(),
            "temporaries_left": temporaries(&listing),
        }));
        if mode != "recovery" {
            vm = reboot_into_recovery(&mut m, vm)?;
        }
    }
    // The reruns succeed: reset from recovery, then the recovery upgrade.
    let out = vm.run_ok("immuboot reset 2>&1")?;
    ensure!(out.contains("reset done"), "{out}");
    vm.reboot()?;
    vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    ensure!(image_version(&mut vm)? == recovery_version);
    state_settled(&mut vm, "after the rerun of reset")?;
    mount_payload(&mut vm)?;
    let out = upgrade(&mut vm, &format!("--recovery {PAYLOAD}/v3.img"))?;
    ensure!(out.contains("recovery written"), "{out}");
    println!("power cuts in the recovery upgrade and reset:");
    for o in &outcomes {
        println!("  {o}");
    }
    record_result(name, json!({"points": outcomes}))?;
    Ok(())
}

/// Writes the file `inner` of the squashfs `image` to `dest`.
fn extract_from_image(image: &std::path::Path, inner: &str, dest: &std::path::Path) -> Result<()> {
    let out = std::process::Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(inner)
        .output()
        .context("unsquashfs (package squashfs-tools)")?;
    ensure!(
        out.status.success(),
        "unsquashfs -cat {} {inner} failed",
        image.display()
    );
    std::fs::write(dest, out.stdout)?;
    Ok(())
}

/// The init's own boot-state write, cut at each point: slot a is put on
/// trial, then its kernel and initramfs are started directly (no GRUB, so
/// the init counts the try itself) with `IMMUBOOT_PAUSE_AT` on the kernel
/// command line (the kernel passes it to the init's environment). After
/// the cut, GRUB boots slot a, which completes and is marked good; the
/// copies are equal and no temporary is left. That boot is the init's rerun.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s29c_power_cuts_in_the_inits_own_state_write() -> Result<()> {
    let name = "s29c-power-cut-init-state";
    let points = state_points(STATE_COMMIT_SAMPLE[0]);
    let mut m = Machine::new(name)?.for_power_cuts();
    let image = m.artifacts.join("images/a.img");
    let (kernel, initrd) = (m.dir.join("vmlinuz"), m.dir.join("initrd.img"));
    extract_from_image(&image, "boot/vmlinuz", &kernel)?;
    extract_from_image(&image, "boot/initrd.img", &initrd)?;
    let mut vm = boot(&mut m)?;
    let mut outcomes = Vec::new();
    for point in points {
        wait_marked_good(&mut vm)?;
        ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
        vm.run_ok("immuboot mark-active a")?;
        vm.reboot()?;
        let direct = m.boot_kernel(
            &kernel,
            &initrd,
            &format!(
                "root=LABEL=COS_STATE cos-img/filename=/cOS/a.img immuboot.mode=active \
                 immuboot.slot=a console=ttyS0,115200 printk.devkmsg=on panic=10 \
                 IMMUBOOT_PAUSE_AT={point}"
            ),
        )?;
        let cut = cut_at_pause(direct, point, "the init", Duration::from_secs(180))?;
        let after = boot_after_cut(&mut m, cut)?;
        let (mode, slot, status, seconds) = (after.mode, after.slot, after.status, after.seconds);
        vm = after.vm;
        ensure!(
            mode == "active" && slot == "a" && status.contains("slot a:       good"),
            "after a power cut in the init's state write at {point}: booted {mode} slot {slot}:\n{status}"
        );
        state_settled(&mut vm, &format!("in the init's state write at {point}"))?;
        outcomes.push(json!({
            "command": "init (counting a try)", "point": point, "booted": format!("{mode} {slot}"),
            "seconds_to_a_completed_boot": seconds,
        }));
    }
    record_result(name, json!({"points": outcomes}))?;
    Ok(())
}

fn other_slot(slot: &str) -> String {
    if slot == "a" { "b" } else { "a" }.to_string()
}

/// Whether a power cut at `point` leaves the upgrade's temporary image
/// (`.X.img.new` beside the target slot's `X.img`) in cOS: `None` where it
/// may or may not, depending on whether the file system committed its
/// journal before the cut.
/// - start: no (the run removed older leftovers, durably, and has not
///   created its temporary yet);
/// - write-N: maybe (created and partly written, nothing fsynced yet);
/// - written, verified, marked: yes (the temporary was fsynced after the
///   copy; marking the target checkpoints the journal too);
/// - renamed: maybe (renamed over the slot, directory not fsynced yet);
/// - synced and later: no (the rename was made durable by fsyncing cOS).
fn leftover_expected(point: &str) -> Result<Option<bool>> {
    if point
        .strip_prefix("write-")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| (1..=99).contains(&n))
    {
        return Ok(None);
    }
    // The first state commit (marking the target) comes after the
    // temporary was fsynced.
    if STATE_COMMIT.contains(&point) {
        return Ok(Some(true));
    }
    Ok(match point {
        "start" => Some(false),
        "renamed" => None,
        "written" | "verified" | "marked" => Some(true),
        "synced" | "activating" | "activated" => Some(false),
        _ => bail!("no leftover expectation for the checkpoint {point}"),
    })
}

/// The `.new` files in cOS, from `ls -a`.
fn temporaries(listing: &str) -> Vec<String> {
    listing
        .split_whitespace()
        .filter(|name| name.ends_with(".new"))
        .map(str::to_owned)
        .collect()
}

/// The step `clean_leftovers` reports for each file it removes.
const LEFTOVER_REMOVED: &str = "left by an interrupted upgrade";

/// No QEMU: s18 knows what to expect at each of its points, and reads `ls`.
#[test]
fn power_cut_points_have_leftover_expectations() {
    for point in POWER_CUTS_WRITING
        .iter()
        .chain(POWER_CUTS_INSTALLING)
        .chain(STATE_COMMIT)
        .chain(&["write-1", "write-99", "write-37"])
    {
        leftover_expected(point).unwrap();
    }
    for bad in ["nowhere", "write-0", "write-100", "write-x"] {
        assert!(leftover_expected(bad).is_err(), "{bad}");
    }
    assert_eq!(
        temporaries(".\r\n..\r\n.b.img.new\r\na.img\r\na.img.sha256\r\nb.img\r\n"),
        [".b.img.new"]
    );
    assert!(temporaries("a.img\r\nb.img\r\n").is_empty());
}

/// Cuts the power at each point of an upgrade in turn; every next boot
/// must land on a good slot, and a final rerun must succeed and boot.
fn power_cuts(name: &str, points: &[&str]) -> Result<()> {
    let mut m = Machine::new(name)?.with_payload().for_power_cuts();
    let mut outcomes = Vec::new();
    let mut vm = boot(&mut m)?;
    // What the previous cut left in cOS (nothing on the fresh disk).
    let mut leftover = false;
    for point in points {
        // The booted slot is good before each upgrade (a new slot that
        // booted after "activated" is marked good first).
        let status = wait_marked_good(&mut vm)?;
        ensure!(!status.contains("FALLBACK"), "before {point}: {status}");
        let before_slot = booted(&mut vm)?.1;
        let before_version = image_version(&mut vm)?;
        mount_payload(&mut vm)?;
        // --force: after a cut at `activated` the booted slot holds v3
        // already, and a plain rerun would rightly write nothing.
        vm.send(&format!(
            "IMMUBOOT_PAUSE_AT={point} immuboot upgrade --force {PAYLOAD}/v3.img\n"
        ))?;
        // Everything the run printed up to the pause.
        let caps = vm.expect(
            &format!("(?s)(.*?)paused at checkpoint {point}"),
            Duration::from_secs(300),
        )?;
        // Each run first removes what the previous cut left, and reports it.
        ensure!(
            caps[1].contains(LEFTOVER_REMOVED) == leftover,
            "the upgrade cut at {point} after a cut that left {}a temporary: \
             it must report removing it exactly then; it printed:\n{}",
            if leftover { "" } else { "no " },
            caps[1]
        );
        vm.power_cut()?;
        vm = boot(&mut m)?;
        let (mode, slot) = booted(&mut vm)?;
        let version = image_version(&mut vm)?;
        // Until the activation is complete the old slot boots; once it is,
        // the new one (GRUB sees it: the journal was checkpointed).
        let expected = if *point == "activated" {
            (other_slot(&before_slot), "3")
        } else {
            (before_slot.clone(), before_version.as_str())
        };
        ensure!(
            mode == "active" && slot == expected.0 && version == expected.1,
            "after a power cut at {point}: booted {mode} slot {slot}, version {version}; expected slot {} version {}",
            expected.0,
            expected.1
        );
        // The only temporary a cut can leave is the target slot's image
        // (the next run removes it: checked above and after the loop).
        let listing = vm.run_ok("ls -a1 --color=never /run/initramfs/cos-state/cOS")?;
        let found = temporaries(&listing);
        let target_temporary = format!(".{}.img.new", other_slot(&before_slot));
        ensure!(
            found.iter().all(|name| *name == target_temporary),
            "after a power cut at {point}: temporaries {found:?} in cOS, only \
             {target_temporary} may be there:\n{listing}"
        );
        leftover = !found.is_empty();
        if let Some(expected) = leftover_expected(point)? {
            ensure!(
                leftover == expected,
                "after a power cut at {point}: {target_temporary} is {}there, expected {}:\n{listing}",
                if leftover { "" } else { "not " },
                if expected { "there" } else { "gone" }
            );
        }
        outcomes.push(json!({"point": point, "booted_slot": slot, "version": version, "leftover_temporary": leftover}));
    }
    // A rerun after all that succeeds and boots.
    wait_marked_good(&mut vm)?;
    mount_payload(&mut vm)?;
    let out = upgrade(&mut vm, &format!("--force {PAYLOAD}/v3.img"))?;
    ensure!(out.contains("written"), "{out}");
    ensure!(
        out.contains(LEFTOVER_REMOVED) == leftover,
        "the rerun after the last cut (which left {}a temporary) must report \
         removing it exactly then:\n{out}",
        if leftover { "" } else { "no " }
    );
    let target = if out.contains("slot a written") {
        "a"
    } else {
        "b"
    };
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), target.into()));
    ensure!(image_version(&mut vm)? == "3");
    let listing = vm.run_ok("ls -a1 --color=never /run/initramfs/cos-state/cOS")?;
    ensure!(
        temporaries(&listing).is_empty(),
        "temporaries left after the rerun:\n{listing}"
    );
    record_result(name, json!({"points": outcomes}))?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s19_no_room_for_the_new_image_changes_nothing() -> Result<()> {
    let mut m = Machine::new("s19-no-space")?.with_payload();
    let mut vm = boot(&mut m)?;
    mount_payload(&mut vm)?;
    let status = vm.run_ok("immuboot status")?;
    let digest = slot_b_digest(&mut vm)?;
    // Leave 40 MiB free on COS_STATE.
    vm.run_ok(&format!(
        "{STATE_RW} && free=$(df -B1 --output=avail /run/initramfs/cos-state | tail -1) \
         && fallocate -l $((free - 40*1024*1024)) /run/initramfs/cos-state/filler && sync"
    ))?;
    let (rc, out) = vm.run(&format!("immuboot upgrade {PAYLOAD}/v3.img 2>&1"))?;
    ensure!(rc != 0 && out.contains("not enough space"), "{out}");
    // A directory's size is known only while it is squashed: ENOSPC then.
    let (rc, out) = vm.run(&format!(
        "immuboot upgrade {PAYLOAD}/rootfs-v4 --compression-level 1 2>&1"
    ))?;
    ensure!(
        rc != 0 && out.contains("old image and the boot state are unchanged"),
        "{out}"
    );
    ensure!(vm.run_ok("immuboot status")? == status);
    ensure!(slot_b_digest(&mut vm)? == digest);
    let leftovers = vm.run_ok("ls -a /run/initramfs/cos-state/cOS")?;
    ensure!(!leftovers.contains(".new"), "{leftovers}");
    Ok(())
}

/// Fills COS_STATE until not even 4 KiB more can be allocated (root's
/// reserve included; ext4 keeps a few clusters back even from root), and
/// prints `full` when a 4 KiB write then fails.
const FILL_STATE: &str = "mount -o remount,rw /run/initramfs/cos-state && cd /run/initramfs/cos-state \
    && i=0 && for size in 256M 32M 4M 512K 64K 4K; do \
    while fallocate -l $size filler-$i 2>/dev/null; do i=$((i+1)); done; done; \
    sync; if dd if=/dev/zero of=probe bs=4k count=1 conv=fsync 2>/dev/null; then echo room; else echo full; fi; \
    rm -f probe; cd /; mount -o remount,ro /run/initramfs/cos-state";

/// The disk on SATA, as on most PCs: AHCI is a driver the init holds back
/// until the search for the image partition has looked at the disks the
/// others brought. Here they bring none, so the search asks for it and the
/// boot goes on from /dev/sda.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s31_boots_from_a_disk_on_sata() -> Result<()> {
    let mut m = Machine::new("s31-sata")?.on_sata();
    let (mut vm, _) = boot_to_multi_user_on_read_only_squashfs(&mut m)?;
    ensure!(
        vm.console().contains(
            "no partition labelled COS_STATE on the disks found so far; loading the other \
             disk drivers"
        ),
        "the init did not ask for the held-back drivers"
    );
    let usr_local = vm.run_ok("findmnt -n -o SOURCE /usr/local")?;
    ensure!(usr_local.trim() == "/dev/sda5", "/usr/local is {usr_local}");
    let backing = root_backing_file(&mut vm)?;
    ensure!(
        backing == "/run/initramfs/cos-state/cOS/a.img",
        "root image {backing}"
    );
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("booted:       active (slot a) /cOS/a.img  version 2"),
        "{status}"
    );
    vm.power_cut()
}

/// COS_STATE full to the last block: every boot still counts, completes
/// and is marked good (three boots that could not clear their count would
/// give up a healthy slot), the state commands still work, an upgrade is
/// refused with the reason, and nothing is left half-written.
#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s30_a_full_state_partition_still_boots_and_marks_good() -> Result<()> {
    let mut m = Machine::new("s30-state-full")?.with_payload();
    let mut vm = boot(&mut m)?;
    wait_marked_good(&mut vm)?;
    let free = vm.run_ok(FILL_STATE)?;
    ensure!(free.trim() == "full", "COS_STATE not full: {free}");
    for n in 1..=2 {
        vm.reboot()?;
        vm = boot(&mut m)?;
        ensure!(
            booted(&mut vm)? == ("active".into(), "a".into()),
            "boot {n} on a full COS_STATE"
        );
        let status = wait_marked_good(&mut vm)?;
        ensure!(
            status.contains("slot a:       good")
                && !status.contains("not finished")
                && status.contains("warning:      COS_STATE is full"),
            "boot {n} on a full COS_STATE was not marked good, or status does not say it is full:\n{status}"
        );
    }
    let out = vm.run_ok("immuboot next-boot passive 2>&1 && immuboot status")?;
    ensure!(out.contains("next boot:    passive"), "{out}");
    mount_payload(&mut vm)?;
    let (rc, out) = vm.run(&format!("immuboot upgrade {PAYLOAD}/v3.img 2>&1"))?;
    ensure!(rc != 0 && out.contains("not enough space"), "{out}");
    let listing = vm.run_ok(
        "ls -a1 --color=never /run/initramfs/cos-state/cOS /run/initramfs/cos-state/grub",
    )?;
    ensure!(temporaries(&listing).is_empty(), "{listing}");
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("passive".into(), "b".into()));
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s20_recovery_upgrade_then_reset_from_recovery_restores_a_booting_system() -> Result<()> {
    let mut m = Machine::new("s20-reset")?.with_payload();
    let mut vm = boot(&mut m)?;
    // The recovery image is upgraded to v3 (COS_RECOVERY, same safety).
    mount_payload(&mut vm)?;
    let out = upgrade(&mut vm, &format!("--recovery {PAYLOAD}/v3.img"))?;
    ensure!(out.contains("recovery written"), "{out}");
    // A broken system: slot b gone, slot a given up, data on persistent.
    vm.run_ok(&format!(
        "echo precious > /root/keepme && {STATE_RW} && rm /run/initramfs/cos-state/cOS/b.img \
         && immuboot mark-bad 'test: broken' && sync"
    ))?;
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)?.0 == "recovery");
    ensure!(image_version(&mut vm)? == "3");
    mount_payload(&mut vm)?;
    let (rc, out) = vm.run(&format!(
        "immuboot upgrade --recovery {PAYLOAD}/v3.img 2>&1"
    ))?;
    ensure!(rc != 0 && out.contains("while running from it"), "{out}");
    let started = Instant::now();
    let out = vm.run_ok("immuboot reset --reset-persistent 2>&1")?;
    ensure!(out.contains("reset done"), "{out}");
    let reset_seconds = started.elapsed().as_secs_f64();
    vm.reboot()?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    ensure!(image_version(&mut vm)? == "3");
    let (rc, _) = vm.run("test -e /root/keepme")?;
    ensure!(rc != 0, "--reset-persistent kept /root/keepme");
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot a:       good  (image version 3)")
            && status.contains("slot b:       good  (image version 3)"),
        "{status}"
    );
    record_result(
        "s20-reset",
        json!({"reset_seconds_in_guest": reset_seconds}),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The other initramfs kind and the second distribution release: the same
// checks on disks built with `--initramfs dracut` (the distribution's dracut
// with the immuboot module) and `--suite trixie`.

/// One machine of configuration `config` (e.g. "trixie-dracut") through
/// the boots that matter: layout and mode, persistence, a broken OEM
/// layout, a slot whose systemd fails, a slot with flipped bytes in its
/// root file system. Records the initramfs phase and size.
/// Which fallbacks [`same_boot_in`] runs after the boots that every
/// configuration gets (each costs three to five minutes of boots).
struct Fallbacks {
    /// A new slot whose systemd fails to start (counted by GRUB, as in the
    /// standalone s13): the fallback after the switch to the real root.
    broken_systemd: bool,
    /// A new slot with a corrupted root region: the initramfs' own digest
    /// check, marking the slot bad and rebooting.
    corrupted_root: bool,
}

impl Fallbacks {
    /// Both with `cargo xtask test --full`; else only those a CI run asks for.
    fn ci(broken_systemd: bool, corrupted_root: bool) -> Fallbacks {
        Fallbacks {
            broken_systemd: broken_systemd || full_run(),
            corrupted_root: corrupted_root || full_run(),
        }
    }
}

fn same_boot_in(config: &str, kind: &str, fallbacks: Fallbacks) -> Result<()> {
    let mut m = Machine::new_in("boots", config)?.with_payload();

    // 1. Boots to multi-user from the active slot's read-only squashfs.
    let (mut vm, login_after) = boot_to_multi_user_on_read_only_squashfs(&mut m)?;
    // systemd 257 carries /run into the new root as a recursive bind, so
    // the kernel names the loop's file relative to the initrd's mount of
    // COS_STATE; the inode says whether it is the file on COS_STATE.
    let backing = root_backing_file(&mut vm)?;
    ensure!(backing.ends_with("/cOS/a.img"), "root image {backing}");
    let loop_inode = vm.run_ok("losetup -n --raw -O BACK-INO $(findmnt -n -o SOURCE /)")?;
    let file_inode = vm.run_ok("stat -c %i /run/initramfs/cos-state/cOS/a.img")?;
    ensure!(
        loop_inode.trim() == file_inode.trim(),
        "the root's loop file (inode {loop_inode}) is not COS_STATE's a.img (inode {file_inode})"
    );
    // root=LABEL=COS_STATE went to immuboot only: COS_STATE is mounted
    // once, read-only, where immuboot put it.
    let state_mounts = vm.run_ok("findmnt -n -o TARGET,OPTIONS -S LABEL=COS_STATE")?;
    ensure!(
        state_mounts.lines().count() == 1
            && state_mounts.starts_with("/run/initramfs/cos-state ro"),
        "COS_STATE mounted as: {state_mounts}"
    );
    ensure!(vm.run_ok("findmnt -n -o FSTYPE /etc")?.trim() == "overlay");
    let usr_local = vm.run_ok("findmnt -n -o SOURCE,FSTYPE /usr/local")?;
    ensure!(usr_local.contains("ext4"), "/usr/local is {usr_local}");
    let units = vm.run_ok("systemctl is-active usr-local.mount var-log.mount oem.mount")?;
    ensure!(units.lines().all(|l| l.trim() == "active"), "{units}");
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    ensure!(image_version(&mut vm)? == "2");
    let status = vm.run_ok("immuboot status")?;
    let expected = match kind {
        "dracut" => "initramfs:    dracut ",
        _ => "initramfs:    standalone (immuboot ",
    };
    ensure!(status.contains(expected), "{status}");
    ensure!(
        status.contains("booted:       active (slot a) /cOS/a.img  version 2"),
        "{status}"
    );
    vm.run_ok("systemctl is-active immuboot-mark-good.service")?;
    let journal = vm.run_ok("journalctl -b -t immuboot -o cat")?;
    ensure!(
        journal.lines().filter(|l| l.starts_with("step '")).count() >= 7,
        "immuboot's lines in the journal:\n{journal}"
    );
    if kind == "dracut" {
        // The service finished before the switch; nothing of it was killed.
        let svc = vm.run_ok(
            "journalctl -b -o cat -u immuboot-initrd.service | grep -c 'Finished' || true",
        )?;
        ensure!(svc.trim() != "0", "immuboot-initrd.service did not finish");
        // The initqueue wake-up ran when the partition appeared and
        // succeeded, on both dracut generations (sh, rm, the hook dir).
        let wake = vm.run_ok(
            "journalctl -b -o cat -u immuboot-initqueue-wake.service | grep -c '^Finished' || true",
        )?;
        ensure!(
            wake.trim() != "0",
            "immuboot-initqueue-wake.service did not run or failed:\n{}",
            vm.run_ok("journalctl -b -o cat -u immuboot-initqueue-wake.service")?
        );
    }
    let dmesg = vm.run_ok("dmesg")?;
    let phase = initramfs_phase(&dmesg)
        .ok_or_else(|| anyhow::anyhow!("no timing lines in dmesg:\n{dmesg}"))?;

    // 2 and 5: persistence, and a broken layout file on COS_OEM.
    vm.run_ok(
        "echo etc > /etc/immuboot-test && echo ul > /usr/local/immuboot-test \
         && echo demo > /var/lib/immuboot-demo/data && mkdir -p /oem/immuboot \
         && printf 'persistent: [/root\\nephemeral: /var\\n' > /oem/immuboot/layout.yaml && sync",
    )?;
    vm.reboot()?;
    let mut vm = m.boot()?;
    let caps = vm.expect(
        r"immuboot: invalid layout file /oem/immuboot/layout\.yaml: ([^\n]*)",
        Duration::from_secs(300),
    )?;
    ensure!(
        caps[1].contains("line") && caps[1].contains("column"),
        "the error does not say where: {}",
        caps[1]
    );
    vm.login()?;
    let facts = vm.run_ok("cat /run/immuboot/boot.json")?;
    ensure!(
        facts.contains("\"layout_source\": \"/etc/immuboot/layout.yaml\""),
        "{facts}"
    );
    let (rc, _) = vm.run("test -e /etc/immuboot-test")?;
    ensure!(rc != 0, "/etc change survived the reboot");
    let kept = vm.run_ok("cat /usr/local/immuboot-test /var/lib/immuboot-demo/data")?;
    ensure!(
        kept.lines().map(str::trim).collect::<Vec<_>>() == ["ul", "demo"],
        "persistent files: {kept}"
    );
    vm.run_ok("rm /oem/immuboot/layout.yaml && sync")?;
    let mut result = json!({
        "initramfs": kind,
        "initramfs_phase_s": (phase * 1000.0).round() / 1000.0,
        "initramfs_bytes": m.manifest.initramfs_bytes,
        "qemu_start_to_login_prompt_s": login_after.as_secs(),
    });

    // 4. A new slot whose systemd fails to start: its one try is used up,
    // the counters bring the machine back to slot a.
    let vm = if !fallbacks.broken_systemd {
        println!("{config}: a slot whose systemd fails only in `cargo xtask test --full`");
        vm
    } else {
        mount_payload(&mut vm)?;
        upgrade(&mut vm, &format!("{PAYLOAD}/broken-systemd.img --tries 1"))?;
        vm.reboot()?;
        let started = Instant::now();
        failing_boot(
            &mut m,
            "b",
            "test image: systemd fails to start",
            Duration::from_secs(300),
        )?;
        let mut vm = boot(&mut m)?;
        let broken_systemd_seconds = started.elapsed().as_secs();
        ensure!(booted(&mut vm)? == ("passive".into(), "a".into()));
        let status = vm.run_ok("immuboot status")?;
        ensure!(
            status.contains("FALLBACK:     fallback to slot a: slot b used up its tries"),
            "{status}"
        );
        result["broken_systemd_to_good_slot_s"] = json!(broken_systemd_seconds);
        vm
    };

    // 3. A new slot with flipped bytes in its root file system region: the
    // digest check of its trial boot catches it, the machine lands on a.
    if !fallbacks.corrupted_root {
        println!("{config}: a corrupted slot only in `cargo xtask test --full`");
        return record_result(&format!("initramfs-{config}"), result);
    }
    // --force: slot a's own image into slot b is exactly what an upgrade
    // otherwise skips (the booted slot holds it).
    let (_vm, corrupted_seconds) = corrupted_root_region_lands_on_slot_a(
        &mut m,
        vm,
        "--force /run/initramfs/cos-state/cOS/a.img",
        root_region_offset(config)?,
        Duration::from_secs(300),
    )?;

    result["corrupted_slot_to_good_slot_s"] = json!(corrupted_seconds);
    record_result(&format!("initramfs-{config}"), result)
}

/// The initramfs phase on the kernel's clock: from "Run /init" to the first
/// line of systemd in the real root. With systemd in the initrd (dracut)
/// systemd's line appears twice, and the real root's is the last one.
fn initramfs_phase(dmesg: &str) -> Option<f64> {
    let ts = kernel_timestamp;
    let lines: Vec<&str> = dmesg.lines().collect();
    let run_init = lines
        .iter()
        .position(|l| l.contains("Run /init as init process"))?;
    let start = ts(lines[run_init])?;
    let end = lines[run_init + 1..]
        .iter()
        .rev()
        .find(|l| l.contains("systemd[1]: systemd ") && l.contains("running in system mode"))
        .and_then(|l| ts(l))?;
    Some(end - start)
}

#[test]
fn initramfs_phase_ends_at_the_real_roots_systemd() {
    let standalone = "[    1.000000] Run /init as init process\n\
                      [    3.500000] systemd[1]: systemd 252 running in system mode\n";
    assert_eq!(initramfs_phase(standalone), Some(2.5));
    let dracut = "[    1.000000] Run /init as init process\n\
                  [    1.200000] systemd[1]: systemd 252 running in system mode\n\
                  [    6.000000] systemd[1]: Switching root.\n\
                  [    7.000000] systemd[1]: systemd 252 running in system mode\n";
    assert_eq!(initramfs_phase(dracut), Some(6.0));
    let escapes = "[    1.000000] Run /init as init process\n\
                   \x1b[!p\x1b]104\x07[    4.250000] systemd[1]: systemd 257 running in system mode\n";
    assert_eq!(initramfs_phase(escapes), Some(3.25));
}

/// An offset in the configuration's a.img inside the root file system's
/// data, away from the kernel and initramfs (which GRUB checks itself).
fn root_region_offset(config: &str) -> Result<u64> {
    let dir = immuboot_qemu_tests::artifacts_dir_for(config)?;
    let image_path = dir.join("images/a.img");
    let image = std::fs::read(&image_path)?;
    let mut regions = Vec::new();
    for f in ["boot/vmlinuz", "boot/initrd.img"] {
        let out = std::process::Command::new("unsquashfs")
            .args(["-cat"])
            .arg(&image_path)
            .arg(f)
            .output()
            .context("unsquashfs (package squashfs-tools)")?;
        ensure!(out.status.success(), "unsquashfs -cat {f} failed");
        let content = out.stdout;
        let middle = content.len() / 2 / 131072 * 131072;
        let probe = &content[middle..middle + 4096];
        if let Some(pos) = image.windows(probe.len()).position(|w| w == probe) {
            let start = (pos as u64).saturating_sub(middle as u64);
            regions.push(start..start + content.len() as u64);
        } else {
            // Stored compressed: its place is unknown, so keep well away
            // from where mksquashfs put /boot (early in the image).
            regions.push(0..content.len() as u64 * 2);
        }
    }
    let len = image.len() as u64;
    [30, 50, 70, 85]
        .iter()
        .map(|pct| len * pct / 100)
        .find(|off| regions.iter().all(|r| !r.contains(off)))
        .context("no offset outside the kernel and initramfs")
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s21_dracut_initramfs_on_bookworm() -> Result<()> {
    // The two fallbacks cost 9 minutes of dracut boots here: CI runs the
    // dracut-specific one (the service's digest check) on trixie (s23).
    same_boot_in("bookworm-dracut", "dracut", Fallbacks::ci(false, false))
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s22_standalone_initramfs_on_trixie() -> Result<()> {
    // The standalone fallbacks are bookworm's s13 and s15 in CI; `--full`
    // runs them on trixie too.
    same_boot_in(
        "trixie-standalone",
        "standalone",
        Fallbacks::ci(false, false),
    )
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s23_dracut_initramfs_on_trixie() -> Result<()> {
    // A failing systemd after the switch is counted by GRUB as in every
    // other configuration; the corrupted root is caught by the service.
    same_boot_in("trixie-dracut", "dracut", Fallbacks::ci(false, true))
}

/// Where the distribution's own dracut initramfs finds the plain root it
/// boots in [`plain_dracut_phase`].
#[derive(Clone, Copy)]
enum PlainRoot {
    /// The slot image as a disk of its own (`/dev/vda`): udev has one
    /// device to look at.
    BareImage,
    /// The slot image written into the COS_STATE partition of a copy of
    /// the configuration's disk (`root=PARTLABEL=COS_STATE`): udev probes
    /// the same five partitions as in a boot with the module, as it would
    /// for any distribution's root found by label on such a disk.
    StatePartition,
}

/// The distribution's own dracut initramfs, without the immuboot module,
/// booting a plain root (kernel and initramfs given to QEMU directly): the
/// yardstick for what the module adds. Only the initramfs phase on the
/// kernel's clock is compared, so the missing firmware and GRUB do not
/// matter.
fn plain_dracut_phase(suite: &str, root: PlainRoot) -> Result<()> {
    let config = format!("{suite}-dracut");
    let dir = immuboot_qemu_tests::artifacts_dir_for(&config)?;
    let (name, what) = match root {
        PlainRoot::BareImage => (format!("{suite}-dracut-plain"), "plain root"),
        PlainRoot::StatePartition => (
            format!("{suite}-dracut-partition"),
            "the slot image in the COS_STATE partition",
        ),
    };
    let vm_dir = immuboot_qemu_tests::artifacts_dir().join("vms").join(&name);
    if vm_dir.exists() {
        std::fs::remove_dir_all(&vm_dir)?;
    }
    std::fs::create_dir_all(&vm_dir)?;
    let image = dir.join("images/a.img");
    let kernel = vm_dir.join("vmlinuz");
    extract_from_image(&image, "boot/vmlinuz", &kernel)?;
    let initrd = dir.join("dracut-plain.img");
    let (disk, root_args) = match root {
        PlainRoot::BareImage => (image.clone(), "root=/dev/vda rootfstype=squashfs ro"),
        PlainRoot::StatePartition => {
            let disk = vm_dir.join("disk.img");
            immuboot_qemu_tests::image_in_state_partition(
                &immuboot_qemu_tests::DiskManifest::load_for(&config)?,
                &image,
                &disk,
            )?;
            (disk, "root=PARTLABEL=COS_STATE rootfstype=squashfs ro")
        }
    };
    let args: Vec<String> = immuboot_qemu_tests::tcg_machine_args()
        .into_iter()
        .chain(
            [
                "-nic", "none", "-display", "none", "-serial", "stdio", "-monitor", "none",
            ]
            .map(String::from),
        )
        .chain([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            format!("{root_args} console=ttyS0,115200 printk.devkmsg=on panic=10"),
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", disk.display()),
        ])
        .collect();
    let mut vm = Vm::start(&args, &vm_dir.join("boot1.log"))?;
    // systemd's first line comes from the initrd, the second from the root.
    vm.expect(
        r"systemd\[1\]: systemd [^\n]*running in system mode",
        Duration::from_secs(300),
    )?;
    vm.expect(
        r"systemd\[1\]: systemd [^\n]*running in system mode",
        Duration::from_secs(300),
    )?;
    let phase = initramfs_phase(&vm.console())
        .ok_or_else(|| anyhow::anyhow!("no timing lines on the console"))?;
    drop(vm);
    if disk != image {
        // A copy of the whole disk: not kept once booted.
        std::fs::remove_file(&disk)?;
    }
    record_result(
        &format!("initramfs-{name}"),
        json!({
            "initramfs": format!("dracut without immuboot, {what}"),
            "initramfs_phase_s": (phase * 1000.0).round() / 1000.0,
            "initramfs_bytes": std::fs::metadata(&initrd)?.len(),
        }),
    )?;
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s24_distribution_dracut_without_immuboot_for_comparison() -> Result<()> {
    for suite in ["bookworm", "trixie"] {
        plain_dracut_phase(suite, PlainRoot::BareImage)?;
        plain_dracut_phase(suite, PlainRoot::StatePartition)?;
    }
    Ok(())
}

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s25_verify_finds_a_corrupted_passive_slot_before_a_fallback_needs_it() -> Result<()> {
    // 4 KiB where the root file system lies, away from the kernel and
    // initramfs: nothing reads it at boot, so no boot notices.
    let (root_offset, _) = corruption_offsets_in("images/b.img")?;
    let block = root_offset / 4096;
    let mut m = Machine::new("s25-verify")?;
    let mut vm = boot(&mut m)?;
    ensure!(booted(&mut vm)? == ("active".into(), "a".into()));
    let timer = vm.run_ok("systemctl is-enabled immuboot-verify.timer")?;
    ensure!(timer.trim() == "enabled", "immuboot-verify.timer: {timer}");
    let timers = vm.run_ok(
        "COLUMNS=200 systemctl list-timers --all --full --no-pager immuboot-verify.timer",
    )?;
    ensure!(
        timers.contains("immuboot-verify.timer") && timers.contains("immuboot-verify.service"),
        "{timers}"
    );
    // Intact: every image matches, nothing is written.
    let started = Instant::now();
    let out = vm.run_ok("immuboot verify 2>/tmp/verify.err")?;
    let intact_seconds = started.elapsed().as_secs();
    ensure!(
        out.contains("slot a:   ok")
            && out.contains("slot b:   ok")
            && out.contains("recovery: ok"),
        "{out}"
    );
    // The bytes flipped the way a failing disk would: under the file system.
    vm.run_ok(&format!(
        "{STATE_RW} && dd if=/dev/urandom of=/run/initramfs/cos-state/cOS/b.img bs=4096 \
         seek={block} count=1 conv=notrunc status=none && sync \
         && mount -o remount,ro /run/initramfs/cos-state"
    ))?;
    let started = Instant::now();
    let (rc, out) = vm.run("immuboot verify 2>/tmp/verify.err")?;
    let corrupted_seconds = started.elapsed().as_secs();
    let err = vm.run_ok("cat /tmp/verify.err")?;
    ensure!(rc == 3, "immuboot verify exited {rc}:\n{out}\n{err}");
    ensure!(
        out.contains("slot b:   CORRUPTED: sha256 ")
            && out.contains("slot a:   ok")
            && out.contains("recovery: ok")
            && out.contains("recorded: slot b marked bad"),
        "{out}"
    );
    let status = vm.run_ok("immuboot status")?;
    ensure!(
        status.contains("slot b:       bad")
            && status.contains("slot a:       good")
            && status.contains(
                "last failure: slot b: immuboot verify: image differs from the digest recorded when it was written"
            ),
        "{status}"
    );
    // The weekly run does the same through its unit: it fails (exit 3).
    let (rc, _) = vm.run("systemctl start immuboot-verify.service")?;
    ensure!(
        rc != 0,
        "immuboot-verify.service succeeded on a corrupted slot"
    );
    let journal = vm.run_ok("journalctl -b -u immuboot-verify.service --no-pager")?;
    ensure!(journal.contains("slot b:   CORRUPTED"), "{journal}");
    record_result(
        "s25-verify",
        json!({
            "offset": block * 4096,
            "intact_seconds": intact_seconds,
            "corrupted_seconds": corrupted_seconds,
        }),
    )?;
    Ok(())
}
