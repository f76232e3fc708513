//! Where registry images are pulled from: mirrors, other locations,
//! plain-HTTP registries and blocked ones, from `registries.conf`, the file
//! podman, skopeo and buildah read (containers-registries.conf(5), version
//! 2, TOML). immuboot reads the subset an OS update needs.
//!
//! Which file ([`standard_files`]; the first that exists is read, files are
//! not merged):
//! 1. `$CONTAINERS_REGISTRIES_CONF`, when set: only that file, and it must
//!    exist (as podman and skopeo take it);
//! 2. `/oem/immuboot/registries.conf`: per machine, on COS_OEM;
//! 3. `/etc/immuboot/registries.conf`: shipped in the image;
//! 4. `/etc/containers/registries.conf`: the host's containers tools.
//!
//! `registries.conf.d/` drop-ins are not read.
//!
//! What is understood:
//! - `[[registry]]` tables: `prefix` (`HOST[:PORT]`, `HOST[:PORT]/PATH`, or
//!   `*.DOMAIN` for every subdomain), `location` (where images under the
//!   prefix really are; default, or `""`: the prefix, for a wildcard the
//!   reference's own host), `insecure` (plain HTTP to the
//!   location), `blocked` (refuse every pull under the prefix, mirrors
//!   included), `mirror-by-digest-only` (mirrors only for references by
//!   digest);
//! - `[[registry.mirror]]` tables: `location`, `insecure`,
//!   `pull-from-mirror` (`all`, the default; `digest-only`; `tag-only`).
//!
//! The entry whose prefix covers the most of a reference wins (an exact
//! prefix over a wildcard covering as much, a longer wildcard over a shorter
//! one). A prefix matches a reference `NAME[:TAG][@DIGEST]` when NAME is the
//! prefix or continues it with `/`: `example.com` does not match
//! `example.com:5000/os`. A pull tries the entry's mirrors in order, then its
//! location; the part of NAME the prefix matched is replaced by the
//! mirror's or location's own.
//!
//! Everything else at the top level (`unqualified-search-registries`,
//! `[aliases]`, `short-name-mode`, `credential-helpers`, …) is about short
//! names or other tools and is ignored. An unknown key inside a
//! `[[registry]]` or `[[registry.mirror]]` table is reported as a warning:
//! a misspelt `insecure` or `blocked` would otherwise change silently where
//! images come from. Version 1's `[registries.search]` is ignored with a
//! warning (immuboot never searches short names); `[registries.insecure]`
//! and `[registries.block]` are refused, since ignoring them would drop a
//! rule.
//!
//! Differences from containers: `insecure = true` means plain HTTP to that
//! location (never a TLS certificate left unchecked); a prefix naming a tag
//! or digest is refused.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The environment variable podman and skopeo read for the file's path.
pub const ENV: &str = "CONTAINERS_REGISTRIES_CONF";

/// The files looked at, in order (see the module documentation).
pub fn standard_files() -> Vec<PathBuf> {
    if let Some(file) = std::env::var_os(ENV).filter(|f| !f.is_empty()) {
        return vec![PathBuf::from(file)];
    }
    [
        "/oem/immuboot/registries.conf",
        "/etc/immuboot/registries.conf",
        "/etc/containers/registries.conf",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

/// Reads and parses the first of `files` that exists; `Ok(None)` when none
/// does. `required`: the first file must exist (the file named by
/// [`ENV`]), a missing one is an error rather than "no configuration".
pub fn load(files: &[PathBuf], required: bool) -> Result<Option<RegistriesConf>> {
    for (i, file) in files.iter().enumerate() {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !(required && i == 0) => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read the registries configuration {}{}",
                        file.display(),
                        if required && i == 0 {
                            format!(" (named by ${ENV}; unset it to use the standard files)")
                        } else {
                            String::new()
                        }
                    )
                })
            }
        };
        return parse(&text, &file.display().to_string()).map(Some);
    }
    Ok(None)
}

/// [`load`] of [`standard_files`], the file named by [`ENV`] required.
pub fn load_standard() -> Result<Option<RegistriesConf>> {
    let required = std::env::var_os(ENV).is_some_and(|f| !f.is_empty());
    load(&standard_files(), required)
}

