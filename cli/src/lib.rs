//! What the `immuboot` tool shares with the image's systemd generator,
//! `immuboot-upgrade-generator`: the unattended upgrades' configuration.
//! The generator is a program of its own, not the tool under another name:
//! systemd waits for its generators before it starts a unit, and the tool
//! (registry client, progress bars, every command) is a large binary to
//! read from the squashfs root and start.
#![forbid(unsafe_code)]

pub mod auto;
pub mod generator;
