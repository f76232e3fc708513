//! Module files decompressed in memory (`.ko.xz`, `.ko.zst`, `.ko.gz`). The
//! first byte of the input picks the format, the rest is the file.
//!
//! Invariant: the output and the memory taken while decompressing are
//! bounded by the stated limit, whatever the file claims: no more than
//! LIMIT bytes out, and at most 4 × LIMIT + 3 × input + 16 MiB live heap
//! (lzma/zstd windows, the output's growth by doubling).
#![no_main]

use immuboot_kmod::decompress_bounded;
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts live heap bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            let now = LIVE.fetch_add(new, Relaxed) + new;
            PEAK.fetch_max(now, Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Smaller than the real bound (kmod::MAX_MODULE_BYTES) so an execution
/// stays fast; the code path is the same.
const LIMIT: usize = 1 << 20;

/// Where lzma-rs 0.3.0 overflows on a crafted xz footer (`(backward_size +
/// 1) << 2`, found by this target). cargo fuzz builds every crate with
/// overflow checks, so it panics here; the init's release build has none,
/// the value wraps and the decode returns an error (kmod test
/// `a_crafted_xz_footer_is_an_error`, built as the release build is). That
/// one known spot returns `None`; any other panic stays a finding.
const KNOWN_OVERFLOW: (&str, u32) = ("lzma-rs-0.3.0/src/decode/xz.rs", 52);

fn past_known_lzma_rs_overflow<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys's hook aborts on every panic: let the known one
        // unwind to the catch below instead.
        let abort_on_panic = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let known = info.location().is_some_and(|l| {
                l.file().ends_with(KNOWN_OVERFLOW.0) && l.line() == KNOWN_OVERFLOW.1
            });
            if !known {
                abort_on_panic(info);
            }
        }));
    });
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, file)) = data.split_first() else {
        return;
    };
    let path = match kind % 4 {
        0 => "m.ko.xz",
        1 => "m.ko.zst",
        2 => "m.ko.gz",
        _ => "m.ko",
    };
    let file = file.to_vec();
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let Some(out) = past_known_lzma_rs_overflow(|| decompress_bounded(path, file, LIMIT)) else {
        return;
    };
    let peak = PEAK.load(Relaxed) - before;
    if let Ok(out) = &out {
        assert!(
            out.len() <= LIMIT.max(data.len()),
            "{} bytes out",
            out.len()
        );
    }
    let bound = 4 * LIMIT + 3 * data.len() + (16 << 20);
    assert!(
        peak <= bound,
        "{path}: {peak} bytes of heap for a {}-byte file",
        data.len()
    );
});
