//! The proxy core (RFC 3261 §16.11): one [`Core`] per shard turns each inbound message into
//! one [`Verdict`], writing any bytes to send into the caller's buffer. It is stateless except
//! for INVITE failover: the minimal state of each new INVITE from outside, kept by the shard
//! that owns its Call-ID ([`crate::balance::InviteFailover`], storage allocated up front).
//!
//! It is sans-IO: the runtime passes the bytes, the time and the addresses in, and moves the
//! result; the core owns no socket, no clock and no thread, allocates nothing per message and
//! takes no lock. What it does with a message:
//!
//! - a request or response whose Call-ID belongs to another shard → [`Verdict::Handoff`];
//! - a request from outside (the source is not a backend) → to the backend that owns its
//!   Call-ID (or the one named by the affinity token in our Route), with our Via (branch per
//!   §16.11), Max-Forwards decremented, `received`/`rport` filled in (RFC 3581), our own
//!   Route removed (§16.4) and Record-Route added (§16.6 step 4);
//! - a request from a backend → on by its next Route, else its Request-URI (§16.5-16.6);
//! - a request that fails validation (§16.3) → the error response, sent where §18.2.2 and
//!   RFC 3581 say;
//! - a response → stripped of our Via and sent to the next Via (§16.7, §18.2.2), or dropped
//!   when the top Via is not ours;
//! - INVITE failover (`ProxyConfig::failover`): a new INVITE from outside is tracked; a
//!   retryable refusal (503 by default) or silence past the failover timeout from its backend,
//!   before a provisional response other than 100, is ACKed (§17.1.1.3) and absorbed, and the
//!   INVITE leaves again through [`Core::poll_transmit`] toward the next backend in hash order
//!   with a fresh branch (§16.6 step 8), or the caller gets 503 with Retry-After when none is
//!   left (§21.5.4). Retransmissions, the CANCEL (§9.1) and the ACK of a non-2xx answer follow
//!   the INVITE to the backend that has it, with that attempt's branch; the 2xx ACK and other
//!   in-dialog requests follow the Record-Route affinity as before.
//!
//! # Driving loop
//!
//! ```text
//! loop {
//!     match next_input() {
//!         datagram or framed stream message => {
//!             match core.handle_inbound(Inbound { .. }, &blacklist, &mut out) {
//!                 Verdict::Forward(t) | Verdict::Respond(t) => send(t.dest, t.src, &out[..t.len]),
//!                 Verdict::Handoff(shard) => queue_to(shard, datagram),  // re-enter as HandedOff
//!                 Verdict::Drop(reason) => count(reason),
//!             }
//!         }
//!         timer fired => core.handle_timeout(now, &blacklist),
//!         sending to a backend failed (connect refused, ICMP, send error) =>
//!             core.handle_transport_error(now, addr, reason, &blacklist),
//!     }
//!     // Messages the core sends on its own: failover retries and 503s.
//!     while let Some(t) = core.poll_transmit(now, &mut out) {
//!         send(t.dest, t.src, &out[..t.len]);
//!         while let Some(event) = core.poll_event() { act(event) }  // Event::Failover
//!     }
//!     while let Some(event) = core.poll_event() { act(event) }
//!     sleep_until(core.poll_timeout());
//! }
//! ```
//!
//! [`Core::poll_timeout`] only ever moves to at least the shortest failover duration after
//! the call that set it, so a runtime that wakes at least that often (the shard's timer task
//! does) needs no wake-up from the message path.
//!
//! # What the runtime provides and honours
//!
//! - A stream transport frames messages (RFC 3261 §18.3, `sip::frame`) before calling
//!   [`Core::handle_inbound`]: the core treats its input as exactly one message, and answers
//!   CRLF keep-alives with [`DropReason::KeepAlive`] (the runtime pongs on streams itself).
//! - [`Inbound::local`] is the bound address the message arrived on; it selects the listener
//!   (and so the advertised address and the socket replies leave from).
//! - [`FlowId`]s are unique across shards; [`Dest::Flow`] may name a connection another shard
//!   owns (a response handed off to the call's shard goes back over the caller's connection).
//! - [`Verdict::Handoff`]: queue the unchanged bytes to that shard, which calls
//!   `handle_inbound` with [`Placement::HandedOff`].
//! - [`Placement::Steered`] only for a socket whose datagrams the kernel places on their
//!   owner's shard (or the shard's own Via port): the core then parses before it checks the
//!   owner, which saves a Call-ID scan per message but wastes a parse on a stray one.
//! - [`Inbound::compressed`]: set when the runtime decompressed the message (RFC 3320);
//!   [`Transmit::compress`]: compress the output for its destination (RFC 3486). The core
//!   only reads and writes the `comp=sigcomp` parameters; compartments live in the runtime.
//! - [`Transmit::src`]: send a UDP message from that local address when given (RFC 3581 §4:
//!   a response leaves from where its request arrived; a request from the listener whose
//!   address is in our Via).
//! - After each call, [`Core::last_message`] tells what the message was (method or status,
//!   backend, generated status) for the counters; [`DropReason`] converts into the metrics
//!   drop label.
//! - Pool reloads: build the core with [`Core::with_shared_pool`] to follow an `ArcSwap`,
//!   or call [`Core::set_pool`].

