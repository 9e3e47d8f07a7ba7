//! SigComp compression and decompression throughput over the realistic SIP messages in
//! `../shared/testdata/sip-realistic/`, with SHA-1 over the same bytes as the reference
//! measured in the same run.
//!
//! `cargo bench --bench sigcomp`
//!
//! - `decompress/later`: partial-state messages (the steady state of a compartment).
//! - `decompress/first`: bytecode-upload messages (dictionary load included).
//! - `compress/later`: one message compressed against the compartment's saved state,
//!   including the local check decompression the compressor always performs.
//! - `reference/sha1`: SHA-1 over the same SIP bytes.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sha1::{Digest, Sha1};
use sipedge::sigcomp::{Received, SigcompConfig, SigcompEndpoint, Transport};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-realistic"
);

fn messages() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e} (shared test data missing)"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sip"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

type Endpoint = SigcompEndpoint<u8>;

/// Sends `sip` from `a` to `b` and confirms it; returns the wire bytes.
fn exchange(a: &mut Endpoint, b: &mut Endpoint, sip: &[u8], now: Instant) -> Vec<u8> {
    let mut wire = Vec::new();
    a.compress(now, &0, Transport::Message, sip, &mut wire)
        .unwrap();
    let mut out = Vec::new();
    let Ok(Received::Message(u)) = b.decompress(now, &0, Transport::Message, &wire, &mut out)
    else {
        panic!("decompression failed")
    };
    b.confirm(now, &0, u);
    wire
}

/// A pair that has exchanged `warmup` in both directions, so both hold saved state.
fn warm_pair(warmup: &[u8], now: Instant) -> (Endpoint, Endpoint) {
    let mut a = Endpoint::new(SigcompConfig::default());
    let mut b = Endpoint::new(SigcompConfig::default());
    for _ in 0..2 {
        exchange(&mut a, &mut b, warmup, now);
        exchange(&mut b, &mut a, warmup, now);
    }
    (a, b)
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let msgs = messages();
    let total: usize = msgs.iter().map(Vec::len).sum();
    // For each message: a receiver holding the state the message refers to, and the wire.
    let mut later = Vec::new();
    let mut first = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let warmup = &msgs[(i + 1) % msgs.len()];
        let (mut a, b) = warm_pair(warmup, now);
        let mut wire = Vec::new();
        a.compress(now, &0, Transport::Message, m, &mut wire)
            .unwrap();
        assert_eq!(wire[0] & 0x03, 0x01, "partial-state message");
        later.push((b, wire));
        let mut fresh_a = Endpoint::new(SigcompConfig::default());
        let mut wire = Vec::new();
        fresh_a
            .compress(now, &0, Transport::Message, m, &mut wire)
            .unwrap();
        first.push((Endpoint::new(SigcompConfig::default()), wire));
    }

    let mut g = c.benchmark_group("sigcomp");
    g.throughput(Throughput::Bytes(total as u64));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("decompress/later", |bench| {
        bench.iter(|| {
            for (b, wire) in &mut later {
                let r = b.decompress(now, &0, Transport::Message, wire, &mut out);
                black_box(r.is_ok());
            }
        })
    });
    g.bench_function("decompress/first", |bench| {
        bench.iter(|| {
            for (b, wire) in &mut first {
                let r = b.decompress(now, &0, Transport::Message, wire, &mut out);
                black_box(r.is_ok());
            }
        })
    });
    // Steady-state compression: each iteration compresses every message once to a peer
    // whose saved state moves on with every message (as in a long-lived compartment).
    let (mut a, _b) = warm_pair(&msgs[0], now);
    let mut wire = Vec::with_capacity(4096);
    g.bench_function("compress/later", |bench| {
        bench.iter(|| {
            for m in &msgs {
                let r = a.compress(now, &0, Transport::Message, m, &mut wire);
                black_box(r.is_ok());
            }
        })
    });
    g.bench_function("reference/sha1", |bench| {
        bench.iter(|| {
            for m in &msgs {
                black_box(Sha1::digest(m));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
