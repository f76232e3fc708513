//! `immuboot timeline`: where the boot's time went, on the kernel's clock
//! (0 = the kernel started): firmware and boot loader when the loader
//! recorded them (systemd-boot's `LoaderTime*USec` EFI variables; GRUB
//! records none), the kernel until the init, each step of the init (from
//! the boot facts), and systemd until the boot finished (systemd's own
//! timestamps). Printed as a table, as JSON, or drawn as an SVG chart with
//! one bar per row, like `systemd-analyze plot`.

use super::Ctx;
use anyhow::{Context, Result};
use immuboot_mount::facts::{BootFacts, InitramfsKind};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// One bar: a phase (depth 0) or a step inside one (depth 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    /// Seconds on the kernel's clock; negative before the kernel started.
    pub start_s: f64,
    pub duration_s: f64,
    pub depth: u8,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timeline {
    pub rows: Vec<Row>,
    /// What could not be placed, and why.
    pub notes: Vec<String>,
}

/// systemd's monotonic timestamps in microseconds (None: unset or unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SystemdTimes {
    pub finish_us: Option<u64>,
}

/// Reads `KEY=VALUE` lines of `systemctl show`; 0 means "not yet".
pub fn parse_systemctl_show(text: &str) -> SystemdTimes {
    let mut t = SystemdTimes::default();
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("FinishTimestampMonotonic=") {
            t.finish_us = v.parse().ok().filter(|&us| us > 0);
        }
    }
    t
}

/// The boot loader's own times (microseconds since the firmware started).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoaderTimes {
    /// When the boot loader started.
    pub init_us: Option<u64>,
    /// When it started the kernel.
    pub exec_us: Option<u64>,
}

/// An EFI variable from efivarfs holding a decimal number as a UTF-16LE
/// string (after the 4 bytes of attributes), as systemd-boot writes
/// `LoaderTimeInitUSec` and `LoaderTimeExecUSec`.
pub fn parse_efi_usec(bytes: &[u8]) -> Option<u64> {
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()?.trim().parse().ok()
}

const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

fn read_loader_times(efivars: &Path) -> LoaderTimes {
    let read = |name: &str| {
        std::fs::read(efivars.join(format!("{name}-{LOADER_VENDOR}")))
            .ok()
            .and_then(|b| parse_efi_usec(&b))
    };
    LoaderTimes {
        init_us: read("LoaderTimeInitUSec"),
        exec_us: read("LoaderTimeExecUSec"),
    }
}

/// The rows, from what the init, the loader and systemd recorded.
/// `systemd`: None when systemd could not be asked.
pub fn build(facts: &BootFacts, loader: LoaderTimes, systemd: Option<SystemdTimes>) -> Timeline {
    let mut t = Timeline::default();
    match (loader.init_us, loader.exec_us) {
        (Some(init), Some(exec)) if exec >= init => {
            let (init, exec) = (init as f64 / 1e6, exec as f64 / 1e6);
            t.rows.push(row("firmware", -exec, init, 0));
            t.rows.push(row("boot loader", init - exec, exec - init, 0));
        }
        _ => t.notes.push(
            "firmware and boot loader: not recorded (the boot loader set no \
             LoaderTimeInitUSec/LoaderTimeExecUSec EFI variables; GRUB sets none)"
                .into(),
        ),
    }
    let init_start = facts.uptime_start_s;
    t.rows.push(row("kernel", 0.0, init_start, 0));
    let initramfs = match facts.initramfs.kind {
        InitramfsKind::Standalone => "initramfs: immuboot init (PID 1)",
        InitramfsKind::Dracut => "initramfs: immuboot service in dracut's initrd",
    };
    let end = facts.uptime_switch_s.max(init_start);
    t.rows.push(row(initramfs, init_start, end - init_start, 0));
    // Facts from before steps had start times: laid end to end.
    let mut next = init_start;
    for s in &facts.steps {
        let start = if s.start_s > 0.0 { s.start_s } else { next };
        let duration = s.ms as f64 / 1000.0;
        t.rows.push(row(&s.name, start, duration, 1));
        next = start + duration;
    }
    if let Some(kib) = facts.peak_rss_kib {
        t.notes.push(format!(
            "the init's peak memory: {:.1} MiB (its VmHWM when it wrote the boot facts)",
            kib as f64 / 1024.0
        ));
    }
    match systemd.map(|s| s.finish_us) {
        None => t
            .notes
            .push("systemd: its times are unknown (`systemctl show` did not answer)".into()),
        Some(Some(us)) if us as f64 / 1e6 >= end => {
            t.rows.push(row(
                "systemd until the boot finished",
                end,
                us as f64 / 1e6 - end,
                0,
            ));
        }
        _ => t
            .notes
            .push("systemd: the boot has not finished yet (no FinishTimestamp)".into()),
    }
    t
}

