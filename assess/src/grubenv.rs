//! GRUB environment block: the file that GRUB's `load_env`/`save_env` and
//! `grub-editenv` read and write (1024 bytes when `grub-editenv create` makes
//! it, but any size is read, and both tools rewrite it keeping its size).
//!
//! Layout: the header line `# GRUB Environment Block`, then `name=value` lines,
//! padded with `#` to the block's size. GRUB escapes `\` and newline in values
//! with a backslash; we do the same so stock tools read our files.
//!
//! Names and values are bytes: GRUB and `grub-editenv` store any bytes, and a
//! variable that is not ours is kept byte for byte across our writes. Only our
//! own variables need to be text; [`get`](GrubEnv::get) returns `None` for a
//! value that is not valid UTF-8 ([`get_bytes`](GrubEnv::get_bytes) has it).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The size of a new block (what `grub-editenv create` makes).
pub const BLOCK_SIZE: usize = 1024;
/// A block is a whole number of these. GRUB itself reads any size; we
/// require whole sectors so a truncated copy is detected as torn (and the
/// other copy used) instead of being read as a valid, shorter block.
pub const SECTOR_SIZE: usize = 512;
pub const HEADER: &str = "# GRUB Environment Block\n";

/// Variables of one environment block, in a stable (sorted) order, and the
/// size the block is written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubEnv {
    vars: BTreeMap<Vec<u8>, Vec<u8>>,
    size: usize,
}

impl Default for GrubEnv {
    fn default() -> Self {
        Self {
            vars: BTreeMap::new(),
            size: BLOCK_SIZE,
        }
    }
}

