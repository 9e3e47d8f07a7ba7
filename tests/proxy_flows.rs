//! Realistic RFC flows (../shared/testdata/sip-realistic) driven through the proxy core in a
//! simulated network: a UAC, the proxy and two UAS backends exchange `Transmit`s over links
//! with latency and loss under a fake clock.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipedge::balance::{BackendSpec, Blacklist, Pool};
use sipedge::proxy::{Core, Dest, FlowId, Inbound, Placement, ProxyConfig, Verdict};
use sipedge::sip::{self, EMPTY_HEADER, HeaderName, Limits, Transport};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-realistic"
);
const PROXY: &str = "192.0.2.10:5060";
const UAC: &str = "192.0.2.101:5060";
const BACKENDS: [&str; 2] = ["192.0.2.70:5070", "192.0.2.71:5070"];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn load(file: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{file}")).unwrap_or_else(|e| {
        panic!("{DIR}/{file} is missing ({e}): the shared test data must be present")
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parsed<R>(bytes: &[u8], f: impl FnOnce(&sip::Message<'_, '_>) -> R) -> R {
    let mut slots = [EMPTY_HEADER; 64];
    let msg = sip::parse(bytes, &mut slots, &Limits::default())
        .unwrap_or_else(|e| panic!("does not parse ({e}):\n{}", text(bytes)));
    f(&msg)
}

/// Header values of one kind, one per line as written.
fn values(bytes: &[u8], kind: HeaderName) -> Vec<String> {
    parsed(bytes, |m| {
        m.headers_of(kind).map(|h| text(h.value)).collect()
    })
}

/// The Via values, one per value (commas and folding resolved).
fn via_stack(bytes: &[u8]) -> Vec<String> {
    parsed(bytes, |m| {
        m.vias().map(|v| text(v.span.slice(bytes))).collect()
    })
}

fn branches(bytes: &[u8]) -> Vec<String> {
    parsed(bytes, |m| {
        m.vias()
            .map(|v| text(v.value.branch.unwrap_or(b"")))
            .collect()
    })
}

/// One message on the wire.
#[derive(Debug, Clone)]
struct Packet {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    transport: Transport,
    /// The connection it travels on, named as the proxy's runtime would name it.
    flow: Option<FlowId>,
    bytes: Vec<u8>,
}

/// What a UAS backend does with a request: the responses it sends back.
type Uas = Box<dyn FnMut(&[u8]) -> Vec<Vec<u8>>>;

/// The simulated network around one proxy core.
struct Net {
    now: Instant,
    latency: Duration,
    core: Core,
    blacklist: Blacklist,
    out: Vec<u8>,
    queue: Vec<Packet>,
    /// Messages each endpoint received, in order.
    received: BTreeMap<SocketAddr, Vec<Packet>>,
    uas: HashMap<SocketAddr, Uas>,
    /// Peer of each connection: the proxy's flow ids.
    flows: HashMap<FlowId, SocketAddr>,
    /// Drop the next n packets the UAC sends (loss on its link).
    lose_from_uac: usize,
    next_flow: u64,
}

impl Net {
    fn new() -> Self {
        let specs: Vec<BackendSpec> = BACKENDS
            .iter()
            .map(|a| BackendSpec::from_uri(&format!("sip:{a}")).unwrap())
            .collect();
        let pool = Arc::new(Pool::new(&specs).unwrap());
        let mut config = ProxyConfig::default();
        for l in &mut config.listeners {
            l.local = addr(PROXY);
        }
        // The names the RFC flows use for the proxy that sipedge plays.
        config.aliases = vec!["ss1.atlanta.example.com".into(), "ep1.example.com".into()];
        Self {
            now: Instant::now(),
            latency: Duration::from_millis(20),
            core: Core::new(config, 0, 1, pool).unwrap(),
            blacklist: Blacklist::default(),
            out: vec![0; 65_536],
            queue: Vec::new(),
            received: BTreeMap::new(),
            uas: HashMap::new(),
            flows: HashMap::new(),
            lose_from_uac: 0,
            next_flow: 1,
        }
    }

    /// A UAC connection to the proxy (TCP).
    fn connect(&mut self, peer: SocketAddr) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow += 1;
        self.flows.insert(flow, peer);
        flow
    }

    fn send(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        transport: Transport,
        flow: Option<FlowId>,
        bytes: Vec<u8>,
    ) {
        if from == addr(UAC) && self.lose_from_uac > 0 {
            self.lose_from_uac -= 1;
            return;
        }
        let at = self.now + self.latency;
        self.queue.push(Packet {
            at,
            from,
            to,
            transport,
            flow,
            bytes,
        });
    }

    /// Delivers packets in time order until the network is quiet.
    fn run(&mut self) {
        let mut steps = 0;
        while !self.queue.is_empty() {
            steps += 1;
            assert!(steps < 1000, "the network does not settle");
            let i = (0..self.queue.len())
                .min_by_key(|&i| self.queue[i].at)
                .unwrap();
            let p = self.queue.remove(i);
            self.now = self.now.max(p.at);
            if p.to == addr(PROXY) {
                self.deliver_to_proxy(p);
            } else {
                self.received.entry(p.to).or_default().push(p.clone());
                let is_request = parsed(&p.bytes, |m| m.is_request());
                if let (true, Some(uas)) = (is_request, self.uas.get_mut(&p.to)) {
                    for response in uas(&p.bytes) {
                        self.send(p.to, p.from, p.transport, p.flow, response);
                    }
                }
            }
        }
    }

    fn deliver_to_proxy(&mut self, p: Packet) {
        let input = Inbound {
            now: self.now,
            src: p.from,
            local: addr(PROXY),
            transport: p.transport,
            flow: p.flow,
            placement: Placement::Unknown,
            compressed: false,
            bytes: &p.bytes,
        };
        let verdict = self
            .core
            .handle_inbound(input, &self.blacklist, &mut self.out);
        let (t, bytes) = match verdict {
            Verdict::Forward(t) | Verdict::Respond(t) => (t, self.out[..t.len].to_vec()),
            other => panic!("the proxy did not send {}: {other:?}", text(&p.bytes)),
        };
        let (to, transport, flow) = match t.dest {
            Dest::Flow(f) => (
                *self.flows.get(&f).expect("a known flow"),
                Transport::Tcp,
                Some(f),
            ),
            Dest::Addr(Transport::Tcp, a) => {
                // A connection the proxy opens toward a backend.
                let f = FlowId(1000 + self.next_flow);
                self.next_flow += 1;
                self.flows.insert(f, a);
                (a, Transport::Tcp, Some(f))
            }
            Dest::Addr(tr, a) => (a, tr, None),
        };
        self.now += Duration::from_micros(50);
        let at = self.now + self.latency;
        self.queue.push(Packet {
            at,
            from: addr(PROXY),
            to,
            transport,
            flow,
            bytes,
        });
    }

    fn inbox(&self, who: &str) -> Vec<Packet> {
        self.received.get(&addr(who)).cloned().unwrap_or_default()
    }

    /// The backend that received requests (there must be exactly one).
    fn the_backend(&self) -> SocketAddr {
        let used: Vec<SocketAddr> = BACKENDS
            .iter()
            .map(|b| addr(b))
            .filter(|b| self.received.get(b).is_some_and(|v| !v.is_empty()))
            .collect();
        assert_eq!(
            used.len(),
            1,
            "every message of a call reaches one backend: {used:?}"
        );
        used[0]
    }
}

