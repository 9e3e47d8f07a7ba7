//! The per-shard proxy core: validation (RFC 3261 §16.3), route preprocessing (§16.4), target
//! choice (§16.5, balance pool), stateless forwarding (§16.6, §16.11) and response relay
//! (§16.7, §18.2.2, RFC 3581).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use super::branch::{self, Branch, MAGIC_COOKIE, MAX_BRANCH_LEN, MacKey, ReturnPath};
use super::config::{ProxyConfig, split_host_port};
use super::siphash::SipHasher;
use super::{ConfigError, Dest, DropReason, Event, FlowId, Inbound, Placement, Transmit, Verdict};
use crate::balance::{
    AFFINITY_TOKEN_LEN, AffinityKey, Backend, BackendId, Blacklist, BlockReason, FailoverEvent,
    InviteFailover, InviteRoute, Origin, Pool, ResponseAction, affinity_token, write_ack,
};
use crate::shard::{ShardId, shard_of};
use crate::sip::out::{Out, itoa, parse_hex};
use crate::sip::{
    self, EMPTY_HEADER, ErrorKind, HeaderName, Limits, Located, Message, Method, NameAddr,
    ParseError, ResponseError, ResponseOptions, Rport, Salvage, SipUri, Span, Splice, Transport,
    Uri, Via,
};

/// Header slots per message (the parser's default limit).
const HEADER_SLOTS: usize = 128;
/// Header slots of the first parse of a message (see [`Core::handle_inbound`]).
const FEW_HEADER_SLOTS: usize = 32;
/// Bytes of generated text one forwarded request may need (Via, Record-Route, params).
const SCRATCH: usize = 1024;
/// URI parameter carrying the affinity token in our Record-Route (RFC 3261 §16.6 step 4 lets
/// the proxy put state of its own in its URI).
const AFFINITY_PARAM: &[u8] = b"sea";
/// URI parameter carrying the client's connection in our client-facing Record-Route, so that
/// in-dialog requests toward a client reached over TCP reuse its connection (RFC 5626 §5.3
/// does the same with a flow token).
const FLOW_PARAM: &[u8] = b"sef";
/// Methods listed in Allow of our OPTIONS answer: the proxy forwards all of them.
const ALLOW: &[u8] = b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, PRACK, SUBSCRIBE, \
NOTIFY, PUBLISH, INFO, REFER, MESSAGE, UPDATE\r\n";

/// What kind of message the last [`Core::handle_inbound`] saw, for metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Nothing recognisable (not parsed far enough).
    Unknown,
    /// A request with this method (`Method::Other(b"other")` for extension methods).
    Request(Method<'static>),
    /// A response with this status code.
    Response(u16),
}

/// A summary of the last message handled, for the runtime's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    /// What it was.
    pub kind: MessageKind,
    /// The backend it was sent to or came from, if any.
    pub backend: Option<BackendId>,
    /// The status of the response the proxy generated for it, if it did.
    pub responded: Option<u16>,
}

impl MessageInfo {
    const NONE: Self = Self {
        kind: MessageKind::Unknown,
        backend: None,
        responded: None,
    };
}

/// A listener as the core uses it.
#[derive(Debug, Clone)]
struct Listener {
    transport: Transport,
    local: SocketAddr,
    /// See [`super::ListenerConfig::via_for`].
    via_for: Option<usize>,
    /// `Via: SIP/2.0/UDP host:port;branch=`, the constant start of our Via through this
    /// listener, written once here instead of piece by piece for every request.
    via_prefix: Vec<u8>,
    /// `<sip:host:port;transport=tcp;lr`, likewise for a Record-Route URI of this listener
    /// ([`Core::write_rr_uri`]).
    rr_prefix: Vec<u8>,
}

impl Listener {
    /// A listener advertising `host` (as written in URIs, IPv6 bracketed) and `port`.
    fn new(transport: Transport, local: SocketAddr, host: &[u8], port: u16) -> Self {
        let mut via_prefix = Vec::new();
        via_prefix.extend_from_slice(b"Via: SIP/2.0/");
        via_prefix.extend_from_slice(transport.as_via_str().unwrap_or("UDP").as_bytes());
        via_prefix.extend_from_slice(b" ");
        via_prefix.extend_from_slice(host);
        via_prefix.extend_from_slice(b":");
        via_prefix.extend_from_slice(port.to_string().as_bytes());
        via_prefix.extend_from_slice(b";branch=");
        let mut rr_prefix = Vec::new();
        rr_prefix.extend_from_slice(b"<sip:");
        rr_prefix.extend_from_slice(host);
        rr_prefix.extend_from_slice(b":");
        rr_prefix.extend_from_slice(port.to_string().as_bytes());
        if transport == Transport::Tcp {
            // §16.6 item 4: the next element demonstrably speaks TCP with us.
            rr_prefix.extend_from_slice(b";transport=tcp");
        }
        rr_prefix.extend_from_slice(b";lr");
        Self {
            transport,
            local,
            via_for: None,
            via_prefix,
            rr_prefix,
        }
    }
}

/// One name that means "this proxy" in a URI (RFC 3261 §16.4).
#[derive(Debug, Clone)]
enum OwnHost {
    Ip(IpAddr),
    Name(Vec<u8>),
}

#[derive(Debug, Clone)]
struct OwnName {
    host: OwnHost,
    /// `None` matches any port (an alias written without one).
    port: Option<u16>,
    /// An IPv4 host as a dotted quad (empty for any other host): a dotted quad has one
    /// spelling, so a URI host equal to it names this address without being parsed.
    dotted: Vec<u8>,
}

impl OwnName {
    fn new(host: OwnHost, port: Option<u16>) -> Self {
        let dotted = match host {
            OwnHost::Ip(ip @ IpAddr::V4(_)) => ip_host_text(ip),
            _ => Vec::new(),
        };
        Self { host, port, dotted }
    }
}

/// The stateless proxy core of one shard. See the [module documentation](super).
pub struct Core {
    config: ProxyConfig,
    shard: ShardId,
    shard_count: u16,
    pool: Arc<Pool>,
    /// Where reloaded pools are published, when the core follows one.
    shared_pool: Option<Arc<ArcSwap<Pool>>>,
    /// The §16.11 hashes keyed with the branch secret, each already fed its constant prefix
    /// (computed once: every message hashes with them).
    /// Transaction hash of an RFC 3261 branch / of the RFC 2543 fields (§16.11).
    tx_seed_3261: SipHasher,
    tx_seed_2543: SipHasher,
    /// Loop hash of a request from outside / from a backend.
    loop_seed: [SipHasher; 2],
    branch_mac: MacKey,
    affinity_key: AffinityKey,
    /// Affinity token of every backend of the current pool, computed once per pool.
    tokens: Vec<(BackendId, [u8; AFFINITY_TOKEN_LEN])>,
    listeners: Vec<Listener>,
    names: Vec<OwnName>,
    limits: Limits,
    last: MessageInfo,
    /// INVITE failover state (this shard owns its Call-IDs, so no lock), when enabled.
    failover: Option<InviteFailover>,
    /// Events for the runtime; bounded by [`EVENT_QUEUE`] so pushing never allocates.
    events: VecDeque<Event>,
}

/// Events held for the runtime between two [`Core::poll_event`] drains.
const EVENT_QUEUE: usize = 64;

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("shard", &self.shard)
            .field("shard_count", &self.shard_count)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// Where a request goes next.
#[derive(Debug, Clone, Copy)]
struct Target {
    dest: Dest,
    /// The transport on the wire (for a flow, the flow's transport).
    transport: Transport,
    /// The IP we send to, when known (chooses the listener's address family).
    ip: Option<IpAddr>,
    /// The backend it goes to, if it does.
    backend: Option<BackendId>,
    /// RFC 3261 §18.1.1 applies: switch to TCP when large.
    may_upgrade: bool,
    /// The URI we send to carries `comp=sigcomp` (RFC 3486 §4).
    compress: bool,
}

/// The outcome of route preprocessing (RFC 3261 §16.4) for one request.
#[derive(Debug, Clone, Copy, Default)]
struct Routing {
    /// Route values (by index) that leave the request: our own, and the one a strict
    /// router's repair moved into the Request-URI.
    removed: RouteSet,
    /// A strict router put our URI in the Request-URI: replace it with this Route URI.
    ruri_from_route: Option<Span>,
    /// Affinity token found in our Route or Request-URI.
    affinity: Option<BackendId>,
    /// Client connection found in our Route or Request-URI.
    flow: Option<FlowId>,
    /// Index (among all Route values) of the first Route that is not ours, if any.
    next_route: Option<usize>,
}

/// A handful of Route value indices (at most two of ours, the strict-route one, and the
/// §16.6 item 6 one).
#[derive(Debug, Clone, Copy, Default)]
struct RouteSet {
    items: [usize; 4],
    len: usize,
}

impl RouteSet {
    fn add(&mut self, index: usize) {
        if self.len < self.items.len() && !self.contains(index) {
            self.items[self.len] = index;
            self.len += 1;
        }
    }

    fn contains(&self, index: usize) -> bool {
        self.items[..self.len].contains(&index)
    }
}

