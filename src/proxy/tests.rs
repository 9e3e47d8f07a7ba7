//! Unit tests of the proxy core: one request or response in, one verdict out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::balance::{BackendSpec, Blacklist, BlockReason, Pool};
use crate::sip::{self, EMPTY_HEADER, Limits, Transport};

const PROXY: &str = "192.0.2.10:5060";
const CLIENT: &str = "198.51.100.7:5090";
const B1: &str = "192.0.2.70:5070";
const B2: &str = "192.0.2.71:5070";

struct Harness {
    core: Core,
    blacklist: Blacklist,
    out: Vec<u8>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pool() -> Arc<Pool> {
    let specs: Vec<BackendSpec> = [B1, B2]
        .iter()
        .map(|a| BackendSpec::from_uri(&format!("sip:{a}")).unwrap())
        .collect();
    Arc::new(Pool::new(&specs).unwrap())
}

fn config() -> ProxyConfig {
    let mut config = ProxyConfig::default();
    for l in &mut config.listeners {
        l.local = addr(PROXY);
    }
    config.aliases.push("edge.example.net".into());
    config
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), 0, 1)
    }

    fn with(config: ProxyConfig, shard: u16, shards: u16) -> Self {
        Self {
            core: Core::new(config, shard, shards, pool()).unwrap(),
            blacklist: Blacklist::default(),
            out: vec![0; 65_536],
        }
    }

    fn send_full(
        &mut self,
        src: &str,
        transport: Transport,
        flow: Option<FlowId>,
        bytes: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let input = Inbound {
            now: Instant::now(),
            src: addr(src),
            local: addr(PROXY),
            transport,
            flow,
            placement: Placement::Unknown,
            compressed: false,
            bytes,
        };
        let v = self
            .core
            .handle_inbound(input, &self.blacklist, &mut self.out);
        let bytes = match v {
            Verdict::Forward(t) | Verdict::Respond(t) => self.out[..t.len].to_vec(),
            _ => Vec::new(),
        };
        (v, bytes)
    }

    fn send(&mut self, src: &str, bytes: &[u8]) -> (Verdict, Vec<u8>) {
        self.send_full(src, Transport::Udp, None, bytes)
    }
}