/// A UAS answering `req` with the status line, extra headers and body of `template` (a
/// response from the RFC flow), the way RFC 3261 §8.2.6.2 builds a response: Via, From, To,
/// Call-ID, CSeq copied from the request (with a To tag), Record-Route echoed (§12.1.1).
fn answer(req: &[u8], template: &[u8]) -> Vec<u8> {
    parsed(req, |r| {
        parsed(template, |t| {
            let status_line = &template[..template.windows(2).position(|w| w == b"\r\n").unwrap()];
            let mut out = format!("{}\r\n", text(status_line));
            for h in r.headers_of(HeaderName::Via) {
                out.push_str(&format!("Via: {}\r\n", text(h.value)));
            }
            let code = t.status_code().unwrap();
            if r.method() == sip::Method::Invite && (101..300).contains(&code) {
                for h in r.headers_of(HeaderName::RecordRoute) {
                    out.push_str(&format!("Record-Route: {}\r\n", text(h.value)));
                }
            }
            let one = |kind| text(r.headers()[r.header_index(kind).unwrap()].value);
            out.push_str(&format!("From: {}\r\n", one(HeaderName::From)));
            let to = one(HeaderName::To);
            let tag = t
                .read_to()
                .ok()
                .and_then(|to| to.tag)
                .map(text)
                .unwrap_or_else(|| "uas1".into());
            if r.read_to().is_ok_and(|to| to.tag.is_some()) {
                out.push_str(&format!("To: {to}\r\n"));
            } else {
                out.push_str(&format!("To: {to};tag={tag}\r\n"));
            }
            out.push_str(&format!(
                "Call-ID: {}\r\nCSeq: {}\r\n",
                text(r.call_id()),
                one(HeaderName::CSeq)
            ));
            for h in t.headers() {
                use HeaderName::*;
                if !matches!(
                    h.kind,
                    Via | RecordRoute | From | To | CallId | CSeq | ContentLength
                ) {
                    out.push_str(&format!("{}: {}\r\n", text(h.name), text(h.value)));
                }
            }
            let mut bytes = format!("{out}Content-Length: {}\r\n\r\n", t.body().len()).into_bytes();
            bytes.extend_from_slice(t.body());
            bytes
        })
    })
}