impl Core {
    /// A core for shard `shard` of `shard_count`, forwarding new calls to `pool`.
    pub fn new(
        config: ProxyConfig,
        shard: ShardId,
        shard_count: u16,
        pool: Arc<Pool>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let digest = Sha256::new_with_prefix(b"sipedge-branch-key\0")
            .chain_update(&config.secret)
            .finalize();
        let mut branch_key = [0u8; 16];
        branch_key.copy_from_slice(&digest[..16]);
        let seed = |fields: &[&[u8]]| {
            let mut h = SipHasher::new(&branch_key);
            for f in fields {
                h.field(f);
            }
            h
        };
        let tx_seed_3261 = seed(&[b"3261"]);
        let tx_seed_2543 = seed(&[b"2543"]);
        let loop_seed = [seed(&[b"loop", &[0]]), seed(&[b"loop", &[1]])];
        let branch_mac = MacKey::new(&branch_key);
        let affinity_key = AffinityKey::new(&config.secret);
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut names = Vec::new();
        for l in &config.listeners {
            let host = match &l.advertised_host {
                Some(h) => h.as_bytes().to_vec(),
                None => ip_host_text(l.local.ip()),
            };
            let port = l.advertised_port.unwrap_or(l.local.port());
            names.push(own_name(&host, Some(port)));
            if !l.local.ip().is_unspecified() {
                names.push(OwnName::new(
                    OwnHost::Ip(l.local.ip()),
                    Some(l.local.port()),
                ));
            }
            listeners.push(Listener {
                via_for: l.via_for,
                ..Listener::new(l.transport, l.local, &host, port)
            });
        }
        for alias in &config.aliases {
            if let Some((host, port)) = split_host_port(alias) {
                names.push(own_name(host.as_bytes(), port));
            }
        }
        let mut core = Self {
            config,
            shard,
            shard_count: shard_count.max(1),
            pool: Arc::clone(&pool),
            shared_pool: None,
            tx_seed_3261,
            tx_seed_2543,
            loop_seed,
            branch_mac,
            affinity_key,
            tokens: Vec::new(),
            listeners,
            names,
            limits: Limits::default(),
            last: MessageInfo::NONE,
            failover: None,
            events: VecDeque::from(crate::shard::resident_vec(EVENT_QUEUE)),
        };
        core.failover = core.config.failover.map(InviteFailover::new);
        core.set_pool(pool);
        Ok(core)
    }

    /// A core that follows the pool published in `shared` (swapped whole on reload): each
    /// message uses the current pool, and the affinity tokens are recomputed when it changes.
    pub fn with_shared_pool(
        config: ProxyConfig,
        shard: ShardId,
        shard_count: u16,
        shared: Arc<ArcSwap<Pool>>,
    ) -> Result<Self, ConfigError> {
        let mut core = Self::new(config, shard, shard_count, shared.load_full())?;
        core.shared_pool = Some(shared);
        Ok(core)
    }

    /// Picks up a pool published since the last message (one lock-free load).
    fn refresh_pool(&mut self) {
        let Some(shared) = &self.shared_pool else {
            return;
        };
        let current = shared.load();
        if !Arc::ptr_eq(&current, &self.pool) {
            let pool = arc_swap::Guard::into_inner(current);
            self.set_pool(pool);
        }
    }

    /// Replaces the backend pool (after a reload). Dialogs keep their backend through the
    /// affinity token as long as its id is still in the pool.
    pub fn set_pool(&mut self, pool: Arc<Pool>) {
        self.tokens.clear();
        for b in pool.backends() {
            let mut token = [0u8; AFFINITY_TOKEN_LEN];
            affinity_token(b.id(), &self.affinity_key, &mut token);
            self.tokens.push((b.id(), token));
        }
        self.pool = pool;
    }

    /// The summary of the message handled by the last [`Self::handle_inbound`] call.
    pub fn last_message(&self) -> MessageInfo {
        self.last
    }