/// A parsed registries.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistriesConf {
    /// The file, as messages name it.
    pub file: String,
    /// The `[[registry]]` entries, in file order.
    pub registries: Vec<Registry>,
    /// What was ignored and should be looked at: unknown keys in the
    /// tables immuboot reads, a version 1 search list. One line each,
    /// naming the file, line and column.
    pub warnings: Vec<String>,
}

/// One `[[registry]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub prefix: Prefix,
    /// Where images under the prefix are pulled from; `None` for a
    /// wildcard prefix (the reference's own host).
    pub location: Option<String>,
    /// Plain HTTP to the location.
    pub insecure: bool,
    /// Every pull under the prefix is refused.
    pub blocked: bool,
    pub mirrors: Vec<Mirror>,
    /// Line of the table in the file (of its prefix, else its location).
    pub line: usize,
}

/// One `[[registry.mirror]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub location: String,
    /// Plain HTTP to this mirror.
    pub insecure: bool,
    pub pull_from_mirror: PullFromMirror,
}

/// Which references a mirror is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullFromMirror {
    /// References by tag and by digest.
    #[default]
    All,
    /// Only references by digest: a mirror is not trusted to say which
    /// image a tag names.
    DigestOnly,
    /// Only references by tag.
    TagOnly,
}

impl PullFromMirror {
    fn as_str(self) -> &'static str {
        match self {
            PullFromMirror::All => "all",
            PullFromMirror::DigestOnly => "digest-only",
            PullFromMirror::TagOnly => "tag-only",
        }
    }
}

/// A `[[registry]]` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefix {
    /// `HOST[:PORT]` or `HOST[:PORT]/PATH`.
    Exact(String),
    /// `*.DOMAIN`, kept as `.DOMAIN`: any host below DOMAIN, any port.
    Subdomains(String),
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::Exact(p) => f.write_str(p),
            Prefix::Subdomains(d) => write!(f, "*{d}"),
        }
    }
}

impl Prefix {
    /// How many bytes of `name` (`REGISTRY/REPOSITORY`) the prefix covers,
    /// if it matches: an exact prefix when `name` is it or continues it
    /// with `/`, a wildcard on the registry host (its port aside) when the
    /// host ends in `.DOMAIN` below it.
    pub fn matched_len(&self, name: &str) -> Option<usize> {
        match self {
            Prefix::Exact(p) => {
                let rest = name.strip_prefix(p.as_str())?;
                (rest.is_empty() || rest.starts_with('/')).then_some(p.len())
            }
            Prefix::Subdomains(domain) => {
                let host = name.split('/').next().unwrap_or(name);
                let hostname = host.split(':').next().unwrap_or(host);
                (hostname.len() > domain.len() && hostname.ends_with(domain.as_str()))
                    .then_some(host.len())
            }
        }
    }
}

/// An image reference as registries.conf matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// `REGISTRY/REPOSITORY`, the registry explicit (`docker.io/library/debian`).
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    /// Splits a fully qualified reference `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    pub fn split(reference: &str) -> ImageName {
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        ImageName {
            name: name.to_owned(),
            tag,
            digest,
        }
    }

    /// The tag and digest as they follow the name (`:TAG`, `@DIGEST`).
    fn suffix(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.tag {
            s += &format!(":{t}");
        }
        if let Some(d) = &self.digest {
            s += &format!("@{d}");
        }
        s
    }

    fn by_digest(&self) -> bool {
        self.digest.is_some()
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.suffix())
    }
}

/// What a place to pull from is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A `[[registry.mirror]]` of the matching entry.
    Mirror,
    /// The matching entry's `location` (its prefix when it has none).
    Location,
    /// The registry the reference names: no entry matched.
    Direct,
}

/// One place to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSource {
    /// The reference to pull there, `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    pub reference: String,
    /// Plain HTTP to its registry is configured (`insecure = true`).
    pub insecure: bool,
    pub via: Via,
}

/// Where a pull of one reference goes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPlan {
    /// The matching entry: its prefix and line.
    pub entry: Option<(String, usize)>,
    pub sources: Vec<PullSource>,
    /// Mirrors of the entry not used for this reference, and why.
    pub skipped: Vec<String>,
}

impl PullPlan {
    /// The reference itself, as without any registries.conf.
    pub fn direct(image: &ImageName) -> PullPlan {
        PullPlan {
            entry: None,
            sources: vec![PullSource {
                reference: image.to_string(),
                insecure: false,
                via: Via::Direct,
            }],
            skipped: Vec::new(),
        }
    }
}