/// Header lines the proxy does not edit come out byte-identical and in order, and so does
/// the body (RFC 3261 §16.6 item 1).
fn assert_untouched(original: &[u8], forwarded: &[u8]) {
    parsed(original, |m| {
        let mut from = 0;
        for h in m.headers() {
            if matches!(
                h.kind,
                HeaderName::Via | HeaderName::MaxForwards | HeaderName::Route
            ) {
                continue;
            }
            let line = h.line.slice(original);
            let found = forwarded[from..]
                .windows(line.len())
                .position(|w| w == line)
                .unwrap_or_else(|| {
                    panic!(
                        "header line changed or reordered: {}\nin\n{}",
                        text(line),
                        text(forwarded)
                    )
                });
            from += found + line.len();
        }
        assert!(forwarded.ends_with(m.body()), "body changed");
    });
}

fn set_header(msg: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = text(msg);
    let mut out = String::new();
    let mut lines = text.split("\r\n").peekable();
    let mut replaced = false;
    while let Some(line) = lines.next() {
        if line
            .to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        {
            while lines
                .peek()
                .is_some_and(|l| l.starts_with(' ') || l.starts_with('\t'))
            {
                lines.next();
            }
            if !replaced {
                out.push_str(&format!("{name}: {value}\r\n"));
                replaced = true;
            }
            continue;
        }
        out.push_str(line);
        if lines.peek().is_some() {
            out.push_str("\r\n");
        }
    }
    out.into_bytes()
}

