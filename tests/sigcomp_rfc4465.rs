//! Every RFC 4465 torture test, from `../shared/testdata/sigcomp/rfc4465/index.json`.
//!
//! Environment (RFC 4465 §1): decompression_memory_size 2048, cycles_per_bit 16,
//! state_memory_size 2048. Runs of one test share a state store and are executed in order;
//! each successful run is confirmed, so its state requests are applied to its compartment
//! (compartment 0, or `compartment` for A.3.3). The RFC 3485 dictionary is a locally
//! available state, as for any SIP endpoint.

use std::rc::Rc;
use std::time::Instant;

use serde_json::Value;
use sipedge::sigcomp::dictionary::{RFC3485_STATE_ID, rfc3485_state};
use sipedge::sigcomp::framing::deframe_record;
use sipedge::sigcomp::{DecompressorParams, NackReason, StateStore, StoreLimits, Transport, Udvm};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata/sigcomp");
const DMS: u32 = 2048;
const CPB: u16 = 16;
/// sipedge's SigComp_version: 0x02, RFC 4077 NACK support.
const VERSION: u8 = 2;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn load_index() -> Value {
    let path = format!("{DIR}/rfc4465/index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{path}: {e} (the shared test data must sit beside the checkout)")
    });
    serde_json::from_str(&text).unwrap()
}

fn params(version: u8) -> DecompressorParams {
    DecompressorParams {
        decompression_memory_size: DMS,
        cycles_per_bit: CPB,
        sigcomp_version: version,
    }
}

fn new_store() -> StateStore<u64> {
    let limits = StoreLimits {
        state_memory_size: 2048,
        ..StoreLimits::default()
    };
    let mut store = StateStore::new(limits);
    store.add_local(Rc::new(rfc3485_state()));
    store
}

/// Expected output bytes of a success, resolving the symbolic `output_expr`.
fn expected_output(expected: &Value, stream: bool) -> Vec<u8> {
    if let Some(h) = expected["output_hex"].as_str() {
        return hex(h);
    }
    assert_eq!(expected["output_expr"], "decompression_memory_size");
    let mut out = (DMS as u16).to_be_bytes().to_vec();
    if stream {
        out.extend_from_slice(&[0xFF; 5]);
    }
    out
}

fn expected_cycles(expected: &Value) -> Option<u64> {
    if let Some(c) = expected["cycles"].as_u64() {
        return Some(c);
    }
    match expected["cycles_expr"].as_str() {
        Some("cycles_per_bit * 1080") => Some(u64::from(CPB) * 1080),
        Some(other) => panic!("unknown cycles_expr {other}"),
        None => None,
    }
}

/// Runs one message and checks it against one expectation; applies state on success.
#[allow(clippy::too_many_arguments)]
fn check(
    label: &str,
    version: u8,
    udvm: &mut Udvm,
    store: &mut StateStore<u64>,
    compartment: u64,
    transport: Transport,
    message: &[u8],
    expected: &Value,
    created: &mut Option<[u8; 20]>,
) {
    let mut output = Vec::new();
    let result = udvm.decompress(&params(version), transport, message, store, &mut output);
    match expected["outcome"].as_str().unwrap() {
        "success" => {
            let done = result.unwrap_or_else(|f| panic!("{label}: expected success, got {f}"));
            let want = expected_output(expected, transport == Transport::Stream);
            assert_eq!(to_hex(&output), to_hex(&want), "{label}: output");
            if let Some(cycles) = expected_cycles(expected) {
                assert_eq!(done.cycles_used, cycles, "{label}: cycles");
            }
            store.apply(&compartment, Instant::now(), &done.state_requests);
            if let Some(sipedge::sigcomp::StateRequest::Create { item, .. }) =
                done.state_requests.first()
            {
                created.get_or_insert(item.id);
            }
            if let Some(n) = expected["state_items_after"].as_u64() {
                assert_eq!(
                    store.compartment_len(&compartment) as u64,
                    n,
                    "{label}: state items"
                );
            }
            if let Some(pattern) = expected["returned_feedback_prefix_hex_pattern"].as_str() {
                // A.3.1: the requested feedback item is what the next message returns.
                let want = pattern.split(' ').next().unwrap().trim_start_matches("fn");
                let item = done
                    .requested_feedback
                    .and_then(|f| f.item)
                    .expect("feedback item");
                assert_eq!(to_hex(&item), want, "{label}: requested feedback item");
            }
        }
        "decompression_failure" => {
            let Err(failure) = result else {
                panic!("{label}: expected failure, got success")
            };
            let want = expected["reason"].as_str().unwrap();
            assert_eq!(failure.reason.name(), want, "{label}: reason");
            assert_eq!(
                u64::from(failure.reason.code()),
                expected["nack_code"].as_u64().unwrap(),
                "{label}: code"
            );
        }
        "unspecified" => {
            let done = result.unwrap_or_else(|f| panic!("{label}: set-up run failed: {f}"));
            store.apply(&compartment, Instant::now(), &done.state_requests);
        }
        other => panic!("{label}: unknown outcome {other}"),
    }
}

