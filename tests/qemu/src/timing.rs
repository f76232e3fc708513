//! The phases of one boot, read from its serial console: the host's clock
//! says when each piece of output arrived (firmware and GRUB have no clock
//! of their own on the console), the kernel's clock times what the kernel
//! logs. Pure: a recorded console in, phases out.

use crate::kernel_timestamp;
use serde::Serialize;

/// Console output with the host time (seconds since QEMU started) at which
/// each piece arrived: `arrivals` holds `(end offset, seconds)` per piece,
/// in order.
#[derive(Debug, Clone, Default)]
pub struct TimedConsole {
    pub text: String,
    pub arrivals: Vec<(usize, f64)>,
}

impl TimedConsole {
    /// When the byte at `offset` arrived.
    pub fn host_time_at(&self, offset: usize) -> Option<f64> {
        let i = self.arrivals.partition_point(|&(end, _)| end <= offset);
        self.arrivals.get(i).map(|&(_, t)| t)
    }

    fn first_from(&self, from: usize, needle: &str) -> Option<usize> {
        self.text.get(from..)?.find(needle).map(|i| from + i)
    }

    /// The line that starts at or before `offset` and contains it.
    fn line_at(&self, offset: usize) -> &str {
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        &self.text[start..end]
    }
}

/// Where each phase of a boot ends, as seconds. Full boots go through the
/// firmware and GRUB; direct kernel boots (QEMU's `-kernel`) have no GRUB
/// phases. `None`: the console did not show that phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootPhases {
    /// QEMU start → GRUB's first line (full boots) or the kernel's first
    /// line (direct kernel boots: the firmware loads the kernel itself).
    pub firmware_s: Option<f64>,
    /// GRUB checking the slot's kernel and initramfs against their digests.
    pub grub_check_s: Option<f64>,
    /// GRUB's other work, up to the kernel's first line: the one-second wait
    /// for Esc, the boot state, loading kernel and initramfs, and the
    /// kernel's decompression of itself (before its clock starts).
    pub grub_other_s: Option<f64>,
    /// Kernel clock: start → "Run /init".
    pub kernel_s: Option<f64>,
    /// Kernel clock: "Run /init" → the first line of systemd in the real
    /// root (with systemd in the initrd, its second start).
    pub initramfs_s: Option<f64>,
    /// Kernel clock: "Run /init" → the exec of the real root's init (the
    /// kernel's line for it, see [`ROOT_INIT_EXEC`]), or where the kernel
    /// logs no such line, the init handing over (`handover` marker): the
    /// init's own part, without systemd's first steps.
    pub init_own_s: Option<f64>,
    /// Host clock: systemd in the real root → the login prompt.
    pub systemd_to_login_s: Option<f64>,
    /// Host clock: QEMU start → the login prompt.
    pub power_on_to_login_s: Option<f64>,
    /// Guest clock (systemd's monotonic timestamps, read after logging
    /// in): systemd in the real root → serial-getty@ttyS0 started.
    pub systemd_to_getty_guest_s: Option<f64>,
    /// Guest clock: kernel start → serial-getty@ttyS0 started, the whole
    /// boot after the firmware and GRUB (which have no guest clock).
    pub kernel_to_getty_guest_s: Option<f64>,
}

/// The guest-clock phases from `systemctl show` output holding
/// `UserspaceTimestampMonotonic=` (the manager's: systemd in the real root
/// started) and `ActiveEnterTimestampMonotonic=` (the getty's), in µs.
pub fn getty_guest_phases(show: &str, p: &mut BootPhases) {
    let value = |key: &str| {
        show.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(key)?
                    .strip_prefix('=')?
                    .parse::<u64>()
                    .ok()
            })
            .filter(|v| *v > 0)
            .map(|us| us as f64 / 1e6)
    };
    let getty = value("ActiveEnterTimestampMonotonic");
    p.kernel_to_getty_guest_s = getty;
    p.systemd_to_getty_guest_s = match (getty, value("UserspaceTimestampMonotonic")) {
        (Some(g), Some(u)) if g >= u => Some(g - u),
        _ => None,
    };
}

