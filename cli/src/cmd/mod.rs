//! One module per command; what they share: the boot facts and state
//! directory ([`Ctx`]), a boot state change ([`update`]), rebooting.

pub mod auto_upgrade;
pub mod mark_good;
pub mod reset;
pub mod state_cmds;
pub mod status;
pub mod timeline;
pub mod upgrade;
pub mod verify;

use crate::boot::{transaction, Boot};
use anyhow::Result;
use immuboot_assess::BootState;
use std::path::{Path, PathBuf};

/// What every command works on.
pub struct Ctx {
    pub boot: Boot,
    /// Mount point of COS_STATE (or a plain directory, for tests).
    pub state_dir: PathBuf,
}

/// Changes the boot state: both copies rewritten atomically, COS_STATE
/// writable for the time of it, under the state lock from the read to the
/// write; prints `change`'s message.
pub fn update(
    state_dir: &Path,
    change: impl FnOnce(&mut BootState) -> Result<String>,
) -> Result<()> {
    let message = transaction(state_dir, || {}, |loaded| change(&mut loaded.state))?;
    outln!("{message}");
    Ok(())
}

pub fn reboot_now() {
    errln!("immuboot: rebooting");
    let _ = std::process::Command::new("systemctl")
        .arg("reboot")
        .status();
}
