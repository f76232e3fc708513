//! GRUB environment block: the 1024-byte file that GRUB's `load_env`/`save_env`
//! and `grub-editenv` read and write.
//!
//! Layout: the header line `# GRUB Environment Block`, then `name=value` lines,
//! padded with `#` to exactly [`BLOCK_SIZE`] bytes. GRUB escapes `\` and newline
//! in values with a backslash; we do the same so stock tools read our files.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const BLOCK_SIZE: usize = 1024;
pub const HEADER: &str = "# GRUB Environment Block\n";

/// Variables of one environment block, in a stable (sorted) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: BTreeMap<String, String>,
}

impl GrubEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Like [`get`](Self::get), but an empty value counts as unset (GRUB scripts
    /// clear a variable by saving it empty).
    pub fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("invalid GRUB environment variable name {name:?} (use letters, digits and _)");
        }
        self.vars.insert(name.to_string(), value.to_string());
        Ok(())
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parses a block. Lines that are not `name=value` are ignored, as GRUB does.
    pub fn parse(block: &[u8]) -> Result<Self> {
        if !block.starts_with(HEADER.as_bytes()) {
            bail!("not a GRUB environment block: the header line '# GRUB Environment Block' is missing");
        }
        if block.len() != BLOCK_SIZE {
            bail!(
                "GRUB environment block is {} bytes, expected {BLOCK_SIZE} (truncated or padded?)",
                block.len()
            );
        }
        let text = std::str::from_utf8(&block[HEADER.len()..])
            .context("GRUB environment block is not valid UTF-8")?;
        let mut env = GrubEnv::new();
        let mut chars = text.chars().peekable();
        loop {
            // One logical line: escaped characters do not end it.
            let mut line = String::new();
            let mut ended = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped) => {
                            line.push('\\');
                            line.push(escaped);
                        }
                        None => break,
                    },
                    '\n' => {
                        ended = true;
                        break;
                    }
                    c => line.push(c),
                }
            }
            if !ended && line.is_empty() {
                break;
            }
            if line.starts_with('#') {
                continue;
            }
            if let Some((name, raw)) = line.split_once('=') {
                env.vars.insert(name.to_string(), unescape(raw));
            }
            if !ended {
                break;
            }
        }
        Ok(env)
    }

    /// Serialises to exactly [`BLOCK_SIZE`] bytes.
    pub fn to_block(&self) -> Result<Vec<u8>> {
        let mut out = String::from(HEADER);
        for (name, value) in &self.vars {
            out.push_str(name);
            out.push('=');
            for c in value.chars() {
                if c == '\\' || c == '\n' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\n');
        }
        if out.len() > BLOCK_SIZE {
            bail!(
                "GRUB environment variables need {} bytes, more than the {BLOCK_SIZE}-byte block",
                out.len()
            );
        }
        let mut block = out.into_bytes();
        block.resize(BLOCK_SIZE, b'#');
        Ok(block)
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads and parses an environment block file.
pub fn read(path: &Path) -> Result<GrubEnv> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read GRUB environment block {}", path.display()))?;
    GrubEnv::parse(&bytes).with_context(|| format!("in {}", path.display()))
}

/// Replaces an environment block file atomically: a power cut leaves the old or
/// the new block, never a mix. Writes a temporary file, fsyncs it, renames it
/// over the old one and fsyncs the directory.
pub fn write_atomic(path: &Path, env: &GrubEnv) -> Result<()> {
    crate::fsutil::write_atomic(path, &env.to_block()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `grub-editenv grubenv create; grub-editenv grubenv set
    /// next_entry=passive 'weird=a\b'` (GRUB 2.06), trailing padding elided.
    fn editenv_fixture() -> Vec<u8> {
        let mut b = b"# GRUB Environment Block\nnext_entry=passive\nweird=a\\\\b\n".to_vec();
        b.resize(BLOCK_SIZE, b'#');
        b
    }

    #[test]
    fn parses_grub_editenv_output() {
        let env = GrubEnv::parse(&editenv_fixture()).unwrap();
        assert_eq!(env.get("next_entry"), Some("passive"));
        assert_eq!(env.get("weird"), Some("a\\b"));
        assert_eq!(env.iter().count(), 2);
    }

    #[test]
    fn serialises_exactly_like_grub_editenv() {
        let mut env = GrubEnv::new();
        env.set("next_entry", "passive").unwrap();
        env.set("weird", "a\\b").unwrap();
        assert_eq!(env.to_block().unwrap(), editenv_fixture());
    }

    #[test]
    fn round_trips_newlines_and_empty_values() {
        let mut env = GrubEnv::new();
        env.set("multi", "line1\nline2").unwrap();
        env.set("empty", "").unwrap();
        let back = GrubEnv::parse(&env.to_block().unwrap()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.get("empty"), Some(""));
        assert_eq!(back.get_nonempty("empty"), None);
    }

    #[test]
    fn rejects_garbage_and_wrong_size() {
        assert!(GrubEnv::parse(&[0u8; BLOCK_SIZE]).is_err());
        let err = GrubEnv::parse(HEADER.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("expected 1024"), "{err}");
    }

    #[test]
    fn refuses_overflow_and_bad_names() {
        let mut env = GrubEnv::new();
        env.set("big", &"x".repeat(BLOCK_SIZE)).unwrap();
        assert!(env.to_block().is_err());
        assert!(env.set("bad name", "v").is_err());
        assert!(env.set("", "v").is_err());
    }

    #[test]
    fn atomic_write_replaces_file() {
        let dir = std::env::temp_dir().join(format!("immuboot-grubenv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grubenv");
        let mut old = GrubEnv::new();
        old.set("next_entry", "passive").unwrap();
        write_atomic(&path, &old).unwrap();
        let mut env = GrubEnv::new();
        env.set("next_entry", "recovery").unwrap();
        write_atomic(&path, &env).unwrap();
        assert_eq!(read(&path).unwrap(), env);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BLOCK_SIZE as u64);
        // Only the block: the temporary (`.grubenv.new`, see
        // fsutil::temporary) was renamed over it, nothing else was left.
        assert_eq!(crate::fsutil::temporary(&path), dir.join(".grubenv.new"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["grubenv"],
            "files in {} after the write",
            dir.display()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