impl RegistriesConf {
    /// The entry for `name` (`REGISTRY/REPOSITORY`): the one whose prefix
    /// covers most of it.
    pub fn find(&self, name: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .filter_map(|r| {
                let len = r.prefix.matched_len(name)?;
                let (exact, specific) = match &r.prefix {
                    Prefix::Exact(p) => (true, p.len()),
                    Prefix::Subdomains(d) => (false, d.len()),
                };
                Some(((len, exact, specific), r))
            })
            .max_by_key(|(key, _)| *key)
            .map(|(_, r)| r)
    }

    /// Where to pull `image` from: the matching entry's mirrors allowed for
    /// this kind of reference, then its location. Refused when the entry is
    /// blocked.
    pub fn plan(&self, image: &ImageName) -> Result<PullPlan> {
        let Some(entry) = self.find(&image.name) else {
            return Ok(PullPlan::direct(image));
        };
        if entry.blocked {
            bail!(
                "pulling {image} is blocked by the [[registry]] with prefix \"{}\" in {} (line {}, \
                 blocked = true); hint: pull the image from another registry, or remove that \
                 entry if the block is no longer wanted",
                entry.prefix,
                self.file,
                entry.line
            );
        }
        let matched = entry
            .prefix
            .matched_len(&image.name)
            .expect("find returns a matching entry");
        let rest = &image.name[matched..];
        let pull_ref = |location: &str| format!("{location}{rest}{}", image.suffix());
        let mut sources = Vec::new();
        let mut skipped = Vec::new();
        for mirror in &entry.mirrors {
            let allowed = match mirror.pull_from_mirror {
                PullFromMirror::All => true,
                PullFromMirror::DigestOnly => image.by_digest(),
                PullFromMirror::TagOnly => !image.by_digest(),
            };
            if allowed {
                sources.push(PullSource {
                    reference: pull_ref(&mirror.location),
                    insecure: mirror.insecure,
                    via: Via::Mirror,
                });
            } else {
                skipped.push(format!(
                    "mirror {} is not used for {image}: pull-from-mirror = \"{}\" and it names {}",
                    mirror.location,
                    mirror.pull_from_mirror.as_str(),
                    if image.by_digest() {
                        "a digest"
                    } else {
                        "a tag"
                    }
                ));
            }
        }
        let location = match &entry.location {
            Some(l) => l.clone(),
            None => image.name[..matched].to_owned(),
        };
        sources.push(PullSource {
            reference: pull_ref(&location),
            insecure: entry.insecure,
            via: Via::Location,
        });
        Ok(PullPlan {
            entry: Some((entry.prefix.to_string(), entry.line)),
            sources,
            skipped,
        })
    }
}

// The file as serde reads it. Unknown keys are found by `unknown_keys`
// before, so serde's default (ignore them) is right here.
#[derive(Deserialize)]
struct FileTables {
    #[serde(default)]
    registry: Vec<RegistryTable>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RegistryTable {
    prefix: Option<Spanned<String>>,
    location: Option<Spanned<String>>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    mirror_by_digest_only: Option<Spanned<bool>>,
    #[serde(default)]
    mirror: Vec<MirrorTable>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable {
    location: Option<Spanned<String>>,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<Spanned<PullFromMirror>>,
}

const REGISTRY_KEYS: &[&str] = &[
    "prefix",
    "location",
    "insecure",
    "blocked",
    "mirror-by-digest-only",
    "mirror",
];
const MIRROR_KEYS: &[&str] = &["location", "insecure", "pull-from-mirror"];

/// Names places in the file: `FILE:LINE:COLUMN` of a byte span.
struct Locator<'a> {
    text: &'a str,
    shown: &'a str,
}

impl Locator<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before, |i| &before[i + 1..])
            .chars()
            .count()
            + 1;
        (line, column)
    }

    fn at(&self, span: Range<usize>) -> String {
        let (line, column) = self.line_col(span.start);
        format!("{}:{line}:{column}", self.shown)
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    /// A TOML syntax or type error, placed.
    fn toml_error(&self, e: &toml::de::Error) -> anyhow::Error {
        let place = e
            .span()
            .map_or_else(|| self.shown.to_owned(), |s| self.at(s));
        anyhow!(
            "{place}: {}; hint: the file is TOML, containers-registries.conf(5) version 2 \
             ([[registry]] tables)",
            e.message().trim_end()
        )
    }
}

