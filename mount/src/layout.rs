//! The layout file: which paths of the read-only image are writable, and
//! whether their changes survive a reboot.
//!
//! ```yaml
//! ephemeral:            # overlays on tmpfs: changes are lost at reboot
//!   - /var
//! persistent:           # bind mounts backed by COS_PERSISTENT
//!   - /root
//!   - /var/log
//! ephemeral_size: 25%   # size of the tmpfs that holds ephemeral changes
//! ```
//!
//! Built in and not configurable: `/` and `/usr` read-only, `/etc` ephemeral,
//! `/usr/local` on COS_PERSISTENT, `/oem` on COS_OEM.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the image ships its layout.
pub const IMAGE_LAYOUT_PATH: &str = "/etc/immuboot/layout.yaml";
/// Where an operator overrides it (on COS_OEM, mounted at /oem).
pub const OEM_LAYOUT_PATH: &str = "/oem/immuboot/layout.yaml";

/// Paths that are ephemeral whatever the layout says.
pub const BUILTIN_EPHEMERAL: &[&str] = &["/etc"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    #[serde(default)]
    pub ephemeral: Vec<String>,
    #[serde(default)]
    pub persistent: Vec<String>,
    #[serde(default = "default_ephemeral_size")]
    pub ephemeral_size: String,
}

fn default_ephemeral_size() -> String {
    "25%".into()
}

impl Default for Layout {
    /// Used when neither the image nor /oem has a valid layout file: enough
    /// for a Debian/systemd root to boot on a read-only image.
    fn default() -> Self {
        Layout {
            ephemeral: vec!["/var".into(), "/srv".into(), "/tmp".into()],
            persistent: vec!["/root".into()],
            ephemeral_size: default_ephemeral_size(),
        }
    }
}

impl Layout {
    /// Parses and validates a layout file's text.
    pub fn parse(text: &str) -> Result<Layout> {
        precheck(text)?;
        let layout: Layout = serde_yaml_ng::from_str(text).map_err(|e| {
            let message = e.to_string();
            if message.contains(" at line ") {
                anyhow::anyhow!("{message}")
            } else {
                anyhow::anyhow!("{message} {}", locate(text, &message))
            }
        })?;
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<()> {
        // By state name: two paths kept under one name clash. A map, not a
        // scan of what was seen: a 64 KiB file holds thousands of paths.
        let mut seen: std::collections::HashMap<String, &str> = Default::default();
        for (kind, path) in self
            .ephemeral
            .iter()
            .map(|p| ("ephemeral", p))
            .chain(self.persistent.iter().map(|p| ("persistent", p)))
        {
            check_path(path).with_context(|| format!("{kind} path {path:?}"))?;
            if kind == "ephemeral" && is_within(path, "/etc") {
                bail!("ephemeral path {path:?}: /etc is always ephemeral");
            }
            let name = state_name(path);
            match seen.get(&name) {
                Some(other) if other == path => bail!(
                    "{path:?} is listed twice (a path is either ephemeral or persistent, once)"
                ),
                Some(other) => bail!(
                    "{other:?} and {path:?} would both be kept as {name:?}; rename one of them"
                ),
                None => {}
            }
            seen.insert(name, path);
        }
        let size = self.ephemeral_size.trim_end_matches('%');
        let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "ephemeral_size {:?}: expected a tmpfs size such as 25% or 512M",
                self.ephemeral_size
            );
        }
        Ok(())
    }
}

/// The name under which a path's data is kept (persistent:
/// `/usr/local/.state/NAME.bind`; ephemeral: the overlay's upper directory):
/// the path without its leading `/`, with `/` turned into `-`, so
/// `/var/lib/foo` is kept in `var-lib-foo`. Two paths with one name are
/// rejected when the layout is read.
pub fn state_name(path: &str) -> String {
    path.trim_start_matches('/').replace('/', "-")
}

