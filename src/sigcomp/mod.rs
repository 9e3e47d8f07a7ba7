//! SigComp: signaling compression for SIP (RFC 3320, 3321, 3485, 3486, 4077, 4896, 5049).
//!
//! - [`udvm`]: the Universal Decompressor Virtual Machine (RFC 3320 §8-9 with the
//!   RFC 4896 corrections), exact to the cycle; checked against every RFC 4465 torture test.
//! - [`message`]: the SigComp header (RFC 3320 §7); [`nack`]: RFC 4077 failure reasons
//!   and NACK messages.
//! - [`compartment`]: the state handler (RFC 3320 §6): stored states, compartments,
//!   retention priorities, state memory limits, idle expiry, a global memory bound.
//! - [`dictionary`]: the RFC 3485 SIP/SDP static dictionary, a locally available state.
//! - [`compressor`]: sipedge's LZSS compressor and the UDVM bytecode that decodes it.
//! - [`endpoint`]: [`SigcompEndpoint`], everything above behind one sans-IO API.
//! - [`framing`]: RFC 3320 §4.2.2 record marking for stream transports (RFC 5049).
//!
//! # Driving a [`SigcompEndpoint`] (one per shard)
//!
//! Inbound, on a UDP datagram or a TCP message boundary whose first byte passes
//! [`message::is_sigcomp`] (everything else is plain SIP):
//!
//! ```text
//! // TCP: let used = framing::deframe_record(&conn_buf, &mut record)? — skip empty records,
//! //      close the connection on a FramingError (RFC 3320 §4.2.2).
//! match endpoint.decompress(now, &peer, transport, record_or_datagram, &mut sip) {
//!     Ok(Received::Message(token)) => {
//!         // `sip` is a SIP message: it takes exactly the path of an uncompressed one
//!         // (parse, Call-ID shard handoff, proxy). If it parses as SIP, confirm it so the
//!         // peer's state and feedback are saved (RFC 3320 §6.2: only on confirmation).
//!         if parsed_ok { endpoint.confirm(now, &peer, token) }
//!     }
//!     Ok(Received::Nack(_)) => {}                       // our compressor already reset
//!     Err(failure) => {                                  // RFC 4077: answer with a NACK
//!         let n = endpoint.write_nack(&failure, datagram, &mut out)?; // send out[..n]
//!     }
//! }
//! ```
//!
//! Outbound, when the next hop asked for compression (RFC 3486: `comp=sigcomp` on the top
//! Via of a request we answer, or on the Route/Request-URI we send to):
//!
//! ```text
//! match endpoint.compress(now, &peer, transport, &sip_bytes, &mut wire) {
//!     Ok(()) => send(wire)  /* TCP: framing::encode_record(&wire, &mut framed) first */,
//!     Err(_) => send(sip_bytes),   // compression is a SHOULD; plain SIP always works
//! }
//! ```
//!
//! Timers: call [`SigcompEndpoint::handle_timeout`] at [`SigcompEndpoint::poll_timeout`]
//! to close idle compartments; call [`SigcompEndpoint::close`] when a flow or
//! registration ends.
//!
//! # Compartments and shards
//!
//! A compartment is the SigComp state of one remote endpoint (RFC 3320 §4.3: the
//! application names it). sipedge keys it by the peer's transport address: the UDP source
//! `IP:port`, or the TCP/TLS connection (flow). sipedge spreads SIP over shards by
//! Call-ID, but one peer's calls have many Call-IDs, and the Call-ID cannot be read before
//! the message is decompressed. So a compartment is not placed by Call-ID; it is owned by
//! one shard chosen from the peer's address:
//!
//! - TCP/TLS: the shard that owns the connection (it receives and writes all its bytes).
//! - UDP: `shard_of(peer address bytes)`. A SigComp datagram that the kernel delivers to
//!   another shard is handed, still compressed, to the owner shard; the owner decompresses
//!   it and the resulting SIP message follows the Call-ID handoff like any other.
//!   Compressed responses and requests toward that peer are likewise compressed on the
//!   owner shard, which holds what the peer has stored and the feedback it asked for.
//!
//! Why: all state of a compartment (its saved states, the peer's requested feedback, our
//! compressor's view of the peer's memory) must change in message order and in one place;
//! keeping it on one shard needs no locks and no cross-shard state. Uncompressed SIP pays
//! nothing, and compressed traffic pays at most one extra handoff per message. A peer that
//! changes address (NAT rebinding) simply starts a new compartment; the old one expires
//! after the idle timeout, and RFC 4077 NACKs resynchronise the two sides.
//!
//! # In sipedge
//!
//! The runtime (`runtime/shard/sigcomp.rs`) drives one endpoint per shard exactly as above,
//! with the placement below, and the proxy core does the RFC 3486 signalling: the shell
//! marks a decompressed message `Inbound::compressed`, and the core sets
//! `Transmit::compress` when the Via a response goes to, or the Route/Request-URI a request
//! goes to, carries `comp=sigcomp`. A request that arrived compressed is double
//! record-routed with `comp=sigcomp` on the client-side URI only (RFC 3486 §5), so the
//! client keeps compressing toward sipedge while backends see plain URIs; the Via sipedge
//! adds carries `comp=sigcomp` only on a request it sends compressed. Pool members are never
//! sent compressed messages. A failed message is answered with a NACK (framed as a record on
//! TCP); a TCP framing error closes the connection; a connection's compartment closes with
//! it.
//!
//! # Decisions where the RFCs leave room
//!
//! - sipedge announces SigComp_version 2 (RFC 4077 NACKs) and sends a NACK for every
//!   failed message; with a version 2 peer (or on TCP) the compressor references the state
//!   it just asked the peer to save without waiting for an acknowledgement, relying on
//!   NACK for recovery as RFC 4896 §5.3 allows; with a version 1 peer on UDP it waits for
//!   the RFC 3321 §5.1.1 acknowledgement (its requested feedback item returned).
//! - State access by partial identifier searches every state of the shard plus the
//!   dictionary, as RFC 3320 §7.2 says; STATE-FREE only frees in the message's own
//!   compartment (RFC 4896 §3.3).
//! - Compartments idle for `idle_timeout` are closed; when the global bound is reached the
//!   least recently used compartments are closed first, and if that is not enough a state
//!   creation request is refused (RFC 3320 §6.2 step 1 allows refusing).

#![forbid(unsafe_code)]

pub mod compartment;
pub mod compressor;
pub mod dictionary;
pub mod endpoint;
pub mod framing;
pub mod message;
pub mod nack;
pub mod state;
pub mod udvm;

pub use compartment::{ApplyReport, StateStore, StoreLimits};
pub use endpoint::{CompressError, Received, SigcompConfig, SigcompEndpoint, Unconfirmed};
pub use nack::{DecompressionFailure, NackReason};
pub use state::{StateItem, StateLookup, StateRequest};
pub use udvm::{Decompressed, DecompressorParams, Transport, Udvm};
