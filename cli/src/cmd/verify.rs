//! `immuboot verify`: slot a, slot b and the recovery image hashed against
//! the digests recorded when each was written (`X.img.sha256`). A failed
//! image that is not running is recorded in the boot state (see
//! [`BootState::record_verify`]), so GRUB never falls back into it and
//! `immuboot status` names it before a fallback needs its bytes.

use super::Ctx;
use crate::progress::Reporter;
use anyhow::Result;
use immuboot_assess::integrity::{Image, Verdict};
use immuboot_assess::{digest, store, BootState, Mode, Slot, RECOVERY_IMAGE};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The exit code when an image is corrupted or unreadable (1 is any other
/// error, 2 a usage error).
pub const EXIT_CORRUPTED: i32 = 3;

/// One image's check.
struct Checked {
    image: Image,
    path: PathBuf,
    verdict: Verdict,
    bytes: u64,
    seconds: f64,
    /// The file and digest list as they were hashed, when they were.
    identity: Option<Identity>,
}

/// What an image file and its digest list were when hashed: an upgrade
/// that replaces them meanwhile (image renamed in, then its list written)
/// must not be recorded as corruption.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    list: String,
}

impl Identity {
    fn of(path: &Path, list: &Path) -> Option<Identity> {
        let m = std::fs::metadata(path).ok()?;
        Some(Identity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            list: std::fs::read_to_string(list).ok()?,
        })
    }
}

/// Hashes `path` against its digest list, reading the disk rather than the
/// page cache.
fn check(image: Image, path: &Path, rep: &mut Reporter) -> Checked {
    let start = Instant::now();
    let mut out = Checked {
        image,
        path: path.to_path_buf(),
        verdict: Verdict::Ok,
        bytes: 0,
        seconds: 0.0,
        identity: None,
    };
    out.verdict = (|| {
        let list = PathBuf::from(digest::image_digest_path(&path.display().to_string()));
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Verdict::Missing {
                    why: format!("{} does not exist", path.display()),
                }
            }
            Err(e) => {
                return Verdict::Unreadable {
                    error: format!("cannot open {}: {e}", path.display()),
                }
            }
        };
        let expected = match std::fs::read_to_string(&list) {
            Ok(text) => match digest::single(&text) {
                Ok(d) => d,
                Err(e) => {
                    return Verdict::NoDigest {
                        why: format!("{} is invalid: {e:#}", list.display()),
                    }
                }
            },
            Err(e) => {
                return Verdict::NoDigest {
                    why: format!("{}: {e}", list.display()),
                }
            }
        };
        out.identity = Identity::of(path, &list);
        let len = file.metadata().map(|m| m.len()).ok();
        // Cached pages may hold what was written, not what the disk holds now.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
        rep.step(&format!("checking {image}: {}", path.display()));
        rep.start(&image.to_string(), len);
        let mut reader = digest::HashingReader::new(&file);
        let mut buf = vec![0u8; digest::CHUNK];
        loop {
            match reader.next_chunk(&mut buf) {
                Ok(Some(_)) => rep.bytes(reader.len()),
                Ok(None) => break,
                Err(e) => {
                    out.bytes = reader.len();
                    rep.finish(reader.len());
                    return Verdict::Unreadable {
                        error: format!(
                            "reading {} failed after {} bytes: {e}",
                            path.display(),
                            reader.len()
                        ),
                    };
                }
            }
        }
        let (actual, bytes) = reader.finish();
        rep.finish(bytes);
        out.bytes = bytes;
        Verdict::of_digest(&expected, &actual)
    })();
    out.seconds = start.elapsed().as_secs_f64();
    out
}

/// Where the recovery image is: `--recovery-dir`, the running one in
/// recovery mode, else COS_RECOVERY mounted read-only where `upgrade
/// --recovery` mounts it.
fn recovery_image(ctx: &Ctx, recovery_dir: Option<&Path>) -> Result<PathBuf> {
    let rel = RECOVERY_IMAGE.trim_start_matches('/');
    if let Some(dir) = recovery_dir {
        return Ok(dir.join(rel));
    }
    if ctx.boot.mode()? == Some(Mode::Recovery) {
        return Ok(ctx.boot.recovery_image());
    }
    let at = ctx
        .boot
        .recovery_mount()
        .unwrap_or_else(|| super::upgrade::RECOVERY_WRITE_MOUNT.into());
    Ok(ctx
        .boot
        .mount_label(&ctx.boot.labels().recovery, &at)?
        .join(rel))
}

