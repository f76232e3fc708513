//! The figures the scenarios recorded (`target/immuboot/results/*.json`,
//! one JSON value each), printed at the end of `cargo xtask test`: every
//! result as recorded, then the initramfs kinds side by side.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Reads every result file (`*.json`) in `dir`, by name.
pub fn load(dir: &Path) -> BTreeMap<String, Value> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let name = f.file_stem()?.to_string_lossy().into_owned();
            let text = fs::read_to_string(&f).ok()?;
            let value = serde_json::from_str(text.trim()).unwrap_or(Value::String(text));
            Some((name, value))
        })
        .collect()
}

/// Where each kind's figures come from: the default configuration's first
/// scenario, the other configurations' runs, and the distribution's dracut
/// without immuboot (scenario 24), booting the slot image as a disk of its
/// own and from the COS_STATE partition of the same disk.
const KINDS: &[(&str, &str)] = &[
    ("standalone", "initramfs-{suite}-standalone"),
    ("dracut + immuboot", "initramfs-{suite}-dracut"),
    ("no immuboot, bare image", "initramfs-{suite}-dracut-plain"),
    (
        "no immuboot, partition",
        "initramfs-{suite}-dracut-partition",
    ),
];

/// The table of initramfs phase and size per suite and kind; None if no
/// scenario recorded any of them.
pub fn initramfs_table(results: &BTreeMap<String, Value>) -> Option<String> {
    let figures = |suite: &str, key: &str| -> Option<(f64, u64)> {
        let name = key.replace("{suite}", suite);
        let v = results.get(&name).or_else(|| {
            // The default configuration records under its scenario's name.
            (suite == "bookworm" && name == "initramfs-bookworm-standalone")
                .then(|| results.get("s1-initramfs-phase"))
                .flatten()
        })?;
        Some((
            v.get("initramfs_phase_s")?.as_f64()?,
            v.get("initramfs_bytes")?.as_u64()?,
        ))
    };
    let mut out = format!("    {:<9}", "suite");
    for (kind, _) in KINDS {
        out.push_str(&format!(" {kind:<24}"));
    }
    out.push('\n');
    let mut any = false;
    for suite in ["bookworm", "trixie"] {
        let mut line = format!("    {suite:<9}");
        let mut row = Vec::new();
        for (_, key) in KINDS {
            let f = figures(suite, key);
            any |= f.is_some();
            row.push(f);
            let cell = match f {
                Some((s, bytes)) => format!("{s:.2} s, {:.1} MB", bytes as f64 / 1e6),
                None => "-".into(),
            };
            line.push_str(&format!(" {cell:<24}"));
        }
        // What the module adds to the distribution's own dracut initramfs,
        // against each plain root (the partition first: the same disk).
        let adds: Vec<String> = [(row[3], "partition"), (row[2], "bare image")]
            .into_iter()
            .filter_map(|(plain, against)| {
                let ((with, with_bytes), (plain, plain_bytes)) = (row[1]?, plain?);
                Some(format!(
                    "{:+.2} s, {:+.1} MB against the {against}",
                    with - plain,
                    (with_bytes as f64 - plain_bytes as f64) / 1e6
                ))
            })
            .collect();
        if !adds.is_empty() {
            line.push_str(&format!(" module adds {}", adds.join("; ")));
        }
        out.push_str(&line);
        out.push('\n');
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_puts_kinds_side_by_side_and_the_modules_cost() {
        let mut r = BTreeMap::new();
        r.insert(
            "s1-initramfs-phase".to_string(),
            json!({"initramfs_phase_s": 3.5, "initramfs_bytes": 2_000_000}),
        );
        r.insert(
            "initramfs-bookworm-dracut".to_string(),
            json!({"initramfs_phase_s": 9.25, "initramfs_bytes": 30_500_000}),
        );
        r.insert(
            "initramfs-bookworm-dracut-plain".to_string(),
            json!({"initramfs_phase_s": 9.0, "initramfs_bytes": 29_000_000}),
        );
        let t = initramfs_table(&r).unwrap();
        assert!(t.contains("3.50 s, 2.0 MB"), "{t}");
        assert!(
            t.contains("module adds +0.25 s, +1.5 MB against the bare image"),
            "{t}"
        );
        assert!(!t.contains("against the partition"), "{t}");
        r.insert(
            "initramfs-bookworm-dracut-partition".to_string(),
            json!({"initramfs_phase_s": 9.125, "initramfs_bytes": 29_000_000}),
        );
        let t = initramfs_table(&r).unwrap();
        assert!(
            t.contains(
                "module adds +0.12 s, +1.5 MB against the partition; +0.25 s, +1.5 MB against the bare image"
            ),
            "{t}"
        );
        assert!(t.contains("9.12 s, 29.0 MB"), "{t}");
        let trixie = t.lines().find(|l| l.contains("trixie")).unwrap();
        assert!(!trixie.contains("module adds"), "{t}");
        assert!(initramfs_table(&BTreeMap::new()).is_none());
    }
}