fn is_within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("must be absolute");
    }
    if path == "/" {
        bail!("the root stays read-only; list the directories that must be writable");
    }
    if path.ends_with('/') || path.contains("//") {
        bail!("write it without trailing or doubled slashes");
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        bail!("must not contain . or ..");
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',')
    {
        bail!("must not contain white space, control characters or commas");
    }
    for reserved in ["/proc", "/sys", "/dev", "/run"] {
        if is_within(path, reserved) {
            bail!("{reserved} is an API file system set up by the init and systemd");
        }
    }
    if is_within(path, "/usr/local") {
        bail!("/usr/local is already persistent (COS_PERSISTENT)");
    }
    if is_within(path, "/usr") {
        bail!("/usr is part of the read-only image");
    }
    if is_within(path, "/oem") {
        bail!("/oem is already persistent (COS_OEM)");
    }
    Ok(())
}

/// A layout file is a few lines. Larger or deeply nested input is refused
/// before the YAML parser sees it: its time grows much faster than the
/// nesting (4,000 unclosed `[` took 3.6 s), and PID 1 must not stall on a
/// broken file.
pub const MAX_LAYOUT_BYTES: usize = 64 * 1024;
const MAX_NESTING: usize = 32;

fn precheck(text: &str) -> Result<()> {
    if text.len() > MAX_LAYOUT_BYTES {
        bail!(
            "the file is {} bytes; a layout file is at most {MAX_LAYOUT_BYTES} bytes",
            text.len()
        );
    }
    // Flow collections (`[`, `{`) outside quotes and comments. A layout
    // needs two levels; the bound only stops pathological input.
    let (mut depth, mut quote) = (0usize, None::<char>);
    let mut prev = '\n';
    for (i, line) in text.split('\n').enumerate() {
        let mut comment = false;
        for (col, c) in line.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev.is_whitespace() || col == 0 => comment = true,
                _ if comment => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        bail!(
                            "collections nested more than {MAX_NESTING} levels deep at line {} \
                             column {} (a layout file needs two)",
                            i + 1,
                            col + 1
                        );
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
        prev = '\n';
    }
    Ok(())
}

/// Where an error the YAML library could not place is: the line of an
/// unknown key, else the top of the file.
fn locate(text: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    if let Some(key) = unknown {
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed
                .strip_prefix(key)
                .is_some_and(|after| after.trim_start().starts_with(':'))
            {
                return format!(
                    "at line {} column {}",
                    i + 1,
                    line.len() - trimmed.len() + 1
                );
            }
        }
    }
    "at line 1 column 1 (a layout file is a mapping with the keys ephemeral, persistent and \
     ephemeral_size)"
        .into()
}