/// A request from the outside client, with `extra` header lines spliced in.
fn request(method: &str, ruri: &str, call_id: &str, branch: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch={branch}\r\n\
         {extra}From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.org>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn invite(extra: &str) -> Vec<u8> {
    request(
        "INVITE",
        "sip:bob@example.org",
        "c1@client",
        "z9hG4bKc1",
        &format!("Max-Forwards: 70\r\n{extra}"),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses `bytes` and runs `f` on the message.
fn with_parsed<R>(bytes: &[u8], f: impl FnOnce(&sip::Message<'_, '_>) -> R) -> R {
    let mut slots = [EMPTY_HEADER; 64];
    let msg = sip::parse(bytes, &mut slots, &Limits::default())
        .unwrap_or_else(|e| panic!("output does not parse ({e}):\n{}", text(bytes)));
    f(&msg)
}

fn status(bytes: &[u8]) -> u16 {
    with_parsed(bytes, |m| m.status_code().unwrap_or(0))
}

fn top_branch(bytes: &[u8]) -> String {
    with_parsed(bytes, |m| text(m.top_via().branch.unwrap_or(b"")))
}

fn header(bytes: &[u8], name: &str) -> Option<String> {
    with_parsed(bytes, |m| {
        m.header_named(name.as_bytes()).map(|h| text(h.value))
    })
}

fn is_backend(dest: Dest) -> bool {
    matches!(dest, Dest::Addr(Transport::Udp, a) if a == addr(B1) || a == addr(B2))
}

/// Table of single requests from the client and the verdict they must get.
macro_rules! request_table {
    ($($name:ident: $msg:expr => |$v:ident, $out:ident| $check:expr;)*) => {$(
        #[test]
        fn $name() {
            let mut h = Harness::new();
            let msg: Vec<u8> = $msg;
            let ($v, $out) = h.send(CLIENT, &msg);
            let ok: bool = $check;
            assert!(ok, "{:?}\n{}", $v, text(&$out));
        }
    )*};
}

request_table! {
    invite_goes_to_a_backend_with_our_via:
        invite("") => |v, out| matches!(v, Verdict::Forward(t) if is_backend(t.dest))
            && top_branch(&out).starts_with("z9hG4bK")
            && with_parsed(&out, |m| m.top_via().host.text == b"192.0.2.10" && m.vias().count() == 2);
    max_forwards_is_decremented:
        invite("") => |_v, out| with_parsed(&out, |m| m.max_forwards().map(|x| x.value) == Some(69));
    max_forwards_absent_gets_70:
        request("INVITE", "sip:bob@example.org", "c2", "z9hG4bKa", "") =>
        |_v, out| header(&out, "Max-Forwards").as_deref() == Some("70");
    max_forwards_is_capped_like_the_reference:
        request("INVITE", "sip:bob@example.org", "c2", "z9hG4bKa", "Max-Forwards: 200\r\n") =>
        |_v, out| header(&out, "Max-Forwards").as_deref() == Some("70");
    max_forwards_one_becomes_zero_and_is_forwarded:
        request("INVITE", "sip:bob@example.org", "c2", "z9hG4bKa", "Max-Forwards: 1\r\n") =>
        |v, out| matches!(v, Verdict::Forward(_)) && header(&out, "Max-Forwards").as_deref() == Some("0");
    max_forwards_zero_is_483:
        request("INVITE", "sip:bob@example.org", "c2", "z9hG4bKa", "Max-Forwards: 0\r\n") =>
        |v, out| matches!(v, Verdict::Respond(t) if t.dest == Dest::Addr(Transport::Udp, addr(CLIENT))) && status(&out) == 483;
    ack_with_max_forwards_zero_is_dropped:
        request("ACK", "sip:bob@example.org", "c2", "z9hG4bKa", "Max-Forwards: 0\r\n") =>
        |v, _out| v == Verdict::Drop(DropReason::BadAck);
    options_for_another_host_with_zero_is_483:
        request("OPTIONS", "sip:bob@example.org", "c3", "z9hG4bKa", "Max-Forwards: 0\r\n") =>
        |_v, out| status(&out) == 483;
    options_for_the_proxy_with_zero_is_answered:
        request("OPTIONS", "sip:ping@192.0.2.10", "c3", "z9hG4bKa", "Max-Forwards: 0\r\n") =>
        |_v, out| status(&out) == 200 && header(&out, "Allow").is_some_and(|a| a.contains("INVITE"));
    options_for_the_proxy_is_answered:
        request("OPTIONS", "sip:192.0.2.10:5060", "c3", "z9hG4bKa", "Max-Forwards: 70\r\n") =>
        |v, out| matches!(v, Verdict::Respond(_)) && status(&out) == 200
            && header(&out, "Accept").is_some() && header(&out, "Supported").is_some()
            && with_parsed(&out, |m| m.read_to().is_ok_and(|to| to.tag.is_some()));
    options_for_an_alias_is_answered:
        request("OPTIONS", "sip:edge.example.net", "c3", "z9hG4bKa", "") =>
        |_v, out| status(&out) == 200;
    options_for_a_user_at_the_proxy_is_forwarded:
        request("OPTIONS", "sip:service@192.0.2.10:5060", "c3", "z9hG4bKa", "") =>
        |v, _out| matches!(v, Verdict::Forward(t) if is_backend(t.dest));
    register_to_the_proxy_address_goes_to_the_registrar_pool:
        request("REGISTER", "sip:192.0.2.10", "c3", "z9hG4bKa", "Contact: <sip:a@198.51.100.7:5090>\r\n") =>
        |v, out| matches!(v, Verdict::Forward(t) if is_backend(t.dest)) && header(&out, "Record-Route").is_none();
    rport_is_filled_and_received_added:
        request("INVITE", "sip:bob@example.org", "c4", "z9hG4bKa;rport", "") =>
        |_v, out| text(&out).contains("Via: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKa;rport=5090;received=198.51.100.7\r\n");
    received_is_added_when_sent_by_differs:
        b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP pc.example.com;branch=z9hG4bKz\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c5\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_vec() =>
        |_v, out| text(&out).contains(";branch=z9hG4bKz;received=198.51.100.7\r\n");
    no_received_when_sent_by_matches:
        invite("") => |_v, out| !text(&out).contains("received=");
    record_route_has_lr_and_affinity:
        invite("") => |_v, out| header(&out, "Record-Route")
            .is_some_and(|rr| rr.starts_with("<sip:192.0.2.10:5060;lr;sea=") && rr.ends_with('>'));
    proxy_require_is_420_with_unsupported:
        invite("Proxy-Require: foo, bar\r\n") => |_v, out| status(&out) == 420
            && header(&out, "Unsupported").as_deref() == Some("foo, bar");
    unknown_scheme_is_416:
        request("INVITE", "im:bob@example.org", "c6", "z9hG4bKa", "") => |_v, out| status(&out) == 416;
    tel_uri_from_outside_goes_to_the_pool:
        request("INVITE", "tel:+15551234", "c6", "z9hG4bKa", "") => |v, _out| matches!(v, Verdict::Forward(t) if is_backend(t.dest));
    our_route_is_popped:
        invite("Route: <sip:192.0.2.10;lr>\r\n") => |v, out| matches!(v, Verdict::Forward(_))
            && header(&out, "Route").is_none();
    our_route_is_popped_keeping_the_next:
        invite("Route: <sip:edge.example.net;lr>, <sip:other.example.com;lr>\r\n") =>
        |_v, out| header(&out, "Route").as_deref() == Some("<sip:other.example.com;lr>");
    both_of_our_routes_are_popped:
        invite("Route: <sip:192.0.2.10;lr>\r\nRoute: <sip:192.0.2.10:5060;transport=tcp;lr>,<sip:x.example.com;lr>\r\n") =>
        |_v, out| header(&out, "Route").as_deref() == Some("<sip:x.example.com;lr>");
    a_foreign_route_stays:
        invite("Route: <sip:other.example.com;lr>\r\n") =>
        |v, out| matches!(v, Verdict::Forward(t) if is_backend(t.dest))
            && header(&out, "Route").as_deref() == Some("<sip:other.example.com;lr>");
    trailing_datagram_octets_are_not_forwarded:
        [invite(""), b"garbage after the message".to_vec()].concat() =>
        |_v, out| !text(&out).contains("garbage") && with_parsed(&out, |m| m.len() == out.len());
    malformed_request_is_400_naming_the_defect:
        b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKq;rport\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c7\r\nCSeq: x INVITE\r\nContent-Length: 0\r\n\r\n".to_vec() =>
        |v, out| matches!(v, Verdict::Respond(t) if t.dest == Dest::Addr(Transport::Udp, addr(CLIENT)))
            && text(&out).starts_with("SIP/2.0 400 Malformed CSeq\r\n")
            && text(&out).contains(";received=198.51.100.7") && text(&out).contains(";rport=5090");
    malformed_ack_is_never_answered:
        b"ACK sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKq\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c7\r\nCSeq: x ACK\r\nContent-Length: 0\r\n\r\n".to_vec() =>
        |v, _out| v == Verdict::Drop(DropReason::BadAck);
    garbage_is_dropped:
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec() => |v, _out| matches!(v, Verdict::Drop(_));
    crlf_keepalive_is_dropped:
        b"\r\n\r\n".to_vec() => |v, _out| v == Verdict::Drop(DropReason::KeepAlive);
    error_response_honours_maddr:
        b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com:5999;maddr=203.0.113.9;branch=z9hG4bKq\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c8\r\nCSeq: 1 INVITE\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n".to_vec() =>
        |v, _out| matches!(v, Verdict::Respond(t) if t.dest == Dest::Addr(Transport::Udp, addr("203.0.113.9:5999")));
    error_response_without_rport_goes_to_sent_by_port:
        b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com:5999;branch=z9hG4bKq\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c8\r\nCSeq: 1 INVITE\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n".to_vec() =>
        |v, _out| matches!(v, Verdict::Respond(t) if t.dest == Dest::Addr(Transport::Udp, addr("198.51.100.7:5999")));
}

#[test]
fn retransmission_cancel_and_non_2xx_ack_share_the_invite_branch() {
    let mut h = Harness::new();
    let (v1, first) = h.send(CLIENT, &invite(""));
    let (v2, again) = h.send(CLIENT, &invite(""));
    assert_eq!(v1, v2);
    assert_eq!(
        first, again,
        "a retransmission must be forwarded identically (RFC 3261 §16.11)"
    );
    let branch = top_branch(&first);
    let cancel = request(
        "CANCEL",
        "sip:bob@example.org",
        "c1@client",
        "z9hG4bKc1",
        "Max-Forwards: 70\r\n",
    );
    let (vc, cancel_out) = h.send(CLIENT, &cancel);
    assert_eq!(top_branch(&cancel_out), branch);
    let ack = b"ACK sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKc1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.org>;tag=b9\r\n\
Call-ID: c1@client\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    let (va, ack_out) = h.send(CLIENT, ack);
    assert_eq!(
        top_branch(&ack_out),
        branch,
        "ACK for a non-2xx gets the INVITE's branch"
    );
    // All three go to the same backend.
    let dest = |v: Verdict| match v {
        Verdict::Forward(t) => t.dest,
        other => panic!("{other:?}"),
    };
    assert_eq!(dest(v1), dest(vc));
    assert_eq!(dest(v1), dest(va));
    // A new transaction gets another branch.
    let other = request(
        "INVITE",
        "sip:bob@example.org",
        "c1@client",
        "z9hG4bKc2",
        "",
    );
    let (_, other_out) = h.send(CLIENT, &other);
    assert_ne!(top_branch(&other_out), branch);
}

#[test]
fn rfc2543_requests_get_a_deterministic_branch() {
    let mut h = Harness::new();
    let invite = b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090\r\n\
From: <sip:a@example.com>\r\nTo: <sip:b@example.org>\r\nCall-ID: old@x\r\nCSeq: 5 INVITE\r\n\r\n";
    let (_, a) = h.send(CLIENT, invite);
    let (_, b) = h.send(CLIENT, invite);
    assert_eq!(top_branch(&a), top_branch(&b));
    let ack = b"ACK sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090\r\n\
From: <sip:a@example.com>\r\nTo: <sip:b@example.org>;tag=x\r\nCall-ID: old@x\r\nCSeq: 5 ACK\r\n\r\n";
    let (_, c) = h.send(CLIENT, ack);
    assert_eq!(top_branch(&a), top_branch(&c));
    let bare_cookie = b"OPTIONS sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bK\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: bc@x\r\nCSeq: 8 OPTIONS\r\n\r\n";
    let bare_cookie_2 = String::from_utf8_lossy(bare_cookie).replace("CSeq: 8", "CSeq: 9");
    let (_, d) = h.send(CLIENT, bare_cookie);
    let (_, e) = h.send(CLIENT, bare_cookie_2.as_bytes());
    assert_ne!(
        top_branch(&d),
        top_branch(&e),
        "a bare cookie falls back to the RFC 2543 fields"
    );
}

/// The response a backend sends for `forwarded`: its Via lines copied (RFC 3261 §8.2.6.2).
fn backend_response(forwarded: &[u8], code: u16, extra: &str) -> Vec<u8> {
    with_parsed(forwarded, |m| {
        let mut r = format!("SIP/2.0 {code} Whatever\r\n");
        for h in m.headers_of(sip::HeaderName::Via) {
            r.push_str(&format!("Via: {}\r\n", text(h.value)));
        }
        for name in ["From", "Call-ID", "CSeq"] {
            r.push_str(&format!("{name}: {}\r\n", header(forwarded, name).unwrap()));
        }
        r.push_str(&format!(
            "To: {};tag=uas\r\n{extra}Content-Length: 0\r\n\r\n",
            header(forwarded, "To").unwrap()
        ));
        r.into_bytes()
    })
}

/// Sends a client's INVITE (Call-ID `call_id`) through the proxy, then the backend's `code`
/// response to it (with `extra` header lines) back: the response as the backend sent it, and
/// the verdict and bytes of relaying it.
fn relay_response(
    h: &mut Harness,
    call_id: &str,
    code: u16,
    extra: &str,
) -> (Vec<u8>, Verdict, Vec<u8>) {
    let (fwd, backend) = forward_invite(h, call_id);
    let response = backend_response(&fwd, code, extra);
    let (v, relayed) = h.send(&backend.to_string(), &response);
    (response, v, relayed)
}

/// Sends an INVITE of `call_id` from the client; the request as forwarded and its backend.
fn forward_invite(h: &mut Harness, call_id: &str) -> (Vec<u8>, SocketAddr) {
    let branch = format!("z9hG4bK{call_id};rport");
    let (v, fwd) = h.send(
        CLIENT,
        &request("INVITE", "sip:bob@example.org", call_id, &branch, ""),
    );
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    let Dest::Addr(_, backend) = t.dest else {
        panic!()
    };
    (fwd, backend)
}

#[test]
fn response_is_stripped_of_our_via_and_sent_by_rport() {
    let mut h = Harness::new();
    let (response, v, relayed) = relay_response(&mut h, "r1", 180, "");
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    assert_eq!(t.dest, Dest::Addr(Transport::Udp, addr(CLIENT)));
    assert_eq!(
        t.src,
        Some(addr(PROXY)),
        "RFC 3581 §4: from the address the request came in on"
    );
    // Byte-identical except for our Via line.
    let ours = response.windows(4).position(|w| w == b"Via:").unwrap();
    let line_end = ours
        + response[ours..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
        + 2;
    let mut expected = response[..ours].to_vec();
    expected.extend_from_slice(&response[line_end..]);
    assert_eq!(text(&relayed), text(&expected));
    assert_eq!(h.core.last_message().kind, MessageKind::Response(180));
}

/// RFC 3261 §16.7: the proxy relays a response by its Via; a Contact or Record-Route it
/// never reads does not cost the caller the backend's 200 OK. (The same Contact in a request
/// is read, hence checked: `request_with_malformed_contact_gets_400`.)
#[test]
fn response_with_a_contact_the_proxy_does_not_read_is_relayed_as_written() {
    let mut h = Harness::new();
    let odd = "Contact: <sip:uas@[bad;x\r\nRecord-Route: sip:a@b;lr?x=\r\n";
    let (_, v, relayed) = relay_response(&mut h, "r2", 200, odd);
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    assert_eq!(t.dest, Dest::Addr(Transport::Udp, addr(CLIENT)));
    assert!(
        text(&relayed).contains(odd),
        "carried as written: {}",
        text(&relayed)
    );
}

#[test]
fn response_with_from_and_to_the_proxy_does_not_read_is_relayed_as_written() {
    let mut h = Harness::new();
    let (fwd, backend) = forward_invite(&mut h, "r4");
    // RFC 3261 §16.7 relays by Via; From and To are the endpoints' business.
    let odd_from = "From: Alice <sip:alice@[atlanta;tag=1";
    let odd_to = "To: <sip:bob@example.org;tag=2 junk";
    let response: String = text(&backend_response(&fwd, 200, ""))
        .split_inclusive("\r\n")
        .map(|line| {
            if line.starts_with("From:") {
                format!("{odd_from}\r\n")
            } else if line.starts_with("To:") {
                format!("{odd_to}\r\n")
            } else {
                line.to_string()
            }
        })
        .collect();
    let (v, relayed) = h.send(&backend.to_string(), response.as_bytes());
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    assert_eq!(t.dest, Dest::Addr(Transport::Udp, addr(CLIENT)));
    let relayed = text(&relayed);
    assert!(
        relayed.contains(odd_from) && relayed.contains(odd_to),
        "carried as written: {relayed}"
    );
}

#[test]
fn request_with_malformed_contact_gets_400() {
    let mut h = Harness::new();
    let (v, out) = h.send(
        CLIENT,
        &request(
            "INVITE",
            "sip:bob@example.org",
            "r3",
            "z9hG4bKr3;rport",
            "Contact: <sip:uas@[bad;x\r\n",
        ),
    );
    assert!(
        matches!(v, Verdict::Respond(t) if t.dest == Dest::Addr(Transport::Udp, addr(CLIENT)))
            && status(&out) == 400,
        "{v:?} {}",
        text(&out)
    );
}

#[test]
fn responses_that_are_not_ours_are_dropped() {
    let mut h = Harness::new();
    let foreign = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKforged\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\n\
Call-ID: f1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(h.send(B1, foreign).0, Verdict::Drop(DropReason::ForeignVia));
    let malformed = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP ;;\r\nCall-ID: f1\r\n\r\n";
    assert_eq!(
        h.send(B1, malformed).0,
        Verdict::Drop(DropReason::MalformedResponse)
    );
    // Only our Via: it answers a request nobody sent through us.
    let (_, fwd) = h.send(CLIENT, &invite(""));
    let ours_only = with_parsed(&fwd, |m| {
        format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c1@client\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            text(m.top_via().span.slice(&fwd))
        )
    });
    assert_eq!(
        h.send(B1, ours_only.as_bytes()).0,
        Verdict::Drop(DropReason::NoNextVia)
    );
}

#[test]
fn a_request_that_comes_back_is_a_loop_but_a_changed_one_spirals() {
    let mut h = Harness::new();
    let (_, fwd) = h.send(CLIENT, &invite(""));
    // The same request comes back from outside unchanged: a loop (RFC 3261 §16.3 item 4).
    let (v, out) = h.send("203.0.113.50:5060", &fwd);
    assert!(matches!(v, Verdict::Respond(_)), "{v:?}");
    assert_eq!(status(&out), 482);
    // Retargeted on the way (another Request-URI): a spiral, forwarded.
    let spiral = text(&fwd).replacen(
        "INVITE sip:bob@example.org",
        "INVITE sip:carol@example.org",
        1,
    );
    let (v, _) = h.send("203.0.113.50:5060", spiral.as_bytes());
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
}

#[test]
fn requests_from_a_backend_follow_the_request_uri() {
    let mut h = Harness::new();
    let bye = |ruri: &str, extra: &str| {
        format!(
            "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.70:5070;branch=z9hG4bKb1\r\n{extra}\
             From: <sip:b@y>;tag=2\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: bye1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let (v, out) = h.send(B1, &bye("sip:alice@198.51.100.7:5090", ""));
    assert_eq!(
        v,
        Verdict::Forward(Transmit {
            dest: Dest::Addr(Transport::Udp, addr(CLIENT)),
            src: Some(addr(PROXY)),
            len: out.len(),
            compress: false
        })
    );
    assert_eq!(
        h.core.last_message().backend,
        pool().by_addr(addr(B1)).map(|b| b.id())
    );
    let (v, _) = h.send(B1, &bye("sip:alice@[2001:db8::7]:5062;transport=udp", ""));
    assert_eq!(
        v,
        Verdict::Drop(DropReason::UnsupportedTransport),
        "no IPv6 listener"
    );
    let (v, _) = h.send(B1, &bye("sip:alice@pc.example.com", ""));
    assert_eq!(v, Verdict::Drop(DropReason::Unresolved));
    // Our Route is popped, the next Route wins over the Request-URI.
    let (v, out) = h.send(
        B1,
        &bye(
            "sip:alice@pc.example.com",
            "Route: <sip:192.0.2.10;lr>, <sip:203.0.113.5:5070;lr>\r\n",
        ),
    );
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Addr(Transport::Udp, addr("203.0.113.5:5070"))),
        "{v:?}"
    );
    assert_eq!(
        header(&out, "Route").as_deref(),
        Some("<sip:203.0.113.5:5070;lr>")
    );
    // A strict router next (no lr): RFC 3261 §16.6 item 6.
    let (v, out) = h.send(
        B1,
        &bye(
            "sip:alice@198.51.100.7:5090",
            "Route: <sip:203.0.113.5:5070>\r\n",
        ),
    );
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Addr(Transport::Udp, addr("203.0.113.5:5070"))),
        "{v:?}"
    );
    assert!(
        text(&out).starts_with("BYE sip:203.0.113.5:5070 SIP/2.0\r\n"),
        "{}",
        text(&out)
    );
    assert_eq!(
        header(&out, "Route").as_deref(),
        Some("<sip:alice@198.51.100.7:5090>")
    );
    // Nothing to route on but the proxy itself.
    let (v, out) = h.send(B1, &bye("sip:192.0.2.10", ""));
    assert!(matches!(v, Verdict::Respond(_)));
    assert_eq!(status(&out), 482);
    // A non-SIP Request-URI from a backend cannot be routed.
    let (_, out) = h.send(B1, &bye("tel:+15550100", ""));
    assert_eq!(status(&out), 416);
}

#[test]
fn strict_router_request_uri_is_repaired() {
    let mut h = Harness::new();
    let (_, fwd) = h.send(CLIENT, &invite(""));
    let rr = header(&fwd, "Record-Route").unwrap();
    let our_uri = rr.trim_start_matches('<').trim_end_matches('>').to_owned();
    // A strict router sends our Record-Route URI as Request-URI, the real target last in Route.
    let bye = format!(
        "BYE {our_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKs1\r\n\
         Route: <sip:alice@198.51.100.99:5090>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\n\
         Call-ID: strict1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let (v, out) = h.send(CLIENT, bye.as_bytes());
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(
        text(&out).starts_with("BYE sip:alice@198.51.100.99:5090 SIP/2.0\r\n"),
        "{}",
        text(&out)
    );
    assert_eq!(header(&out, "Route"), None);
}

#[test]
fn affinity_token_keeps_a_dialog_on_its_backend() {
    let mut h = Harness::new();
    let (v, fwd) = h.send(CLIENT, &invite(""));
    let Verdict::Forward(first) = v else { panic!() };
    let rr = header(&fwd, "Record-Route").unwrap();
    // Find a Call-ID that the pool would send elsewhere, then carry the token in Route.
    let other = (0..100)
        .map(|i| format!("other{i}"))
        .find(|cid| {
            let (v, _) = h.send(CLIENT, &request("INVITE", "sip:b@y", cid, "z9hG4bKt", ""));
            matches!(v, Verdict::Forward(t) if t.dest != first.dest)
        })
        .unwrap();
    let bye = request(
        "BYE",
        "sip:bob@203.0.113.7",
        &other,
        "z9hG4bKt2",
        &format!("Route: {rr}\r\n"),
    );
    let (v, out) = h.send(CLIENT, &bye);
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == first.dest),
        "{v:?}"
    );
    assert_eq!(header(&out, "Route"), None);
    // A forged token is ignored: the Call-ID decides.
    let forged = rr.replace("sea=", "sea=A");
    let bye = request(
        "BYE",
        "sip:bob@203.0.113.7",
        &other,
        "z9hG4bKt3",
        &format!("Route: {forged}\r\n"),
    );
    let (v, _) = h.send(CLIENT, &bye);
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest != first.dest),
        "{v:?}"
    );
}

