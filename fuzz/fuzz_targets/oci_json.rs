//! OCI image layout JSON (index.json, nested indexes, manifests, configs)
//! and a docker-archive's manifest.json, as `immuboot upgrade oci:DIR` and
//! `docker-archive:FILE` read them: the same bytes tried as each.
//!
//! No invariant beyond refusing with an error instead of panicking: the
//! choices (tag, platform, diff_ids) are checked by the unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    immuboot_oci::fuzzing::oci_json(data);
    let _ = immuboot_oci::fuzzing::docker_manifest(data);
});
