//! Every RFC 4475 torture message through the proxy core, checked against the behaviour
//! `index.json` expects of a proxy (forward / reject with one of the statuses / drop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use sipedge::balance::{BackendSpec, Blacklist, Pool};
use sipedge::proxy::{Core, Dest, DropReason, Inbound, Placement, ProxyConfig, Verdict};
use sipedge::sip::{self, EMPTY_HEADER, Limits, Transport};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-torture"
);
const BACKENDS: [&str; 2] = ["192.0.2.70:5070", "192.0.2.71:5070"];
const CLIENT: &str = "198.51.100.7:5090";
const PROXY: &str = "192.0.2.10:5060";

fn core() -> (Core, Blacklist) {
    let specs: Vec<BackendSpec> = BACKENDS
        .iter()
        .map(|a| BackendSpec::from_uri(&format!("sip:{a}")).expect("backend uri"))
        .collect();
    let pool = Arc::new(Pool::new(&specs).expect("pool"));
    let mut config = ProxyConfig::default();
    for l in &mut config.listeners {
        l.local = PROXY.parse().unwrap();
    }
    (
        Core::new(config, 0, 1, pool).expect("config"),
        Blacklist::default(),
    )
}

fn inbound<'a>(bytes: &'a [u8], src: &str) -> Inbound<'a> {
    Inbound {
        now: Instant::now(),
        src: src.parse().unwrap(),
        local: PROXY.parse().unwrap(),
        transport: Transport::Udp,
        flow: None,
        placement: Placement::Unknown,
        compressed: false,
        bytes,
    }
}

/// The status code of a response the proxy wrote. It echoes the request's Via lines as they
/// were (RFC 3261 §8.2.6.2), so a response to a request with a broken Via need not parse; its
/// status line and framing must be sound.
fn status_of(bytes: &[u8]) -> u16 {
    let text = std::str::from_utf8(bytes).expect("ASCII response");
    let line = text.split("\r\n").next().unwrap();
    assert!(line.starts_with("SIP/2.0 "), "{text}");
    assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    line[8..11]
        .parse()
        .unwrap_or_else(|_| panic!("no status code: {text}"))
}

/// The forwarded request must parse cleanly (no defect propagated) and carry our Via on top.
fn check_forwarded_request(file: &str, original: &[u8], out: &[u8]) {
    let mut slots = [EMPTY_HEADER; 128];
    let msg = sip::parse(out, &mut slots, &Limits::default()).unwrap_or_else(|e| {
        panic!(
            "{file}: forwarded request does not parse ({e}):\n{}",
            String::from_utf8_lossy(out)
        )
    });
    assert!(msg.is_request(), "{file}");
    assert_eq!(
        msg.len(),
        out.len(),
        "{file}: trailing octets were forwarded"
    );
    let top = msg.top_via();
    assert_eq!(
        top.host.text, b"192.0.2.10",
        "{file}: top Via is not the proxy's"
    );
    assert!(top.has_rfc3261_branch(), "{file}");
    let mut slots_in = [EMPTY_HEADER; 128];
    let orig = sip::parse(original, &mut slots_in, &Limits::default()).expect("original parses");
    let mf_in = orig.max_forwards().map(|m| m.value);
    let mf_out = msg.max_forwards().map(|m| m.value);
    let expected = mf_in.map_or(70, |v| v.saturating_sub(1).min(70));
    assert_eq!(mf_out, Some(expected), "{file}: Max-Forwards");
    assert_eq!(msg.body(), orig.body(), "{file}: body changed");
    assert_eq!(
        msg.vias().count(),
        orig.vias().count() + 1,
        "{file}: Via count"
    );
    assert_eq!(msg.call_id(), orig.call_id(), "{file}");
}

