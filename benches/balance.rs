//! Backend selection and blacklist lookup cost, alone and with two readers racing one writer.
//!
//! `cargo bench --bench balance`

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sipedge::balance::{BackendSpec, Blacklist, BlacklistConfig, BlockReason, Pool, Transport};

fn specs(n: u8) -> Vec<BackendSpec> {
    (1..=n)
        .map(|i| BackendSpec {
            id: None,
            uri: format!("sip:10.1.0.{i}:5060"),
            addr: SocketAddr::from(([10, 1, 0, i], 5060)),
            transport: Transport::Udp,
            weight: 1 + u32::from(i % 3),
            priority: 0,
            drain: false,
        })
        .collect()
}

fn call_ids() -> Vec<String> {
    (0..1024u32)
        .map(|i| format!("{i:08x}-a84b4c76e66710@pc33.atlanta.com"))
        .collect()
}

fn bench_select(c: &mut Criterion) {
    let ids = call_ids();
    let mut g = c.benchmark_group("select");
    g.throughput(Throughput::Elements(1));
    for n in [3u8, 8, 32] {
        let pool = Pool::new(&specs(n)).unwrap_or_default();
        let empty = Blacklist::default();
        let now = Instant::now();
        g.bench_with_input(BenchmarkId::new("clean", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(pool.select(ids[i].as_bytes(), now, &empty).map(|b| b.id()))
            })
        });
        // A third of the members blacklisted: selection must skip them.
        let bl = Blacklist::default();
        for b in pool.backends().iter().step_by(3) {
            bl.report(b.addr(), BlockReason::Timeout, now);
        }
        g.bench_with_input(BenchmarkId::new("third_blacklisted", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(pool.select(ids[i].as_bytes(), now, &bl).map(|b| b.id()))
            })
        });
    }
    g.finish();
}

fn addr(i: u32) -> SocketAddr {
    SocketAddr::from(([10, 2, (i >> 8) as u8, i as u8], 5060))
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("blacklist_lookup");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let empty = Blacklist::default();
    g.bench_function("empty", |b| {
        b.iter(|| black_box(empty.is_blocked(addr(7), now)))
    });
    let full = Blacklist::new(BlacklistConfig::default());
    for i in 0..1000 {
        full.report(addr(i), BlockReason::IcmpUnreachable, now);
    }
    let mut i = 0u32;
    g.bench_function("1000_entries_hit", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(full.is_blocked(addr(i), now))
        })
    });
    g.bench_function("1000_entries_miss", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(full.is_blocked(addr(i + 5000), now))
        })
    });
    g.finish();
}

/// Two readers (this thread and one more) while one thread keeps reporting and clearing.
fn bench_contended(c: &mut Criterion) {
    let pool = Arc::new(Pool::new(&specs(8)).unwrap_or_default());
    let bl = Arc::new(Blacklist::default());
    let stop = Arc::new(AtomicBool::new(false));
    let now = Instant::now();
    // Measurement starts only once both background threads are running.
    let started = Arc::new(Barrier::new(3));
    let writer = {
        let (pool, bl, stop) = (Arc::clone(&pool), Arc::clone(&bl), Arc::clone(&stop));
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            started.wait();
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for b in pool.backends() {
                    bl.report(b.addr(), BlockReason::SendError, now);
                    bl.clear(b.addr());
                    writes += 2;
                }
            }
            writes
        })
    };
    let reader = {
        let (pool, bl, stop) = (Arc::clone(&pool), Arc::clone(&bl), Arc::clone(&stop));
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            let ids = call_ids();
            started.wait();
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for id in &ids {
                    black_box(pool.select(id.as_bytes(), now, &bl).map(|b| b.id()));
                    reads += 1;
                }
            }
            reads
        })
    };
    let ids = call_ids();
    started.wait();
    let mut g = c.benchmark_group("contended_2_readers_1_writer");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("select_8", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(pool.select(ids[i].as_bytes(), now, &bl).map(|b| b.id()))
        })
    });
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(bl.is_blocked(addr(i as u32 % 8), now))
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap_or(0);
    let reads = reader.join().unwrap_or(0);
    println!("background: {writes} blacklist writes, {reads} selections on the second reader");
}

/// Reference for the same contended lookup: a `RwLock<BTreeMap>` blacklist, read by this
/// thread and one more while a third thread keeps taking the write lock. The ratio of
/// `contended_2_readers_1_writer/lookup` to this is what the lock-free design buys.
fn bench_rwlock_reference(c: &mut Criterion) {
    let table: Arc<RwLock<BTreeMap<SocketAddr, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(3));
    let now = Instant::now();
    let writer = {
        let (table, stop, started) = (Arc::clone(&table), Arc::clone(&stop), Arc::clone(&started));
        std::thread::spawn(move || {
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                for i in 0..8 {
                    if let Ok(mut t) = table.write() {
                        t.insert(addr(i), now + Duration::from_secs(2));
                    }
                    if let Ok(mut t) = table.write() {
                        t.remove(&addr(i));
                    }
                }
            }
        })
    };
    let reader = {
        let (table, stop, started) = (Arc::clone(&table), Arc::clone(&stop), Arc::clone(&started));
        std::thread::spawn(move || {
            started.wait();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_add(1);
                let blocked = table
                    .read()
                    .map(|t| t.get(&addr(i % 8)).is_some_and(|&u| now < u))
                    .unwrap_or(false);
                black_box(blocked);
            }
        })
    };
    started.wait();
    let mut g = c.benchmark_group("reference_rwlock_2_readers_1_writer");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(
                table
                    .read()
                    .map(|t| t.get(&addr(i % 8)).is_some_and(|&u| now < u))
                    .unwrap_or(false),
            )
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = reader.join();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_select, bench_lookup, bench_contended, bench_rwlock_reference
}
criterion_main!(benches);
