//! Registry credentials from the files `podman login`, `skopeo login` and
//! `docker login` write (containers-auth.json(5); docker's `config.json`
//! has the same `auths` section).
//!
//! Where they are looked for, first match wins:
//! 1. `$REGISTRY_AUTH_FILE`, when set: only that file (as podman and
//!    skopeo do);
//! 2. `/oem/immuboot/auth.json`: per machine, on COS_OEM, kept across
//!    upgrades (what an operator provisions);
//! 3. `/etc/immuboot/auth.json`: shipped in the image;
//! 4. `/run/containers/0/auth.json`: where `podman login` / `skopeo login`
//!    as root put credentials (`$XDG_RUNTIME_DIR/containers/auth.json`
//!    when that is set);
//! 5. `$HOME/.docker/config.json`: `docker login`.
//!
//! An entry is `"KEY": {"auth": BASE64("user:password")}`; KEY is a
//! registry (`registry.example.com:5000`), optionally with a namespace or
//! repository (`registry.example.com/fleet`; the longest match wins), and
//! docker's forms with a scheme or `/v1/` are accepted. Credential helpers
//! (`credHelpers`, `credsStore`) and identity tokens are not supported.
//! Secrets never appear in messages or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <hidden> }}",
            self.username
        )
    }
}

/// Credentials found for a registry, and the file they came from (for
/// messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub credentials: Credentials,
    pub file: PathBuf,
    pub key: String,
}

/// The files searched, in order (see the module documentation).
pub fn standard_files() -> Vec<PathBuf> {
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        return vec![PathBuf::from(file)];
    }
    let mut files = vec![
        PathBuf::from("/oem/immuboot/auth.json"),
        PathBuf::from("/etc/immuboot/auth.json"),
    ];
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => files.push(Path::new(&dir).join("containers/auth.json")),
        None => files.push(PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            rustix::process::getuid().as_raw()
        ))),
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files
}

/// `https://index.docker.io/v1/` → `docker.io`; `reg:5000/ns/` → `reg:5000/ns`.
fn normalize_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let mut key = key.trim_end_matches('/');
    for suffix in ["/v1", "/v2"] {
        if let Some(k) = key.strip_suffix(suffix) {
            key = k;
        }
    }
    let (host, rest) = match key.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    match rest {
        Some(r) => format!("{host}/{r}"),
        None => host.to_owned(),
    }
}

/// Finds the credentials for `registry` (host and port) and `repository`
/// in the text of one auth file. `Ok(None)`: the file has no entry for it.
pub fn lookup(
    text: &str,
    shown: &str,
    registry: &str,
    repository: &str,
) -> Result<Option<(Credentials, String)>> {
    let doc: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("{shown} is not valid JSON"))?;
    let Some(auths) = doc.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| anyhow!("{shown}: \"auths\" is not an object"))?;
    let wanted = normalize_key(&format!("{registry}/{repository}"));
    // The longest key that is the registry or a path prefix of the repository.
    let best = auths
        .iter()
        .filter(|(key, _)| {
            let key = normalize_key(key);
            wanted == key || wanted.starts_with(&format!("{key}/"))
        })
        .max_by_key(|(key, _)| normalize_key(key).len());
    let Some((key, entry)) = best else {
        return Ok(None);
    };
    let encoded = entry.get("auth").and_then(|a| a.as_str()).ok_or_else(|| {
        anyhow!(
            "{shown}: the entry {key:?} has no \"auth\" (credential helpers and identity tokens \
             are not supported; `podman login --authfile {shown}` writes a usable entry)"
        )
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            anyhow!("{shown}: the \"auth\" of {key:?} is not base64 of user:password")
        })?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        anyhow!("{shown}: the \"auth\" of {key:?} is not base64 of user:password")
    })?;
    Ok(Some((
        Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        },
        key.clone(),
    )))
}

/// The credentials for `registry`/`repository` from the first of `files`
/// that has an entry; files that do not exist are skipped.
pub fn find(files: &[PathBuf], registry: &str, repository: &str) -> Result<Option<Found>> {
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let shown = file.display().to_string();
        if let Some((credentials, key)) = lookup(&text, &shown, registry, repository)? {
            return Ok(Some(Found {
                credentials,
                file: file.clone(),
                key,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_longest_matching_key_wins_and_docker_forms_are_understood() {
        let text = format!(
            r#"{{"auths": {{
                "reg.example:5000": {{"auth": "{}"}},
                "reg.example:5000/fleet": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "other.example": {{"identitytoken": "x"}}
            }}}}"#,
            b64("any:one"),
            b64("fleet:pa:ss"),
            b64("hub:hubpw")
        );
        let get = |registry: &str, repo: &str| {
            lookup(&text, "auth.json", registry, repo)
                .unwrap()
                .map(|(c, _)| (c.username, c.password))
        };
        assert_eq!(
            get("reg.example:5000", "fleet/os"),
            Some(("fleet".into(), "pa:ss".into()))
        );
        assert_eq!(
            get("reg.example:5000", "other/os"),
            Some(("any".into(), "one".into()))
        );
        // A prefix of a path component is not a match.
        assert_eq!(
            get("reg.example:5000", "fleetwood/os"),
            Some(("any".into(), "one".into()))
        );
        assert_eq!(
            get("index.docker.io", "library/debian"),
            Some(("hub".into(), "hubpw".into()))
        );
        assert_eq!(get("reg.example:5001", "fleet/os"), None);
        let err = format!(
            "{:#}",
            lookup(&text, "auth.json", "other.example", "x").unwrap_err()
        );
        assert!(err.contains("identity tokens are not supported"), "{err}");
    }

    #[test]
    fn bad_entries_are_named_without_their_secrets() {
        let text = r#"{"auths": {"reg": {"auth": "bm9jb2xvbg=="}}}"#; // "nocolon"
        let err = format!(
            "{:#}",
            lookup(text, "/oem/immuboot/auth.json", "reg", "r").unwrap_err()
        );
        assert!(
            err.contains("/oem/immuboot/auth.json") && err.contains("\"reg\""),
            "{err}"
        );
        assert!(
            !err.contains("nocolon") && !err.contains("bm9jb2xvbg"),
            "{err}"
        );
        assert!(lookup("{", "f", "reg", "r").is_err());
        assert_eq!(lookup("{}", "f", "reg", "r").unwrap(), None);
        let c = Credentials {
            username: "u".into(),
            password: "topsecret".into(),
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[test]
    fn the_first_file_with_an_entry_wins_and_missing_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        let second = dir.path().join("second.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths": {{"a.example": {{"auth": "{}"}}}}}}"#,
                b64("a:1")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths": {{"b.example": {{"auth": "{}"}}}}}}"#,
                b64("b:2")
            ),
        )
        .unwrap();
        let files = vec![
            dir.path().join("missing.json"),
            first.clone(),
            second.clone(),
        ];
        let found = find(&files, "b.example", "os").unwrap().unwrap();
        assert_eq!(found.file, second);
        assert_eq!(found.credentials.username, "b");
        assert_eq!(
            find(&files, "a.example", "os").unwrap().unwrap().file,
            first
        );
        assert_eq!(find(&files, "c.example", "os").unwrap(), None);
    }
}