#[test]
fn call_through_the_proxy_over_tcp_rfc3665() {
    let mut net = Net::new();
    let f2 = load("rfc3665-3.2-F2-407.sip");
    let f9 = load("rfc3665-3.2-F9-180-ringing.sip");
    let f12 = load("rfc3665-3.2-F12-200-invite.sip");
    for b in BACKENDS {
        let (f2, f9, f12) = (f2.clone(), f9.clone(), f12.clone());
        net.uas.insert(
            addr(b),
            Box::new(move |req: &[u8]| {
                let (method, authorized) = parsed(req, |m| {
                    (
                        m.method().as_bytes().to_vec(),
                        m.header_named(b"Proxy-Authorization").is_some(),
                    )
                });
                match (&method[..], authorized) {
                    (b"INVITE", false) => vec![answer(req, &f2)],
                    (b"INVITE", true) => vec![answer(req, &f9), answer(req, &f12)],
                    _ => Vec::new(),
                }
            }),
        );
    }
    let flow = net.connect(addr(UAC));

    // F1: INVITE with a pre-loaded Route naming the proxy.
    let f1 = load("rfc3665-3.2-F1-invite-preloaded-route.sip");
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        f1.clone(),
    );
    net.run();
    let backend = net.the_backend();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(at_uas.len(), 1);
    let fwd = &at_uas[0].bytes;
    assert_eq!(at_uas[0].transport, Transport::Udp);
    let vias = via_stack(fwd);
    assert_eq!(vias.len(), 2);
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"),
        "{vias:?}"
    );
    assert_eq!(
        vias[1],
        "SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74b43;received=192.0.2.101"
    );
    assert!(
        values(fwd, HeaderName::Route).is_empty(),
        "our pre-loaded Route is popped (RFC 3261 §16.4)"
    );
    assert_eq!(values(fwd, HeaderName::MaxForwards), ["69"]);
    let rr = values(fwd, HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1);
    let rr_values: Vec<&str> = rr[0].split(", ").collect();
    assert_eq!(
        rr_values.len(),
        2,
        "double Record-Route (UDP backend side, TCP client side): {rr:?}"
    );
    assert!(
        rr_values[0].starts_with("<sip:192.0.2.10:5060;lr;sea="),
        "{rr:?}"
    );
    assert!(
        rr_values[1].starts_with("<sip:192.0.2.10:5060;transport=tcp;lr;sea=")
            && rr_values[1].contains(";sef="),
        "{rr:?}"
    );
    assert_untouched(&f1, fwd);
    let invite_branch = branches(fwd)[0].clone();

    // F2 407 goes back over the client's connection, our Via stripped, byte for byte what the
    // UAS sent otherwise.
    let at_uac = net.inbox(UAC);
    assert_eq!(at_uac.len(), 1);
    assert_eq!(at_uac[0].flow, Some(flow));
    let from_uas = &answer(fwd, &f2);
    let ours = via_stack(from_uas)[0].clone();
    let expected = text(from_uas).replacen(&format!("Via: {ours}\r\n"), "", 1);
    assert_eq!(text(&at_uac[0].bytes), expected);
    assert_eq!(via_stack(&at_uac[0].bytes), vias[1..]);

    // F3: ACK for the 407: same branch as the INVITE, same backend (RFC 3261 §16.11).
    let to_407 = values(&at_uac[0].bytes, HeaderName::To)[0].clone();
    let ack = String::from_utf8_lossy(&f1)
        .replacen(
            "INVITE sip:bob@biloxi.example.com SIP/2.0",
            "ACK sip:bob@biloxi.example.com SIP/2.0",
            1,
        )
        .replacen("CSeq: 1 INVITE", "CSeq: 1 ACK", 1)
        .replacen(
            "To: Bob <sip:bob@biloxi.example.com>",
            &format!("To: {to_407}"),
            1,
        );
    let ack = set_header(ack.as_bytes(), "Content-Type", "application/sdp");
    let ack_text = text(&ack);
    let body_at = ack_text.find("\r\n\r\n").unwrap() + 4;
    let ack =
        ack_text[..body_at]
            .to_string()
            .replacen("Content-Length: 151", "Content-Length: 0", 1);
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        ack.into_bytes(),
    );
    net.run();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(at_uas.len(), 2);
    assert_eq!(
        branches(&at_uas[1].bytes)[0],
        invite_branch,
        "non-2xx ACK shares the INVITE branch"
    );
    net.the_backend();

    // F4: INVITE with credentials: a new transaction, a new branch; 180 and 200 come back.
    let f4 = load("rfc3665-3.2-F4-invite-proxy-authorization.sip");
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        f4.clone(),
    );
    net.run();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(at_uas.len(), 3);
    let fwd4 = &at_uas[2].bytes;
    assert_ne!(branches(fwd4)[0], invite_branch);
    assert_untouched(&f4, fwd4);
    let at_uac = net.inbox(UAC);
    assert_eq!(at_uac.len(), 3);
    assert_eq!(parsed(&at_uac[1].bytes, |m| m.status_code()), Some(180));
    let ok = &at_uac[2].bytes;
    assert_eq!(parsed(ok, |m| m.status_code()), Some(200));
    assert!(at_uac.iter().all(|p| p.flow == Some(flow)));
    assert_eq!(
        via_stack(ok),
        via_stack(&f4)
            .iter()
            .map(|v| format!("{v};received=192.0.2.101"))
            .collect::<Vec<_>>()
    );

    // F15: ACK for the 200 along the route set (the 200's Record-Route, reversed).
    let mut route_set: Vec<String> = values(ok, HeaderName::RecordRoute)
        .iter()
        .flat_map(|v| v.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .collect();
    route_set.reverse();
    let f15 = set_header(
        &load("rfc3665-3.2-F15-ack-route-set.sip"),
        "Route",
        &route_set.join(", "),
    );
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        f15.clone(),
    );
    net.run();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(
        at_uas.len(),
        4,
        "the ACK for the 200 reaches the INVITE's backend"
    );
    let fwd15 = &at_uas[3].bytes;
    assert!(values(fwd15, HeaderName::Route).is_empty());
    assert!(
        values(fwd15, HeaderName::RecordRoute).is_empty(),
        "no Record-Route on ACK"
    );
    assert_untouched(&f15, fwd15);

    // F18: the callee hangs up. Its BYE carries the route set it learned (the Record-Route of
    // the INVITE it received) and comes back to the caller over the caller's connection.
    let uas_route_set = values(fwd4, HeaderName::RecordRoute).join(", ");
    let f18 = set_header(
        &load("rfc3665-3.2-F18-bye-route-set.sip"),
        "Route",
        &uas_route_set,
    );
    // The backend writes its own address in Via (the RFC's callee is a TCP host name).
    let f18 = set_header(
        &f18,
        "Via",
        &format!("SIP/2.0/UDP {backend};branch=z9hG4bKnashds7"),
    );
    net.send(backend, addr(PROXY), Transport::Udp, None, f18.clone());
    net.run();
    let at_uac = net.inbox(UAC);
    assert_eq!(at_uac.len(), 4);
    let bye = &at_uac[3];
    assert_eq!(
        bye.flow,
        Some(flow),
        "in-dialog request toward a TCP client reuses its connection"
    );
    assert!(values(&bye.bytes, HeaderName::Route).is_empty());
    assert_eq!(values(&bye.bytes, HeaderName::MaxForwards), ["69"]);
    let bye_vias = via_stack(&bye.bytes);
    assert!(
        bye_vias[0].starts_with("SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bK"),
        "{bye_vias:?}"
    );
    assert_untouched(&f18, &bye.bytes);

    // The caller's 200 to the BYE goes back to the backend by the next Via.
    let ok_bye = answer(&bye.bytes, &load("rfc3261-24.2-F14-200-bye.sip"));
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        ok_bye.clone(),
    );
    net.run();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(at_uas.len(), 5);
    assert_eq!(parsed(&at_uas[4].bytes, |m| m.status_code()), Some(200));
    assert_eq!(via_stack(&at_uas[4].bytes), via_stack(&f18));
    net.the_backend();
}