/// Parses the text of a registries.conf; `shown` names the file in
/// messages.
pub fn parse(text: &str, shown: &str) -> Result<RegistriesConf> {
    let loc = Locator { text, shown };
    let root = DeTable::parse(text).map_err(|e| loc.toml_error(&e))?;

    let mut warnings = Vec::new();
    for (key, value) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "registry" => unknown_keys(value, &loc, &mut warnings),
            "registries" => version_1(value, &loc, &mut warnings)?,
            _ => {}
        }
    }

    let tables = FileTables::deserialize(toml::de::Deserializer::from(root))
        .map_err(|e| loc.toml_error(&e))?;
    let mut registries: Vec<Registry> = Vec::new();
    for table in tables.registry {
        let registry = entry(table, &loc)?;
        if let Some(earlier) = registries.iter().find(|r| r.prefix == registry.prefix) {
            bail!(
                "{shown}: the prefix \"{}\" has two [[registry]] tables (lines {} and {}): which \
                 one applies would be a guess; hint: merge them into one",
                registry.prefix,
                earlier.line,
                registry.line
            );
        }
        registries.push(registry);
    }
    Ok(RegistriesConf {
        file: shown.to_owned(),
        registries,
        warnings,
    })
}

/// The tables of an array of tables (`[[registry]]`, `[[registry.mirror]]`).
/// Anything else is left to the typed parse, which names the wrong type.
fn tables_in<'a, 'i>(value: &'a Spanned<DeValue<'i>>) -> Vec<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Warns about the keys of `[[registry]]` and `[[registry.mirror]]` tables
/// that are not read.
fn unknown_keys(registries: &Spanned<DeValue<'_>>, loc: &Locator, warnings: &mut Vec<String>) {
    let mut check = |table: &DeTable<'_>, what: &str, known: &[&str]| {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if !known.contains(&name) {
                warnings.push(format!(
                    "{}: unknown key \"{name}\" in a {what} table is ignored (understood: {})",
                    loc.at(key.span()),
                    known.join(", ")
                ));
            }
        }
    };
    for registry in tables_in(registries) {
        check(registry, "[[registry]]", REGISTRY_KEYS);
        for (key, value) in registry.iter() {
            if key.get_ref().as_ref() == "mirror" {
                for mirror in tables_in(value) {
                    check(mirror, "[[registry.mirror]]", MIRROR_KEYS);
                }
            }
        }
    }
}

/// Version 1's `[registries.*]` tables: a search list is ignored with a
/// warning, anything that allows or blocks registries is refused.
fn version_1(
    value: &Spanned<DeValue<'_>>,
    loc: &Locator,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let DeValue::Table(tables) = value.get_ref() else {
        bail!(
            "{}: \"registries\" is not a table; hint: immuboot reads version 2 of \
             containers-registries.conf(5), [[registry]] tables",
            loc.at(value.span())
        );
    };
    for (key, _) in tables.iter() {
        match key.get_ref().as_ref() {
            "search" => warnings.push(format!(
                "{}: [registries.search] (version 1) is ignored: immuboot never searches short \
                 names",
                loc.at(key.span())
            )),
            other => bail!(
                "{}: [registries.{other}] is version 1 of containers-registries.conf(5), which \
                 immuboot does not read (ignoring it would drop the rule); hint: write a \
                 [[registry]] table per registry with {} instead",
                loc.at(key.span()),
                match other {
                    "insecure" => "insecure = true",
                    "block" => "blocked = true",
                    _ => "prefix, location, insecure and blocked",
                }
            ),
        }
    }
    Ok(())
}