const GRUB_START: &str = "immuboot: press Esc for the boot menu";
const GRUB_CHECK: &str = "Checking slot ";
const GRUB_LOAD: &str = "Loading slot ";
const KERNEL_START: &str = "] Linux version ";
const RUN_INIT: &str = "Run /init as init process";
const LOGIN: &str = "login: ";
/// The kernel's line when it executes `/sbin/init` (TOMOYO's activation
/// trigger, built into Debian's kernels): the exec of systemd in the real
/// root. It ends the init's own part where the kernel logs it, so that the
/// hand-over itself (moving /dev, /proc, /sys and /run, freeing the
/// initramfs) counts for every init alike: the busybox floor's hand-over
/// runs after its last line, and costs more than immuboot's.
pub const ROOT_INIT_EXEC: &str = "Not activating Mandatory Access Control as ";

fn is_systemd_start(line: &str) -> bool {
    line.contains("systemd[1]: systemd ") && line.contains("running in system mode")
}

/// How the init hands over to systemd in the real root.
#[derive(Debug, Clone, Copy)]
pub struct Handover<'a> {
    /// The line it prints (on the kernel's log) when it hands over.
    pub line: &'a str,
    /// It executes the root's init itself (a PID 1 with switch_root), so
    /// its part ends at that exec where the kernel logs it; otherwise
    /// (a service in dracut's initrd, where systemd switches root) at
    /// `line`.
    pub execs_root_init: bool,
}

/// How immuboot's standalone init hands over: it execs systemd itself.
pub const STANDALONE_HANDOVER: Handover<'static> = Handover {
    line: "immuboot: switching root to",
    execs_root_init: true,
};
/// How immuboot's service in dracut's initrd hands over: systemd switches
/// root.
pub const DRACUT_HANDOVER: Handover<'static> = Handover {
    line: "immuboot: /sysroot is ready",
    execs_root_init: false,
};

/// The phases of the boot on `console`, with the init's own part when
/// `handover` says how to find its end.
pub fn boot_phases(console: &TimedConsole, handover: Option<Handover>) -> BootPhases {
    let text = &console.text;
    let at = |o: usize| console.host_time_at(o);
    let mut p = BootPhases::default();
    let grub = console.first_from(0, GRUB_START);
    let kernel = console.first_from(grub.unwrap_or(0), KERNEL_START);
    p.firmware_s = grub.or(kernel).and_then(at);
    if let (Some(g), Some(k)) = (grub, kernel) {
        let check = console.first_from(g, GRUB_CHECK).filter(|&c| c < k);
        let load = console.first_from(g, GRUB_LOAD).filter(|&l| l < k);
        let (tg, tk) = (at(g), at(k));
        p.grub_check_s = match (check, load) {
            (Some(c), Some(l)) => diff(at(c), at(l)),
            _ => Some(0.0),
        };
        p.grub_other_s = diff(tg, tk).zip(p.grub_check_s).map(|(all, c)| all - c);
    }
    let Some(run_init) = kernel.and_then(|k| console.first_from(k, RUN_INIT)) else {
        return p;
    };
    let run_init_ts = kernel_timestamp(console.line_at(run_init));
    p.kernel_s = run_init_ts;
    // The first login prompt, and the last start of systemd before it (or
    // before the end, without a prompt): with systemd in the initrd the
    // real root's is the second.
    let login = console.first_from(run_init, LOGIN);
    let end = login.unwrap_or(text.len());
    let systemd = text[run_init..end]
        .match_indices("running in system mode")
        .map(|(i, _)| run_init + i)
        .filter(|&o| is_systemd_start(console.line_at(o)))
        .last();
    let systemd_ts = systemd.and_then(|o| kernel_timestamp(console.line_at(o)));
    p.initramfs_s = diff(run_init_ts, systemd_ts);
    if let Some((h, handover)) =
        handover.and_then(|ho| Some((console.first_from(run_init, ho.line)?, ho)))
    {
        // The standalone init says it hands over after /dev moved to the new
        // root, so that line reaches the console without going through
        // /dev/kmsg and has no kernel time: the last line before it that
        // has one (the step before, milliseconds earlier) stands in.
        let handed_over = text[run_init..=h].lines().rev().find_map(kernel_timestamp);
        let exec = console
            .first_from(h, ROOT_INIT_EXEC)
            .filter(|_| handover.execs_root_init)
            .filter(|&e| systemd.is_none_or(|s| e < s))
            .and_then(|e| kernel_timestamp(console.line_at(e)));
        p.init_own_s = diff(run_init_ts, exec.or(handed_over));
    }
    if let Some(l) = login.filter(|&l| systemd.is_some_and(|s| s < l)) {
        p.systemd_to_login_s = diff(systemd.and_then(at), at(l));
        p.power_on_to_login_s = at(l);
    }
    p
}