#[test]
fn register_over_udp_with_loss_and_retransmission_rfc3261() {
    let mut net = Net::new();
    let f2 = load("rfc3261-24.1-F2-200-register.sip");
    for b in BACKENDS {
        let f2 = f2.clone();
        net.uas
            .insert(addr(b), Box::new(move |req: &[u8]| vec![answer(req, &f2)]));
    }
    let f1 = load("rfc3261-24.1-F1-register.sip");
    // The first transmission is lost before the proxy; Timer E fires after T1 = 500 ms.
    net.lose_from_uac = 1;
    net.send(addr(UAC), addr(PROXY), Transport::Udp, None, f1.clone());
    net.run();
    assert!(net.inbox(UAC).is_empty());
    net.now += Duration::from_millis(500);
    net.send(addr(UAC), addr(PROXY), Transport::Udp, None, f1.clone());
    // A late retransmission of the same request as well (the response crossed it).
    net.run();
    net.now += Duration::from_millis(1000);
    net.send(addr(UAC), addr(PROXY), Transport::Udp, None, f1.clone());
    net.run();
    let backend = net.the_backend();
    let at_uas = net.inbox(&backend.to_string());
    assert_eq!(at_uas.len(), 2);
    assert_eq!(
        at_uas[0].bytes, at_uas[1].bytes,
        "a retransmission is forwarded byte-identically (RFC 3261 §16.11)"
    );
    let fwd = &at_uas[0].bytes;
    assert_untouched(&f1, fwd);
    assert!(
        values(fwd, HeaderName::RecordRoute).is_empty(),
        "no Record-Route on REGISTER"
    );
    assert_eq!(
        via_stack(fwd)[1],
        "SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7;received=192.0.2.101"
    );
    // The 200 goes back to the received address and the sent-by port (no rport).
    let at_uac = net.inbox(UAC);
    assert_eq!(at_uac.len(), 2);
    assert!(
        at_uac
            .iter()
            .all(|p| p.transport == Transport::Udp && p.from == addr(PROXY))
    );
    assert_eq!(via_stack(&at_uac[0].bytes), [via_stack(fwd)[1].clone()]);
}

#[test]
fn outbound_register_over_tcp_rfc5626() {
    let mut net = Net::new();
    let reply = load("rfc5626-9.2-msg11-200-register-path-flowtoken.sip");
    for b in BACKENDS {
        let reply = reply.clone();
        net.uas.insert(
            addr(b),
            Box::new(move |req: &[u8]| vec![answer(req, &reply)]),
        );
    }
    let flow = net.connect(addr(UAC));
    let msg9 = load("rfc5626-9.2-msg9-register-outbound.sip");
    net.send(
        addr(UAC),
        addr(PROXY),
        Transport::Tcp,
        Some(flow),
        msg9.clone(),
    );
    net.run();
    let backend = net.the_backend();
    let fwd = &net.inbox(&backend.to_string())[0].bytes;
    assert!(
        values(fwd, HeaderName::Route).is_empty(),
        "Route to ep1 (the proxy) popped"
    );
    assert_eq!(values(fwd, HeaderName::Supported), ["path, outbound"]);
    assert_untouched(&msg9, fwd);
    let at_uac = net.inbox(UAC);
    assert_eq!(at_uac.len(), 1);
    assert_eq!(at_uac[0].flow, Some(flow));
    assert_eq!(
        values(&at_uac[0].bytes, HeaderName::Path),
        values(&reply, HeaderName::Path)
    );
}

