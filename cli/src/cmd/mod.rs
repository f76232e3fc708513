//! One module per command; what they share: the boot facts and state
//! directory ([`Ctx`]), a boot state change ([`update`]), rebooting.

pub mod mark_good;
pub mod reset;
pub mod state_cmds;
pub mod status;
pub mod upgrade;

use crate::boot::{load_state, Boot};
use anyhow::Result;
use immuboot_assess::BootState;
use immuboot_mount::syscall::LinuxSyscall;
use std::path::{Path, PathBuf};

/// What every command works on.
pub struct Ctx {
    pub boot: Boot,
    /// Mount point of COS_STATE (or a plain directory, for tests).
    pub state_dir: PathBuf,
}

/// Changes the boot state: both copies rewritten atomically, COS_STATE
/// writable for the time of it; prints `change`'s message.
pub fn update(
    state_dir: &Path,
    change: impl FnOnce(&mut BootState) -> Result<String>,
) -> Result<()> {
    let loaded = load_state(state_dir)?;
    let mut state = loaded.state.clone();
    let message = change(&mut state)?;
    immuboot_mount::state::update(&LinuxSyscall, state_dir, &loaded.env, &state)?;
    println!("{message}");
    Ok(())
}

pub fn reboot_now() {
    eprintln!("immuboot: rebooting");
    let _ = std::process::Command::new("systemctl")
        .arg("reboot")
        .status();
}