#[test]
fn no_backend_is_503_and_an_ack_is_dropped() {
    let mut h = Harness::new();
    let now = Instant::now();
    h.blacklist
        .report(addr(B1), BlockReason::IcmpUnreachable, now);
    h.blacklist
        .report(addr(B2), BlockReason::IcmpUnreachable, now);
    let (v, out) = h.send(CLIENT, &invite(""));
    assert!(matches!(v, Verdict::Respond(_)), "{v:?}");
    assert_eq!(status(&out), 503);
    let ack = request("ACK", "sip:bob@example.org", "c1@client", "z9hG4bKc1", "");
    assert_eq!(h.send(CLIENT, &ack).0, Verdict::Drop(DropReason::NoBackend));
}

#[test]
fn tcp_client_gets_responses_and_in_dialog_requests_over_its_connection() {
    let mut h = Harness::new();
    let flow = FlowId(0x2a);
    let inv = b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/TCP 198.51.100.7:40000;branch=z9hG4bKt1\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: tcp1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (v, fwd) = h.send_full("198.51.100.7:40000", Transport::Tcp, Some(flow), inv);
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    let Dest::Addr(Transport::Udp, backend) = t.dest else {
        panic!("{v:?}")
    };
    // Double Record-Route: the backend side over UDP, the client side over TCP with its flow.
    let rr = header(&fwd, "Record-Route").unwrap();
    assert!(rr.starts_with("<sip:192.0.2.10:5060;lr;sea="), "{rr}");
    assert!(
        rr.contains(", <sip:192.0.2.10:5060;transport=tcp;lr;sea=") && rr.ends_with(";sef=2a>"),
        "{rr}"
    );
    let (v, _) = h.send(
        &backend.to_string(),
        &backend_response(&fwd, 200, &format!("Record-Route: {rr}\r\n")),
    );
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Flow(flow)),
        "{v:?}"
    );
    // The callee hangs up: its BYE carries our Record-Route as Route.
    let bye = format!(
        "BYE sip:a@client.example.com;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP {backend};branch=z9hG4bKbye\r\n\
         Route: {rr}\r\nFrom: <sip:b@y>;tag=uas\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: tcp1\r\nCSeq: 9 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let (v, out) = h.send(&backend.to_string(), bye.as_bytes());
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Flow(flow)),
        "{v:?}"
    );
    assert_eq!(header(&out, "Route"), None);
    assert!(
        text(&out).starts_with("Via: SIP/2.0/TCP ")
            || text(&out).contains("\r\nVia: SIP/2.0/TCP 192.0.2.10:5060;branch=")
    );
    // Errors to a TCP client go back over its connection too.
    let bad = String::from_utf8_lossy(inv).replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (v, _) = h.send_full(
        "198.51.100.7:40000",
        Transport::Tcp,
        Some(flow),
        bad.as_bytes(),
    );
    assert!(
        matches!(v, Verdict::Respond(t) if t.dest == Dest::Flow(flow)),
        "{v:?}"
    );
}

