//! The GPT disk image, assembled without mounting anything: file systems are
//! made from directories (mkfs.ext4 -d, mkfs.vfat + mcopy), the partition
//! table by sgdisk, and the partitions copied in at their offsets.

use crate::util::{run, Stamp};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

pub enum Content {
    /// FAT: (source file, destination path) pairs.
    Fat(Vec<(PathBuf, String)>),
    /// ext4 made from a directory.
    Ext4(PathBuf),
}

pub struct PartSpec {
    pub label: &'static str,
    /// sgdisk type code.
    pub type_code: &'static str,
    pub size_mib: u64,
    pub content: Content,
}

#[derive(Serialize)]
pub struct PartInfo {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Serialize)]
pub struct Manifest {
    pub disk: PathBuf,
    pub partitions: Vec<PartInfo>,
    #[serde(flatten)]
    pub about: About,
}

/// What the disk boots (disk.json, read by the QEMU harness).
#[derive(Serialize, Clone)]
pub struct About {
    /// Size of the compressed `/boot/initrd.img` in the images.
    pub initramfs_bytes: u64,
    /// Debian suite of the images.
    pub suite: String,
    /// Kind of initramfs: `standalone` or `dracut`.
    pub initramfs: String,
    /// `uname -r` of the images' kernel.
    pub kernel_release: String,
}

/// Size in MiB for a partition holding `bytes` of files: ext4 metadata and
/// journal need room too.
pub fn mib_for(bytes: u64, spare_mib: u64) -> u64 {
    bytes * 11 / 10 / MIB + spare_mib
}

fn make_fs(spec: &PartSpec, img: &Path) -> Result<()> {
    let _ = fs::remove_file(img);
    File::create(img)?.set_len(spec.size_mib * MIB)?;
    match &spec.content {
        Content::Fat(files) => {
            run(Command::new("mkfs.vfat")
                .args(["-F", "32", "-n", spec.label])
                .arg(img)
                .stdout(std::process::Stdio::null()))?;
            let mut dirs: Vec<String> = Vec::new();
            for (_, dest) in files {
                let mut cur = String::new();
                for part in dest
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                    .skip(1)
                    .rev()
                {
                    cur = format!("{cur}/{part}");
                    if !dirs.contains(&cur) {
                        run(Command::new("mmd")
                            .arg("-i")
                            .arg(img)
                            .arg(format!("::{cur}")))?;
                        dirs.push(cur.clone());
                    }
                }
            }
            for (src, dest) in files {
                run(Command::new("mcopy")
                    .arg("-i")
                    .arg(img)
                    .arg(src)
                    .arg(format!("::{dest}")))?;
            }
        }
        Content::Ext4(dir) => {
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", spec.label, "-E", "root_owner=0:0", "-d"])
                .arg(dir)
                .arg(img))?;
        }
    }
    Ok(())
}

/// Copies `src` into `dst` at `offset`, skipping all-zero blocks so the
/// disk file stays sparse.
fn place(src: &Path, dst: &mut File, offset: u64) -> Result<()> {
    let mut input = File::open(src)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..filled])?;
        }
        pos += filled as u64;
    }
    Ok(())
}

pub fn build(
    parts: &[PartSpec],
    work: &Path,
    disk: &Path,
    stamp: &Stamp,
    about: About,
) -> Result<Manifest> {
    fs::create_dir_all(work)?;
    let mut infos = Vec::new();
    let mut offset = MIB; // GPT header and table before the first partition
    for p in parts {
        infos.push(PartInfo {
            label: p.label.into(),
            offset,
            size: p.size_mib * MIB,
        });
        offset += p.size_mib * MIB;
    }
    let manifest = Manifest {
        disk: disk.to_path_buf(),
        partitions: infos,
        about,
    };
    if stamp.is_current(disk) {
        eprintln!("    disk up to date");
        return Ok(manifest);
    }
    let total = offset + MIB; // backup GPT
    let _ = fs::remove_file(disk);
    File::create(disk)?.set_len(total)?;
    let mut sgdisk = Command::new("sgdisk");
    sgdisk.arg("-o");
    for (i, (p, info)) in parts.iter().zip(&manifest.partitions).enumerate() {
        let n = i + 1;
        let first = info.offset / 512;
        let last = (info.offset + info.size) / 512 - 1;
        sgdisk
            .arg(format!("-n{n}:{first}:{last}"))
            .arg(format!("-t{n}:{}", p.type_code))
            .arg(format!("-c{n}:{}", p.label));
    }
    run(sgdisk.arg(disk).stdout(std::process::Stdio::null()))?;
    let mut out = fs::OpenOptions::new().write(true).open(disk)?;
    for (p, info) in parts.iter().zip(&manifest.partitions) {
        let img = work.join(format!("{}.img", p.label));
        make_fs(p, &img).with_context(|| format!("making {}", p.label))?;
        place(&img, &mut out, info.offset)?;
        fs::remove_file(&img)?;
    }
    out.sync_all()?;
    stamp.record(disk)?;
    Ok(manifest)
}