/// Every request of the realistic set is forwarded to a backend with only the proxy's edits;
/// every response comes back to where its request came from.
#[test]
fn every_realistic_request_is_forwarded_and_answered() {
    let index: serde_json::Value =
        serde_json::from_str(&String::from_utf8(load("index.json")).unwrap()).unwrap();
    let entries = index["entries"].as_array().unwrap();
    assert!(entries.len() >= 19);
    let mut requests = 0;
    for entry in entries {
        let file = entry["file"].as_str().unwrap();
        let bytes = load(file);
        if !parsed(&bytes, |m| m.is_request()) {
            continue;
        }
        requests += 1;
        let mut net = Net::new();
        for b in BACKENDS {
            net.uas.insert(
                addr(b),
                Box::new(|req: &[u8]| {
                    let ack = parsed(req, |m| m.method() == sip::Method::Ack);
                    if ack {
                        Vec::new()
                    } else {
                        vec![answer(req, &load("rfc3261-24.2-F14-200-bye.sip"))]
                    }
                }),
            );
        }
        let tcp = parsed(&bytes, |m| m.top_via().transport != Transport::Udp);
        let flow = tcp.then(|| net.connect(addr(UAC)));
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        net.send(addr(UAC), addr(PROXY), transport, flow, bytes.clone());
        net.run();
        let backend = net.the_backend();
        let at_uas = net.inbox(&backend.to_string());
        assert_eq!(at_uas.len(), 1, "{file}");
        assert_untouched(&bytes, &at_uas[0].bytes);
        let mf_in = parsed(&bytes, |m| m.max_forwards().map(|x| x.value));
        let mf_out = parsed(&at_uas[0].bytes, |m| m.max_forwards().map(|x| x.value));
        assert_eq!(mf_out, Some(mf_in.map_or(70, |v| v - 1)), "{file}");
        assert_eq!(
            via_stack(&at_uas[0].bytes).len(),
            via_stack(&bytes).len() + 1,
            "{file}"
        );
        let is_ack = parsed(&bytes, |m| m.method() == sip::Method::Ack);
        let at_uac = net.inbox(UAC);
        assert_eq!(at_uac.len(), usize::from(!is_ack), "{file}");
        if let Some(p) = at_uac.first() {
            assert_eq!(p.flow, flow, "{file}");
            assert_eq!(via_stack(&p.bytes).len(), via_stack(&bytes).len(), "{file}");
        }
    }
    assert!(requests >= 8, "{requests} requests");
}

// ------------------------------------------------------------------------------------------
// INVITE failover (issue #6): the core retries a refused or silent INVITE on the next backend
// in hash order, under a fake clock, with every output drained through `poll_transmit`.
// ------------------------------------------------------------------------------------------

const FO_BACKENDS: [&str; 3] = ["192.0.2.70:5070", "192.0.2.71:5070", "192.0.2.72:5070"];

/// The proxy core with three UDP backends and a fake clock.
struct Failover {
    core: Core,
    bl: Blacklist,
    now: Instant,
    out: Vec<u8>,
}

impl Failover {
    fn new() -> Self {
        let specs: Vec<BackendSpec> = FO_BACKENDS
            .iter()
            .map(|a| BackendSpec::from_uri(&format!("sip:{a}")).unwrap())
            .collect();
        let mut config = ProxyConfig::default();
        for l in &mut config.listeners {
            l.local = addr(PROXY);
        }
        Self {
            core: Core::new(config, 0, 1, Arc::new(Pool::new(&specs).unwrap())).unwrap(),
            bl: Blacklist::default(),
            now: Instant::now(),
            out: vec![0; 65_536],
        }
    }

    /// Everything the core sends on its own now.
    fn drain(&mut self, sent: &mut Vec<(SocketAddr, Vec<u8>)>) {
        while let Some(t) = self.core.poll_transmit(self.now, &mut self.out) {
            let Dest::Addr(_, to) = t.dest else {
                panic!("UDP only here")
            };
            sent.push((to, self.out[..t.len].to_vec()));
        }
    }

    /// Delivers `bytes` from `from`; returns what the proxy sent, in order.
    fn deliver(&mut self, from: SocketAddr, bytes: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
        self.now += Duration::from_millis(1);
        let input = Inbound {
            now: self.now,
            src: from,
            local: addr(PROXY),
            transport: Transport::Udp,
            flow: None,
            placement: Placement::Unknown,
            compressed: false,
            bytes,
        };
        let mut sent = Vec::new();
        match self.core.handle_inbound(input, &self.bl, &mut self.out) {
            Verdict::Forward(t) | Verdict::Respond(t) => {
                let Dest::Addr(_, to) = t.dest else {
                    panic!("UDP only here")
                };
                sent.push((to, self.out[..t.len].to_vec()));
            }
            Verdict::Drop(_) | Verdict::Handoff(_) => {}
        }
        self.drain(&mut sent);
        sent
    }

