//! A state directory and boot facts made for one test, as the `immuboot`
//! tool would see them on a booted system.
#![allow(dead_code)]

use immuboot_assess::{BootTarget, Mode, Slot};
use immuboot_mount::facts::BootFacts;
use std::path::PathBuf;
use std::process::Command;

pub struct Sandbox {
    pub dir: PathBuf,
    /// Environment variables of the commands run (a registries.conf).
    pub vars: Vec<(String, PathBuf)>,
}

impl Sandbox {
    pub fn new(name: &str, booted_slot: Option<&str>) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("immuboot-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state/grub")).unwrap();
        std::fs::create_dir_all(dir.join("facts")).unwrap();
        let sb = Sandbox {
            dir,
            vars: Vec::new(),
        };
        sb.write_facts(&Sandbox::facts(booted_slot));
        sb
    }

    /// Boot facts of a boot of `booted_slot` (None: the recovery image), as
    /// the init writes them.
    pub fn facts(booted_slot: Option<&str>) -> BootFacts {
        let slot: Option<Slot> = booted_slot.map(|s| s.parse().unwrap());
        let mode = if slot.is_some() {
            Mode::Active
        } else {
            Mode::Recovery
        };
        let mut facts = BootFacts::new("test");
        facts.mode = Some(mode);
        facts.target = Some(BootTarget {
            mode,
            slot,
            image: "/cOS/x.img".into(),
        });
        facts
    }

    pub fn write_facts(&self, facts: &BootFacts) {
        std::fs::write(self.dir.join("facts/boot.json"), facts.to_json().unwrap()).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let state = self.dir.join("state");
        self.run_with(
            &["--state-dir", state.to_str().unwrap()]
                .into_iter()
                .chain(args.iter().copied())
                .collect::<Vec<_>>(),
        )
    }

    /// Runs with these arguments and the facts directory only (the state
    /// directory as the facts record it).
    pub fn run_with(&self, args: &[&str]) -> (bool, String) {
        let (code, text) = self.run_code_with(args);
        (code == Some(0), text)
    }

    /// [`Sandbox::run`] with the exit code.
    pub fn run_code(&self, args: &[&str]) -> (Option<i32>, String) {
        let state = self.dir.join("state");
        self.run_code_with(
            &["--state-dir", state.to_str().unwrap()]
                .into_iter()
                .chain(args.iter().copied())
                .collect::<Vec<_>>(),
        )
    }

    fn run_code_with(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_immuboot"))
            .arg("--facts-dir")
            .arg(self.dir.join("facts"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "immuboot {args:?} failed:\n{text}");
        text
    }

    pub fn env(&self) -> PathBuf {
        self.dir.join("state/grub/grubenv")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