#[test]
fn large_request_to_a_udp_backend_leaves_over_tcp() {
    let mut h = Harness::new();
    let filler = format!("X-Filler: {}\r\n", "y".repeat(1400));
    let (v, out) = h.send(CLIENT, &invite(&filler));
    let Verdict::Forward(t) = v else {
        panic!("{v:?}")
    };
    assert!(matches!(t.dest, Dest::Addr(Transport::Tcp, _)), "{v:?}");
    assert_eq!(t.src, None);
    assert!(text(&out).contains("\r\nVia: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK"));
    // The client side stays UDP in the Record-Route.
    assert!(header(&out, "Record-Route").is_some_and(
        |rr| rr.contains("transport=tcp") && rr.contains(", <sip:192.0.2.10:5060;lr;")
    ));
    let small = invite("");
    let (v, _) = h.send(CLIENT, &small);
    assert!(matches!(v, Verdict::Forward(t) if matches!(t.dest, Dest::Addr(Transport::Udp, _))));
}

#[test]
fn content_length_is_added_on_streams() {
    let mut h = Harness::new();
    let mut config = config();
    config.udp_size_limit = Some(10);
    h.core = Core::new(config, 0, 1, pool()).unwrap();
    let no_cl = b"INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKn\r\n\
From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: ncl\r\nCSeq: 1 INVITE\r\n\r\nv=0\r\n";
    let (v, out) = h.send(CLIENT, no_cl);
    assert!(
        matches!(v, Verdict::Forward(t) if matches!(t.dest, Dest::Addr(Transport::Tcp, _))),
        "{v:?}"
    );
    assert_eq!(header(&out, "Content-Length").as_deref(), Some("5"));
    assert!(out.ends_with(b"\r\n\r\nv=0\r\n"));
}