fn row(name: &str, start_s: f64, duration_s: f64, depth: u8) -> Row {
    Row {
        name: name.into(),
        start_s,
        duration_s: duration_s.max(0.0),
        depth,
    }
}

/// The table `immuboot timeline` prints.
pub fn table(t: &Timeline) -> String {
    let width = t
        .rows
        .iter()
        .map(|r| r.name.chars().count() + 2 * r.depth as usize)
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:width$}  {:>9}  {:>9}\n", "", "start", "took");
    for r in &t.rows {
        let name = format!("{}{}", "  ".repeat(r.depth as usize), r.name);
        let _ = writeln!(
            out,
            "{name:width$}  {:>7.3} s  {:>7.3} s",
            r.start_s, r.duration_s
        );
    }
    for n in &t.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

const LABEL_WIDTH: f64 = 300.0;
const CHART_WIDTH: f64 = 700.0;
const ROW_HEIGHT: f64 = 22.0;
const TOP: f64 = 50.0;

/// The chart: one labelled bar per row on a time axis in seconds.
pub fn svg(t: &Timeline) -> String {
    let first = t.rows.iter().map(|r| r.start_s).fold(0.0, f64::min);
    let last = t
        .rows
        .iter()
        .map(|r| r.start_s + r.duration_s)
        .fold(first + 1.0, f64::max);
    let scale = CHART_WIDTH / (last - first);
    let x = |s: f64| LABEL_WIDTH + (s - first) * scale;
    let height = TOP + ROW_HEIGHT * t.rows.len() as f64 + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif" font-size="12">"#,
        w = LABEL_WIDTH + CHART_WIDTH + 20.0
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="14">immuboot timeline (kernel clock, seconds)</text>"#
    );
    // A tick every 1, 2, 5, 10, ... seconds: about ten on the axis.
    let step = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        .into_iter()
        .find(|s| (last - first) / s <= 12.0)
        .unwrap_or(200.0);
    let mut tick = (first / step).ceil() * step;
    while tick <= last {
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{y2}" stroke="#ddd"/><text x="{x:.1}" y="{ty}" text-anchor="middle" fill="#555">{tick}</text>"##,
            x = x(tick),
            y1 = TOP - 8.0,
            y2 = height - 20.0,
            ty = TOP - 12.0,
            tick = (tick * 10.0).round() / 10.0
        );
        tick += step;
    }
    for (i, r) in t.rows.iter().enumerate() {
        let y = TOP + ROW_HEIGHT * i as f64;
        let fill = if r.depth == 0 { "#4a7ebb" } else { "#f0a030" };
        let _ = writeln!(
            out,
            r#"<g class="row"><text x="{lx}" y="{ty:.1}">{name}</text><rect class="bar" x="{bx:.1}" y="{y:.1}" width="{bw:.1}" height="{bh}" fill="{fill}"><title>{name}: {d:.3} s</title></rect></g>"#,
            lx = 10.0 + 12.0 * r.depth as f64,
            ty = y + 14.0,
            name = xml_escape(&r.name),
            bx = x(r.start_s),
            bw = (r.duration_s * scale).max(1.0),
            bh = ROW_HEIGHT - 6.0,
            d = r.duration_s
        );
    }
    out.push_str("</svg>\n");
    out
}

