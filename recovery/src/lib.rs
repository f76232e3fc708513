//! Recovery mode: what the init does differently when it boots the recovery
//! image, kept in one place so the policy is easy to read and test.
//!
//! Recovery boots the image on COS_RECOVERY. The system's own slots and its
//! boot state stay on COS_STATE, which is mounted read-only when present
//! (the `immuboot` tool remounts it to change the boot state or rewrite a
//! slot). COS_OEM and COS_PERSISTENT are mounted as in a normal boot, so
//! data can be rescued.

#![forbid(unsafe_code)]

use immuboot_assess::Mode;

/// Where the init mounts the partition holding the image, and COS_STATE.
pub const STATE_MOUNT: &str = "/run/initramfs/cos-state";
pub const RECOVERY_MOUNT: &str = "/run/initramfs/cos-recovery";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModePolicy {
    /// Mount point of the partition that holds the image.
    pub image_mount: &'static str,
    /// The image lives on COS_STATE (mounted already to read the boot
    /// state); otherwise the init finds COS_STATE apart and mounts the
    /// image's own partition.
    pub image_on_state: bool,
    /// A failed image digest check stops the boot (a slot: the boot
    /// counters fall back), or only warns: the recovery image is the last
    /// resort, and a machine that cannot boot it cannot boot at all.
    pub digest_mismatch_is_fatal: bool,
    /// A line for the console and the journal describing the mode.
    pub banner: &'static str,
}

pub fn policy(mode: Mode) -> ModePolicy {
    match mode {
        Mode::Recovery => ModePolicy {
            image_mount: RECOVERY_MOUNT,
            image_on_state: false,
            digest_mismatch_is_fatal: false,
            banner: "recovery mode: booting the recovery image; the system's slots and boot state \
                     are on COS_STATE (read-only at /run/initramfs/cos-state)",
        },
        Mode::Active => ModePolicy {
            image_mount: STATE_MOUNT,
            image_on_state: true,
            digest_mismatch_is_fatal: true,
            banner: "booting the active image",
        },
        Mode::Passive => ModePolicy {
            image_mount: STATE_MOUNT,
            image_on_state: true,
            digest_mismatch_is_fatal: true,
            banner: "booting the passive (fallback) image",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_boots_from_its_own_partition_as_the_last_resort() {
        let p = policy(Mode::Recovery);
        assert_eq!(p.image_mount, RECOVERY_MOUNT);
        assert!(!p.image_on_state);
        assert!(!p.digest_mismatch_is_fatal);
        for m in [Mode::Active, Mode::Passive] {
            assert_eq!(policy(m).image_mount, STATE_MOUNT);
            assert!(policy(m).image_on_state);
            assert!(policy(m).digest_mismatch_is_fatal);
        }
    }
}