mod branch;
mod config;
mod core;
/// Keyed hashes; the failover table keys its index with one too.
pub(crate) mod siphash;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Instant;

pub use self::config::{ConfigError, ListenerConfig, ProxyConfig};
pub use self::core::{Core, MessageInfo, MessageKind};
use crate::shard::ShardId;
use crate::sip::Transport;

/// A connection-oriented flow (a TCP connection), named by the runtime. Unique across all
/// shards of a process for as long as the connection lives, so a response can be steered back
/// to it from any shard (RFC 3261 §18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// One message handed to the core.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'b> {
    /// The time the message was received.
    pub now: Instant,
    /// The address it came from (the RFC 3581 `received`/`rport` source).
    pub src: SocketAddr,
    /// The local address it arrived on (matched against [`ListenerConfig::local`]).
    pub local: SocketAddr,
    /// The transport it arrived over.
    pub transport: Transport,
    /// The connection it arrived on, for connection-oriented transports.
    pub flow: Option<FlowId>,
    /// Whether the message may belong to another shard, and so when the core checks.
    pub placement: Placement,
    /// True when the message arrived SigComp-compressed (RFC 3320) and the runtime
    /// decompressed it: the core then asks the sender to keep compressing toward the proxy
    /// (RFC 3486 §5, `comp=sigcomp` on the client-facing Record-Route).
    pub compressed: bool,
    /// Exactly one message (a datagram, or one framed stream message).
    pub bytes: &'b [u8],
}

/// What the runtime knows of whether a message reached the shard owning its call (all of a
/// call lives on the shard its Call-ID hashes to, [`crate::shard::shard_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Read from a socket every shard reads: about `1 - 1/shards` of these belong elsewhere,
    /// so the owner is found by a Call-ID scan before anything is parsed.
    Unknown,
    /// Read from a socket the kernel steers by Call-ID, or from this shard's own Via port
    /// (where the responses to its requests come back): almost always this shard's, so the
    /// message is parsed first and its parsed Call-ID decides. A stray one costs a parse.
    Steered,
    /// Handed over by the shard that read it: this shard owns it, never hand it off again.
    HandedOff,
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// To this address over this transport. For a stream transport the runtime reuses an open
    /// connection to the address or opens one.
    Addr(Transport, SocketAddr),
    /// Over this existing connection (RFC 3261 §18.2.2: a response goes back on the connection
    /// its request came in on). If the connection is gone the runtime drops the message.
    Flow(FlowId),
}

/// A message to send: the bytes are `out[..len]` of the buffer passed to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The destination.
    pub dest: Dest,
    /// The local address to send from (the listener whose address is in our Via, or the one
    /// the request came in on, RFC 3581 §4); `None` lets the runtime choose.
    pub src: Option<SocketAddr>,
    /// Number of bytes at the start of the output buffer.
    pub len: usize,
    /// The next hop asked for SigComp (RFC 3486: `comp=sigcomp` on the Via a response goes
    /// to, or on the Route/Request-URI a request is sent to): compress the bytes in that
    /// peer's compartment before sending, or send them plain when compression fails
    /// (compression is a SHOULD; plain SIP is always understood).
    pub compress: bool,
}

/// What to do with an inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the message on (a forwarded request or a relayed response).
    Forward(Transmit),
    /// Send a response the proxy generated (an error, or 200 to OPTIONS for the proxy).
    Respond(Transmit),
    /// The message belongs to this shard's sibling: queue the unchanged bytes to it.
    Handoff(ShardId),
    /// Discard it, counting the reason.
    Drop(DropReason),
}

