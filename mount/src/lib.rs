//! Partition discovery, the mount layout plan and its execution.
#![deny(unsafe_code)]

pub mod copy;
pub mod exec;
pub mod facts;
pub mod journal;
pub mod labels;
pub mod layout;
pub mod loopdev;
pub mod plan;
pub mod probe;
pub mod state;
pub mod syscall;
pub mod watchdog;

// The one module allowed unsafe code: the ioctls rustix has no safe API for.
#[allow(unsafe_code)]
mod ffi;
