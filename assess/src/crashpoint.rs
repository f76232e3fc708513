//! Named points inside crash-safe writes where a crash test can stop a
//! process and cut the power (the QEMU power-cut scenarios).
//!
//! A process stops at a point only when the environment variable
//! `IMMUBOOT_PAUSE_AT` names it: it prints `immuboot: paused at checkpoint
//! NAME` on stderr and sleeps until it is killed. Without the variable a
//! point costs one comparison.
//!
//! `write-N` (N a whole percentage, 1–99) is the point where N % of an
//! image has been written; [`write_percent`] reads it.

use std::io::Write;
use std::sync::OnceLock;

pub const ENV: &str = "IMMUBOOT_PAUSE_AT";

fn pause_at() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Stops here, for good, if `IMMUBOOT_PAUSE_AT` names `name`.
pub fn reach(name: &str) {
    if pause_at() == Some(name) {
        let mut err = std::io::stderr();
        let _ = writeln!(err, "immuboot: paused at checkpoint {name}");
        let _ = err.flush();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// The percentage of a `write-N` point in `IMMUBOOT_PAUSE_AT`, if it names one.
pub fn write_percent() -> Option<u64> {
    pause_at().and_then(parse_write_percent)
}

fn parse_write_percent(point: &str) -> Option<u64> {
    let n: u64 = point.strip_prefix("write-")?.parse().ok()?;
    (1..=99).contains(&n).then_some(n)
}

/// The points of one boot-state commit ([`crate::store::save_with`] and the
/// journal checkpoint after it), in order. What a power cut at each leaves:
/// - `state-backup-written`: the backup's temporary written and fsynced;
/// - `state-backup-renamed`: the backup renamed, its directory not fsynced;
/// - `state-backup-saved`: the new backup durable, the primary untouched;
/// - `state-primary-written`, `state-primary-renamed`: the same for the
///   primary;
/// - `state-saved`: both copies durable in the journal, which GRUB (reading
///   ext4 without replaying it) may not see yet;
/// - `state-checkpointed`: the journal checkpointed, the file system not
///   yet remounted read-only.
pub const STATE_COMMIT: &[&str] = &[
    "state-backup-written",
    "state-backup-renamed",
    "state-backup-saved",
    "state-primary-written",
    "state-primary-renamed",
    "state-saved",
    "state-checkpointed",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_points_are_whole_percentages_below_100() {
        assert_eq!(parse_write_percent("write-37"), Some(37));
        assert_eq!(parse_write_percent("write-1"), Some(1));
        for bad in [
            "write-0",
            "write-100",
            "write-",
            "write-x",
            "written",
            "state-saved",
        ] {
            assert_eq!(parse_write_percent(bad), None, "{bad}");
        }
    }
}