#[test]
fn other_shards_calls_are_handed_off_in_every_placement() {
    let call_of = |shard: u16| {
        (0..1000)
            .map(|i| format!("call{i}"))
            .find(|c| crate::shard::shard_of(c.as_bytes(), 2) == shard)
            .unwrap()
    };
    let mut h = Harness::with(config(), 0, 2);
    let foreign = request("INVITE", "sip:b@y", &call_of(1), "z9hG4bKh", "");
    let own = request("INVITE", "sip:b@y", &call_of(0), "z9hG4bKh", "");
    // Even a broken message goes to its call's shard (it is answered there).
    let broken = String::from_utf8_lossy(&foreign).replace("CSeq: 1 INVITE", "CSeq: x");
    let mut send = |placement: Placement, bytes: &[u8]| {
        let input = Inbound {
            now: Instant::now(),
            src: addr(CLIENT),
            local: addr(PROXY),
            transport: Transport::Udp,
            flow: None,
            placement,
            compressed: false,
            bytes,
        };
        h.core.handle_inbound(input, &h.blacklist, &mut h.out)
    };
    // Checked before the parse (Unknown) or by the parsed Call-ID (Steered), the same
    // messages move: a stray steered datagram costs a parse, never a wrong shard.
    for placement in [Placement::Unknown, Placement::Steered] {
        assert_eq!(
            send(placement, &foreign),
            Verdict::Handoff(1),
            "{placement:?}"
        );
        assert_eq!(
            send(placement, broken.as_bytes()),
            Verdict::Handoff(1),
            "{placement:?}"
        );
        assert!(
            matches!(send(placement, &own), Verdict::Forward(_)),
            "{placement:?}"
        );
    }
    assert!(matches!(
        send(Placement::HandedOff, &foreign),
        Verdict::Forward(_)
    ));
}

