//! End-to-end scenarios: each is a real boot (or several) of the demo disk,
//! OVMF → GRUB → kernel → immuboot init → systemd, checked from a root shell
//! on the serial console. Run by `cargo xtask test` (they are `#[ignore]`d
//! in a plain `cargo test` because they need the built disk).

use anyhow::{ensure, Result};
use immuboot_qemu_tests::{dmesg_interval, record_result, Machine, Vm};
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

#[test]
#[ignore = "boots the demo disk in QEMU: run with `cargo xtask test`"]
fn s1_boots_active_slot_from_read_only_squashfs() -> Result<()> {
    let mut m = Machine::new("s1-active")?;
    let mut vm = m.boot()?;
    let login_after = vm.login()?;

    let state = vm.run_ok("systemctl is-active multi-user.target")?;
    ensure!(state.trim() == "active", "multi-user.target: {state}");
    let root = vm.run_ok("findmnt -n -o FSTYPE,OPTIONS /")?;
    ensure!(root.starts_with("squashfs ro"), "/ is {root}");
    let backing = root_backing_file(&mut vm)?;
    ensure!(
        backing == "/run/initramfs/cos-state/cOS/a.img",
        "root image {backing}"
    );
    let (rc, _) = vm.run("touch /usr/bin/x 2>/dev/null")?;
    ensure!(rc != 0, "/usr is writable");
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

    // The initramfs phase, on the kernel's clock.
    let dmesg = vm.run_ok("dmesg")?;
    let phase = dmesg_interval(&dmesg, "Run /init as init process", "systemd[1]: systemd ")
        .ok_or_else(|| anyhow::anyhow!("no timing lines in dmesg"))?;
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
    let mut vm = boot(&mut m)?;
    // The backup said slot b is active: GRUB and the init used it.
    ensure!(booted(&mut vm)? == ("active".into(), "b".into()));
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
    // At GRUB's menu, pick the second entry (passive, slot a) by hand.
    let mut vm = m.boot()?;
    vm.expect(
        "executed automatically in",
        std::time::Duration::from_secs(120),
    )?;
    vm.send("\x1b[B")?;
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