pub fn run(ctx: &Ctx, json: bool, svg_file: Option<&Path>) -> Result<()> {
    let facts = ctx.boot.required()?;
    let systemd = std::process::Command::new("systemctl")
        .args(["show", "--property=FinishTimestampMonotonic"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_systemctl_show(&String::from_utf8_lossy(&o.stdout)));
    let t = build(
        facts,
        read_loader_times(Path::new("/sys/firmware/efi/efivars")),
        systemd,
    );
    if let Some(file) = svg_file {
        std::fs::write(file, svg(&t))
            .with_context(|| format!("cannot write {}", file.display()))?;
        errln!("wrote {} ({} bars)", file.display(), t.rows.len());
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&t)?);
    } else {
        outln!("{}", table(&t).trim_end());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use immuboot_mount::facts::StepTiming;

    fn facts() -> BootFacts {
        let mut f = BootFacts::new("0.1.0");
        f.uptime_start_s = 3.2;
        f.uptime_switch_s = 5.6;
        f.steps = vec![
            StepTiming {
                name: "find partitions".into(),
                ms: 1200,
                start_s: 3.3,
            },
            StepTiming {
                name: "mount 'layout' <&>".into(),
                ms: 200,
                start_s: 4.6,
            },
        ];
        f
    }

    #[test]
    fn reads_systemd_and_efi_times() {
        assert_eq!(
            parse_systemctl_show("FinishTimestampMonotonic=24500000\n").finish_us,
            Some(24_500_000)
        );
        assert_eq!(
            parse_systemctl_show("FinishTimestampMonotonic=0\n").finish_us,
            None
        );
        assert_eq!(parse_systemctl_show("").finish_us, None);
        let mut var = vec![7, 0, 0, 0];
        var.extend("4512345\0".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(parse_efi_usec(&var), Some(4_512_345));
        assert_eq!(parse_efi_usec(&[7, 0]), None);
        assert_eq!(parse_efi_usec(&[7, 0, 0, 0, b'x', 0]), None);
    }

    #[test]
    fn phases_and_steps_on_the_kernel_clock() {
        let loader = LoaderTimes {
            init_us: Some(4_000_000),
            exec_us: Some(7_000_000),
        };
        let systemd = SystemdTimes {
            finish_us: Some(24_000_000),
        };
        let mut f = facts();
        f.peak_rss_kib = Some(5 * 1024 + 512);
        let t = build(&f, loader, Some(systemd));
        assert!(
            t.notes
                .iter()
                .any(|n| n.starts_with("the init's peak memory: 5.5 MiB")),
            "{:?}",
            t.notes
        );
        let names: Vec<_> = t.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "firmware",
                "boot loader",
                "kernel",
                "initramfs: immuboot init (PID 1)",
                "find partitions",
                "mount 'layout' <&>",
                "systemd until the boot finished"
            ]
        );
        let firmware = &t.rows[0];
        assert_eq!((firmware.start_s, firmware.duration_s), (-7.0, 4.0));
        assert_eq!((t.rows[1].start_s, t.rows[1].duration_s), (-3.0, 3.0));
        assert_eq!(t.rows[5].start_s, 4.6);
        let systemd_row = t.rows.last().unwrap();
        assert!(
            (systemd_row.start_s - 5.6).abs() < 1e-9
                && (systemd_row.duration_s - 18.4).abs() < 1e-9
        );
        assert_eq!(t.notes.len(), 1, "only the memory note: {:?}", t.notes);
        let table = table(&t);
        assert!(table.contains("  find partitions"), "{table}");
        assert!(table.contains("  3.300 s    1.200 s"), "{table}");
    }

    #[test]
    fn what_is_missing_is_said_and_old_steps_are_laid_end_to_end() {
        let mut f = facts();
        for s in &mut f.steps {
            s.start_s = 0.0;
        }
        let t = build(&f, LoaderTimes::default(), Some(SystemdTimes::default()));
        assert_eq!(t.rows.len(), 4);
        assert_eq!(t.rows[2].start_s, 3.2);
        assert!((t.rows[3].start_s - 4.4).abs() < 1e-9);
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
        assert!(table(&t).contains("note: firmware and boot loader: not recorded"));
        assert!(t.notes[1].contains("not finished yet"), "{:?}", t.notes);
        let t = build(&f, LoaderTimes::default(), None);
        assert!(t.notes[1].contains("unknown"), "{:?}", t.notes);
    }

    #[test]
    fn the_chart_has_one_labelled_bar_per_row() {
        let t = build(
            &facts(),
            LoaderTimes::default(),
            Some(SystemdTimes {
                finish_us: Some(24_000_000),
            }),
        );
        let svg = svg(&t);
        assert_eq!(svg.matches(r#"<rect class="bar""#).count(), t.rows.len());
        assert!(
            svg.contains("mount &apos;layout&apos; &lt;&amp;&gt;"),
            "{svg}"
        );
        assert!(!svg.contains("<&>"));
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    }

    /// A real SVG renderer (rsvg-convert, package librsvg2-bin, a declared
    /// host dependency) draws the chart: a PNG of the chart's size.
    #[test]
    fn the_chart_renders_as_an_image() {
        let t = build(&facts(), LoaderTimes::default(), None);
        let dir = std::env::temp_dir().join(format!("immuboot-timeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (svg_file, png) = (dir.join("t.svg"), dir.join("t.png"));
        std::fs::write(&svg_file, svg(&t)).unwrap();
        let out = std::process::Command::new("rsvg-convert")
            .arg("-o")
            .arg(&png)
            .arg(&svg_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run rsvg-convert ({e}): install librsvg2-bin"));
        assert!(
            out.status.success(),
            "rsvg-convert failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&png).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!(width as f64, LABEL_WIDTH + CHART_WIDTH + 20.0);
        assert_eq!(height as f64, TOP + ROW_HEIGHT * t.rows.len() as f64 + 20.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