#[test]
fn ipv6_listener_advertises_brackets_and_writes_received() {
    let mut config = config();
    config.listeners.push(ListenerConfig::new(
        Transport::Udp,
        addr("[2001:db8::10]:5060"),
    ));
    let mut h = Harness::with(config, 0, 1);
    let msg = b"BYE sip:a@[2001:db8::7]:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.70:5070;branch=z9hG4bKv6;rport\r\n\
From: <sip:b@y>;tag=2\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: v6\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let (v, out) = h.send(B1, msg);
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Addr(Transport::Udp, addr("[2001:db8::7]:5062")) && t.src == Some(addr("[2001:db8::10]:5060"))),
        "{v:?}"
    );
    assert!(
        text(&out).contains("Via: SIP/2.0/UDP [2001:db8::10]:5060;branch="),
        "{}",
        text(&out)
    );
    let mut h = Harness::new();
    let (_, out) = h.send_full(
        "[2001:db8::99]:7000",
        Transport::Udp,
        None,
        &request("INVITE", "sip:b@y", "v6b", "z9hG4bKa;rport", ""),
    );
    assert!(
        text(&out).contains(";rport=7000;received=2001:db8::99\r\n"),
        "{}",
        text(&out)
    );
}

#[test]
fn drop_reasons_have_distinct_labels() {
    let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), DropReason::ALL.len());
    for r in DropReason::ALL {
        let _: crate::metrics::DropReason = r.into();
    }
}