    /// Advances the clock, runs the due timers; returns what the proxy sent.
    fn advance(&mut self, by: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        self.now += by;
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now, &self.bl);
        }
        let mut sent = Vec::new();
        self.drain(&mut sent);
        sent
    }

    fn events(&mut self) -> Vec<sipedge::proxy::Event> {
        std::iter::from_fn(|| self.core.poll_event()).collect()
    }
}

fn fo_invite(call: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {UAC};branch=z9hG4bK-{call}-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call}@example.com\r\n\
         CSeq: 7 INVITE\r\n\
         Contact: <sip:alice@{UAC}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The UAC's CANCEL or non-2xx ACK for `invite` (same Via branch, RFC 3261 §9.1, §17.1.1.3).
fn fo_in_transaction(invite: &[u8], method: &str, to_tag: Option<&str>) -> Vec<u8> {
    let t = text(invite)
        .replace("INVITE sip:", &format!("{method} sip:"))
        .replace("CSeq: 7 INVITE", &format!("CSeq: 7 {method}"));
    match to_tag {
        Some(tag) => t.replace(
            "To: <sip:bob@example.com>",
            &format!("To: <sip:bob@example.com>;tag={tag}"),
        ),
        None => t,
    }
    .into_bytes()
}

/// A backend's response to `req` (RFC 3261 §8.2.6.2), with a To tag and extra headers.
fn fo_answer(req: &[u8], code: u16, extra: &str) -> Vec<u8> {
    parsed(req, |r| {
        let mut out = format!("SIP/2.0 {code} Whatever\r\n");
        for h in r.headers_of(HeaderName::Via) {
            out.push_str(&format!("Via: {}\r\n", text(h.value)));
        }
        let one = |kind| text(r.headers()[r.header_index(kind).unwrap()].value);
        if (101..300).contains(&code) {
            for h in r.headers_of(HeaderName::RecordRoute) {
                out.push_str(&format!("Record-Route: {}\r\n", text(h.value)));
            }
        }
        out.push_str(&format!(
            "From: {}\r\nTo: {};tag=uas{code}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
            one(HeaderName::From),
            one(HeaderName::To),
            text(r.call_id()),
            one(HeaderName::CSeq)
        ));
        out.into_bytes()
    })
}

fn start_line(bytes: &[u8]) -> String {
    text(bytes).lines().next().unwrap_or("").to_owned()
}

#[test]
fn failover_a_503_is_acked_and_the_invite_retried_on_the_next_backend() {
    let mut net = Failover::new();
    let invite = fo_invite("fo503");
    let sent = net.deliver(addr(UAC), &invite);
    assert_eq!(sent.len(), 1);
    let (first, to_first) = (sent[0].0, sent[0].1.clone());
    assert!(FO_BACKENDS.iter().any(|b| addr(b) == first));

    // The first backend refuses: the proxy ACKs it there and sends the INVITE on.
    let refusal = fo_answer(&to_first, 503, "Retry-After: 30\r\n");
    let sent = net.deliver(first, &refusal);
    assert_eq!(sent.len(), 2, "{sent:?}");
    let (ack_to, ack) = &sent[0];
    assert_eq!(*ack_to, first);
    assert_eq!(start_line(ack), "ACK sip:bob@example.com SIP/2.0");
    // RFC 3261 §17.1.1.3: the ACK carries the branch of the INVITE it acknowledges.
    assert_eq!(branches(ack)[0], branches(&to_first)[0]);
    assert_eq!(values(ack, HeaderName::CSeq), ["7 ACK"]);
    let (second, to_second) = (sent[1].0, sent[1].1.clone());
    assert_ne!(second, first);
    assert_eq!(start_line(&to_second), start_line(&to_first));
    // §16.6 step 8: a new client transaction, so a new branch; the caller's Via is kept.
    assert_ne!(branches(&to_second)[0], branches(&to_first)[0]);
    assert_eq!(branches(&to_second)[1], branches(&to_first)[1]);
    assert!(matches!(
        net.events()[..],
        [sipedge::proxy::Event::Failover { to: Some(_), .. }]
    ));
    // A 503 with Retry-After blocks that backend for new calls (RFC 3261 §21.5.4).
    assert!(net.bl.is_blocked(first, net.now + Duration::from_secs(29)));

    // A retransmitted INVITE goes where the transaction is now, with that branch.
    let sent = net.deliver(addr(UAC), &invite);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, second);
    assert_eq!(branches(&sent[0].1)[0], branches(&to_second)[0]);

    // The second backend answers: ringing and 200 reach the caller, the 503 never did.
    for code in [180, 200] {
        let sent = net.deliver(second, &fo_answer(&to_second, code, ""));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, addr(UAC));
        assert!(start_line(&sent[0].1).starts_with(&format!("SIP/2.0 {code}")));
    }
    // A late retransmission of the refusal is ACKed again, never relayed.
    let sent = net.deliver(first, &refusal);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, first);
    assert!(start_line(&sent[0].1).starts_with("ACK "));
}