/// Checks one `[[registry]]` table and its mirrors.
fn entry(mut table: RegistryTable, loc: &Locator) -> Result<Registry> {
    // `location = ""` is how containers' examples leave a wildcard's
    // location unset.
    table.location = table.location.filter(|l| !l.get_ref().is_empty());
    let Some(first) = table.prefix.as_ref().or(table.location.as_ref()) else {
        bail!(
            "{}: a [[registry]] table has neither a prefix nor a location; hint: add prefix = \
             \"HOST\" (the registry the images are named after)",
            loc.shown
        );
    };
    let line = loc.line(first.span());
    let wildcard = table
        .prefix
        .as_ref()
        .and_then(|p| Some((p, p.get_ref().strip_prefix('*')?)));
    let prefix = if let Some((p, domain)) = wildcard {
        if !domain.starts_with('.')
            || domain.len() < 2
            || domain[1..].contains(['*', '/', ':', '@'])
            || domain.ends_with('.')
        {
            bail!(
                "{}: prefix \"{}\": a wildcard is \"*.DOMAIN\", without port or path",
                loc.at(p.span()),
                p.get_ref()
            );
        }
        if let Some(location) = &table.location {
            bail!(
                "{}: a [[registry]] with the wildcard prefix \"{}\" cannot have a location: \
                 each host below it is its own; hint: use mirrors, or one entry per host",
                loc.at(location.span()),
                p.get_ref()
            );
        }
        Prefix::Subdomains(domain.to_owned())
    } else {
        // Without a prefix, the location is the prefix (as containers reads it).
        let what = if table.prefix.is_some() {
            "prefix"
        } else {
            "location"
        };
        Prefix::Exact(repository_name(first, what, loc)?)
    };
    let location = match (&prefix, &table.location) {
        (Prefix::Subdomains(_), _) => None,
        (_, Some(l)) => Some(repository_name(l, "location", loc)?),
        (Prefix::Exact(p), None) => Some(p.clone()),
    };
    let digest_only = table.mirror_by_digest_only.as_ref().map(|d| *d.get_ref());
    let mut mirrors = Vec::new();
    for m in table.mirror {
        let Some(location) = &m.location else {
            bail!(
                "{}: a [[registry.mirror]] of prefix \"{prefix}\" has no location",
                loc.at(first.span())
            );
        };
        let pull_from_mirror = match (&m.pull_from_mirror, digest_only) {
            (Some(p), Some(true)) if *p.get_ref() != PullFromMirror::DigestOnly => bail!(
                "{}: pull-from-mirror = \"{}\" contradicts mirror-by-digest-only = true of its \
                 [[registry]]; hint: keep one of them",
                loc.at(p.span()),
                p.get_ref().as_str()
            ),
            (Some(p), _) => *p.get_ref(),
            (None, Some(true)) => PullFromMirror::DigestOnly,
            (None, _) => PullFromMirror::All,
        };
        mirrors.push(Mirror {
            location: repository_name(location, "mirror location", loc)?,
            insecure: m.insecure,
            pull_from_mirror,
        });
    }
    Ok(Registry {
        prefix,
        location,
        insecure: table.insecure,
        blocked: table.blocked,
        mirrors,
        line,
    })
}

/// Checks a prefix or location `HOST[:PORT][/PATH]`: its first component
/// must be a registry host (with a `.` or a port, or `localhost`, as
/// references name hosts), without scheme, tag or digest.
fn repository_name(value: &Spanned<String>, what: &str, loc: &Locator) -> Result<String> {
    let name = value.get_ref().trim_end_matches('/');
    let refuse = |why: &str| {
        anyhow!(
            "{}: {what} \"{}\" {why}; hint: write HOST[:PORT] or HOST[:PORT]/PATH, e.g. \
             \"registry.example.com:5000/fleet\"",
            loc.at(value.span()),
            value.get_ref()
        )
    };
    if name.contains("://") {
        return Err(refuse("has a scheme (plain HTTP is insecure = true)"));
    }
    if name.contains('@') {
        return Err(refuse("names a digest"));
    }
    let (host, path) = name.split_once('/').unwrap_or((name, ""));
    if path.contains(':') {
        return Err(refuse("names a tag"));
    }
    if host.is_empty() || path.split('/').any(|c| c.is_empty()) && !path.is_empty() {
        return Err(refuse("has an empty component"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '*')
    {
        return Err(refuse("has a character no registry name has"));
    }
    let (hostname, port) = match host.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(refuse("has a port that is not a number"));
    }
    if !(hostname.contains('.') || port.is_some() || hostname == "localhost") {
        return Err(refuse(
            "does not start with a registry host (a name with a dot or a port, or localhost): \
             a reference would read it as a Docker Hub repository",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests;