#[test]
fn route_uris_with_headers_never_become_the_request_uri() {
    let mut h = Harness::new();
    let (_, fwd) = h.send(CLIENT, &invite(""));
    let rr = header(&fwd, "Record-Route").unwrap();
    let our_uri = rr.trim_start_matches('<').trim_end_matches('>').to_owned();
    let strict = format!(
        "BYE {our_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5090;branch=z9hG4bKh1\r\n\
         Route: <sip:alice@198.51.100.99:5090?Subject=hi>\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\n\
         Call-ID: hdr1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let (v, out) = h.send(CLIENT, strict.as_bytes());
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    with_parsed(&out, |m| assert!(m.is_request()));
    let bye = b"BYE sip:alice@198.51.100.7:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.70:5070;branch=z9hG4bKh2\r\n\
Route: <sip:203.0.113.5:5070?X=y>\r\nFrom: <sip:b@y>;tag=2\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: hdr2\r\nCSeq: 2 BYE\r\n\
Content-Length: 0\r\n\r\n";
    let (v, out) = h.send(B1, bye);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    assert!(text(&out).starts_with("BYE sip:alice@198.51.100.7:5090 SIP/2.0\r\n"));
}

#[test]
fn a_shared_pool_is_followed_and_tokens_follow_it() {
    let shared = Arc::new(arc_swap::ArcSwap::new(pool()));
    let mut h = Harness::new();
    h.core = Core::with_shared_pool(config(), 0, 1, Arc::clone(&shared)).unwrap();
    let (v, _) = h.send(CLIENT, &invite(""));
    assert!(
        matches!(v, Verdict::Forward(t) if is_backend(t.dest)),
        "{v:?}"
    );
    // Reload: only a third backend left.
    let only = BackendSpec::from_uri("sip:192.0.2.72:5070").unwrap();
    shared.store(Arc::new(Pool::new(&[only]).unwrap()));
    let (v, fwd) = h.send(CLIENT, &invite(""));
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Addr(Transport::Udp, addr("192.0.2.72:5070"))),
        "{v:?}"
    );
    // Its affinity token is known at once: an in-dialog request naming it goes there.
    let rr = header(&fwd, "Record-Route").unwrap();
    let bye = request(
        "BYE",
        "sip:bob@203.0.113.7",
        "c1@client",
        "z9hG4bKt9",
        &format!("Route: {rr}\r\n"),
    );
    let (v, _) = h.send(CLIENT, &bye);
    assert!(
        matches!(v, Verdict::Forward(t) if t.dest == Dest::Addr(Transport::Udp, addr("192.0.2.72:5070"))),
        "{v:?}"
    );
}

/// Runs one message that arrived SigComp-compressed (already decompressed by the runtime).
fn send_compressed(h: &mut Harness, src: &str, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    let input = Inbound {
        now: Instant::now(),
        src: addr(src),
        local: addr(PROXY),
        transport: Transport::Udp,
        flow: None,
        placement: Placement::Unknown,
        compressed: true,
        bytes,
    };
    let v = h.core.handle_inbound(input, &h.blacklist, &mut h.out);
    let bytes = match v {
        Verdict::Forward(t) | Verdict::Respond(t) => h.out[..t.len].to_vec(),
        _ => Vec::new(),
    };
    (v, bytes)
}

fn transmit_of(v: Verdict) -> Transmit {
    match v {
        Verdict::Forward(t) | Verdict::Respond(t) => t,
        other => panic!("expected a transmit, got {other:?}"),
    }
}

/// A SigComp UE's INVITE: its Via asks for compressed responses (RFC 3486 §4).
fn sigcomp_invite() -> Vec<u8> {
    String::from_utf8(invite(""))
        .unwrap()
        .replace(";branch=z9hG4bKc1", ";branch=z9hG4bKc1;comp=sigcomp")
        .into_bytes()
}

#[test]
fn compressed_request_gets_a_sigcomp_record_route_on_the_client_side_only() {
    let mut h = Harness::new();
    let (v, out) = send_compressed(&mut h, CLIENT, &sigcomp_invite());
    let t = transmit_of(v);
    assert!(is_backend(t.dest), "{}", text(&out));
    assert!(!t.compress, "backends are plain SIP");
    // Our Via toward the plain backend does not ask for compression.
    with_parsed(&out, |m| {
        assert_eq!(m.top_via().comp, None, "{}", text(&out))
    });
    // RFC 3486 §5: double Record-Route, comp=sigcomp only on the URI the client uses.
    let rr = header(&out, "Record-Route").unwrap();
    let (backend_side, client_side) = rr.split_once(", ").unwrap_or_else(|| panic!("{rr}"));
    assert!(!backend_side.contains("comp="), "{rr}");
    assert!(client_side.ends_with(";comp=sigcomp>"), "{rr}");
    // A plain request keeps the single Record-Route.
    let (v, out) = h.send(CLIENT, &invite(""));
    assert!(!transmit_of(v).compress);
    let rr = header(&out, "Record-Route").unwrap();
    assert!(!rr.contains(", ") && !rr.contains("comp="), "{rr}");
}

