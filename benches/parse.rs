//! Parse throughput of the SIP message core on the realistic corpus (INVITE, 200, REGISTER,
//! BYE, ACK) and on the whole RFC 4475 torture corpus, next to `httparse` parsing an HTTP
//! request of the same size in the same run (the reference floor for a text header parser).
//!
//! `cargo bench --bench parse`; the ratios are what perf/RESULTS.md records.

#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sipedge::sip::{self, EMPTY_HEADER, Limits};

fn shared(rel: &str) -> Vec<u8> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata")).join(rel);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("shared test data missing: {}: {e}", path.display()))
}

/// An HTTP/1.1 request with the same number of header lines, the same head length and the same
/// body as `sip` (httparse stops at the end of the head, as the SIP parser only slices the body).
fn http_twin(sip: &[u8]) -> Vec<u8> {
    let head_len = sip
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(sip.len(), |p| p + 4);
    let header_lines = sip[..head_len]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b' ' && l[0] != b'\t')
        .count()
        .saturating_sub(2);
    let mut http = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n".to_vec();
    for i in 1..header_lines.max(2) - 1 {
        http.extend_from_slice(format!("X-Header-{i}: value-{i}\r\n").as_bytes());
    }
    // Pad the last header so the head is exactly as long as the SIP head.
    let fixed = http.len() + b"X-Pad: \r\n\r\n".len();
    let pad = head_len.saturating_sub(fixed).max(1);
    http.extend_from_slice(b"X-Pad: ");
    http.extend(std::iter::repeat_n(b'p', pad));
    http.extend_from_slice(b"\r\n\r\n");
    http.extend_from_slice(&sip[head_len..]);
    http
}

fn parse_sip(bytes: &[u8]) -> usize {
    let mut slots = [EMPTY_HEADER; 128];
    match sip::parse(black_box(bytes), &mut slots, &Limits::default()) {
        Ok(m) => m.headers().len() + m.top_via().span.len(),
        Err(e) => e.offset,
    }
}

fn parse_http(bytes: &[u8]) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(black_box(bytes)) {
        Ok(httparse::Status::Complete(n)) => n + req.headers.len(),
        _ => 0,
    }
}

const REALISTIC: [(&str, &str); 5] = [
    (
        "invite",
        "sip-realistic/rfc3665-3.2-F1-invite-preloaded-route.sip",
    ),
    ("200_invite", "sip-realistic/rfc3665-3.2-F12-200-invite.sip"),
    (
        "register",
        "sip-realistic/rfc5626-9.2-msg9-register-outbound.sip",
    ),
    ("bye", "sip-realistic/rfc3665-3.2-F18-bye-route-set.sip"),
    ("ack", "sip-realistic/rfc3665-3.2-F15-ack-route-set.sip"),
];

fn realistic(c: &mut Criterion) {
    let mut group = c.benchmark_group("realistic");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for (name, file) in REALISTIC {
        let sip_bytes = shared(file);
        let http = http_twin(&sip_bytes);
        assert!(parse_http(&http) > 0, "the HTTP twin of {name} must parse");
        let mut slots = [EMPTY_HEADER; 128];
        assert!(
            sip::parse(&sip_bytes, &mut slots, &Limits::default()).is_ok(),
            "{name} must parse"
        );
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("sip", name), &sip_bytes, |b, m| {
            b.iter(|| parse_sip(m))
        });
        group.bench_with_input(BenchmarkId::new("httparse", name), &http, |b, m| {
            b.iter(|| parse_http(m))
        });
    }
    group.finish();
}

fn torture(c: &mut Criterion) {
    let index: serde_json::Value =
        serde_json::from_slice(&shared("sip-torture/index.json")).unwrap_or_default();
    let messages: Vec<Vec<u8>> = index["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["file"].as_str())
        .map(|f| shared(&format!("sip-torture/{f}")))
        .collect();
    assert!(!messages.is_empty(), "torture corpus missing");
    let twins: Vec<Vec<u8>> = messages.iter().map(|m| http_twin(m)).collect();
    let mut group = c.benchmark_group("torture");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("sip/all", |b| {
        b.iter(|| messages.iter().map(|m| parse_sip(m)).sum::<usize>())
    });
    group.bench_function("httparse/all", |b| {
        b.iter(|| twins.iter().map(|m| parse_http(m)).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, realistic, torture);
criterion_main!(benches);
