//! Filesystem labels that identify immuboot's partitions.

use serde::{Deserialize, Serialize};

/// Labels of the partitions; defaults are the cOS/Elemental ones, each can be
/// overridden on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labels {
    pub state: String,
    pub recovery: String,
    pub oem: String,
    pub persistent: String,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            state: "COS_STATE".into(),
            recovery: "COS_RECOVERY".into(),
            oem: "COS_OEM".into(),
            persistent: "COS_PERSISTENT".into(),
        }
    }
}