/// Why a message was discarded. `Copy`; [`DropReason::label`] is its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a SIP message at all (no start line could be salvaged), or an empty datagram.
    NotSip,
    /// A keep-alive (RFC 5626 §3.5.1 CRLF); the runtime answers those on streams itself.
    KeepAlive,
    /// A SigComp message (RFC 3320): it must be decompressed before it reaches the core.
    SigComp,
    /// A malformed response (RFC 3261 §18.1.2 / RFC 4475: discard it).
    MalformedResponse,
    /// A response whose top Via was not written by this proxy (RFC 3261 §18.1.2).
    ForeignVia,
    /// A response with no Via after ours: it was addressed to the proxy itself, which sends no
    /// requests of its own.
    NoNextVia,
    /// A malformed ACK or an ACK that would deserve an error response: an ACK is never
    /// answered (RFC 3261 §17.2.1).
    BadAck,
    /// A malformed request from which not even a Via could be salvaged, so there is no
    /// address to send the error response to (RFC 3261 §18.2.2).
    Unanswerable,
    /// An ACK for which no backend is available (other requests get 503).
    NoBackend,
    /// The next hop is a host name: this core resolves numeric addresses only.
    Unresolved,
    /// The next hop needs a transport the proxy has no listener for (TLS, SCTP, WS...).
    UnsupportedTransport,
    /// The caller's output buffer cannot hold even the response (513 was impossible).
    BufferTooSmall,
    /// A provisional response from a backend an INVITE already failed over from: only the
    /// backend now in charge speaks to the caller (RFC 3261 §16.7 lets a proxy absorb it).
    Superseded,
}

impl DropReason {
    /// A stable snake-case label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotSip => "not_sip",
            Self::KeepAlive => "keepalive",
            Self::SigComp => "sigcomp",
            Self::MalformedResponse => "malformed_response",
            Self::ForeignVia => "foreign_via",
            Self::NoNextVia => "no_next_via",
            Self::BadAck => "bad_ack",
            Self::Unanswerable => "unanswerable",
            Self::NoBackend => "no_backend",
            Self::Unresolved => "unresolved",
            Self::UnsupportedTransport => "unsupported_transport",
            Self::BufferTooSmall => "buffer_too_small",
            Self::Superseded => "superseded",
        }
    }

    /// Every reason, for pre-registering metrics.
    pub const ALL: [Self; 13] = [
        Self::NotSip,
        Self::KeepAlive,
        Self::SigComp,
        Self::MalformedResponse,
        Self::ForeignVia,
        Self::NoNextVia,
        Self::BadAck,
        Self::Unanswerable,
        Self::NoBackend,
        Self::Unresolved,
        Self::UnsupportedTransport,
        Self::BufferTooSmall,
        Self::Superseded,
    ];
}

impl From<DropReason> for crate::metrics::DropReason {
    /// The `sipedge_drops_total{reason}` label a core drop is counted under.
    fn from(reason: DropReason) -> Self {
        match reason {
            DropReason::NotSip => Self::NotSip,
            DropReason::KeepAlive => Self::KeepAlive,
            DropReason::SigComp => Self::Sigcomp,
            DropReason::MalformedResponse => Self::MalformedResponse,
            DropReason::ForeignVia => Self::ForeignVia,
            DropReason::NoNextVia => Self::NoNextVia,
            DropReason::BadAck => Self::BadAck,
            DropReason::Unanswerable => Self::Unanswerable,
            DropReason::NoBackend => Self::NoBackend,
            DropReason::Unresolved => Self::Unresolved,
            DropReason::UnsupportedTransport => Self::UnsupportedTransport,
            DropReason::BufferTooSmall => Self::BufferTooSmall,
            DropReason::Superseded => Self::Superseded,
        }
    }
}

/// Something the runtime must act on outside the message path, drained with
/// [`Core::poll_event`] after each `handle_*` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A backend did not answer in time. Reserved: INVITE failover reports silent backends
    /// to the blacklist itself and announces the move with [`Event::Failover`].
    BackendTimeout(SocketAddr),
    /// An INVITE left backend `from` (it refused with a retry code, stayed silent past the
    /// failover timeout, or could not be reached) for `to`, or for nobody (`None`: the proxy
    /// answered 503 itself). Emitted with the [`Core::poll_transmit`] output that carries it
    /// out; count it as a failover of `from`.
    Failover {
        /// The backend the INVITE leaves.
        from: crate::balance::BackendId,
        /// The backend it goes to, if any.
        to: Option<crate::balance::BackendId>,
    },
}
