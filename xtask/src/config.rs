//! The build matrix: which Debian suite the demo OS is made from and which
//! initramfs it boots with. The default configuration (bookworm, the
//! standalone immuboot initramfs) builds into `target/immuboot/`, the others
//! into `target/immuboot/<suite>-<initramfs>/`.

use crate::util::out_dir;
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    #[default]
    Bookworm,
    Trixie,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }
}

/// Which initramfs `/boot/initrd.img` in the images is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitramfsKind {
    /// The immuboot init and the modules it loads, nothing else
    /// (xtask/src/initramfs.rs).
    #[default]
    Standalone,
    /// The distribution's dracut, run in the image's root, with the
    /// immuboot dracut module (dracut-module/90immuboot).
    Dracut,
}

impl InitramfsKind {
    pub fn name(self) -> &'static str {
        match self {
            InitramfsKind::Standalone => "standalone",
            InitramfsKind::Dracut => "dracut",
        }
    }
}

/// One configuration of the build matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Debian suite of the demo OS.
    #[arg(long, value_enum, default_value_t)]
    pub suite: Suite,
    /// Initramfs of the images: the standalone immuboot initramfs, or the
    /// suite's dracut with the immuboot module.
    #[arg(long, value_enum, default_value_t)]
    pub initramfs: InitramfsKind,
}

/// What `cargo xtask test` builds besides the default configuration.
pub const EXTRA: &[Config] = &[
    Config {
        suite: Suite::Bookworm,
        initramfs: InitramfsKind::Dracut,
    },
    Config {
        suite: Suite::Trixie,
        initramfs: InitramfsKind::Standalone,
    },
    Config {
        suite: Suite::Trixie,
        initramfs: InitramfsKind::Dracut,
    },
];

impl Config {
    /// `<suite>-<initramfs>`, e.g. `trixie-dracut`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.suite.name(), self.initramfs.name())
    }

    pub fn is_default(&self) -> bool {
        *self == Config::default()
    }

    /// The configuration's directory below `target/immuboot` ("" for the
    /// default, which keeps the top directory).
    pub fn subdir(&self) -> String {
        if self.is_default() {
            String::new()
        } else {
            self.name()
        }
    }

    /// Where its disk, images and payload go.
    pub fn out_dir(&self) -> PathBuf {
        let base = out_dir();
        match self.subdir().as_str() {
            "" => base,
            sub => base.join(sub),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap()
            .config
    }

    #[test]
    fn names_and_directories() {
        let d = Config::default();
        assert_eq!(d.name(), "bookworm-standalone");
        assert!(d.is_default());
        assert_eq!(d.subdir(), "");
        assert_eq!(d.out_dir(), out_dir());
        let t = parse(&["--suite", "trixie", "--initramfs", "dracut"]);
        assert_eq!(t.name(), "trixie-dracut");
        assert_eq!(t.out_dir(), out_dir().join("trixie-dracut"));
        let names: Vec<String> = EXTRA.iter().map(Config::name).collect();
        assert_eq!(
            names,
            ["bookworm-dracut", "trixie-standalone", "trixie-dracut"]
        );
        assert!(EXTRA.iter().all(|c| !c.is_default()));
    }

    #[test]
    fn command_line() {
        assert_eq!(parse(&[]), Config::default());
        assert_eq!(parse(&["--suite", "trixie"]).name(), "trixie-standalone");
        assert_eq!(parse(&["--initramfs", "dracut"]).name(), "bookworm-dracut");
        assert!(Cli::try_parse_from(["x", "--suite", "sid"]).is_err());
        assert!(Cli::try_parse_from(["x", "--initramfs", "mkinitcpio"]).is_err());
    }
}
