//! The one way the boot stops: say what failed in one line, then reboot so
//! the boot loader's fallback can act. PID 1 never exits; in dracut's initrd
//! the reboot is asked of systemd, which stops everything cleanly.

use immuboot_mount::facts::InitramfsKind;
use std::sync::OnceLock;
use std::time::Duration;

/// Settings the fatal path needs, known before the command line is parsed.
#[derive(Debug, Clone)]
pub struct FatalPolicy {
    pub reboot_delay: Duration,
    pub shell: bool,
    /// Who runs the boot: the init as PID 1, or a service of systemd in
    /// dracut's initrd.
    pub host: InitramfsKind,
}

impl Default for FatalPolicy {
    fn default() -> Self {
        FatalPolicy {
            reboot_delay: Duration::from_secs(10),
            shell: false,
            host: InitramfsKind::Standalone,
        }
    }
}

/// A policy published once, for code that cannot be handed one: the panic
/// hook runs wherever a panic happens, before or after the command line is
/// read. Until it is published, readers get the default policy.
#[derive(Debug, Default)]
pub struct PublishedPolicy(OnceLock<FatalPolicy>);

impl PublishedPolicy {
    pub const fn new() -> Self {
        PublishedPolicy(OnceLock::new())
    }

    /// Makes `policy` the one readers get. The first publication wins: the
    /// command line is read once, so a second one would be a mistake.
    pub fn publish(&self, policy: FatalPolicy) {
        if self.0.set(policy).is_err() {
            log::warn!("fatal policy published twice; keeping the first");
        }
    }

    /// The published policy, or the default one before publication.
    pub fn current(&self) -> FatalPolicy {
        self.0.get().cloned().unwrap_or_default()
    }
}

/// The policy of this process, published by the boot once the command line
/// is read and used by the panic hook.
pub static POLICY: PublishedPolicy = PublishedPolicy::new();

/// The line a person sees on the console.
pub fn fatal_line(step: &str, error: &str, delay: Duration) -> String {
    format!(
        "FATAL in step '{step}': {error} -- rebooting in {} s so the boot loader can fall back \
         (add immuboot.shell to the kernel command line for a shell, immuboot.debug for details)",
        delay.as_secs()
    )
}

pub fn fatal(step: &str, error: &anyhow::Error, policy: &FatalPolicy) -> ! {
    log::error!(
        "{}",
        fatal_line(step, &format!("{error:#}"), policy.reboot_delay)
    );
    match policy.host {
        InitramfsKind::Standalone => {
            if policy.shell {
                emergency_shell();
            }
            reboot_after(policy.reboot_delay)
        }
        InitramfsKind::Dracut => {
            if policy.shell {
                // The service fails: systemd's own emergency handling
                // (dracut's shell) takes over, as immuboot.shell asks.
                log::error!("immuboot.shell: leaving the failure to systemd's emergency shell");
                std::process::exit(1)
            }
            std::thread::sleep(policy.reboot_delay);
            ask_systemd_to_reboot()
        }
    }
}

/// In dracut's initrd: start systemd's reboot (it stops this service and
/// unmounts what it can), and wait for it. A failed service would instead
/// make the initrd's targets fail and systemd start its emergency shell.
fn ask_systemd_to_reboot() -> ! {
    rustix::fs::sync();
    match std::process::Command::new("systemctl")
        .args(["--no-block", "reboot"])
        .status()
    {
        Ok(s) if s.success() => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => {
            log::error!("systemctl reboot failed ({other:?}); rebooting directly");
            reboot_after(Duration::ZERO)
        }
    }
}

/// Runs a shell if one exists (the initramfs has none by default; the new
/// root's shell is used when the root is mounted already).
fn emergency_shell() {
    use std::process::Command;
    for (root, shell) in [("/", "/bin/sh"), ("/sysroot", "/bin/sh")] {
        let full = std::path::Path::new(root).join(shell.trim_start_matches('/'));
        if !full.exists() {
            continue;
        }
        log::error!(
            "starting an emergency shell ({}); exit it to reboot",
            full.display()
        );
        let status = if root == "/" {
            Command::new(shell).status()
        } else {
            Command::new("/usr/sbin/chroot")
                .arg(root)
                .arg(shell)
                .status()
                .or_else(|_| {
                    // No chroot binary in the initramfs: use the root's own.
                    Command::new(std::path::Path::new(root).join("usr/sbin/chroot"))
                        .arg(root)
                        .arg(shell)
                        .status()
                })
        };
        if status.is_ok() {
            return;
        }
    }
    log::error!("no shell available in the initramfs or the new root");
}

pub fn reboot_after(delay: Duration) -> ! {
    std::thread::sleep(delay);
    rustix::fs::sync();
    let err = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    log::error!("reboot failed: {err:?}; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_names_step_error_and_delay() {
        let l = fatal_line(
            "mount image",
            "image /cOS/a.img not found",
            Duration::from_secs(10),
        );
        assert!(l.starts_with("FATAL in step 'mount image': image /cOS/a.img not found"));
        assert!(l.contains("rebooting in 10 s"));
        assert!(!l.contains('\n'));
    }

    #[test]
    fn policy_is_the_default_until_published_then_the_first_published() {
        let published = PublishedPolicy::new();
        let before = published.current();
        assert_eq!(before.reboot_delay, FatalPolicy::default().reboot_delay);
        assert_eq!(before.shell, FatalPolicy::default().shell);

        published.publish(FatalPolicy {
            reboot_delay: Duration::from_secs(300),
            shell: true,
            host: InitramfsKind::Dracut,
        });
        published.publish(FatalPolicy {
            reboot_delay: Duration::from_secs(1),
            shell: false,
            host: InitramfsKind::Standalone,
        });
        let after = published.current();
        assert_eq!(after.reboot_delay, Duration::from_secs(300));
        assert!(after.shell);
        assert_eq!(after.host, InitramfsKind::Dracut);
    }
}
