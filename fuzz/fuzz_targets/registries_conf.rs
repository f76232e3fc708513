//! registries.conf (containers-registries.conf(5), written by an operator
//! or shipped by a distribution's containers packages), parsed and asked
//! where a reference is pulled from, as a registry pull does. The input is
//! the file, then optionally the reference (fully qualified), joined by the
//! separator line.
//!
//! Invariants: the entry chosen for a reference has a prefix that matches
//! it (checked here by the documented rule, not the crate's matcher) and no
//! entry matches more of it; a blocked entry refuses the pull; every place a
//! pull goes is the chosen entry's mirror or location (or the reference's
//! own registry) followed by the rest of the reference.
#![no_main]

use immuboot_fuzz::split;
use immuboot_oci::registries_conf::{parse, ImageName, Prefix, Via};
use libfuzzer_sys::fuzz_target;

/// Whether `prefix` matches `name` (`REGISTRY/REPOSITORY`), by the rule in
/// the module documentation, and how much of `name` it covers.
fn covers(prefix: &Prefix, name: &str) -> Option<usize> {
    match prefix {
        Prefix::Exact(p) => (name == p || name.starts_with(&format!("{p}/"))).then_some(p.len()),
        Prefix::Subdomains(domain) => {
            let host = name.split('/').next().unwrap_or_default();
            let hostname = host.split(':').next().unwrap_or_default();
            let below = hostname
                .strip_suffix(domain.as_str())
                .is_some_and(|label| !label.is_empty());
            below.then_some(host.len())
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let text = String::from_utf8_lossy(parts[0]);
    let reference = parts
        .get(1)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "fleet.invalid:5000/os:stable".into());
    let Ok(conf) = parse(&text, "registries.conf") else {
        return;
    };
    for warning in &conf.warnings {
        assert!(warning.starts_with("registries.conf:"), "{warning}");
    }
    let image = ImageName::split(&reference);
    let Some(chosen) = conf.find(&image.name) else {
        assert!(
            conf.registries
                .iter()
                .all(|r| covers(&r.prefix, &image.name).is_none()),
            "{reference}: no entry chosen, but one matches"
        );
        return;
    };
    let len = covers(&chosen.prefix, &image.name)
        .unwrap_or_else(|| panic!("{reference}: chosen {} does not match it", chosen.prefix));
    for other in &conf.registries {
        if let Some(l) = covers(&other.prefix, &image.name) {
            assert!(
                l <= len,
                "{reference}: {} covers more than {}",
                other.prefix,
                chosen.prefix
            );
        }
    }
    let plan = conf.plan(&image);
    if chosen.blocked {
        assert!(
            plan.is_err(),
            "{reference}: blocked by {}, yet planned",
            chosen.prefix
        );
        return;
    }
    let plan = plan.expect("an entry that is not blocked plans a pull");
    let rest = format!(
        "{}{}",
        &image.name[len..],
        &image.to_string()[image.name.len()..]
    );
    assert!(!plan.sources.is_empty());
    for source in &plan.sources {
        let head = source
            .reference
            .strip_suffix(&rest)
            .unwrap_or_else(|| panic!("{reference}: {} does not end in {rest}", source.reference));
        let allowed = match source.via {
            Via::Mirror => chosen.mirrors.iter().any(|m| m.location == head),
            Via::Location => match &chosen.location {
                Some(location) => location == head,
                None => image.name.starts_with(head) && head.len() == len,
            },
            Via::Direct => false,
        };
        assert!(
            allowed,
            "{reference}: {} is not a place of {}",
            source.reference, chosen.prefix
        );
    }
});