#[test]
fn rfc4465_torture_tests() {
    let index = load_index();
    let tests = index["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 26);
    let mut runs_checked = 0;
    for test in tests {
        let id = test["id"].as_str().unwrap();
        let messages: Vec<Vec<u8>> = test["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let bytes = std::fs::read(format!("{DIR}/rfc4465/{}", m["file"].as_str().unwrap()))
                    .unwrap();
                assert_eq!(
                    to_hex(&bytes),
                    m["hex"].as_str().unwrap(),
                    "{id}: file and JSON agree"
                );
                bytes
            })
            .collect();
        // A.2.1 saves a state that contains the SigComp version byte, so its message 1
        // carries the identifier for version 0x01. Run it as a version 0x01 endpoint (the
        // RFC's bytes unchanged), then as sipedge (0x02) with the identifier of the state
        // its own run 0 created.
        let versions: &[u8] = if id == "A.2.1" {
            &[1, VERSION]
        } else {
            &[VERSION]
        };
        for &version in versions {
            let mut udvm = Udvm::new();
            let mut store = new_store();
            let mut created: Option<[u8; 20]> = None;
            for run in test["runs"].as_array().unwrap() {
                let seq = run["seq"].as_u64().unwrap();
                let label = format!("{id} v{version} run {seq}");
                let compartment = run["compartment"].as_u64().unwrap_or(0);
                let mut message = messages[run["message_index"].as_u64().unwrap() as usize].clone();
                if let Some(template) = run.get("input_template") {
                    // A.2.1: the input starts with this endpoint's SigComp version.
                    if version != 1 && message.len() == 7 {
                        message[1..7].copy_from_slice(&created.expect("run 0 created state")[..6]);
                    }
                    message.push(version);
                    message.extend(hex(template["suffix_hex"].as_str().unwrap()));
                } else {
                    message.extend(hex(run["input_hex"].as_str().unwrap()));
                }
                let expected = &run["expected"];
                if test["transport"] == "stream" {
                    // A.2.4: record marking; empty records are skipped.
                    let mut records = Vec::new();
                    let mut rest = &message[..];
                    let mut record = Vec::new();
                    while let Some(used) = deframe_record(rest, &mut record).unwrap() {
                        if !record.is_empty() {
                            records.push(record.clone());
                        }
                        rest = &rest[used..];
                    }
                    let wants: Vec<&Value> = if expected["outcome"] == "success_per_message" {
                        expected["messages"].as_array().unwrap().iter().collect()
                    } else {
                        vec![expected]
                    };
                    assert_eq!(records.len(), wants.len(), "{label}: records in the stream");
                    for (i, (record, want)) in records.iter().zip(wants).enumerate() {
                        let label = format!("{label} record {i}");
                        check(
                            &label,
                            version,
                            &mut udvm,
                            &mut store,
                            compartment,
                            Transport::Stream,
                            record,
                            want,
                            &mut created,
                        );
                        runs_checked += 1;
                    }
                } else {
                    check(
                        &label,
                        version,
                        &mut udvm,
                        &mut store,
                        compartment,
                        Transport::Message,
                        &message,
                        expected,
                        &mut created,
                    );
                    runs_checked += 1;
                }
            }
        }
    }
    // 77 runs, of which A.2.4 run 0 is a stream of two messages, plus A.2.1's 4 runs again.
    assert_eq!(runs_checked, 82);
}

#[test]
fn rfc3485_dictionary_has_the_stated_identifier() {
    let bytes = std::fs::read(format!("{DIR}/rfc3485-dictionary.bin")).unwrap();
    assert_eq!(bytes.len(), 0x12E4);
    let item = sipedge::sigcomp::StateItem::new(bytes, 0, 0, 6);
    // README / RFC 3485 Table 1: fbe507dfe5e6aa5af2abb914ceaa05f99ce61ba5.
    assert_eq!(to_hex(&item.id), "fbe507dfe5e6aa5af2abb914ceaa05f99ce61ba5");
    assert_eq!(item.id, RFC3485_STATE_ID);
    assert_eq!(
        rfc3485_state(),
        item,
        "the bundled copy equals the shared vector"
    );
}

#[test]
fn failures_leave_state_untouched() {
    let index = load_index();
    // A.1.15 run 0 creates state; run 3 (free with a 5-byte identifier) must fail and keep it.
    let test = index["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "A.1.15")
        .unwrap();
    let m0 = std::fs::read(format!("{DIR}/rfc4465/msg/A_1_15_m0.bin")).unwrap();
    let mut udvm = Udvm::new();
    let mut store = new_store();
    let mut out = Vec::new();
    let mut msg = m0.clone();
    msg.push(0x01);
    let done = udvm
        .decompress(&params(VERSION), Transport::Message, &msg, &store, &mut out)
        .unwrap();
    store.apply(&0, Instant::now(), &done.state_requests);
    assert_eq!(store.compartment_len(&0), 1);
    let mut msg = m0;
    msg.extend_from_slice(&[0x04, 0x05]);
    let failure = udvm
        .decompress(&params(VERSION), Transport::Message, &msg, &store, &mut out)
        .unwrap_err();
    assert_eq!(failure.reason, NackReason::InvalidStateIdLength);
    assert_eq!(store.compartment_len(&0), 1);
    assert!(test["runs"].as_array().unwrap().len() >= 4);
}

#[test]
fn a_2_2_runs_out_of_cycles_exactly_at_value_180() {
    // RFC 4465 §3.2: with exact cycle counting and cycles_per_bit 16 the failure happens
    // at the COPY-OFFSET for value 180 (0xB4); the counter values 0..=179 were output.
    let message = std::fs::read(format!("{DIR}/rfc4465/msg/A_2_2_m0.bin")).unwrap();
    let mut out = Vec::new();
    let failure = Udvm::new()
        .decompress(
            &params(VERSION),
            Transport::Message,
            &message,
            &new_store(),
            &mut out,
        )
        .unwrap_err();
    assert_eq!(failure.reason, NackReason::CyclesExhausted);
    assert_eq!(
        failure.details,
        vec![16],
        "RFC 4077: details carry cycles_per_bit"
    );
    assert!(
        out.ends_with(&[0x00, 0xB3]),
        "{}",
        to_hex(&out[out.len().saturating_sub(8)..])
    );
}
