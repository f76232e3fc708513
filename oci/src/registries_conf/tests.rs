use super::*;

fn conf(text: &str) -> RegistriesConf {
    parse(text, "registries.conf").unwrap_or_else(|e| panic!("{e:#}"))
}

fn error(text: &str) -> String {
    format!(
        "{:#}",
        parse(text, "/oem/immuboot/registries.conf").unwrap_err()
    )
}

/// The references a pull of `reference` would try, in order, with
/// `insecure` marked.
fn tries(conf: &RegistriesConf, reference: &str) -> Vec<String> {
    conf.plan(&ImageName::split(reference))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .sources
        .into_iter()
        .map(|s| {
            let via = match s.via {
                Via::Mirror => "mirror ",
                Via::Location => "",
                Via::Direct => "direct ",
            };
            format!(
                "{via}{}{}",
                s.reference,
                if s.insecure { " (http)" } else { "" }
            )
        })
        .collect()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn references_split_into_name_tag_and_digest() {
    assert_eq!(
        ImageName::split("reg.example:5000/fleet/os:stable"),
        ImageName {
            name: "reg.example:5000/fleet/os".into(),
            tag: Some("stable".into()),
            digest: None
        }
    );
    let by_digest = ImageName::split(&format!("reg.example:5000/os@{DIGEST}"));
    assert_eq!(by_digest.name, "reg.example:5000/os");
    assert_eq!(
        (by_digest.tag, by_digest.digest.as_deref()),
        (None, Some(DIGEST))
    );
    let both = ImageName::split(&format!("reg.example/os:v1@{DIGEST}"));
    assert_eq!(
        (both.name.as_str(), both.tag.as_deref()),
        ("reg.example/os", Some("v1"))
    );
    assert_eq!(both.to_string(), format!("reg.example/os:v1@{DIGEST}"));
}

#[test]
fn prefixes_match_hosts_namespaces_and_subdomains_at_component_boundaries() {
    let exact = Prefix::Exact("example.com".into());
    assert_eq!(exact.matched_len("example.com/os"), Some(11));
    assert_eq!(exact.matched_len("example.com"), Some(11));
    // Another port is another registry; a longer name is another host.
    assert_eq!(exact.matched_len("example.com:5000/os"), None);
    assert_eq!(exact.matched_len("example.community/os"), None);
    let namespace = Prefix::Exact("example.com/fleet".into());
    assert_eq!(namespace.matched_len("example.com/fleet/os"), Some(17));
    assert_eq!(namespace.matched_len("example.com/fleetwood/os"), None);
    let wildcard = Prefix::Subdomains(".example.com".into());
    assert_eq!(wildcard.matched_len("a.example.com/os"), Some(13));
    assert_eq!(wildcard.matched_len("b.a.example.com:5000/os"), Some(20));
    assert_eq!(wildcard.matched_len("example.com/os"), None);
    assert_eq!(wildcard.matched_len("a.example.com.evil.test/os"), None);
    assert_eq!(wildcard.matched_len("evil.test/a.example.com/os"), None);
}

#[test]
fn the_entry_covering_most_of_the_reference_wins() {
    let c = conf(
        r#"
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "*.example.com"
[[registry.mirror]]
location = "wild.mirror.test"

[[registry]]
prefix = "*.fleet.example.com"
location = ""
[[registry.mirror]]
location = "fleet-wild.mirror.test"

[[registry]]
prefix = "reg.example.com"
[[registry.mirror]]
location = "host.mirror.test"

[[registry]]
prefix = "reg.example.com/fleet"
location = "internal.example.net/fleet-copy"

[aliases]
"os" = "reg.example.com/fleet/os"
"#,
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        tries(&c, "reg.example.com/fleet/os:1"),
        ["internal.example.net/fleet-copy/os:1"]
    );
    // The host's entry, not the wildcard covering the same host.
    assert_eq!(
        tries(&c, "reg.example.com/other/os:1"),
        [
            "mirror host.mirror.test/other/os:1",
            "reg.example.com/other/os:1"
        ]
    );
    // The longer wildcard; the host itself stays the location.
    assert_eq!(
        tries(&c, "a.fleet.example.com/os:1"),
        [
            "mirror fleet-wild.mirror.test/os:1",
            "a.fleet.example.com/os:1"
        ]
    );
    assert_eq!(
        tries(&c, "other.example.com:5000/os:1"),
        [
            "mirror wild.mirror.test/os:1",
            "other.example.com:5000/os:1"
        ]
    );
    assert_eq!(
        tries(&c, "elsewhere.test/os:1"),
        ["direct elsewhere.test/os:1"]
    );
    assert_eq!(c.find("reg.example.com/fleet/os").unwrap().line, 21);
}

#[test]
fn mirrors_are_tried_in_order_as_pull_from_mirror_allows_then_the_location() {
    let c = conf(
        r#"
[[registry]]
prefix = "fleet.invalid:5000"
location = "origin.example.com:443/os-images"
insecure = false

[[registry.mirror]]
location = "127.0.0.1:5001"
insecure = true

[[registry.mirror]]
location = "digests.mirror.test/cache"
pull-from-mirror = "digest-only"

[[registry.mirror]]
location = "tags.mirror.test"
pull-from-mirror = "tag-only"
"#,
    );
    assert_eq!(
        tries(&c, "fleet.invalid:5000/os:stable"),
        [
            "mirror 127.0.0.1:5001/os:stable (http)",
            "mirror tags.mirror.test/os:stable",
            "origin.example.com:443/os-images/os:stable"
        ]
    );
    assert_eq!(
        tries(&c, &format!("fleet.invalid:5000/os@{DIGEST}")),
        [
            format!("mirror 127.0.0.1:5001/os@{DIGEST} (http)"),
            format!("mirror digests.mirror.test/cache/os@{DIGEST}"),
            format!("origin.example.com:443/os-images/os@{DIGEST}")
        ]
    );
    let plan = c
        .plan(&ImageName::split("fleet.invalid:5000/os:stable"))
        .unwrap();
    assert_eq!(plan.entry, Some(("fleet.invalid:5000".into(), 3)));
    assert_eq!(plan.skipped.len(), 1);
    assert!(
        plan.skipped[0].contains("digests.mirror.test/cache")
            && plan.skipped[0].contains("digest-only")
            && plan.skipped[0].contains("a tag"),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn mirror_by_digest_only_is_the_default_of_its_mirrors_and_conflicts_are_refused() {
    let c = conf(
        r#"
[[registry]]
prefix = "reg.example.com"
mirror-by-digest-only = true
mirror = [{ location = "m.example.net" }]
"#,
    );
    assert_eq!(
        c.registries[0].mirrors[0].pull_from_mirror,
        PullFromMirror::DigestOnly
    );
    assert_eq!(tries(&c, "reg.example.com/os:1"), ["reg.example.com/os:1"]);
    let err = error(
        r#"[[registry]]
prefix = "reg.example.com"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m.example.net"
pull-from-mirror = "tag-only"
"#,
    );
    assert!(
        err.contains("/oem/immuboot/registries.conf:6:20") && err.contains("contradicts"),
        "{err}"
    );
}

#[test]
fn insecure_is_per_location_and_the_location_defaults_to_the_prefix() {
    let c = conf(
        r#"
[[registry]]
location = "10.0.2.2:5000"
insecure = true
"#,
    );
    assert_eq!(
        c.registries[0].prefix,
        Prefix::Exact("10.0.2.2:5000".into())
    );
    assert_eq!(
        tries(&c, "10.0.2.2:5000/os:1"),
        ["10.0.2.2:5000/os:1 (http)"]
    );
}

#[test]
fn a_blocked_registry_is_refused_naming_the_file_and_line() {
    let text = r#"
[[registry]]
prefix = "docker.io"
blocked = true
[[registry.mirror]]
location = "mirror.example.com"
"#;
    let c = parse(text, "/etc/immuboot/registries.conf").unwrap();
    let err = format!(
        "{:#}",
        c.plan(&ImageName::split("docker.io/library/debian:12"))
            .unwrap_err()
    );
    assert!(
        err.contains("blocked")
            && err.contains("/etc/immuboot/registries.conf (line 3")
            && err.contains("docker.io/library/debian:12"),
        "{err}"
    );
}

#[test]
fn unknown_keys_in_registry_tables_are_warned_with_their_place_others_ignored() {
    let c = conf(
        "short-name-mode = \"enforcing\"\ncredential-helpers = []\n\n[[registry]]\nprefix = \"reg.example.com\"\ninsecur = true\n[[registry.mirror]]\nlocation = \"m.example.net\"\npull-from-mirrors = \"tag-only\"\n",
    );
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("registries.conf:6:1: unknown key \"insecur\""),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[1].starts_with("registries.conf:9:1: unknown key \"pull-from-mirrors\""),
        "{:?}",
        c.warnings
    );
    // The misspelt key took no effect.
    assert!(!c.registries[0].insecure);
    assert_eq!(
        c.registries[0].mirrors[0].pull_from_mirror,
        PullFromMirror::All
    );
}

#[test]
fn syntax_and_type_errors_name_the_file_line_and_column() {
    let err = error("[[registry]]\nprefix = \"reg.example.com\"\ninsecure = tru\n");
    assert!(
        err.starts_with("/oem/immuboot/registries.conf:3:12:") && err.contains("hint:"),
        "{err}"
    );
    let err = error("[[registry]]\nprefix = \"reg.example.com\"\n  insecure = \"yes\"\n");
    assert!(
        err.starts_with("/oem/immuboot/registries.conf:3:14:") && err.contains("bool"),
        "{err}"
    );
    let err = error(
        "[[registry]]\nprefix = \"reg.example.com\"\n[[registry.mirror]]\nlocation = \"m.test\"\npull-from-mirror = \"sometimes\"\n",
    );
    assert!(
        err.starts_with("/oem/immuboot/registries.conf:5:20:") && err.contains("digest-only"),
        "{err}"
    );
}

#[test]
fn version_1_search_lists_are_ignored_and_its_rules_refused() {
    let c = conf("[registries.search]\nregistries = ['docker.io']\n");
    assert!(c.registries.is_empty());
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains(":1:") && c.warnings[0].contains("registries.search"),
        "{:?}",
        c.warnings
    );
    for (table, hint) in [("insecure", "insecure = true"), ("block", "blocked = true")] {
        let err = error(&format!(
            "[registries.search]\nregistries = []\n[registries.{table}]\nregistries = ['reg.example.com']\n"
        ));
        assert!(
            err.contains(&format!("[registries.{table}] is version 1")) && err.contains(hint),
            "{err}"
        );
    }
}

#[test]
fn prefixes_and_locations_that_name_no_registry_are_refused() {
    for (text, want) in [
        ("prefix = \"https://reg.example.com\"", "has a scheme"),
        ("prefix = \"reg.example.com/os:v1\"", "names a tag"),
        (
            "prefix = \"reg.example.com/os@sha256:00\"",
            "names a digest",
        ),
        (
            "prefix = \"fleet/os\"",
            "does not start with a registry host",
        ),
        ("prefix = \"reg.example.com:port\"", "not a number"),
        ("prefix = \"*.example.com:5000\"", "without port or path"),
        ("prefix = \"*example.com\"", "without port or path"),
        (
            "prefix = \"*.example.com\"\nlocation = \"m.example.net\"",
            "cannot have a location",
        ),
        ("insecure = true", "neither a prefix nor a location"),
        (
            "prefix = \"reg.example.com\"\n[[registry.mirror]]\ninsecure = true",
            "has no location",
        ),
        (
            "prefix = \"reg.example.com\"\n[[registry.mirror]]\nlocation = \"mirror\"",
            "mirror location \"mirror\" does not start with a registry host",
        ),
    ] {
        let err = error(&format!("[[registry]]\n{text}\n"));
        assert!(
            err.contains(want) && err.contains("/oem/immuboot/registries.conf"),
            "{text}: {err}"
        );
    }
    let err = error(
        "[[registry]]\nprefix = \"reg.example.com\"\n\n[[registry]]\nprefix = \"reg.example.com\"\nblocked = true\n",
    );
    assert!(err.contains("lines 2 and 5"), "{err}");
}

#[test]
fn the_first_existing_file_is_read_and_a_named_one_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.conf");
    let first = dir.path().join("first.conf");
    let second = dir.path().join("second.conf");
    std::fs::write(&first, "[[registry]]\nprefix = \"a.example\"\n").unwrap();
    std::fs::write(&second, "[[registry]]\nprefix = \"b.example\"\n").unwrap();
    let read = load(&[missing.clone(), first.clone(), second], false)
        .unwrap()
        .unwrap();
    assert_eq!(read.file, first.display().to_string());
    assert_eq!(read.registries.len(), 1);
    assert_eq!(load(std::slice::from_ref(&missing), false).unwrap(), None);
    assert_eq!(load(&[], false).unwrap(), None);
    let err = format!("{:#}", load(&[missing.clone(), first], true).unwrap_err());
    assert!(
        err.contains(&missing.display().to_string()) && err.contains(ENV),
        "{err}"
    );
    // A file that cannot be parsed is an error, not skipped.
    std::fs::write(&missing, "[[registry]\n").unwrap();
    let err = format!(
        "{:#}",
        load(std::slice::from_ref(&missing), false).unwrap_err()
    );
    assert!(err.contains(&format!("{}:1:", missing.display())), "{err}");
}
