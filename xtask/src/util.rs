//! Running host commands, paths and build stamps.

use anyhow::{bail, Context, Result};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Build outputs: target/immuboot in the checkout.
pub fn out_dir() -> PathBuf {
    workspace_root().join("target/immuboot")
}

/// Downloads shared by every checkout on this machine, keyed by version.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("immuboot")
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd.status().with_context(|| format!("cannot run {line}"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    eprintln!("==> {name}");
    let v = f().with_context(|| format!("while: {name}"))?;
    eprintln!("    {name}: {:.1} s", start.elapsed().as_secs_f64());
    Ok(v)
}

/// A hash of inputs, to decide whether an output is up to date.
#[derive(Default)]
pub struct Stamp(DefaultHasher);

impl Stamp {
    pub fn text(mut self, s: &str) -> Self {
        s.hash(&mut self.0);
        self
    }

    pub fn file(mut self, path: &Path) -> Result<Self> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        data.hash(&mut self.0);
        Ok(self)
    }

    /// Every file under `dir` (names, modes, contents, link targets), in
    /// name order; a missing directory counts as empty.
    pub fn tree(mut self, dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .flatten()
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = format!("{rel}/{}", e.file_name().to_string_lossy());
                let is_dir = e.file_type()?.is_dir();
                out.push((name.clone(), e.path()));
                if is_dir {
                    walk(&e.path(), &name, out)?;
                }
            }
            Ok(())
        }
        if !dir.exists() {
            return Ok(self.text("absent"));
        }
        let mut files = Vec::new();
        walk(dir, "", &mut files)?;
        for (name, path) in files {
            let meta = std::fs::symlink_metadata(&path)?;
            name.hash(&mut self.0);
            meta.permissions().mode().hash(&mut self.0);
            if meta.file_type().is_symlink() {
                std::fs::read_link(&path)?.hash(&mut self.0);
            } else if meta.is_file() {
                self = self.file(&path)?;
            }
        }
        Ok(self)
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0.finish())
    }

    /// True if `output`'s stamp file holds this stamp.
    pub fn is_current(&self, output: &Path) -> bool {
        output.exists()
            && std::fs::read_to_string(stamp_path(output))
                .map(|s| s.trim() == self.hex())
                .unwrap_or(false)
    }

    pub fn record(&self, output: &Path) -> Result<()> {
        std::fs::write(stamp_path(output), self.hex())?;
        Ok(())
    }
}

fn stamp_path(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".stamp");
    PathBuf::from(s)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