/// The outcome: whether an image failed.
pub fn run(ctx: &Ctx, json: bool, recovery_dir: Option<&Path>) -> Result<bool> {
    let mut rep = Reporter::new(json);
    let state_dir = ctx.state_dir.as_path();
    // Without boot facts no slot is known to run (a disk checked from
    // another system): every failed slot is marked.
    let booted = ctx.boot.facts().and_then(|f| f.booted_slot());
    let mut checked = Vec::new();
    for image in Image::ALL {
        let path = match image.slot() {
            Some(slot) => Ok(state_dir.join(slot.image_path().trim_start_matches('/'))),
            None => recovery_image(ctx, recovery_dir),
        };
        checked.push(match path {
            Ok(path) => check(image, &path, &mut rep),
            Err(e) => Checked {
                image,
                path: PathBuf::new(),
                verdict: Verdict::Missing {
                    why: format!("{e:#}"),
                },
                bytes: 0,
                seconds: 0.0,
                identity: None,
            },
        });
    }
    // The report comes first, whether or not the state can be written.
    let (recorded, not_recorded) = match record(state_dir, &checked, booted, &mut rep) {
        Ok(r) => (r, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let failed: Vec<String> = checked
        .iter()
        .filter(|c| c.verdict.is_failure())
        .map(|c| c.image.to_string())
        .collect();
    let mut human = String::new();
    for c in &checked {
        human += &format!(
            "{:<10}{} ({} MiB in {:.1} s)\n",
            format!("{}:", c.image),
            c.verdict,
            c.bytes >> 20,
            c.seconds
        );
    }
    for r in &recorded {
        human += &format!("recorded: {r}\n");
    }
    if let Some(e) = &not_recorded {
        human += &format!("NOT RECORDED in the boot state: {e}\n");
    }
    if booted.is_some_and(|s| failed.contains(&Image::from(s).to_string())) {
        human += "THE RUNNING SLOT IS CORRUPTED: it was not marked bad; reboot into the other \
                  slot (`immuboot next-boot passive`) and rewrite it with `immuboot upgrade`, \
                  or `immuboot mark-bad REASON`\n";
    }
    human += &match failed.as_slice() {
        [] => "no image differs from its recorded digest".to_string(),
        f => format!(
            "CORRUPTED: {}; a corrupted slot is rewritten by `immuboot upgrade`, the recovery \
             image by `immuboot upgrade --recovery`",
            f.join(", ")
        ),
    };
    rep.result(
        json!({
            "images": checked.iter().map(|c| {
                let mut v = serde_json::to_value(&c.verdict).unwrap_or_default();
                v["image"] = json!(c.image);
                v["path"] = json!(c.path);
                v["bytes"] = json!(c.bytes);
                v["seconds"] = json!((c.seconds * 100.0).round() / 100.0);
                v
            }).collect::<Vec<_>>(),
            "recorded": recorded,
            "not_recorded": not_recorded,
            "failed": failed,
        }),
        &human,
    );
    match not_recorded {
        // A corrupted image is the news (exit 3); the line above says the
        // rest.
        Some(e) if failed.is_empty() => {
            anyhow::bail!("the findings could not be recorded in the boot state: {e}")
        }
        _ => Ok(!failed.is_empty()),
    }
}

/// Records the verdicts in the boot state, in one transaction, when they
/// change anything; an image replaced since it was hashed is left out.
fn record(
    state_dir: &Path,
    checked: &[Checked],
    booted: Option<Slot>,
    rep: &mut Reporter,
) -> Result<Vec<String>> {
    let verdicts = |checked: &[&Checked]| -> Vec<(Image, Verdict)> {
        checked
            .iter()
            .map(|c| (c.image, c.verdict.clone()))
            .collect()
    };
    let all: Vec<&Checked> = checked.iter().collect();
    // Most weeks nothing changes: no write, COS_STATE stays read-only.
    let mut probe: BootState = store::load(state_dir).state;
    if probe.record_verify(&verdicts(&all), booted).is_empty() {
        return Ok(Vec::new());
    }
    let mut skipped = Vec::new();
    let changes = crate::boot::transaction(
        state_dir,
        || {},
        |loaded| {
            let still: Vec<&Checked> = checked
                .iter()
                .filter(|c| {
                    let list =
                        PathBuf::from(digest::image_digest_path(&c.path.display().to_string()));
                    let same = c.identity.is_none() || c.identity == Identity::of(&c.path, &list);
                    if !same {
                        skipped.push(c.image);
                    }
                    same
                })
                .collect();
            Ok(loaded.state.record_verify(&verdicts(&still), booted))
        },
    )?;
    for image in skipped {
        rep.step(&format!(
            "{image} was rewritten while it was checked (an upgrade?): its verdict is not recorded"
        ));
    }
    Ok(changes)
}
