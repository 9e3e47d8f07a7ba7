//! Parsing allocates nothing: a counting global allocator watches this thread while the whole
//! shared corpus (RFC 4475 torture messages and realistic RFC flows) is framed, parsed, walked
//! through every typed accessor, salvaged, answered and spliced.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use sipedge::sip::{self, EMPTY_HEADER, HeaderName, Limits, ResponseOptions, Splice};

struct Counting;

thread_local! {
    // Counted per thread, so tests running in parallel do not see each other's allocations.
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // try_with: the allocator may run during thread teardown, after the slots are gone.
    if WATCHING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
    }
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata"));
    let mut files = Vec::new();
    for dir in ["sip-torture/messages", "sip-realistic"] {
        let path = root.join(dir);
        let entries = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("shared test data missing: {}: {e}", path.display()));
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "dat" || x == "sip") {
                files.push(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
            }
        }
    }
    assert!(
        files.len() >= 39 + 19,
        "expected the whole corpus, found {} files",
        files.len()
    );
    files
}

/// Everything a proxy does with a message, through the public API. Returns a checksum so the
/// work cannot be optimised away.
fn exercise(bytes: &[u8], out: &mut [u8]) -> usize {
    let limits = Limits::default();
    let mut sum = 0usize;
    let _ = sip::classify_datagram(bytes);
    if let Ok(sip::Frame::Message { len }) = sip::frame(bytes, &limits) {
        sum += len;
    }
    let mut slots = [EMPTY_HEADER; 128];
    match sip::parse(bytes, &mut slots, &limits) {
        Ok(m) => {
            sum += m.headers().len() + m.call_id().len() + m.cseq().number as usize;
            sum += m
                .vias()
                .map(|v| v.value.branch.map_or(0, <[u8]>::len) + v.removal.len())
                .sum::<usize>();
            sum += m
                .routes()
                .chain(m.record_routes())
                .chain(m.paths())
                .chain(m.contacts())
                .map(|r| r.value.uri_bytes().len())
                .sum::<usize>();
            sum += m.option_tags(HeaderName::ProxyRequire).count()
                + m.option_tags(HeaderName::Supported).count();
            sum += m.read_from().map_or(0, |f| f.tag.map_or(0, <[u8]>::len))
                + m.read_to().map_or(0, |t| t.params().count());
            sum += m
                .request_sip_uri()
                .map_or(0, |u| u.params().count() + usize::from(u.lr));
            sum += m.top_via().params().count();
            let mut splice: Splice<'_, 8> = Splice::new();
            let via_line = m
                .headers_of(HeaderName::Via)
                .next()
                .map_or(0, |h| h.line.start);
            let _ = splice.insert(via_line, b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n");
            if let Some(mf) = m.max_forwards() {
                let _ = splice.replace(mf.span, b"69");
            }
            if let Some(r) = m.routes().next() {
                let _ = splice.remove(r.removal);
            }
            sum += splice.apply(m.as_bytes(), out).unwrap_or(0);
            let basis = sip::Salvage::from_message(&m);
            let opts = ResponseOptions {
                received: Some(b"192.0.2.9"),
                rport: Some(5060),
                ..ResponseOptions::default()
            };
            sum += sip::write_response(&basis, 483, b"Too Many Hops", &opts, out).unwrap_or(0);
        }
        Err(e) => {
            let basis = sip::salvage(bytes);
            let opts = ResponseOptions {
                partial: true,
                ..ResponseOptions::default()
            };
            sum += e.offset
                + sip::write_response(&basis, e.status_code(), e.reason().as_bytes(), &opts, out)
                    .unwrap_or(0);
        }
    }
    sum
}

#[test]
fn parsing_the_corpus_allocates_nothing() {
    let files = corpus();
    let mut out = vec![0u8; 70_000];
    let before = allocations();
    WATCHING.with(|w| w.set(true));
    let mut sum = 0usize;
    for bytes in &files {
        sum = sum.wrapping_add(exercise(bytes, &mut out));
    }
    WATCHING.with(|w| w.set(false));
    let allocations = allocations() - before;
    assert!(sum > 0);
    assert_eq!(
        allocations,
        0,
        "parsing {} messages allocated {allocations} times",
        files.len()
    );
}

#[test]
fn the_counter_sees_allocations() {
    // Guard against a counter that never counts: a Vec allocation on a watched thread is seen.
    let before = allocations();
    WATCHING.with(|w| w.set(true));
    let v = std::hint::black_box(vec![1u8; 64]);
    WATCHING.with(|w| w.set(false));
    assert!(allocations() > before, "{}", v.len());
}