fn diff(from: Option<f64>, to: Option<f64>) -> Option<f64> {
    Some(to? - from?)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Handover = Handover {
        line: "bench-init: switching root",
        execs_root_init: true,
    };

    /// A console that arrives one line at a time, at the given host times.
    fn console(lines: &[(f64, &str)]) -> TimedConsole {
        let mut c = TimedConsole::default();
        for (t, l) in lines {
            c.text.push_str(l);
            c.text.push('\n');
            c.arrivals.push((c.text.len(), *t));
        }
        c
    }

    #[test]
    fn a_full_boot_is_split_at_grub_the_kernel_the_init_and_systemd() {
        let c = console(&[
            (0.5, "BdsDxe: loading Boot0002"),
            (4.0, "immuboot: press Esc for the boot menu"),
            (4.5, "Checking slot a's kernel and initramfs ..."),
            (6.0, "Loading slot a (active) ..."),
            (9.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (12.0, "[    3.000000] Run /init as init process"),
            (13.0, "[    4.200000] immuboot: switching root to systemd"),
            (
                14.0,
                "[    5.000000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
            (30.0, "immuboot login: "),
        ]);
        let p = boot_phases(&c, Some(STANDALONE_HANDOVER));
        assert_eq!(p.firmware_s, Some(4.0));
        assert_eq!(p.grub_check_s, Some(1.5));
        assert_eq!(p.grub_other_s, Some(3.5));
        assert_eq!(p.kernel_s, Some(3.0));
        assert_eq!(p.initramfs_s, Some(2.0));
        assert!((p.init_own_s.unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(p.systemd_to_login_s, Some(16.0));
        assert_eq!(p.power_on_to_login_s, Some(30.0));
    }

    /// As the standalone init prints it: the hand-over line comes after
    /// /dev moved away, so it has no kernel time of its own.
    #[test]
    fn a_hand_over_line_without_kernel_time_takes_the_line_before() {
        let c = console(&[
            (9.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (12.0, "[    3.000000] Run /init as init process"),
            (
                12.9,
                "[    4.150000] immuboot: step 'write boot facts' done in 15 ms",
            ),
            (
                13.0,
                "immuboot: switching root to /sysroot, starting /sbin/init",
            ),
            (
                14.0,
                "[    5.000000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
        ]);
        let p = boot_phases(&c, Some(STANDALONE_HANDOVER));
        assert!((p.init_own_s.unwrap() - 1.15).abs() < 1e-9, "{p:?}");
        assert_eq!(p.initramfs_s, Some(2.0));
    }

    /// The busybox floor's last line comes before its hand-over work: the
    /// kernel's line at the exec of /sbin/init ends the own part instead.
    #[test]
    fn the_own_part_ends_at_the_exec_of_the_roots_init_where_the_kernel_logs_it() {
        let c = console(&[
            (9.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (12.0, "[    3.000000] Run /init as init process"),
            (12.8, "[    3.700000] bench-init: switching root"),
            (
                12.9,
                "[    3.780000] Not activating Mandatory Access Control as /sbin/tomoyo-init does not exist.",
            ),
            (
                14.0,
                "[    4.500000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
        ]);
        let p = boot_phases(&c, Some(FLOOR));
        assert!((p.init_own_s.unwrap() - 0.78).abs() < 1e-9, "{p:?}");
        // Without the kernel's line: the hand-over line, as before.
        let text = c
            .text
            .replace("Not activating Mandatory Access Control as", "tomoyo:");
        let c = TimedConsole { text, ..c };
        let p = boot_phases(&c, Some(FLOOR));
        assert!((p.init_own_s.unwrap() - 0.7).abs() < 1e-9, "{p:?}");
    }

    /// In dracut's initrd systemd switches root and execs the root's init
    /// long after immuboot's service ended: its part ends at its line.
    #[test]
    fn a_service_in_the_initrd_ends_its_part_at_its_line() {
        let c = console(&[
            (2.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (5.0, "[    3.000000] Run /init as init process"),
            (6.0, "[    4.000000] immuboot: /sysroot is ready"),
            (
                8.0,
                "[    6.000000] Not activating Mandatory Access Control as /sbin/tomoyo-init does not exist.",
            ),
            (
                9.0,
                "[    7.000000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
        ]);
        assert_eq!(boot_phases(&c, Some(DRACUT_HANDOVER)).init_own_s, Some(1.0));
    }

    #[test]
    fn a_direct_kernel_boot_with_systemd_in_the_initrd_ends_at_the_second_start() {
        let c = console(&[
            (2.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (5.0, "[    3.000000] Run /init as init process"),
            (
                5.5,
                "[    3.400000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
            (9.0, "[    9.000000] systemd[1]: Switching root."),
            (
                10.0,
                "[   10.000000] systemd[1]: systemd 252 running in system mode (+PAM)",
            ),
            (20.0, "debian login: "),
        ]);
        let p = boot_phases(&c, None);
        assert_eq!(p.firmware_s, Some(2.0));
        assert_eq!((p.grub_check_s, p.grub_other_s), (None, None));
        assert_eq!(p.initramfs_s, Some(7.0));
        assert_eq!(p.init_own_s, None);
        assert_eq!(p.systemd_to_login_s, Some(10.0));
        assert_eq!(p.power_on_to_login_s, Some(20.0));
    }

    #[test]
    fn a_boot_without_a_login_prompt_has_no_login_phases() {
        let c = console(&[
            (2.0, "[    0.000000] Linux version 6.1.0 (gcc)"),
            (5.0, "[    3.000000] Run /init as init process"),
            (
                9.0,
                "[    5.000000] Kernel panic - not syncing: Attempted to kill init!",
            ),
        ]);
        let p = boot_phases(&c, None);
        assert_eq!(p.kernel_s, Some(3.0));
        assert_eq!(p.initramfs_s, None);
        assert_eq!(p.power_on_to_login_s, None);
    }

    #[test]
    fn text_arriving_in_one_piece_has_that_pieces_time() {
        let c = TimedConsole {
            text: "abcdef".into(),
            arrivals: vec![(3, 1.0), (6, 2.0)],
        };
        assert_eq!(c.host_time_at(0), Some(1.0));
        assert_eq!(c.host_time_at(2), Some(1.0));
        assert_eq!(c.host_time_at(3), Some(2.0));
        assert_eq!(c.host_time_at(6), None);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
    #[test]
    fn getty_phases_come_from_systemds_monotonic_timestamps() {
        let mut p = BootPhases::default();
        getty_guest_phases(
            "UserspaceTimestampMonotonic=8483061\nActiveEnterTimestampMonotonic=14990123\n",
            &mut p,
        );
        assert_eq!(p.kernel_to_getty_guest_s, Some(14.990123));
        let d = p.systemd_to_getty_guest_s.unwrap();
        assert!((d - 6.507062).abs() < 1e-9, "{d}");
        // A getty that never started (0) or output without the keys.
        let mut q = BootPhases::default();
        getty_guest_phases(
            "UserspaceTimestampMonotonic=8483061\nActiveEnterTimestampMonotonic=0\n",
            &mut q,
        );
        assert_eq!(q, BootPhases::default());
        getty_guest_phases("no such property\n", &mut q);
        assert_eq!(q, BootPhases::default());
    }
}