/// Turns a response of the archive into what a backend would send back through the proxy:
/// a request carrying the response's Via goes through the core first, and the Via it adds is
/// put on top of the response.
fn with_our_via(core: &mut Core, bl: &Blacklist, response: &[u8]) -> Vec<u8> {
    let mut slots = [EMPTY_HEADER; 64];
    let msg = sip::parse(response, &mut slots, &Limits::default()).expect("response parses");
    let value = |kind| {
        let i = msg.header_index(kind).expect("header present");
        String::from_utf8_lossy(msg.headers()[i].value).into_owned()
    };
    let via = String::from_utf8_lossy(msg.top_via().span.slice(response)).into_owned();
    let cseq = msg.cseq();
    let request = format!(
        "{method} sip:user@example.edu SIP/2.0\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {num} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        method = String::from_utf8_lossy(cseq.method),
        from = value(sip::HeaderName::From),
        to = value(sip::HeaderName::To),
        call_id = value(sip::HeaderName::CallId),
        num = cseq.number,
    );
    let mut out = vec![0u8; 65_536];
    let Verdict::Forward(t) =
        core.handle_inbound(inbound(request.as_bytes(), CLIENT), bl, &mut out)
    else {
        panic!("synthesised request not forwarded");
    };
    let forwarded = &out[..t.len];
    let start = forwarded.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let end = start
        + forwarded[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
        + 2;
    let our_via = &forwarded[start..end];
    assert!(our_via.starts_with(b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"));
    let first_line_end = response.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut relayed = response[..first_line_end].to_vec();
    relayed.extend_from_slice(our_via);
    relayed.extend_from_slice(&response[first_line_end..]);
    relayed
}

#[test]
fn every_torture_message_gets_the_expected_verdict() {
    let index_text = std::fs::read_to_string(format!("{DIR}/index.json")).unwrap_or_else(|e| {
        panic!("{DIR}/index.json is missing ({e}): the shared test data must be present")
    });
    let index: Value = serde_json::from_str(&index_text).expect("index.json is JSON");
    let entries = index["entries"].as_array().expect("entries");
    let mut on_disk: Vec<String> = std::fs::read_dir(format!("{DIR}/messages"))
        .expect("messages directory")
        .map(|e| {
            format!(
                "messages/{}",
                e.expect("entry").file_name().to_string_lossy()
            )
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = entries
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every message on disk has an index entry and vice versa"
    );

    let backends: Vec<SocketAddr> = BACKENDS.iter().map(|a| a.parse().unwrap()).collect();
    let mut checked = 0;
    let mut failures = Vec::new();
    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(format!("{DIR}/{file}")).expect("message file");
        let expectation = &entry["proxy_expectation"];
        let action = expectation["action"].as_str();
        let statuses: Vec<u16> = expectation["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as u16)
            .collect();
        let is_response = entry["message_kind"] == "response";
        let (mut core, bl) = core();
        let mut out = vec![0u8; 65_536];
        let verdict = core.handle_inbound(inbound(&bytes, CLIENT), &bl, &mut out);
        let describe = |v: &Verdict, out: &[u8]| match v {
            Verdict::Forward(t) | Verdict::Respond(t) => {
                format!("{v:?}\n{}", String::from_utf8_lossy(&out[..t.len]))
            }
            other => format!("{other:?}"),
        };
        let ok = match (is_response, action, &verdict) {
            (false, Some("forward"), Verdict::Forward(t)) => {
                check_forwarded_request(file, &bytes, &out[..t.len]);
                // RFC 3261 §18.1.1: over 1300 bytes the request goes to the backend over TCP.
                let transport = if t.len > 1300 {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                matches!(t.dest, Dest::Addr(tr, a) if tr == transport && backends.contains(&a))
            }
            (false, Some("reject"), Verdict::Respond(t)) => {
                let code = status_of(&out[..t.len]);
                if statuses.is_empty() {
                    code >= 400
                } else {
                    statuses.contains(&code)
                }
            }
            (false, Some("reject_or_repair" | "forward_or_reject"), Verdict::Respond(t)) => {
                statuses.contains(&status_of(&out[..t.len]))
            }
            (false, Some("reject_or_repair" | "forward_or_reject"), Verdict::Forward(t)) => {
                check_forwarded_request(file, &bytes, &out[..t.len]);
                true
            }
            // Not described by RFC 4475: anything but forwarding it is acceptable.
            (false, None, v) => !matches!(v, Verdict::Forward(_)),
            (true, Some("drop"), Verdict::Drop(_)) => true,
            (true, Some("forward"), Verdict::Drop(DropReason::ForeignVia)) => {
                // As received (from nowhere) its top Via is not ours: dropped, RFC 3261
                // §18.1.2. Coming back from a backend under our Via it is relayed unchanged.
                let relayed = with_our_via(&mut core, &bl, &bytes);
                let mut out = vec![0u8; 65_536];
                match core.handle_inbound(inbound(&relayed, BACKENDS[0]), &bl, &mut out) {
                    Verdict::Forward(t) => {
                        let mut slots = [EMPTY_HEADER; 64];
                        let msg = sip::parse(&bytes, &mut slots, &Limits::default()).unwrap();
                        let via = msg.top_via();
                        let host = std::str::from_utf8(via.host.text).unwrap();
                        let want: SocketAddr = format!("{host}:{}", via.port.unwrap_or(5060))
                            .parse()
                            .unwrap();
                        &out[..t.len] == msg.as_bytes()
                            && t.dest == Dest::Addr(Transport::Udp, want)
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{file} (expected {action:?} {statuses:?}): {}",
                describe(&verdict, &out)
            ));
        }
        checked += 1;
    }
    assert_eq!(checked, on_disk.len());
    assert!(
        failures.is_empty(),
        "{} of {checked} messages misbehaved:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