    /// The next time [`Self::handle_timeout`] must be called: the earliest INVITE failover
    /// deadline (a backend's silence, or forgetting a finished transaction). It moves when
    /// [`Self::handle_inbound`] tracks an INVITE or sees a response to one, but never earlier
    /// than `now` plus the shortest failover duration, so a runtime that sleeps at most that
    /// long between two looks misses nothing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.failover
            .as_ref()
            .and_then(InviteFailover::poll_timeout)
    }

    /// Runs the timers due at `now`: an INVITE whose backend stayed silent past the failover
    /// timeout is reported to `blacklist` and moves to the next backend. Then drain
    /// [`Self::poll_transmit`] and [`Self::poll_event`].
    pub fn handle_timeout(&mut self, now: Instant, blacklist: &Blacklist) {
        self.refresh_pool();
        if let Some(fo) = &mut self.failover {
            fo.handle_timeout(now, &self.pool, blacklist);
        }
    }

    /// Sending to `addr` failed (TCP connection refused or timed out, UDP send error, ICMP
    /// unreachable): every INVITE still waiting on that backend moves to the next one, and the
    /// failure is reported to `blacklist`. Then drain [`Self::poll_transmit`].
    pub fn handle_transport_error(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        reason: BlockReason,
        blacklist: &Blacklist,
    ) {
        self.refresh_pool();
        if let Some(fo) = &mut self.failover {
            fo.handle_backend_failure(now, addr, reason, &self.pool, blacklist);
        }
    }

    /// The next message the core sends on its own, written into `out`: an INVITE retried on
    /// the next backend (with a fresh branch, RFC 3261 §16.6 step 8), or the 503 with
    /// Retry-After (§21.5.4) that answers the caller when no backend is left. Call it until
    /// it returns `None` after every `handle_*` call, and send each as a [`Verdict`] is
    /// sent; [`Self::last_message`] then describes it, and [`Self::poll_event`] holds the
    /// [`Event::Failover`] it carries out. `now` is the current time.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        // The common case, nothing queued, costs one check and no move of the table.
        if !self
            .failover
            .as_ref()
            .is_some_and(InviteFailover::has_events)
        {
            return None;
        }
        // Taken out for the duration, so the stored request can be read while the core
        // writes (a move, not a copy).
        let fo = self.failover.take()?;
        let mut result = None;
        let mut fo = fo;
        while let Some(event) = fo.poll_event() {
            self.last = MessageInfo::NONE;
            self.last.kind = MessageKind::Request(Method::Invite);
            let sent = match event {
                FailoverEvent::Retry { key, backend, from } => {
                    let sent = self.retry_invite(now, &fo, key, backend, out);
                    if sent.is_some() {
                        self.last.backend = Some(backend);
                        self.push_event(Event::Failover {
                            from,
                            to: Some(backend),
                        });
                    }
                    sent
                }
                FailoverEvent::GiveUp {
                    key,
                    from,
                    retry_after,
                } => {
                    let sent = self.give_up(now, &fo, key, retry_after, out);
                    self.push_event(Event::Failover { from, to: None });
                    sent
                }
            };
            if sent.is_some() {
                result = sent;
                break;
            }
        }
        self.failover = Some(fo);
        result
    }

    /// The next event for the runtime, if any. Drain after every `handle_*` and
    /// `poll_transmit` call.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn push_event(&mut self, event: Event) {
        // Bounded: an undrained queue loses events rather than growing on the hot path.
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(event);
        }
    }

    /// Transactions the INVITE failover table tracks now (0 when disabled).
    pub fn failover_transactions(&self) -> usize {
        self.failover.as_ref().map_or(0, InviteFailover::len)
    }

    /// Re-forwards a tracked INVITE to `backend` as attempt `attempt`.
    fn retry_invite(
        &self,
        now: Instant,
        fo: &InviteFailover,
        key: crate::balance::TxKey,
        backend: BackendId,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let request = fo.request(key)?;
        let origin = fo.origin(key)?;
        let (_, attempt) = fo.attempt(key)?;
        let input = origin_inbound(now, &origin, request);
        let mut slots = [EMPTY_HEADER; HEADER_SLOTS];
        let msg = sip::parse(request, &mut slots, &self.limits).ok()?;
        let ruri_sip = msg.request_uri().and_then(|u| u.as_sip().copied());
        let ruri_is_ours = ruri_sip.as_ref().is_some_and(|u| self.is_own_uri(u));
        let routing = self.preprocess_routes(&msg, ruri_sip.as_ref(), ruri_is_ours);
        let loop_hash = self.loop_hash(&msg, &routing, false);
        let target = self.target_for(self.pool.by_id(backend)?)?;
        self.forward_to(
            &input,
            &msg,
            &routing,
            loop_hash,
            target,
            target.backend,
            attempt,
            out,
        )
        .ok()
    }

    /// Answers a tracked INVITE with 503 and Retry-After: no backend took it.
    fn give_up(
        &mut self,
        now: Instant,
        fo: &InviteFailover,
        key: crate::balance::TxKey,
        retry_after: u32,
        out: &mut [u8],
    ) -> Option<Transmit> {
        let request = fo.request(key)?;
        let origin = fo.origin(key)?;
        let input = origin_inbound(now, &origin, request);
        let mut slots = [EMPTY_HEADER; HEADER_SLOTS];
        let msg = sip::parse(request, &mut slots, &self.limits).ok()?;
        let mut extra = [0u8; 40];
        let len = retry_after_header(retry_after, &mut extra);
        match self.respond(
            &input,
            &Salvage::from_message(&msg),
            503,
            b"Service Unavailable",
            &extra[..len],
            out,
        ) {
            Verdict::Respond(t) => Some(t),
            _ => None,
        }
    }

    /// Handles one inbound message; any bytes to send are written to `out`, which should hold
    /// at least 64 KiB (larger forwarded requests are answered with 513).
    pub fn handle_inbound(
        &mut self,
        input: Inbound<'_>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        self.last = MessageInfo::NONE;
        self.refresh_pool();
        match sip::classify_datagram(input.bytes) {
            sip::DatagramKind::Sip => {}
            sip::DatagramKind::KeepAlive => return Verdict::Drop(DropReason::KeepAlive),
            sip::DatagramKind::Stun => return Verdict::Drop(DropReason::KeepAlive),
            sip::DatagramKind::SigComp => return Verdict::Drop(DropReason::SigComp),
        }
        // All of a call lives on one shard. A message that may well be another shard's is
        // placed before it is parsed; a steered one, almost surely ours, after, by the
        // Call-ID the parse found (which is the one the scan finds: tests/sip_corpus.rs).
        let check_owner = self.shard_count > 1 && input.placement != Placement::HandedOff;
        if check_owner && input.placement == Placement::Unknown {
            if let Some(owner) = self.other_owner(salvaged_call_id(input.bytes)) {
                return Verdict::Handoff(owner);
            }
        }
        // Few slots first: initialising all 128 (9 KiB) showed as a tenth of a short
        // request's instructions, and almost no message has more than a few dozen headers.
        // Parsing is deterministic, so a message that runs out of these slots fails exactly
        // there and gets the same result from a full-size second parse.
        let mut slots = [EMPTY_HEADER; FEW_HEADER_SLOTS];
        // The parsed message is lent, not moved: it is large, and moving it cost a copy.
        let parsed = self.parse_with(&input, &mut slots);
        if check_owner && input.placement == Placement::Steered {
            let call_id = match &parsed {
                Ok(msg) => Some(msg.call_id()),
                Err(_) => salvaged_call_id(input.bytes),
            };
            if let Some(owner) = self.other_owner(call_id) {
                return Verdict::Handoff(owner);
            }
        }
        match &parsed {
            Err(e) if e.kind == ErrorKind::TooManyHeaders => {
                self.handle_many_headers(&input, blacklist, out)
            }
            _ => self.handle_parsed(&input, &parsed, blacklist, out),
        }
    }

    /// [`Self::handle_inbound`] for a message with more headers than the first try allowed.
    #[cold]
    #[inline(never)]
    fn handle_many_headers(
        &mut self,
        input: &Inbound<'_>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        let mut slots = [EMPTY_HEADER; HEADER_SLOTS];
        let parsed = self.parse_with(input, &mut slots);
        self.handle_parsed(input, &parsed, blacklist, out)
    }

    /// The shard owning a message with this Call-ID when that is not this one.
    fn other_owner(&self, call_id: Option<&[u8]>) -> Option<ShardId> {
        let owner = shard_of(call_id?, self.shard_count);
        (owner != self.shard).then_some(owner)
    }

    fn parse_with<'h, 'b>(
        &self,
        input: &Inbound<'b>,
        slots: &'h mut [sip::Header<'b>],
    ) -> Result<Message<'h, 'b>, ParseError> {
        if input.transport.is_stream() {
            sip::parse_stream_message(input.bytes, slots, &self.limits)
        } else {
            sip::parse(input.bytes, slots, &self.limits)
        }
    }

    fn handle_parsed(
        &mut self,
        input: &Inbound<'_>,
        parsed: &Result<Message<'_, '_>, ParseError>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        match parsed {
            Ok(msg) if msg.is_request() => self.handle_request(input, msg, blacklist, out),
            Ok(msg) => self.handle_response(input, msg, blacklist, out),
            Err(e) => self.handle_unparseable(input, *e, out),
        }
    }

    // ----------------------------------------------------------------------------------
    // Malformed input
    // ----------------------------------------------------------------------------------

    fn handle_unparseable(
        &mut self,
        input: &Inbound<'_>,
        e: ParseError,
        out: &mut [u8],
    ) -> Verdict {
        let salvage = sip::salvage(input.bytes);
        if let Some(m) = salvage.method {
            self.last.kind = MessageKind::Request(static_method(Method::from_token(m)));
        }
        match e.action(salvage.is_request) {
            sip::ErrorAction::SigComp => Verdict::Drop(DropReason::SigComp),
            sip::ErrorAction::Drop if salvage.is_request => Verdict::Drop(DropReason::NotSip),
            sip::ErrorAction::Drop if salvage.via_lines().is_empty() => {
                Verdict::Drop(DropReason::NotSip)
            }
            sip::ErrorAction::Drop => Verdict::Drop(DropReason::MalformedResponse),
            sip::ErrorAction::Respond { code, reason } => {
                if salvage.method == Some(b"ACK") {
                    return Verdict::Drop(DropReason::BadAck);
                }
                // RFC 4475 §3.1.2.17: an unknown method whose CSeq disagrees is better
                // answered 501 than 400 by a proxy.
                let (code, reason) = match (e.kind, salvage.method.map(Method::from_token)) {
                    (ErrorKind::CSeqMethod, Some(Method::Other(_))) => (501, "Not Implemented"),
                    _ => (code, reason),
                };
                self.respond(input, &salvage, code, reason.as_bytes(), b"", out)
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Stateless responses we generate
    // ----------------------------------------------------------------------------------

    /// Answers a request statelessly, sending it where RFC 3261 §18.2.2 and RFC 3581 §4 say.
    fn respond(
        &mut self,
        input: &Inbound<'_>,
        req: &Salvage<'_>,
        code: u16,
        reason: &[u8],
        extra: &[u8],
        out: &mut [u8],
    ) -> Verdict {
        let top = top_via_of(req);
        let mut received_text = [0u8; 48];
        let received_len = {
            let mut w = Out::new(&mut received_text);
            w.put_ip(input.src.ip(), false);
            w.len()
        };
        let received = top
            .as_ref()
            .is_none_or(|v| needs_received(v, input.src.ip()))
            .then_some(&received_text[..received_len]);
        let mut extra_buf = [0u8; 512];
        let mut w = Out::new(&mut extra_buf);
        w.put(extra);
        if let Some(server) = &self.config.server_name {
            w.put(b"Server: ");
            w.put_str(server);
            w.put(b"\r\n");
        }
        let extra_len = if w.overflowed() { 0 } else { w.len() };
        let opts = ResponseOptions {
            received,
            rport: Some(input.src.port()),
            extra_headers: &extra_buf[..extra_len],
            partial: true,
        };
        let len = match sip::write_response(req, code, reason, &opts, out) {
            Ok(len) => len,
            Err(ResponseError::InsufficientSize { .. }) => {
                return Verdict::Drop(DropReason::BufferTooSmall);
            }
            Err(_) => return Verdict::Drop(DropReason::Unanswerable),
        };
        let Some(dest) = self.reply_dest(input, top.as_ref()) else {
            return Verdict::Drop(DropReason::Unresolved);
        };
        self.last.responded = Some(code);
        Verdict::Respond(Transmit {
            dest,
            src: self.reply_src(input),
            len,
            // RFC 3486 §4: the response goes to the top Via, which asks for compression.
            compress: top.as_ref().is_some_and(|v| is_sigcomp(v.comp)),
        })
    }

    /// RFC 3261 §18.2.2 / RFC 3581 §4: where a response to this request goes.
    fn reply_dest(&self, input: &Inbound<'_>, top: Option<&Via<'_>>) -> Option<Dest> {
        if input.transport.is_reliable() {
            // "the response MUST be sent using the existing connection".
            return Some(match input.flow {
                Some(flow) => Dest::Flow(flow),
                None => Dest::Addr(input.transport, input.src),
            });
        }
        let Some(via) = top else {
            // No readable Via: the source address is the only return path there is.
            return Some(Dest::Addr(input.transport, input.src));
        };
        if let Some(maddr) = via.maddr {
            let ip = parse_ip(maddr)?;
            let port = via.port.unwrap_or(5060);
            return Some(Dest::Addr(input.transport, SocketAddr::new(ip, port)));
        }
        // received is always the source address; rport (RFC 3581 §4) asks for the source port.
        let port = match via.rport {
            Rport::Absent => via.port.unwrap_or(5060),
            Rport::Requested | Rport::Port(_) => input.src.port(),
        };
        Some(Dest::Addr(
            input.transport,
            SocketAddr::new(input.src.ip(), port),
        ))
    }

    /// RFC 3581 §4: a response leaves from the address its request arrived on.
    fn reply_src(&self, input: &Inbound<'_>) -> Option<SocketAddr> {
        (!input.transport.is_stream()).then_some(input.local)
    }

    // ----------------------------------------------------------------------------------
    // Requests
    // ----------------------------------------------------------------------------------

    fn handle_request(
        &mut self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        let method = msg.method();
        let is_ack = method == Method::Ack;
        self.last.kind = MessageKind::Request(static_method(method));
        let from_backend = self.is_from_backend(input);
        if from_backend {
            self.last.backend = self.pool.by_addr(input.src).map(Backend::id);
        }
        let reject = |core: &mut Self, code: u16, reason: &[u8], extra: &[u8], out: &mut [u8]| {
            if is_ack {
                // RFC 3261 §17.2.1: an ACK is never answered.
                return Verdict::Drop(DropReason::BadAck);
            }
            core.respond(input, &Salvage::from_message(msg), code, reason, extra, out)
        };

        // RFC 3261 §16.3 item 2: the URI scheme.
        let Some(ruri) = msg.request_uri() else {
            return Verdict::Drop(DropReason::NotSip);
        };
        let ruri_sip = match ruri {
            Uri::Sip(u) => Some(u),
            Uri::Other { scheme, .. } if eq_ic(scheme, b"tel") && !from_backend => None,
            Uri::Other { .. } => {
                return reject(self, 416, b"Unsupported URI Scheme", b"", out);
            }
        };
        let ruri_is_ours = ruri_sip.is_some_and(|u| self.is_own_uri(u));

        // §16.3 item 3: Max-Forwards.
        let max_forwards = msg.max_forwards();
        if max_forwards.is_some_and(|m| m.value == 0) {
            if method == Method::Options && ruri_is_ours {
                return self.answer_options(input, msg, out);
            }
            return reject(self, 483, b"Too Many Hops", b"", out);
        }

        // §16.4: route information preprocessing.
        let routing = self.preprocess_routes(msg, ruri_sip, ruri_is_ours);

        // OPTIONS addressed to the proxy itself (no user part, no Route onward): answer it.
        if method == Method::Options
            && ruri_is_ours
            && routing.ruri_from_route.is_none()
            && routing.next_route.is_none()
            && ruri_sip.is_some_and(|u| u.user.is_none())
        {
            return self.answer_options(input, msg, out);
        }

        // §16.3 item 4: loop detection.
        let loop_hash = self.loop_hash(msg, &routing, from_backend);
        // Walking the Via values parses every one after the second; a request none of whose
        // Via lines holds anything shaped like our branch (nearly every request) skips it.
        let may_hold_ours = msg
            .headers_of(HeaderName::Via)
            .any(|h| branch::may_contain_ours(h.value));
        if may_hold_ours
            && msg.vias().any(|via| {
                via.value
                    .branch
                    .and_then(|b| self.our_branch(b))
                    .is_some_and(|b| b.loop_hash == loop_hash)
            })
        {
            return reject(self, 482, b"Loop Detected", b"", out);
        }

        // §16.3 item 5: Proxy-Require. The Unsupported text is built only when it is needed,
        // so the common request does not pay for clearing its buffer.
        let supported = |core: &Self, tag: &[u8]| {
            core.config
                .proxy_require_supported
                .iter()
                .any(|s| s.as_bytes() == tag)
        };
        if msg
            .option_tags(HeaderName::ProxyRequire)
            .any(|tag| !supported(self, tag.value))
        {
            let mut unsupported = [0u8; 512];
            let mut w = Out::new(&mut unsupported);
            for tag in msg.option_tags(HeaderName::ProxyRequire) {
                let tag = tag.value;
                if !supported(self, tag) {
                    w.put(if w.len() == 0 {
                        b"Unsupported: "
                    } else {
                        b", "
                    });
                    w.put(tag);
                }
            }
            w.put(b"\r\n");
            let len = if w.overflowed() { 0 } else { w.len() };
            return reject(self, 420, b"Bad Extension", &unsupported[..len], out);
        }

        // §16.5: the target. A new INVITE from outside, its CANCEL and the ACK of its non-2xx
        // answer go through the failover table; everything else is stateless.
        let mut attempt = 0;
        let failover = if from_backend {
            None
        } else {
            self.failover_target(input, msg, &routing, blacklist)
        };
        let target = if let Some(route) = failover {
            match route {
                FailoverRoute::Target(t, a) => {
                    attempt = a;
                    t
                }
                FailoverRoute::Reject(_) if is_ack => return Verdict::Drop(DropReason::NoBackend),
                FailoverRoute::Reject(retry_after) => {
                    let mut extra = [0u8; 40];
                    let len = retry_after_header(retry_after, &mut extra);
                    return reject(self, 503, b"Service Unavailable", &extra[..len], out);
                }
            }
        } else if from_backend {
            match self.outside_target(msg, &routing) {
                Ok(t) => t,
                Err(Rejection::Respond(code, reason)) => {
                    return reject(self, code, reason, b"", out);
                }
                Err(Rejection::Drop(reason)) => return Verdict::Drop(reason),
            }
        } else {
            match self.backend_target(input.now, msg.call_id(), routing.affinity, blacklist) {
                Some(t) => t,
                None if is_ack => return Verdict::Drop(DropReason::NoBackend),
                None => {
                    return reject(
                        self,
                        503,
                        b"Service Unavailable",
                        b"Retry-After: 5\r\n",
                        out,
                    );
                }
            }
        };
        if let Some(b) = target.backend {
            self.last.backend = Some(b);
        }
        let record_route_for = if from_backend {
            self.last.backend
        } else {
            target.backend
        };
        match self.forward_to(
            input,
            msg,
            &routing,
            loop_hash,
            target,
            record_route_for,
            attempt,
            out,
        ) {
            Ok(t) => Verdict::Forward(t),
            Err(Rejection::Respond(code, reason)) => reject(self, code, reason, b"", out),
            Err(Rejection::Drop(reason)) => Verdict::Drop(reason),
        }
    }

    /// The failover table's say on a request from outside: a new INVITE is tracked and goes
    /// to the pool's choice (or, retransmitted, where its transaction is now); a CANCEL or an
    /// ACK without our affinity token follows its INVITE to the backend that has it, with
    /// that attempt's branch (RFC 3261 §9.1: a CANCEL must reach the server that got the
    /// INVITE). `None`: route it statelessly.
    fn failover_target(
        &mut self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        routing: &Routing,
        blacklist: &Blacklist,
    ) -> Option<FailoverRoute> {
        if routing.affinity.is_some() {
            return None; // in a dialog: its backend is fixed
        }
        let fo = self.failover.as_mut()?;
        let call_id = msg.call_id();
        let cseq = msg.cseq().number;
        let (backend, attempt) = match msg.method() {
            Method::Invite
                if msg.to().is_some_and(|to| to.tag.is_none())
                    && msg.cseq().method == b"INVITE" =>
            {
                let origin = Origin {
                    src: input.src,
                    local: input.local,
                    transport: input.transport,
                    flow: input.flow.map(|f| f.0),
                    compressed: input.compressed,
                };
                let (route, attempt) = fo.route_invite(
                    input.now,
                    call_id,
                    cseq,
                    msg.as_bytes(),
                    origin,
                    &self.pool,
                    blacklist,
                );
                match route {
                    InviteRoute::Forward(b) => (b, attempt),
                    InviteRoute::Reject { retry_after } => {
                        return Some(FailoverRoute::Reject(retry_after));
                    }
                }
            }
            Method::Cancel | Method::Ack => {
                let (id, attempt) = fo.current(call_id, cseq)?;
                (self.pool.by_id(id)?, attempt)
            }
            _ => return None,
        };
        Some(FailoverRoute::Target(self.target_for(backend)?, attempt))
    }

    /// Writes the forwarded request with our branch (attempt `attempt` of its transaction)
    /// and says where it goes.
    #[allow(clippy::too_many_arguments)]
    fn forward_to(
        &self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        routing: &Routing,
        loop_hash: u32,
        target: Target,
        record_route_for: Option<BackendId>,
        attempt: usize,
        out: &mut [u8],
    ) -> Result<Transmit, Rejection> {
        let branch = Branch {
            // RFC 3261 §16.6 step 8: each backend tried gets its own client transaction, so
            // its own branch. Attempt 0 keeps the stateless value (CANCEL and non-2xx ACK
            // recompute it); later attempts mix the attempt number in.
            tx: self.tx_hash(msg) ^ (attempt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            loop_hash,
            ret: ReturnPath {
                listener: self.ingress_listener(input),
                flow: input.flow,
            },
        };

        let mut target = target;
        let mut len =
            self.forward_request(input, msg, routing, &target, branch, record_route_for, out);
        if let (Ok(n), true, Some(limit)) = (len, target.may_upgrade, self.config.udp_size_limit)
            && n > limit
            && target.transport == Transport::Udp
            && let Dest::Addr(_, addr) = target.dest
            && self
                .egress_listener(Transport::Tcp, Some(addr.ip()))
                .is_some()
        {
            // RFC 3261 §18.1.1: larger than 1300 bytes with an unknown path MTU → TCP.
            target.transport = Transport::Tcp;
            target.dest = Dest::Addr(Transport::Tcp, addr);
            len = self.forward_request(input, msg, routing, &target, branch, record_route_for, out);
        }
        let len = len?;
        let src = match target.dest {
            Dest::Addr(t, addr) if !t.is_stream() => {
                self.egress_listener(t, Some(addr.ip())).map(|i| {
                    // Toward a pool member, leave from the port our Via names (for servers
                    // that answer the source). Toward anyone else, from the shared port: a
                    // client behind NAT is reachable only from the address it sent to; its
                    // response still follows our Via.
                    let backend = target.backend.is_some() || self.pool.by_addr(addr).is_some();
                    let i = if backend { self.via_listener(i) } else { i };
                    self.listeners[i].local
                })
            }
            _ => None,
        };
        Ok(Transmit {
            dest: target.dest,
            src,
            len,
            compress: target.compress,
        })
    }

    /// True when the request comes from a pool member (route it on, not back into the pool).
    fn is_from_backend(&self, input: &Inbound<'_>) -> bool {
        if self.pool.is_backend(input.src) {
            return true;
        }
        // A backend that opened its own TCP connection comes from an ephemeral port; trust
        // its address then, except on loopback where clients and backends share one address.
        input.transport.is_stream()
            && !input.src.ip().is_loopback()
            && self.pool.is_backend_ip(input.src.ip())
    }

    /// §16.4: strict-route repair, popping our own Route values, and reading our state
    /// (affinity token, client flow) from them. `ruri_is_ours`: the Request-URI names us
    /// (the caller has already asked [`Self::is_own_uri`]).
    fn preprocess_routes(
        &self,
        msg: &Message<'_, '_>,
        ruri: Option<&SipUri<'_>>,
        ruri_is_ours: bool,
    ) -> Routing {
        let mut routing = Routing::default();
        // All of them, unless the repair below takes the last one.
        let mut usable_routes = usize::MAX;
        // A strict router put our Record-Route URI in the Request-URI: the last Route value
        // becomes the Request-URI and leaves the Route set (§16.4). Only then are the Route
        // values counted, which walks them all once more.
        if let Some(uri) = ruri
            && ruri_is_ours
            && uri.param(AFFINITY_PARAM).is_some()
        {
            self.read_state(uri, &mut routing);
            let mut route_count = 0usize;
            let mut last: Option<Located<NameAddr<'_>>> = None;
            for r in msg.routes() {
                route_count += 1;
                last = Some(r);
            }
            usable_routes = route_count;
            // A URI with headers cannot become a Request-URI (RFC 3261 §19.1.1).
            if let Some(last) =
                last.filter(|l| l.value.uri.as_sip().is_none_or(|u| u.headers.is_none()))
            {
                routing.ruri_from_route = Some(last.value.uri.span());
                routing.removed.add(route_count - 1);
                usable_routes -= 1;
            }
        }
        // Pop our own Route values from the top: two when we double record-routed.
        for (i, r) in msg.routes().take(usable_routes).enumerate() {
            let ours = i < 2 && r.value.uri.as_sip().is_some_and(|u| self.is_own_uri(u));
            if !ours {
                routing.next_route = Some(i);
                break;
            }
            if let Some(u) = r.value.uri.as_sip() {
                self.read_state(u, &mut routing);
            }
            routing.removed.add(i);
        }
        routing
    }

    /// Reads the affinity token and client flow from one of our URIs.
    fn read_state(&self, uri: &SipUri<'_>, routing: &mut Routing) {
        if routing.affinity.is_none()
            && let Some(Some(token)) = uri.param(AFFINITY_PARAM)
        {
            routing.affinity = self
                .tokens
                .iter()
                .find(|(_, t)| t.as_slice() == token)
                .map(|(id, _)| *id);
        }
        if routing.flow.is_none()
            && let Some(Some(flow)) = uri.param(FLOW_PARAM)
        {
            routing.flow = parse_hex(flow).map(FlowId);
        }
    }

    /// The backend for a request from outside: the one its dialog is bound to, else the pool's
    /// choice by Call-ID (RFC 3261 §16.11: time-invariant, so retransmissions, ACK and CANCEL
    /// follow the INVITE).
    fn backend_target(
        &self,
        now: Instant,
        call_id: &[u8],
        affinity: Option<BackendId>,
        blacklist: &Blacklist,
    ) -> Option<Target> {
        let bound = affinity
            .and_then(|id| self.pool.by_id(id))
            .filter(|b| b.is_up() && !blacklist.is_blocked(b.addr(), now));
        let backend = match bound {
            Some(b) => b,
            None => self.pool.select(call_id, now, blacklist)?,
        };
        self.target_for(backend)
    }

    /// Where a request for this pool member goes.
    fn target_for(&self, backend: &Backend) -> Option<Target> {
        let transport = match backend.transport() {
            crate::balance::Transport::Udp => Transport::Udp,
            crate::balance::Transport::Tcp => Transport::Tcp,
            // No TLS listener exists to originate from.
            _ => return None,
        };
        Some(Target {
            dest: Dest::Addr(transport, backend.addr()),
            transport,
            ip: Some(backend.addr().ip()),
            backend: Some(backend.id()),
            may_upgrade: transport == Transport::Udp,
            // Pool members are plain SIP (a backend URI's parameters are not read).
            compress: false,
        })
    }

    /// §16.5-16.6 item 7 for a request from a backend: the next Route, else the Request-URI.
    fn outside_target(
        &self,
        msg: &Message<'_, '_>,
        routing: &Routing,
    ) -> Result<Target, Rejection> {
        let route;
        let uri = match routing.next_route.and_then(|i| msg.routes().nth(i)) {
            Some(r) => {
                route = r;
                match route.value.uri.as_sip() {
                    Some(u) => *u,
                    None => return Err(Rejection::Respond(416, b"Unsupported URI Scheme")),
                }
            }
            None => {
                let ruri = match routing.ruri_from_route {
                    // The strict-route repair replaced the Request-URI by the last Route.
                    Some(_) => msg
                        .routes()
                        .last()
                        .and_then(|r| r.value.uri.as_sip().copied()),
                    None => msg.request_uri().and_then(|u| u.as_sip().copied()),
                };
                match ruri {
                    Some(u) => u,
                    None => return Err(Rejection::Respond(416, b"Unsupported URI Scheme")),
                }
            }
        };
        if routing.next_route.is_none()
            && routing.ruri_from_route.is_none()
            && self.is_own_uri(&uri)
        {
            // Nothing left to route on but ourselves.
            return Err(Rejection::Respond(482, b"Loop Detected"));
        }
        // RFC 3486 §4: a Route or Request-URI with comp=sigcomp asks for compression.
        let compress = is_sigcomp(uri.comp);
        let transport = uri.transport.unwrap_or(if uri.is_sips() {
            Transport::Tls
        } else {
            Transport::Udp
        });
        if let Some(flow) = routing.flow
            && routing.next_route.is_none()
        {
            // The client reached us over this connection (our Record-Route says so).
            return Ok(Target {
                dest: Dest::Flow(flow),
                transport: Transport::Tcp,
                ip: None,
                backend: None,
                may_upgrade: false,
                compress,
            });
        }
        if !matches!(transport, Transport::Udp | Transport::Tcp) {
            return Err(Rejection::Drop(DropReason::UnsupportedTransport));
        }
        let host = match uri.maddr {
            Some(m) => m,
            None => uri.host.unbracketed(),
        };
        let Some(ip) = parse_ip(host) else {
            return Err(Rejection::Drop(DropReason::Unresolved));
        };
        let port = uri.port.unwrap_or(transport.default_port());
        let addr = SocketAddr::new(ip, port);
        if self.listeners.iter().any(|l| l.local == addr) {
            return Err(Rejection::Respond(482, b"Loop Detected"));
        }
        if self.egress_listener(transport, Some(ip)).is_none() {
            return Err(Rejection::Drop(DropReason::UnsupportedTransport));
        }
        Ok(Target {
            dest: Dest::Addr(transport, addr),
            transport,
            ip: Some(ip),
            backend: None,
            may_upgrade: false,
            compress,
        })
    }

    /// Writes the forwarded request (RFC 3261 §16.6 items 1-9) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn forward_request(
        &self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        routing: &Routing,
        target: &Target,
        branch: Branch,
        affinity: Option<BackendId>,
        out: &mut [u8],
    ) -> Result<usize, Rejection> {
        // The generated text needs SCRATCH bytes of room. The end of `out` serves when the
        // rest still holds any output this request can have (the message, the generated text
        // and one Route URI of the message moved into the Request-URI), so it is not
        // cleared for every request; otherwise, a buffer of its own.
        let room = msg
            .as_bytes()
            .len()
            .saturating_mul(2)
            .saturating_add(SCRATCH);
        let mut own_scratch;
        let (out, scratch): (&mut [u8], &mut [u8]) = match out.len().checked_sub(SCRATCH) {
            Some(head) if head >= room => out.split_at_mut(head),
            _ => {
                own_scratch = [0u8; SCRATCH];
                (out, &mut own_scratch[..])
            }
        };
        let egress = match target.dest {
            Dest::Addr(t, _) => self.egress_listener(t, target.ip),
            Dest::Flow(_) => self.egress_listener(Transport::Tcp, None),
        }
        .ok_or(Rejection::Drop(DropReason::UnsupportedTransport))?;
        let ingress = usize::from(branch.ret.listener);
        let buf = msg.buf();
        let headers = msg.headers();
        let first_via_line = headers
            .iter()
            .find(|h| h.kind == HeaderName::Via)
            .map_or(msg.start_line_span().end, |h| h.line.start);

        // Generated text goes to `scratch`, one piece after the other; each edit borrows its
        // piece as soon as it is written, so the edits need no list of their own.
        let mut text = Pieces {
            rest: scratch,
            overflowed: false,
        };
        let mut splice: Splice<'_, MAX_EDITS> = Splice::new();
        let mut pushed = Ok(());
        let mut push = |result: Result<(), sip::SpliceError>| pushed = pushed.and(result);

        // Item 8: our Via on top, with the §16.11 branch.
        let via = text.piece(|w| {
            w.put(&self.listeners[self.via_listener(egress)].via_prefix);
            branch.write(&self.branch_mac, w);
            if target.compress {
                // RFC 3486 §4: we send this request compressed and accept a compressed
                // response. Toward a plain next hop our Via never asks for compression.
                w.put(b";comp=sigcomp");
            }
            w.put(b"\r\n");
        });
        push(splice.insert(first_via_line, via));

        // Item 3: Max-Forwards.
        let limit = self.config.max_forwards;
        match msg.max_forwards() {
            Some(mf) => {
                let value = mf.value.saturating_sub(1).min(limit);
                let mut digits = [0u8; 20];
                if mf.span.slice(buf) != itoa(u64::from(value), &mut digits) {
                    let value = text.piece(|w| w.put_u64(u64::from(value)));
                    push(splice.replace(mf.span, value));
                }
            }
            None => {
                let header = text.piece(|w| {
                    w.put(b"Max-Forwards: ");
                    w.put_u64(u64::from(limit));
                    w.put(b"\r\n");
                });
                push(splice.insert(first_via_line, header));
            }
        }

        // RFC 3581 §4 / RFC 3261 §18.2.1: received and rport on the sender's Via.
        let top = msg.top_via();
        let add_received = needs_received(top, input.src.ip());
        if add_received {
            let received = text.piece(|w| {
                w.put(b";received=");
                w.put_ip(input.src.ip(), false);
            });
            push(match top.received {
                Some(r) => splice.replace(r.span, received),
                None => splice.insert(top.params.end, received),
            });
        }
        if top.rport == Rport::Requested
            && let Some(span) = top.rport_param
        {
            let rport = text.piece(|w| {
                w.put(b";rport=");
                w.put_u64(u64::from(input.src.port()));
            });
            push(splice.replace(span, rport));
        }

        // §16.4: a strict router's Request-URI is repaired.
        let mut removed = routing.removed;
        let mut ruri_span = msg.request_uri().map(Uri::span);
        if let (Some(uri), Some(ruri)) = (routing.ruri_from_route, ruri_span) {
            push(splice.replace(ruri, uri.slice(buf)));
            ruri_span = None;
        }

        // §16.6 item 6: the next hop is a strict router (its Route URI lacks lr): it becomes the
        // Request-URI and the Request-URI goes to the end of the Route set.
        if let (Some(i), Some(ruri)) = (routing.next_route, ruri_span)
            && target.backend.is_none()
            && let Some(next) = msg.routes().nth(i)
            && next
                .value
                .uri
                .as_sip()
                .is_some_and(|u| !u.lr && u.headers.is_none())
        {
            let last = msg.routes().last().unwrap_or(next);
            push(splice.replace(ruri, next.value.uri.span().slice(buf)));
            removed.add(i);
            if last.span == next.span {
                let route = text.piece(|w| {
                    w.put(b"Route: <");
                    w.put(ruri.slice(buf));
                    w.put(b">\r\n");
                });
                push(splice.insert(headers[next.header_index].line.start, route));
            } else {
                let value = text.piece(|w| {
                    w.put(b", <");
                    w.put(ruri.slice(buf));
                    w.put(b">");
                });
                push(splice.insert(last.span.end, value));
            }
        }
        // §16.4: our own Route values (and any moved into the Request-URI) leave.
        let mut removals = [Span::default(); 4];
        let count = route_removals(msg, &removed, &mut removals);
        for span in &removals[..count] {
            push(splice.remove(*span));
        }

        // Item 4: Record-Route (double when the two sides use different listeners).
        if self.config.record_route && records_route(msg.method()) {
            let first_rr = headers
                .iter()
                .find(|h| h.kind == HeaderName::RecordRoute)
                .map_or(first_via_line, |h| h.line.start);
            let token = affinity
                .and_then(|id| self.tokens.iter().find(|(t, _)| *t == id))
                .map(|(_, t)| t);
            let ingress_l = self.listeners.get(ingress);
            let client_flow = input.flow.filter(|_| input.transport.is_stream());
            // RFC 3486 §5: a request that arrived compressed gets comp=sigcomp on the
            // Record-Route URI its sender sees, so that side keeps compressing toward us; the
            // URI the other side sees stays plain, hence a double Record-Route.
            let double = ingress != egress || client_flow.is_some() || input.compressed;
            let header = text.piece(|w| {
                w.put(b"Record-Route: ");
                self.write_rr_uri(w, &self.listeners[egress], token, None, false);
                if double && let Some(il) = ingress_l {
                    w.put(b", ");
                    self.write_rr_uri(w, il, token, client_flow, input.compressed);
                }
                w.put(b"\r\n");
            });
            push(splice.insert(first_rr, header));
        }

        // Item 9: Content-Length is mandatory on a stream (RFC 3261 §18.3).
        if msg.content_length().is_none() && target.transport.is_stream() {
            let header = text.piece(|w| {
                w.put(b"Content-Length: ");
                w.put_u64(msg.body_span().len() as u64);
                w.put(b"\r\n");
            });
            let end_of_headers = headers
                .last()
                .map_or(msg.start_line_span().end, |h| h.line.end);
            push(splice.insert(end_of_headers, header));
        }

        if text.overflowed {
            return Err(Rejection::Respond(513, b"Message Too Large"));
        }
        if pushed.is_err() {
            return Err(Rejection::Respond(500, b"Too Many Edits"));
        }
        match splice.apply(msg.as_bytes(), out) {
            Ok(n) => Ok(n),
            Err(sip::SpliceError::InsufficientSize { .. }) => {
                Err(Rejection::Respond(513, b"Message Too Large"))
            }
            Err(_) => Err(Rejection::Respond(400, b"Overlapping Header Values")),
        }
    }

    /// `<sip:host:port;transport=tcp;lr;sea=TOKEN;sef=FLOW;comp=sigcomp>`
    fn write_rr_uri(
        &self,
        w: &mut Out<'_>,
        l: &Listener,
        token: Option<&[u8; AFFINITY_TOKEN_LEN]>,
        flow: Option<FlowId>,
        sigcomp: bool,
    ) {
        w.put(&l.rr_prefix);
        if let Some(token) = token {
            w.put(b";");
            w.put(AFFINITY_PARAM);
            w.put(b"=");
            w.put(token);
        }
        if let Some(flow) = flow {
            w.put(b";");
            w.put(FLOW_PARAM);
            w.put(b"=");
            w.put_hex_compact(flow.0);
        }
        if sigcomp {
            w.put(b";comp=sigcomp");
        }
        w.put(b">");
    }

    /// The 200 answer to an OPTIONS addressed to the proxy (RFC 3261 §11.2).
    fn answer_options(
        &mut self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        out: &mut [u8],
    ) -> Verdict {
        let mut extra = [0u8; 512];
        let mut w = Out::new(&mut extra);
        w.put(ALLOW);
        w.put(b"Accept: */*\r\nAccept-Language: en\r\nSupported: ");
        for (i, tag) in self.config.proxy_require_supported.iter().enumerate() {
            if i > 0 {
                w.put(b", ");
            }
            w.put_str(tag);
        }
        w.put(b"\r\n");
        let len = if w.overflowed() { 0 } else { w.len() };
        self.respond(
            input,
            &Salvage::from_message(msg),
            200,
            b"OK",
            &extra[..len],
            out,
        )
    }

    /// The §16.11 transaction component of our branch.
    fn tx_hash(&self, msg: &Message<'_, '_>) -> u64 {
        let top = msg.top_via();
        if top.has_rfc3261_branch()
            && let Some(branch) = top.branch
        {
            let mut h = self.tx_seed_3261.clone();
            h.field(branch);
            h.finish()
        } else {
            // RFC 2543 client (or a bare cookie, RFC 4475 §3.1.2.18 "badbranch"): the fields
            // §16.11 lists, minus the To tag, which an ACK for a non-2xx gains but its INVITE
            // lacks; the CSeq method is excluded for the same reason.
            let mut h = self.tx_seed_2543.clone();
            h.field(top.span.slice(msg.buf()));
            h.field(msg.from().and_then(|from| from.tag).unwrap_or(b""));
            h.field(msg.call_id());
            h.field(&msg.cseq().number.to_le_bytes());
            h.field(
                msg.request_uri()
                    .map_or(Span::default(), Uri::span)
                    .slice(msg.buf()),
            );
            h.finish()
        }
    }

    /// The §16.6 item 8 loop-detection component: what decides where the request goes, after
    /// route preprocessing (so a request that comes back unchanged hashes the same). Equal for
    /// the INVITE, its CANCEL and its non-2xx ACK (no method, no To tag), so they share one
    /// branch.
    fn loop_hash(&self, msg: &Message<'_, '_>, routing: &Routing, from_backend: bool) -> u32 {
        let buf = msg.buf();
        let mut h = self.loop_seed[usize::from(from_backend)].clone();
        let ruri = routing
            .ruri_from_route
            .or_else(|| msg.request_uri().map(Uri::span));
        h.field(ruri.unwrap_or_default().slice(buf));
        h.field(msg.call_id());
        h.field(msg.from().and_then(|from| from.tag).unwrap_or(b""));
        h.field(&msg.cseq().number.to_le_bytes());
        for (i, r) in msg.routes().enumerate() {
            if !routing.removed.contains(i) {
                h.field(r.span.slice(buf));
            }
        }
        (h.finish() >> 32) as u32
    }

    /// Decodes a branch if we wrote it (cheap shape test first, then the MAC).
    fn our_branch(&self, branch: &[u8]) -> Option<Branch> {
        if branch.len() < MAGIC_COOKIE.len() + 30
            || branch.len() > MAX_BRANCH_LEN
            || branch.get(23) != Some(&b'.')
        {
            return None;
        }
        Branch::verify(branch, &self.branch_mac)
    }

    // ----------------------------------------------------------------------------------
    // Responses
    // ----------------------------------------------------------------------------------

    fn handle_response(
        &mut self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        let code = msg.status_code().unwrap_or(0);
        self.last.kind = MessageKind::Response(code);
        self.last.backend = self.pool.by_addr(input.src).map(Backend::id);
        // RFC 3261 §16.11 / §18.1.2: the top Via must be ours.
        let Some(branch) = msg.top_via().branch.and_then(|b| self.our_branch(b)) else {
            return Verdict::Drop(DropReason::ForeignVia);
        };
        let Some(next) = msg.second_via() else {
            return Verdict::Drop(DropReason::NoNextVia);
        };
        if msg.cseq().method == b"INVITE"
            && let Some(verdict) = self.failover_response(input, msg, code, blacklist, out)
        {
            return verdict;
        }
        let listener = self.listeners.get(usize::from(branch.ret.listener));
        let dest = match branch.ret.flow {
            // §18.2.2: back over the connection the request came in on.
            Some(flow) => Dest::Flow(flow),
            None => {
                let transport = match next.transport {
                    Transport::Udp => Transport::Udp,
                    Transport::Tcp => Transport::Tcp,
                    _ => return Verdict::Drop(DropReason::UnsupportedTransport),
                };
                match via_address(next) {
                    Some(addr) => Dest::Addr(transport, addr),
                    None => return Verdict::Drop(DropReason::Unresolved),
                }
            }
        };
        let mut splice: Splice<'_, 1> = Splice::new();
        if splice.remove(msg.top_via_removal()).is_err() {
            return Verdict::Drop(DropReason::MalformedResponse);
        }
        let Ok(len) = splice.apply(msg.as_bytes(), out) else {
            return Verdict::Drop(DropReason::BufferTooSmall);
        };
        let src = match dest {
            Dest::Addr(Transport::Udp, _) => listener
                .filter(|l| l.transport == Transport::Udp)
                .map(|l| l.local),
            _ => None,
        };
        Verdict::Forward(Transmit {
            dest,
            src,
            len,
            // RFC 3486 §4: the Via the response now goes to asks for compression.
            compress: is_sigcomp(next.comp),
        })
    }

    /// A response to an INVITE the failover table may track. `None`: relay it as usual.
    /// A retryable refusal (or any final answer from a backend the call already left) is
    /// absorbed and ACKed here (RFC 3261 §17.1.1.3, on the backend's transaction: the ACK
    /// carries the response's top Via, ours); the retry or 503 follows from
    /// [`Self::poll_transmit`].
    fn failover_response(
        &mut self,
        input: &Inbound<'_>,
        msg: &Message<'_, '_>,
        code: u16,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Option<Verdict> {
        let fo = self.failover.as_mut()?;
        // RFC 3261 §20.33: Retry-After = delta-seconds [comment] *(;params). The table reads
        // it only for a retry code, so a 1xx or 2xx skips the header walk.
        let retry_after = if fo.config().retry_codes.contains(code) {
            msg.headers_of(HeaderName::RetryAfter)
                .next()
                .and_then(|h| leading_u32(h.value))
        } else {
            None
        };
        let (call_id, cseq) = (msg.call_id(), msg.cseq().number);
        let action = fo.handle_response(
            input.now,
            call_id,
            cseq,
            code,
            retry_after,
            input.src,
            &self.pool,
            blacklist,
        );
        match action {
            ResponseAction::Forward => None,
            ResponseAction::Absorb => Some(Verdict::Drop(DropReason::Superseded)),
            ResponseAction::AckAndAbsorb => {
                let key = fo.key(call_id, cseq);
                let written = fo
                    .request(key)
                    .and_then(|request| write_ack(request, msg.as_bytes(), out).ok());
                let Some(len) = written else {
                    return Some(Verdict::Drop(DropReason::Superseded));
                };
                let stream = input.transport.is_stream();
                let dest = match input.flow {
                    Some(flow) if stream => Dest::Flow(flow),
                    _ => Dest::Addr(input.transport, input.src),
                };
                Some(Verdict::Forward(Transmit {
                    dest,
                    src: (!stream).then_some(input.local),
                    len,
                    compress: false,
                }))
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Identity
    // ----------------------------------------------------------------------------------

    /// True when a SIP URI names this proxy (RFC 3261 §16.4).
    fn is_own_uri(&self, uri: &SipUri<'_>) -> bool {
        let host = match uri.maddr {
            Some(m) => m,
            None => uri.host.text,
        };
        let default_port = if uri.is_sips() || uri.transport == Some(Transport::Tls) {
            5061
        } else {
            5060
        };
        let port = uri.port.unwrap_or(default_port);
        let port_matches = |n: &OwnName| n.port.is_none_or(|p| p == port);
        // Our URIs (the Request-URI of a new call, our Route) name our address as we wrote
        // it: found without parsing the host.
        if self
            .names
            .iter()
            .any(|n| !n.dotted.is_empty() && n.dotted == host && port_matches(n))
        {
            return true;
        }
        // No need to ask the host's kind first: `parse_ip` takes an IPv6 reference with its
        // brackets, and reads a name as no address, exactly as it would after the check.
        let ip = parse_ip(host);
        self.names.iter().any(|n| {
            port_matches(n)
                && match (&n.host, ip) {
                    (OwnHost::Ip(a), Some(b)) => *a == b,
                    (OwnHost::Name(name), None) => eq_ic(name, host),
                    _ => false,
                }
        })
    }

    /// Index of the listener a message arrived on.
    fn ingress_listener(&self, input: &Inbound<'_>) -> u8 {
        let by = |f: &dyn Fn(&Listener) -> bool| self.listeners.iter().position(f);
        let i = by(&|l| l.transport == input.transport && l.local == input.local)
            .or_else(|| {
                by(&|l| l.transport == input.transport && l.local.port() == input.local.port())
            })
            .or_else(|| by(&|l| l.transport == input.transport))
            .unwrap_or(0);
        // A shard's private Via socket stands for its shared listener (Record-Route and the
        // responses' source name the shared one).
        let i = self.listeners.get(i).and_then(|l| l.via_for).unwrap_or(i);
        u8::try_from(i).unwrap_or(0)
    }

    /// The listener written into our Via for a request leaving through `egress`: this shard's
    /// private socket standing in for it, if there is one, else `egress` itself.
    fn via_listener(&self, egress: usize) -> usize {
        self.listeners
            .iter()
            .position(|l| l.via_for == Some(egress))
            .unwrap_or(egress)
    }

    /// The listener a message to `ip` over `transport` leaves through: the first of that
    /// transport in the same address family (any family for an existing connection).
    fn egress_listener(&self, transport: Transport, ip: Option<IpAddr>) -> Option<usize> {
        let same_family = |l: &Listener| ip.is_none_or(|ip| ip.is_ipv4() == l.local.is_ipv4());
        self.listeners
            .iter()
            .position(|l| l.transport == transport && l.via_for.is_none() && same_family(l))
    }
}

/// What the failover table decided for a request from outside.
#[derive(Debug, Clone, Copy)]
enum FailoverRoute {
    /// Forward to this target, as this attempt of the INVITE transaction.
    Target(Target, usize),
    /// Answer 503 with this Retry-After.
    Reject(u32),
}

/// The Call-ID that decides the shard of a message read before (or without) parsing it.
fn salvaged_call_id(bytes: &[u8]) -> Option<&[u8]> {
    sip::salvage_call_id(bytes).map(|span| span.slice(bytes))
}

/// The message a tracked INVITE was, as if it had just arrived (for a retry or the 503).
fn origin_inbound<'b>(now: Instant, origin: &Origin, bytes: &'b [u8]) -> Inbound<'b> {
    Inbound {
        now,
        src: origin.src,
        local: origin.local,
        transport: origin.transport,
        flow: origin.flow.map(FlowId),
        placement: Placement::HandedOff,
        compressed: origin.compressed,
        bytes,
    }
}

/// Writes `Retry-After: N\r\n` (RFC 3261 §20.33) into `out` and returns its length.
fn retry_after_header(secs: u32, out: &mut [u8]) -> usize {
    let mut w = Out::new(out);
    w.put(b"Retry-After: ");
    w.put_u64(u64::from(secs));
    w.put(b"\r\n");
    if w.overflowed() { 0 } else { w.len() }
}

/// The decimal number at the start of `value` (after blanks), if any.
fn leading_u32(value: &[u8]) -> Option<u32> {
    let value = value.trim_ascii_start();
    let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(value.get(..digits)?).ok()?.parse().ok()
}

/// Why a request is not forwarded.
#[derive(Debug, Clone, Copy)]
enum Rejection {
    Respond(u16, &'static [u8]),
    Drop(DropReason),
}

/// Edits one forwarded request may need: our Via, Max-Forwards, received, rport, the
/// Request-URI and a Route for a strict router (two), up to four Route removals,
/// Record-Route and Content-Length make 12. The edit list is initialised for every
/// request, so it is no larger than that: exactly 12.
const MAX_EDITS: usize = 12;

/// The generated text of one forwarded request, written piece by piece into one buffer:
/// each piece is split off as it is finished and lent to the edit that inserts it.
struct Pieces<'s> {
    /// The room left.
    rest: &'s mut [u8],
    /// Some piece did not fit: the request is too large to forward.
    overflowed: bool,
}

impl<'s> Pieces<'s> {
    /// Writes one piece with `write` and returns it. After an overflow the pieces are
    /// empty, like the writes of an overflowed [`Out`].
    fn piece(&mut self, write: impl FnOnce(&mut Out<'_>)) -> &'s [u8] {
        let rest = std::mem::take(&mut self.rest);
        let mut w = Out::new(&mut *rest);
        if !self.overflowed {
            write(&mut w);
        }
        let len = if w.overflowed() { 0 } else { w.len() };
        self.overflowed |= w.overflowed();
        let (piece, rest) = rest.split_at_mut(len);
        self.rest = rest;
        piece
    }
}

/// The spans that delete the Route values in `removed` and keep every header line well-formed:
/// a line whose values all go is removed whole; a run of values followed by a kept one goes
/// with the separator after it; a run that ends a line goes with the separator before it.
/// Returns how many spans were written.
fn route_removals(msg: &Message<'_, '_>, removed: &RouteSet, out: &mut [Span; 4]) -> usize {
    struct Emit<'o> {
        out: &'o mut [Span; 4],
        n: usize,
    }
    impl Emit<'_> {
        fn push(&mut self, s: Span) {
            if let Some(slot) = self.out.get_mut(self.n) {
                *slot = s;
                self.n += 1;
            }
        }
        fn close_line(
            &mut self,
            msg: &Message<'_, '_>,
            line: Option<usize>,
            kept_end: Option<usize>,
            run: Option<(usize, usize)>,
        ) {
            if let (Some(h), Some((_, run_end))) = (line, run) {
                match kept_end {
                    Some(e) => self.push(Span::new(e, run_end)),
                    None => self.push(msg.headers()[h].line),
                }
            }
        }
    }
    if removed.len == 0 {
        return 0;
    }
    let mut emit = Emit { out, n: 0 };
    let mut line: Option<usize> = None;
    let mut kept_end: Option<usize> = None;
    let mut run: Option<(usize, usize)> = None;
    for (i, r) in msg.routes().enumerate() {
        if line != Some(r.header_index) {
            emit.close_line(msg, line, kept_end, run);
            line = Some(r.header_index);
            kept_end = None;
            run = None;
        }
        if removed.contains(i) {
            run = Some(run.map_or((r.span.start, r.span.end), |(s, _)| (s, r.span.end)));
        } else {
            if let Some((s, _)) = run.take() {
                emit.push(Span::new(s, r.span.start));
            }
            kept_end = Some(r.span.end);
        }
    }
    emit.close_line(msg, line, kept_end, run);
    emit.n
}

/// RFC 3261 §18.2.1 / RFC 3581 §4: add `received` when the sent-by host is not the source
/// address, and always when the client asked for rport.
fn needs_received(via: &Via<'_>, src: IpAddr) -> bool {
    via.rport != Rport::Absent || parse_ip(via.host.unbracketed()) != Some(src)
}

/// RFC 3261 §18.2.2 for a relayed response over an unreliable transport: maddr, else received
/// (with rport, RFC 3581 §4), else sent-by. Host names are not resolved here.
fn via_address(via: &Via<'_>) -> Option<SocketAddr> {
    let default_port = via.transport.default_port();
    if let Some(maddr) = via.maddr {
        return Some(SocketAddr::new(
            parse_ip(maddr)?,
            via.port.unwrap_or(default_port),
        ));
    }
    let port = match via.rport {
        Rport::Port(p) => p,
        _ => via.port.unwrap_or(default_port),
    };
    let ip = match via.received {
        Some(r) => r.value.and_then(parse_ip),
        None => None,
    };
    let ip = ip.or_else(|| parse_ip(via.host.unbracketed()))?;
    Some(SocketAddr::new(ip, port))
}

/// The top Via of a (possibly salvaged) request, parsed if it can be.
fn top_via_of<'b>(req: &Salvage<'b>) -> Option<Via<'b>> {
    let line = *req.via_lines().first()?;
    let _ = line;
    req.top_via()
}

/// True for a `comp` parameter value naming SigComp (RFC 3486 §2: `comp=sigcomp`).
fn is_sigcomp(comp: Option<&[u8]>) -> bool {
    comp.is_some_and(|c| eq_ic(c, b"sigcomp"))
}

/// Parses an IP address literal (IPv6 with or without brackets).
///
/// Runs for several hosts of every message (Request-URI, Route, top Via, a response's
/// `received`), nearly all IPv4: a well-formed dotted quad is read by [`dotted_quad`] in one
/// pass, saving the UTF-8 check and the generic parser. Anything else, valid or not, goes to
/// the standard parser, so the answer is always the standard one.
fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    match dotted_quad(text) {
        Some(octets) => Some(IpAddr::V4(std::net::Ipv4Addr::from(octets))),
        None => parse_ip_slow(text),
    }
}

/// The octets of `text` when it is a dotted quad exactly as `Ipv4Addr::from_str` reads one:
/// four decimal octets of one to three digits, each at most 255, no leading zero. `None`
/// says only that this reader does not take it.
///
/// Each octet is read as at most three digits at known offsets, so the shape needs no
/// checks of its own: after an octet comes a dot or the end, and a leading zero ends its
/// octet there (a first version counted each label's length and value in a loop over all
/// bytes, and its per-byte bookkeeping was most of a message's address parsing).
#[inline(always)]
fn dotted_quad(text: &[u8]) -> Option<[u8; 4]> {
    let digit = |at: usize| {
        let d = text.get(at)?.wrapping_sub(b'0');
        (d < 10).then_some(u32::from(d))
    };
    let mut octets = [0u8; 4];
    let mut at = 0;
    for (i, octet) in octets.iter_mut().enumerate() {
        if i > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let first = digit(at)?;
        at += 1;
        let mut value = first;
        // A leading zero is an octet of its own ("0"); "01" is refused by the next check.
        if first != 0
            && let Some(d) = digit(at)
        {
            value = value * 10 + d;
            at += 1;
            if let Some(d) = digit(at) {
                value = value * 10 + d;
                at += 1;
            }
        }
        *octet = u8::try_from(value).ok()?;
    }
    (at == text.len()).then_some(octets)
}

#[cold]
fn parse_ip_slow(text: &[u8]) -> Option<IpAddr> {
    let text = text
        .strip_prefix(b"[")
        .and_then(|t| t.strip_suffix(b"]"))
        .unwrap_or(text);
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn ip_host_text(ip: IpAddr) -> Vec<u8> {
    let mut buf = [0u8; 48];
    let mut w = Out::new(&mut buf);
    w.put_ip(ip, true);
    w.written().to_vec()
}

fn own_name(host: &[u8], port: Option<u16>) -> OwnName {
    match parse_ip(host) {
        Some(ip) => OwnName::new(OwnHost::Ip(ip), port),
        None => OwnName::new(OwnHost::Name(host.to_ascii_lowercase()), port),
    }
}

fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// RFC 3261 §16.6 item 4: Record-Route every request that may create or lives in a dialog;
/// not REGISTER (Path does that job, RFC 3327), CANCEL or ACK (ignored by endpoints).
fn records_route(method: Method<'_>) -> bool {
    !matches!(method, Method::Register | Method::Cancel | Method::Ack)
}

/// A `'static` method for metrics labels (extension methods collapse to `other`).
fn static_method(m: Method<'_>) -> Method<'static> {
    match m {
        Method::Invite => Method::Invite,
        Method::Ack => Method::Ack,
        Method::Bye => Method::Bye,
        Method::Cancel => Method::Cancel,
        Method::Options => Method::Options,
        Method::Register => Method::Register,
        Method::Prack => Method::Prack,
        Method::Subscribe => Method::Subscribe,
        Method::Notify => Method::Notify,
        Method::Publish => Method::Publish,
        Method::Info => Method::Info,
        Method::Refer => Method::Refer,
        Method::Message => Method::Message,
        Method::Update => Method::Update,
        Method::Other(_) => Method::Other(b"other"),
    }
}

#[cfg(test)]
mod ip_tests {
    use super::parse_ip;
    use std::net::IpAddr;

    /// The byte-wise IPv4 reader agrees with the standard parser on every shape it may see.
    #[test]
    fn parse_ip_matches_std() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "192.0.2.10",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3.04",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "1.2.3.",
            ".1.2.3",
            "1.2.3.4 ",
            "1234.1.1.1",
            "a.b.c.d",
            "example.com",
            "",
            "::1",
            "[::1]",
            "[2001:db8::1]",
            "2001:db8::1",
            "[1.2.3.4]",
            "2001:db8::1",
            "0123::1",
            "1.2.3.4:5060",
            "1.2.3.255",
            "1.2.3.256",
            "99.2.3.4",
            "100.2.3.4",
            "1.2.3.0",
            "1.2.3.00",
            "1.0.3.4",
            "00.1.2.3",
            "0.0.0.00",
            "1.2.3.2555",
            "4294967306.1.1.1",
            "1.2.3.4294967296",
            "1.2.3.-4",
            "1.2.3.4.",
            "...",
            "1.2.3.4x",
            "x1.2.3.4",
            "0.1.2.3",
            "10.0.0.1",
            "1.22.233.4",
            "249.250.251.252",
            "1.2.3.300",
            "1.2.3.0a",
            "1.2.3.01",
            "1.2.3.4\0",
            "1.2.3:4",
        ] {
            let std_ip = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(text)
                .parse::<IpAddr>()
                .ok();
            assert_eq!(parse_ip(text.as_bytes()), std_ip, "{text}");
        }
    }
}