impl GrubEnv {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `name`, if set and valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of `name` as GRUB stores it (unescaped), whatever its bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.vars.get(name.as_bytes()).map(Vec::as_slice)
    }

    /// Like [`get`](Self::get), but an empty value counts as unset (GRUB scripts
    /// clear a variable by saving it empty).
    pub fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        self.set_bytes(name, value.as_bytes())
    }

    /// Sets `name` to any bytes (escaped on writing, as GRUB does).
    pub fn set_bytes(&mut self, name: &str, value: &[u8]) -> Result<()> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("invalid GRUB environment variable name {name:?} (use letters, digits and _)");
        }
        self.vars.insert(name.as_bytes().to_vec(), value.to_vec());
        Ok(())
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.remove(name.as_bytes());
    }

    /// The variables whose name and value are valid UTF-8 (see
    /// [`iter_bytes`](Self::iter_bytes) for all of them).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter_bytes()
            .filter_map(|(k, v)| Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?)))
    }

    /// All variables, as bytes.
    pub fn iter_bytes(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// The size in bytes this environment is written with: the size of the
    /// block it was parsed from, [`BLOCK_SIZE`] for a new one.
    pub fn block_size(&self) -> usize {
        self.size
    }

    /// Parses a block of any positive multiple of [`SECTOR_SIZE`] bytes.
    /// Lines that are not `name=value` are ignored, as GRUB does. Any bytes
    /// are accepted in names and values.
    pub fn parse(block: &[u8]) -> Result<Self> {
        let Some(body) = block.strip_prefix(HEADER.as_bytes()) else {
            bail!("not a GRUB environment block: the header line '# GRUB Environment Block' is missing");
        };
        if !block.len().is_multiple_of(SECTOR_SIZE) {
            bail!(
                "GRUB environment block is {} bytes, not a multiple of {SECTOR_SIZE} \
                 (expected {BLOCK_SIZE} or another multiple; truncated or padded?)",
                block.len()
            );
        }
        let mut env = GrubEnv {
            vars: BTreeMap::new(),
            size: block.len(),
        };
        let mut bytes = body.iter().copied();
        loop {
            // One logical line: escaped bytes do not end it, and an escaped
            // '=' does not end the name (grub_envblk_iterate).
            let mut line = Vec::new();
            let mut eq = None;
            let mut ended = false;
            while let Some(b) = bytes.next() {
                match b {
                    b'\\' => match bytes.next() {
                        Some(escaped) => {
                            line.push(b'\\');
                            line.push(escaped);
                        }
                        None => break,
                    },
                    b'\n' => {
                        ended = true;
                        break;
                    }
                    b => {
                        if b == b'=' && eq.is_none() {
                            eq = Some(line.len());
                        }
                        line.push(b)
                    }
                }
            }
            // GRUB drops a last line without its newline as broken; reading
            // it would also make the block one byte too small to write back.
            if !ended {
                break;
            }
            if line.first() == Some(&b'#') {
                continue;
            }
            if let Some(eq) = eq {
                let name = line.get(..eq).unwrap_or_default();
                let raw = line.get(eq + 1..).unwrap_or_default();
                env.vars.insert(name.to_vec(), unescape(raw));
            }
        }
        Ok(env)
    }

    /// Serialises to exactly [`block_size`](Self::block_size) bytes.
    pub fn to_block(&self) -> Result<Vec<u8>> {
        let mut out = HEADER.as_bytes().to_vec();
        for (name, value) in &self.vars {
            out.extend_from_slice(name);
            out.push(b'=');
            for &b in value {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > self.size {
            bail!(
                "GRUB environment variables need {} bytes, more than the {}-byte block \
                 (the block keeps its size: unset or shorten variables, or recreate the \
                 block larger with a multiple of {SECTOR_SIZE} bytes)",
                out.len(),
                self.size
            );
        }
        out.resize(self.size, b'#');
        Ok(out)
    }
}

/// Removes GRUB's escaping: a backslash takes the next byte literally.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(b) = bytes.next() {
        if b == b'\\' {
            if let Some(next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
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

/// [`write_atomic`] with the crash-test points `NAME-written` and
/// `NAME-renamed` ([`crate::fsutil::write_atomic_with_points`]).
pub fn write_atomic_with_points(path: &Path, env: &GrubEnv, points: &str) -> Result<()> {
    crate::fsutil::write_atomic_with_points(path, &env.to_block()?, Some(points))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    /// `grub-editenv PATH ARGS...` (arguments as raw bytes); its stdout.
    /// grub-editenv is a declared host dependency (package grub-common).
    pub(crate) fn editenv(path: &Path, args: &[&[u8]]) -> Vec<u8> {
        let out = Command::new("grub-editenv")
            .arg(path)
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .output()
            .unwrap_or_else(|e| panic!("cannot run grub-editenv ({e}): install grub-common"));
        assert!(
            out.status.success(),
            "grub-editenv {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

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
        assert!(err.contains("not a multiple of 512"), "{err}");
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

    /// GRUB reads any size; we accept positive multiples of 512 (a torn or
    /// truncated copy is detected and the other copy used).
    #[test]
    fn accepts_multiples_of_512_and_rejects_other_sizes() {
        let block = |len: usize| {
            let mut b = b"# GRUB Environment Block\nnext_entry=passive\n".to_vec();
            b.resize(len, b'#');
            b
        };
        let env = GrubEnv::parse(&block(1536)).unwrap();
        assert_eq!(env.get("next_entry"), Some("passive"));
        let env = GrubEnv::parse(&block(4096)).unwrap();
        assert_eq!(env.get("next_entry"), Some("passive"));
        let err = format!("{:#}", GrubEnv::parse(&block(1023)).unwrap_err());
        assert!(
            err.contains("1023 bytes") && err.contains("multiple of 512"),
            "{err}"
        );
        assert!(GrubEnv::parse(&block(512)).is_ok());
        assert!(GrubEnv::parse(&[]).is_err());
    }

    /// A block `grub-editenv` wrote with a non-UTF-8 byte in a foreign
    /// variable: ours read fine, the foreign one survives byte for byte.
    #[test]
    fn non_utf8_foreign_variable_is_kept_byte_for_byte() {
        let dir =
            std::env::temp_dir().join(format!("immuboot-grubenv-nonutf8-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grubenv");
        editenv(&path, &[b"create"]);
        editenv(
            &path,
            &[
                b"set",
                b"next_entry=passive",
                b"vendor_note=caf\xe9",
                b"bs=a\\\xff\nb",
            ],
        );
        let before = editenv(&path, &[b"list"]);
        let env = read(&path).unwrap();
        assert_eq!(env.get("next_entry"), Some("passive"));
        write_atomic(&path, &env).unwrap();
        // grub-editenv lists in file order, we write in name order: the
        // same entries, byte for byte.
        let after = editenv(&path, &[b"list"]);
        assert_eq!(after.len(), before.len());
        let entries: [&[u8]; 3] = [
            b"next_entry=passive\n",
            b"vendor_note=caf\xe9\n",
            b"bs=a\\\xff\nb\n",
        ];
        for entry in entries {
            for list in [&before, &after] {
                assert!(
                    list.windows(entry.len()).any(|w| w == entry),
                    "{:?} not in {:?}",
                    String::from_utf8_lossy(entry),
                    String::from_utf8_lossy(list)
                );
            }
        }
        let back = read(&path).unwrap();
        assert_eq!(back.get_bytes("vendor_note"), Some(&b"caf\xe9"[..]));
        assert_eq!(back.get_bytes("bs"), Some(&b"a\\\xff\nb"[..]));
        assert_eq!((back.get("vendor_note"), back.get("bs")), (None, None));
        assert_eq!(back, env);
        assert_eq!(std::fs::read(&path).unwrap().len(), BLOCK_SIZE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// GRUB's escaping round-trips every byte, and `grub-editenv` reads it.
    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut env = GrubEnv::new();
        env.set_bytes("all", &all).unwrap();
        env.set_bytes("tail", b"ends with a backslash\\").unwrap();
        let block = env.to_block().unwrap();
        assert_eq!(block.len(), BLOCK_SIZE);
        let back = GrubEnv::parse(&block).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.get_bytes("all"), Some(&all[..]));
        assert_eq!(back.iter().count(), 1, "only `tail` is text");
        assert_eq!(back.iter_bytes().count(), 2);
    }

    /// A parsed block is written back at its own size; overflowing it says so.
    #[test]
    fn keeps_the_block_size_and_explains_overflow() {
        let mut block = HEADER.as_bytes().to_vec();
        block.resize(4096, b'#');
        let mut env = GrubEnv::parse(&block).unwrap();
        assert_eq!(env.block_size(), 4096);
        env.set("big", &"x".repeat(3000)).unwrap();
        assert_eq!(env.to_block().unwrap().len(), 4096);
        env.set("big", &"x".repeat(4096)).unwrap();
        let err = env.to_block().unwrap_err().to_string();
        assert!(err.contains("more than the 4096-byte block"), "{err}");
        assert_eq!(GrubEnv::new().block_size(), BLOCK_SIZE);
    }

    /// Found by the `grubenv` fuzz target: a last variable without its
    /// newline (running into the '#' padding) was read, although GRUB drops
    /// it as broken, and the block could then not be written back in its
    /// own size.
    #[test]
    fn an_unterminated_last_line_is_dropped_as_grub_does() {
        let mut block = HEADER.as_bytes().to_vec();
        block.extend_from_slice(b"kept=1\nimmuboot_last_failure=slot b: image /");
        block.resize(BLOCK_SIZE, b'#');
        let env = GrubEnv::parse(&block).unwrap();
        assert_eq!(env.get("kept"), Some("1"));
        assert_eq!(env.get("immuboot_last_failure"), None);
        let back = GrubEnv::parse(&env.to_block().unwrap()).unwrap();
        assert_eq!(back, env);
    }

    /// An escaped '=' belongs to the name, as in grub_envblk_iterate.
    #[test]
    fn an_escaped_equals_sign_does_not_end_the_name() {
        let mut block = HEADER.as_bytes().to_vec();
        block.extend_from_slice(b"a\\=b=c\n");
        block.resize(BLOCK_SIZE, b'#');
        let env = GrubEnv::parse(&block).unwrap();
        let vars: Vec<_> = env.iter_bytes().collect();
        assert_eq!(vars, [(&b"a\\=b"[..], &b"c"[..])]);
        assert_eq!(env.to_block().unwrap(), block);
    }
}
