//! A throw-away docker-registry and skopeo for the registry tests.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY: &str = "/usr/bin/docker-registry";
pub const SKOPEO: &str = "/usr/bin/skopeo";

/// Kills the registry when the test ends, however it ends.
pub struct Registry {
    child: Child,
    pub addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts docker-registry on a free 127.0.0.1 port, storing under `work`;
/// with `tls` (certificate, key) it serves HTTPS.
pub fn start_registry(work: &Path, tls: Option<(&Path, &Path)>) -> Registry {
    start_registry_with(work, tls, "")
}

/// [`start_registry`] with more configuration (YAML appended at the top
/// level, e.g. an `auth:` section).
pub fn start_registry_with(work: &Path, tls: Option<(&Path, &Path)>, extra: &str) -> Registry {
    // A free port: bind to 0, note it, release it for the registry.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = work.join("registry.yml");
    let mut yaml = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
        work.join("storage").display()
    );
    if let Some((cert, key)) = tls {
        yaml += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
    }
    yaml += extra;
    fs::write(&config, yaml).unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut registry = Registry { child, addr };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&registry.addr).is_err() {
        if let Ok(Some(status)) = registry.child.try_wait() {
            panic!(
                "docker-registry exited with {status} before listening on {}",
                registry.addr
            );
        }
        assert!(
            Instant::now() < deadline,
            "docker-registry did not listen on {}",
            registry.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    registry
}

pub fn skopeo(args: &[&str]) {
    let out = Command::new(SKOPEO)
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test when `tool` is missing: these are declared host
/// dependencies (xtask/src/host.rs), installed by `cargo xtask deps`.
pub fn need(tool: &str, package: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is not installed: install {package}, a host dependency (`cargo xtask deps`)"
    );
}
