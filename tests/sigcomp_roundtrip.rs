//! Round trip of every realistic SIP message in `../shared/testdata/sip-realistic/`.
//!
//! Each call (index.json `call_id_group`) is one compartment pair: a UA-side endpoint and
//! a sipedge-side endpoint. Requests travel UA -> sipedge and responses sipedge -> UA, in
//! index order, each compressed by the sender, decompressed by the receiver and confirmed,
//! so state and feedback flow as in a real exchange. Every message must come back byte for
//! byte. The table of sizes is printed (`cargo test --test sigcomp_roundtrip -- --nocapture`)
//! and recorded in perf/RESULTS.md.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;
use sipedge::sigcomp::framing::{deframe_record, encode_record};
use sipedge::sigcomp::{Received, SigcompConfig, SigcompEndpoint, Transport};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-realistic"
);

struct Row {
    file: String,
    direction: &'static str,
    first: bool,
    original: usize,
    compressed: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn run(transport: Transport) -> Vec<Row> {
    let text = std::fs::read_to_string(format!("{DIR}/index.json"))
        .unwrap_or_else(|e| panic!("{DIR}/index.json: {e} (shared test data missing)"));
    let index: Value = serde_json::from_str(&text).unwrap();
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in index["entries"].as_array().unwrap() {
        groups
            .entry(e["call_id_group"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    let now = Instant::now();
    let mut rows = Vec::new();
    for entries in groups.values() {
        let mut ua: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let mut edge: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let mut sent_by_ua = 0;
        let mut sent_by_edge = 0;
        for e in entries {
            let file = e["file"].as_str().unwrap();
            let sip = std::fs::read(format!("{DIR}/{file}")).unwrap();
            let request = !sip.starts_with(b"SIP/2.0 ");
            let (sender, receiver, direction, count) = if request {
                (&mut ua, &mut edge, "UA->edge", &mut sent_by_ua)
            } else {
                (&mut edge, &mut ua, "edge->UA", &mut sent_by_edge)
            };
            let mut wire = Vec::new();
            sender
                .compress(now, &0, transport, &sip, &mut wire)
                .unwrap();
            if transport == Transport::Stream {
                // RFC 3320 §4.2.2 record marking, as on a TCP connection.
                let mut framed = Vec::new();
                encode_record(&wire, &mut framed);
                let mut record = Vec::new();
                assert_eq!(deframe_record(&framed, &mut record), Ok(Some(framed.len())));
                assert_eq!(record, wire);
            }
            let mut out = Vec::new();
            let received = receiver
                .decompress(now, &0, transport, &wire, &mut out)
                .unwrap();
            let Received::Message(unconfirmed) = received else {
                panic!("{file}: NACK")
            };
            assert_eq!(out, sip, "{file}: round trip");
            receiver.confirm(now, &0, unconfirmed);
            rows.push(Row {
                file: file.to_owned(),
                direction,
                first: *count == 0,
                original: sip.len(),
                compressed: wire.len(),
            });
            *count += 1;
        }
    }
    rows
}

#[test]
fn every_realistic_message_round_trips_and_later_messages_shrink() {
    for transport in [Transport::Message, Transport::Stream] {
        let rows = run(transport);
        assert_eq!(rows.len(), 19);
        println!("\n{transport:?} transport");
        println!("| message | direction | first of compartment | bytes | compressed | ratio |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.1} % |",
                r.file,
                r.direction,
                if r.first { "yes" } else { "no" },
                r.original,
                r.compressed,
                100.0 * r.compressed as f64 / r.original as f64
            );
        }
        let ratio = |r: &Row| r.compressed as f64 / r.original as f64;
        let first = median(rows.iter().filter(|r| r.first).map(ratio).collect());
        let later = median(rows.iter().filter(|r| !r.first).map(ratio).collect());
        println!(
            "median ratio: first messages {:.1} %, later messages {:.1} %",
            100.0 * first,
            100.0 * later
        );
        // Issue target: after the first message of a compartment, median size <= 30 %.
        assert!(
            later <= 0.30,
            "{transport:?}: later-message median ratio {later:.3}"
        );
    }
}
