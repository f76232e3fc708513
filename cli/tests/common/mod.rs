//! A state directory and boot facts made for one test, as the `immuboot`
//! tool would see them on a booted system.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str, booted_slot: Option<&str>) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("immuboot-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state/grub")).unwrap();
        std::fs::create_dir_all(dir.join("facts")).unwrap();
        let slot = booted_slot
            .map(|s| format!("\"{s}\""))
            .unwrap_or("null".into());
        let mode = if booted_slot.is_some() {
            "active"
        } else {
            "recovery"
        };
        std::fs::write(
            dir.join("facts/boot.json"),
            format!(r#"{{"mode":"{mode}","target":{{"mode":"{mode}","slot":{slot},"image":"/cOS/x.img"}}}}"#),
        )
        .unwrap();
        Sandbox { dir }
    }

    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_immuboot"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--facts-dir")
            .arg(self.dir.join("facts"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
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