#[test]
fn responses_are_compressed_toward_a_via_with_comp_sigcomp() {
    let mut h = Harness::new();
    let (v, forwarded) = send_compressed(&mut h, CLIENT, &sigcomp_invite());
    let Dest::Addr(_, backend) = transmit_of(v).dest else {
        panic!("not to a backend")
    };
    let backend = backend.to_string();
    let (v, out) = h.send(&backend, &backend_response(&forwarded, 200, ""));
    let t = transmit_of(v);
    assert_eq!(t.dest, Dest::Addr(Transport::Udp, addr(CLIENT)));
    assert!(t.compress, "{}", text(&out));
    // The same without comp=sigcomp on the client's Via: plain.
    let (v, forwarded) = h.send(CLIENT, &invite(""));
    let (v2, _) = h.send(&backend, &backend_response(&forwarded, 180, ""));
    assert!(!transmit_of(v).compress);
    assert!(!transmit_of(v2).compress);
}

#[test]
fn generated_responses_follow_the_top_via_comp() {
    let mut h = Harness::new();
    let bad = String::from_utf8(sigcomp_invite())
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0")
        .into_bytes();
    let (v, out) = send_compressed(&mut h, CLIENT, &bad);
    assert_eq!(status(&out), 483);
    assert!(transmit_of(v).compress);
    let plain = String::from_utf8(invite(""))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    let (v, out) = h.send(CLIENT, plain.as_bytes());
    assert_eq!(status(&out), 483);
    assert!(!transmit_of(v).compress);
}

#[test]
fn requests_to_a_sigcomp_uri_are_compressed_and_say_so_in_our_via() {
    let mut h = Harness::new();
    let bye = |ruri: &str| {
        format!(
            "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.70:5070;branch=z9hG4bKb1\r\n\
             From: <sip:b@y>;tag=2\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: bye1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let (v, out) = h.send(B1, &bye("sip:alice@198.51.100.7:5090;comp=sigcomp"));
    let t = transmit_of(v);
    assert_eq!(t.dest, Dest::Addr(Transport::Udp, addr(CLIENT)));
    assert!(t.compress);
    with_parsed(&out, |m| {
        assert_eq!(m.top_via().comp, Some(&b"sigcomp"[..]))
    });
    let (v, out) = h.send(B1, &bye("sip:alice@198.51.100.7:5090"));
    assert!(!transmit_of(v).compress);
    with_parsed(&out, |m| assert_eq!(m.top_via().comp, None));
}

#[test]
fn shard_via_port_names_the_shard_in_via_only() {
    // Listener 0 is the shared UDP listener; the shard's own socket stands in for it.
    let mut config = config();
    let mut private = ListenerConfig::new(Transport::Udp, addr("192.0.2.10:40001"));
    private.via_for = Some(0);
    config.listeners.push(private);
    let mut h = Harness::with(config, 0, 1);
    let (v, out) = h.send(CLIENT, &invite(""));
    // RFC 3261 §18.2.2: the response follows our Via, to the shard's own port; the request
    // leaves from that port too (for UASes that answer the source address).
    assert!(
        matches!(v, Verdict::Forward(t) if t.src == Some(addr("192.0.2.10:40001"))),
        "{v:?}"
    );
    let via = header(&out, "Via").unwrap();
    assert!(
        via.starts_with("SIP/2.0/UDP 192.0.2.10:40001;branch="),
        "{via}"
    );
    // The dialog keeps naming the shared listener.
    let rr = header(&out, "Record-Route").unwrap();
    assert!(
        rr.contains("192.0.2.10:5060") && !rr.contains("40001"),
        "{rr}"
    );
    assert!(!rr.contains(','), "no double Record-Route: {rr}");
    // A request toward a client leaves from the shared port (the only one its NAT lets in);
    // the client's response still comes to the shard's port named in the Via.
    let bye = b"BYE sip:alice@198.51.100.7:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.70:5070;branch=z9hG4bKsb\r\n\
From: <sip:b@y>;tag=2\r\nTo: <sip:a@x>;tag=1\r\nCall-ID: sb\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let (v, out) = h.send(B1, bye);
    assert!(
        matches!(v, Verdict::Forward(t) if t.src == Some(addr(PROXY))),
        "{v:?}"
    );
    let via = header(&out, "Via").unwrap();
    assert!(
        via.starts_with("SIP/2.0/UDP 192.0.2.10:40001;branch="),
        "{via}"
    );
}

/// The generated text of a forwarded request goes to the end of the output buffer when that
/// leaves room for any output, else to a buffer of its own: the bytes sent and the verdict
/// are the same either way, down to a buffer too small for the request (513).
#[test]
fn forwarded_bytes_do_not_depend_on_the_room_in_the_output_buffer() {
    let routed = request(
        "INVITE",
        "sip:bob@example.org",
        "c2@client",
        "z9hG4bKc2",
        "Max-Forwards: 70\r\nRoute: <sip:192.0.2.10:5060;lr>, <sip:203.0.113.9;lr>\r\n",
    );
    for msg in [invite(""), routed] {
        let mut reference = Harness::new();
        let (want_verdict, want) = reference.send(CLIENT, &msg);
        assert!(
            matches!(want_verdict, Verdict::Forward(_)),
            "{want_verdict:?}"
        );
        let edges = [want.len(), 2 * msg.len() + 1024, 2 * msg.len() + 2048];
        for size in (0..8)
            .map(|k| 64 << k)
            .chain(edges.iter().flat_map(|&e| e - 2..e + 3))
        {
            let mut h = Harness::new();
            h.out = vec![0; size];
            let (verdict, bytes) = h.send(CLIENT, &msg);
            if size >= want.len() {
                assert_eq!(
                    (verdict, text(&bytes)),
                    (want_verdict, text(&want)),
                    "{size}"
                );
            } else {
                assert!(
                    !matches!(verdict, Verdict::Forward(_)),
                    "{size}: {verdict:?}"
                );
            }
        }
    }
}