#[test]
fn failover_a_silent_backend_is_left_after_the_timeout() {
    let mut net = Failover::new();
    let invite = fo_invite("fosilent");
    let first = net.deliver(addr(UAC), &invite)[0].0;
    assert!(net.advance(Duration::from_millis(1900)).is_empty());
    let sent = net.advance(Duration::from_millis(150));
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_ne!(sent[0].0, first);
    assert_eq!(start_line(&sent[0].1), start_line(&invite));
    assert!(net.bl.is_blocked(first, net.now));
    // 100 Trying from the new backend stops the silence timer.
    let second = sent[0].0;
    let trying = fo_answer(&sent[0].1, 100, "");
    assert_eq!(net.deliver(second, &trying).len(), 1);
    assert!(net.advance(Duration::from_secs(5)).is_empty());
}

#[test]
fn failover_when_every_backend_refuses_the_caller_gets_503_with_retry_after() {
    let mut net = Failover::new();
    let invite = fo_invite("foall");
    let mut sent = net.deliver(addr(UAC), &invite);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (backend, req) = sent.pop().unwrap();
        assert!(!seen.contains(&backend), "{backend} tried twice");
        seen.push(backend);
        sent = net.deliver(backend, &fo_answer(&req, 503, ""));
        assert!(start_line(&sent[0].1).starts_with("ACK "));
        sent.remove(0);
    }
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (to, answer) = &sent[0];
    assert_eq!(*to, addr(UAC));
    assert!(start_line(answer).starts_with("SIP/2.0 503"));
    assert_eq!(values(answer, HeaderName::RetryAfter), ["5"]);
    // A retransmission gets the same answer without bothering any backend.
    let again = net.deliver(addr(UAC), &invite);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, addr(UAC));
    assert!(start_line(&again[0].1).starts_with("SIP/2.0 503"));
}

#[test]
fn failover_cancel_and_the_non_2xx_ack_follow_the_invite() {
    let mut net = Failover::new();
    let invite = fo_invite("focancel");
    let sent = net.deliver(addr(UAC), &invite);
    let (first, to_first) = sent[0].clone();
    let sent = net.deliver(first, &fo_answer(&to_first, 503, ""));
    let (second, to_second) = sent[1].clone();

    // RFC 3261 §9.1: the CANCEL goes to the backend that has the INVITE, same branch.
    let cancel = fo_in_transaction(&invite, "CANCEL", None);
    let sent = net.deliver(addr(UAC), &cancel);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, second);
    assert_eq!(branches(&sent[0].1)[0], branches(&to_second)[0]);

    // The backend ends the INVITE with 487; it reaches the caller, whose ACK follows it.
    let sent = net.deliver(second, &fo_answer(&to_second, 487, ""));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, addr(UAC));
    let ack = fo_in_transaction(&invite, "ACK", Some("uas487"));
    let sent = net.deliver(addr(UAC), &ack);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, second);
    assert_eq!(branches(&sent[0].1)[0], branches(&to_second)[0]);
}

#[test]
fn failover_the_2xx_ack_is_end_to_end_on_the_dialog_route() {
    let mut net = Failover::new();
    let invite = fo_invite("fo2xx");
    let sent = net.deliver(addr(UAC), &invite);
    let (first, to_first) = sent[0].clone();
    let sent = net.deliver(first, &fo_answer(&to_first, 503, ""));
    let (second, to_second) = sent[1].clone();
    let ok = net.deliver(second, &fo_answer(&to_second, 200, ""));
    assert_eq!(ok[0].0, addr(UAC));
    // The UAC's ACK for the 2xx is a new transaction on the Record-Route set (RFC 3261
    // §13.2.2.4): our affinity token sends it to the backend that answered.
    let route = values(&ok[0].1, HeaderName::RecordRoute).join(", ");
    let ack = text(&fo_in_transaction(&invite, "ACK", Some("uas200")))
        .replace("branch=z9hG4bK-fo2xx-1", "branch=z9hG4bK-fo2xx-ack")
        .replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\nRoute: {route}\r\n"),
        )
        .into_bytes();
    let sent = net.deliver(addr(UAC), &ack);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, second);
    assert_ne!(branches(&sent[0].1)[0], branches(&to_second)[0]);
}