/// Reads and validates a layout file.
pub fn read(path: &Path) -> Result<Layout> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read layout file {}", path.display()))?;
    Layout::parse(&text).with_context(|| format!("invalid layout file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_a_line_and_column() {
        for (text, place) in [
            ("ephemeral: 5\n", "at line 1 column 12"),
            (
                "ephemeral: [/var]\n  # note\nbogus: 1\n",
                "unknown field `bogus`",
            ),
            (
                "ephemeral: [/var]\n  # note\nbogus: 1\n",
                "at line 3 column 1",
            ),
            ("[/var]\n", "at line 1 column 1 (a layout file is a mapping"),
        ] {
            let e = format!("{:#}", Layout::parse(text).unwrap_err());
            assert!(e.contains(place), "{text:?}: {e}");
        }
    }

    #[test]
    fn pathological_input_is_refused_at_once_with_its_place() {
        let start = std::time::Instant::now();
        let e = format!("{:#}", Layout::parse(&"[".repeat(100_000)).unwrap_err());
        assert!(e.contains("bytes; a layout file is at most"), "{e}");
        let e = format!("{:#}", Layout::parse(&"[".repeat(4_000)).unwrap_err());
        assert!(
            e.contains("nested more than 32 levels deep at line 1 column 33"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            Layout::parse(&format!(
                "ephemeral: [/var]\npersistent: {}\n",
                "[".repeat(40)
            ))
            .unwrap_err()
        );
        assert!(e.contains("at line 2 column 45"), "{e}");
        // Far below what the YAML parser needs for this input (seconds).
        assert!(
            start.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        // Brackets in quotes and comments do not count.
        let quoted = format!(
            "ephemeral_size: \"{}\" # {}\n",
            "[".repeat(40),
            "{".repeat(40)
        );
        assert!(!format!("{:#}", Layout::parse(&quoted).unwrap_err()).contains("nested"));
    }

    /// The other doors of the layout file: random bytes, an alias bomb, a
    /// huge list. Each is refused with its reason, none hangs or panics.
    #[test]
    fn random_bytes_alias_bombs_and_huge_lists_are_refused() {
        // 100 KB of pseudo-random bytes (a fixed LCG: the same every run).
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 16) as u8
            })
            .collect();
        let text = String::from_utf8_lossy(&noise);
        assert!(format!("{:#}", Layout::parse(&text).unwrap_err()).contains("at most"));
        let short = String::from_utf8_lossy(&noise[..2_000]);
        assert!(Layout::parse(&short).is_err());
        // A billion-laughs bomb: nine levels of ten aliases each.
        let mut bomb = String::from("a0: &a0 [/x, /x, /x, /x, /x, /x, /x, /x, /x, /x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("persistent: *a8\n");
        let e = format!("{:#}", Layout::parse(&bomb).unwrap_err());
        assert!(e.contains("line"), "{e}");
        // 10,000 entries do not fit in a layout file.
        let list: String = (0..10_000).map(|i| format!("  - /srv/d{i}\n")).collect();
        let e = format!(
            "{:#}",
            Layout::parse(&format!("persistent:\n{list}")).unwrap_err()
        );
        assert!(e.contains("at most"), "{e}");
        // As many as fit, all different: accepted; one repeated: named.
        let list: String = (0..4_000).map(|i| format!("  - /srv/d{i}\n")).collect();
        let l = Layout::parse(&format!("persistent:\n{list}")).unwrap();
        assert_eq!(l.persistent.len(), 4_000);
        let e = format!(
            "{:#}",
            Layout::parse(&format!("persistent:\n{list}  - /srv/d7\n")).unwrap_err()
        );
        assert!(e.contains("/srv/d7"), "{e}");
    }

    #[test]
    fn parses_a_full_layout() {
        let l = Layout::parse(
            "ephemeral: [/var, /srv]\npersistent:\n  - /root\n  - /var/log\nephemeral_size: 512M\n",
        )
        .unwrap();
        assert_eq!(l.ephemeral, ["/var", "/srv"]);
        assert_eq!(l.persistent, ["/root", "/var/log"]);
        assert_eq!(l.ephemeral_size, "512M");
    }

    #[test]
    fn missing_lists_are_empty() {
        let l = Layout::parse("persistent: [/home]").unwrap();
        assert!(l.ephemeral.is_empty());
        assert_eq!(l.ephemeral_size, "25%");
    }

    #[test]
    fn syntax_errors_name_the_position() {
        let err = Layout::parse("ephemeral: [/var\npersistent: /root\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Layout::parse("persistant: [/root]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("persistant"), "{err}");
    }

    #[test]
    fn rejects_bad_paths() {
        for (yaml, needle) in [
            ("persistent: [root]", "absolute"),
            ("persistent: [/]", "read-only"),
            ("persistent: [/var/../etc]", ".."),
            ("persistent: [/var/]", "trailing"),
            ("ephemeral: [/proc/x]", "API"),
            ("persistent: [/usr/local/bin]", "already persistent"),
            ("persistent: [/usr/lib]", "read-only image"),
            ("ephemeral: [/etc/ssh]", "always ephemeral"),
            ("persistent: [/oem/x]", "COS_OEM"),
            ("ephemeral: [/var]\npersistent: [/var]", "twice"),
            ("persistent: ['/a b']", "white space"),
            ("persistent: [/var/log, /var-log]", "both be kept"),
            ("ephemeral_size: lots", "tmpfs size"),
        ] {
            let err = format!("{:#}", Layout::parse(yaml).unwrap_err());
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn state_names_are_readable() {
        assert_eq!(
            state_name("/var/lib/immuboot-demo"),
            "var-lib-immuboot-demo"
        );
        assert_eq!(state_name("/root"), "root");
    }

    #[test]
    fn persistent_etc_subpaths_are_allowed() {
        Layout::parse("persistent: [/etc/ssh]").unwrap();
    }

    #[test]
    fn default_layout_is_valid() {
        Layout::default().validate().unwrap();
    }

    #[test]
    fn read_names_the_file() {
        let err = format!(
            "{:#}",
            read(Path::new("/nonexistent/layout.yaml")).unwrap_err()
        );
        assert!(err.contains("/nonexistent/layout.yaml"), "{err}");
    }
}
