//! [`SigcompEndpoint`]: the sans-IO face of SigComp for the runtime, one per shard.

use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;
use std::time::Instant;

use super::compartment::{StateStore, StoreLimits};
use super::compressor::{self, BitWriter, Layout, Matcher};
use super::dictionary::rfc3485_state;
use super::nack::{self, DecompressionFailure, NackReason};
use super::state::{StateItem, StateRequest};
use super::udvm::{
    Decompressed, DecompressorParams, RequestedFeedback, ReturnedParameters, Transport, Udvm,
};

/// Configuration of one endpoint (one per shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigcompConfig {
    /// Resources offered to remote compressors. `decompression_memory_size` and the
    /// limits' `state_memory_size` should be values of the RFC 3320 §3.3.1 table, since
    /// they are advertised in that encoding (rounded down otherwise).
    pub decompressor: DecompressorParams,
    /// State memory per compartment, total bound, idle expiry.
    pub limits: StoreLimits,
}

impl Default for SigcompConfig {
    fn default() -> Self {
        Self {
            decompressor: DecompressorParams {
                decompression_memory_size: 16384,
                cycles_per_bit: 64,
                sigcomp_version: 2,
            },
            limits: StoreLimits {
                state_memory_size: 16384,
                ..StoreLimits::default()
            },
        }
    }
}

/// What [`SigcompEndpoint::decompress`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Received {
    /// A decompressed SIP message is in the output buffer. Pass the token to
    /// [`SigcompEndpoint::confirm`] once the application accepts the message (a valid SIP
    /// message); drop it otherwise, and no state is saved (RFC 3320 §6.2).
    Message(Unconfirmed),
    /// The peer reported that it could not decompress one of our messages (RFC 4077).
    /// The compartment's compressor state was reset; there is nothing to pass on.
    Nack(Option<NackReason>),
}

/// The state and feedback a decompressed message carries, applied by
/// [`SigcompEndpoint::confirm`].
#[derive(Debug)]
pub struct Unconfirmed {
    decompressed: Decompressed,
}

impl Unconfirmed {
    /// Whether the bytecode produced any output (an empty SigComp message with no OUTPUT is
    /// not a SIP message).
    pub fn has_output(&self) -> bool {
        self.decompressed.has_output
    }

    /// UDVM cycles used.
    pub fn cycles_used(&self) -> u64 {
        self.decompressed.cycles_used
    }
}

/// Why [`SigcompEndpoint::compress`] produced nothing; the caller then sends the message
/// uncompressed (RFC 3486 makes compression a SHOULD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressError {
    /// The peer's advertised (or default) resources leave no room for the decoder.
    PeerTooSmall,
    /// The compressed message would not decompress within the peer's resources (cycles or
    /// memory); the reason is what the peer's UDVM would report.
    ExceedsPeerResources(NackReason),
}

impl std::fmt::Display for CompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PeerTooSmall => f.write_str("peer SigComp resources too small"),
            Self::ExceedsPeerResources(r) => write!(f, "message exceeds peer resources ({r})"),
        }
    }
}

impl std::error::Error for CompressError {}

/// What we know of the remote decompressor (RFC 3320 §3.3, learned from returned
/// parameters; minimum values until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RemoteParams {
    decompression_memory_size: u32,
    state_memory_size: u32,
    cycles_per_bit: u16,
    version: u8,
}

impl Default for RemoteParams {
    fn default() -> Self {
        // RFC 3320 §3.3.1: the minimum every endpoint offers.
        Self {
            decompression_memory_size: 2048,
            state_memory_size: 2048,
            cycles_per_bit: 16,
            version: 1,
        }
    }
}

/// States our decoder has asked the peer to save, since the last bytecode upload.
#[derive(Debug)]
struct Generation {
    layout: Layout,
    bytecode: Vec<u8>,
    /// The newest state known to be stored at the peer.
    anchor: Option<Rc<StateItem>>,
    /// States requested after the anchor, with the tag of the message that requested them.
    outstanding: Vec<(u8, Rc<StateItem>)>,
}

#[derive(Debug, Default)]
struct Peer {
    remote: RemoteParams,
    /// The peer's requested feedback item, returned in each message we send it
    /// (RFC 3320 §5, RFC 4896 §9.2).
    returned_feedback: Option<Vec<u8>>,
    generation: Option<Generation>,
    next_tag: u8,
    last_used: Option<Instant>,
}

/// A SigComp endpoint: decompressor, state handler and compressor for every peer of one
/// shard. Keyed by a peer key `P` (sipedge: the peer's transport address, see the module
/// documentation of [`super`]).
#[derive(Debug)]
pub struct SigcompEndpoint<P> {
    config: SigcompConfig,
    udvm: Udvm,
    store: StateStore<P>,
    peers: HashMap<P, Peer>,
    dictionary: Rc<StateItem>,
    matcher: Matcher,
    scratch: Vec<u8>,
}

/// RFC 3320 §3.3.1 encoding of a memory size (3 bits), rounded down; 0 for < 2048.
fn encode_memory(size: usize) -> u8 {
    (1..=7u8)
        .rev()
        .find(|&code| size >= 1024usize << code)
        .unwrap_or(0)
}

fn encode_cycles(cpb: u16) -> u8 {
    match cpb {
        128.. => 3,
        64.. => 2,
        32.. => 1,
        _ => 0,
    }
}

impl<P: Hash + Eq + Clone> SigcompEndpoint<P> {
    /// A new endpoint holding the RFC 3485 dictionary as a locally available state.
    pub fn new(config: SigcompConfig) -> Self {
        let mut store = StateStore::new(config.limits);
        let dictionary = Rc::new(rfc3485_state());
        store.add_local(dictionary.clone());
        Self {
            config,
            udvm: Udvm::new(),
            store,
            peers: HashMap::new(),
            dictionary,
            matcher: Matcher::default(),
            scratch: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SigcompConfig {
        &self.config
    }

    /// The state handler (for metrics and tests).
    pub fn store(&self) -> &StateStore<P> {
        &self.store
    }

    /// Decompresses one SigComp `message` from `peer` into `out` (cleared first).
    ///
    /// `message` is one whole SigComp message: a UDP datagram whose first byte passed
    /// [`super::message::is_sigcomp`], or one record from [`super::framing::deframe_record`]
    /// on a stream. On failure nothing changes and the caller may answer with
    /// [`Self::write_nack`] (RFC 4077).
    pub fn decompress(
        &mut self,
        now: Instant,
        peer: &P,
        transport: Transport,
        message: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Received, DecompressionFailure> {
        out.clear();
        if let Some(nack) = nack::parse_nack(message) {
            // RFC 4077 §2.3: forget what we assumed the peer stores; upload again next time.
            if let Some(p) = self.peers.get_mut(peer) {
                p.generation = None;
                p.last_used = Some(now);
            }
            return Ok(Received::Nack(nack.reason));
        }
        let decompressed = self.udvm.decompress(
            &self.config.decompressor,
            transport,
            message,
            &self.store,
            out,
        )?;
        Ok(Received::Message(Unconfirmed { decompressed }))
    }

    /// The application accepted the message `unconfirmed` came with: save its states in
    /// `peer`'s compartment and take its feedback (RFC 3320 §6.2, §6.3, §9.4.9).
    pub fn confirm(&mut self, now: Instant, peer: &P, unconfirmed: Unconfirmed) {
        let d = unconfirmed.decompressed;
        self.store.apply(peer, now, &d.state_requests);
        let p = self.peers.entry(peer.clone()).or_default();
        p.last_used = Some(now);
        if let Some(RequestedFeedback { s_bit, item, .. }) = d.requested_feedback {
            // RFC 4896 §9.2: Q = 0 clears the item; location 0 leaves it as it was.
            p.returned_feedback = item;
            if s_bit {
                self.store.set_state_memory_size(peer, now, 0);
            }
        }
        if let Some(params) = d.returned_parameters {
            apply_returned_parameters(&mut p.remote, &params);
        }
        if let Some(item) = d.returned_feedback_item {
            acknowledge(p, &item);
        }
    }

    /// Writes the RFC 4077 NACK for `failure` of `message` into `out`; returns its length
    /// or `Err(required)` if `out` is too small.
    pub fn write_nack(
        &self,
        failure: &DecompressionFailure,
        message: &[u8],
        out: &mut [u8],
    ) -> Result<usize, usize> {
        nack::write_nack(failure, message, out)
    }

    /// Compresses the SIP message `sip` for `peer` into `out` (cleared first): a complete
    /// SigComp message. On a stream transport the caller frames it with
    /// [`super::framing::encode_record`].
    ///
    /// The first message to a peer uploads the decoder bytecode; later ones reference the
    /// newest state the peer is known to hold. Every message is decompressed locally with
    /// the peer's resources before it is returned, so what leaves is known to decompress.
    pub fn compress(
        &mut self,
        now: Instant,
        peer: &P,
        transport: Transport,
        sip: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CompressError> {
        out.clear();
        let parameters_byte = self.parameters_byte();
        let version = self.config.decompressor.sigcomp_version;
        let p = self.peers.entry(peer.clone()).or_default();
        p.last_used = Some(now);
        let remote = p.remote;
        let sms = remote.state_memory_size as usize;
        // A third of the peer's state memory per state: room for the anchor plus two newer
        // states, so saving new states never pushes the anchor out of the peer's
        // compartment (RFC 3320 §6.2 steps 4-5: oldest of equal priority goes first).
        let max_state = (sms / 3).saturating_sub(64);
        let dms = remote.decompression_memory_size as usize;
        let max_memory = match transport {
            // Leave room for the message itself: UDVM memory is DMS minus its size (§7).
            Transport::Message => dms - (dms / 4).max(1024).min(dms),
            Transport::Stream => dms / 2,
        };
        let desired = Layout::fit(max_state, max_memory).ok_or(CompressError::PeerTooSmall)?;
        // Start a new generation (bytecode upload) when the current layout no longer fits
        // the peer, or when a better one is possible: at no cost when no saved state is
        // referenced yet, or when the peer offers at least twice the history.
        let reset = p.generation.as_ref().is_some_and(|g| {
            g.layout.buffer_end > desired.buffer_end
                || (g.layout != desired
                    && (g.anchor.is_none() || desired.ring_len() >= 2 * g.layout.ring_len()))
        });
        if reset {
            p.generation = None;
        }
        let generation = p.generation.get_or_insert_with(|| {
            let (bytecode, _) = compressor::bytecode(&desired, parameters_byte, version);
            Generation {
                layout: desired,
                bytecode,
                anchor: None,
                outstanding: Vec::new(),
            }
        });
        // How many of this generation's states the peer's compartment holds at once; all
        // but one (the anchor) may be unacknowledged.
        let slots = (sms / (usize::from(generation.layout.state_len()) + 64)).clamp(1, 5);
        let tag = p.next_tag;
        p.next_tag = (p.next_tag + 1) % 128;
        let can_save = generation.outstanding.len() + 1 < slots;
        // A message that saves no state asks for the newest outstanding state's tag, so
        // that acknowledgement is not lost (see the module docs).
        let feedback_tag = if can_save {
            tag
        } else {
            generation.outstanding.last().map_or(tag, |&(t, _)| t)
        };
        let remote_params = DecompressorParams {
            decompression_memory_size: remote.decompression_memory_size,
            cycles_per_bit: remote.cycles_per_bit,
            sigcomp_version: remote.version,
        };
        let history = match &generation.anchor {
            Some(anchor) => compressor::history_from_state(&generation.layout, &anchor.value)
                .ok_or(CompressError::ExceedsPeerResources(
                    NackReason::InternalError,
                ))?,
            None => compressor::initial_history(&generation.layout),
        };
        let mut body = Vec::new();
        let mut save = can_save;
        loop {
            out.clear();
            body.clear();
            body.push(feedback_tag);
            let mut w = BitWriter::default();
            w.put(u32::from(save), 1);
            self.matcher
                .encode(&history, generation.layout.ring_len(), sip, &mut w);
            w.finish(&mut body);
            write_message(out, p.returned_feedback.as_deref(), generation, &body);
            let lookup: Vec<Rc<StateItem>> = generation
                .anchor
                .iter()
                .cloned()
                .chain(std::iter::once(self.dictionary.clone()))
                .collect();
            let check =
                self.udvm
                    .decompress(&remote_params, transport, out, &lookup, &mut self.scratch);
            match check {
                Ok(d) if self.scratch == sip => {
                    if save {
                        let created = d.state_requests.into_iter().find_map(|r| match r {
                            StateRequest::Create { item, .. } => Some(Rc::new(item)),
                            StateRequest::Free { .. } => None,
                        });
                        if let Some(item) = created {
                            if transport == Transport::Stream || remote.version >= 2 {
                                // A reliable, ordered transport delivers the message before
                                // any later one, and a version 2 peer NACKs a reference to
                                // state it lacks (RFC 4896 §5.3 allows relying on that); a
                                // NACK resets this generation.
                                generation.anchor = Some(item);
                                generation.outstanding.clear();
                            } else {
                                generation.outstanding.push((tag, item));
                            }
                        }
                    }
                    return Ok(());
                }
                Ok(_) => {
                    out.clear();
                    return Err(CompressError::ExceedsPeerResources(
                        NackReason::InternalError,
                    ));
                }
                Err(f) if save && f.reason == NackReason::CyclesExhausted => save = false,
                Err(f) => {
                    out.clear();
                    return Err(CompressError::ExceedsPeerResources(f.reason));
                }
            }
        }
    }

    /// Closes every compartment (and compressor state) idle past the configured timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.store.handle_timeout(now);
        let timeout = self.config.limits.idle_timeout;
        self.peers.retain(|_, p| {
            p.last_used
                .is_some_and(|t| now.saturating_duration_since(t) < timeout)
        });
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.config.limits.idle_timeout;
        let peers = self
            .peers
            .values()
            .filter_map(|p| p.last_used)
            .min()
            .map(|t| t + timeout);
        match (self.store.poll_timeout(), peers) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes `peer`'s compartment, e.g. when its registration or flow ends (RFC 3486 §4.1
    /// ties compartments to those).
    pub fn close(&mut self, peer: &P) {
        self.store.close(peer);
        self.peers.remove(peer);
    }

    /// Our resources in the RFC 3320 §3.3.1 encoding (cpb, dms, sms).
    fn parameters_byte(&self) -> u8 {
        let d = &self.config.decompressor;
        (encode_cycles(d.cycles_per_bit) << 6)
            | (encode_memory(d.decompression_memory_size as usize).max(1) << 3)
            | encode_memory(self.config.limits.state_memory_size)
    }
}

fn apply_returned_parameters(remote: &mut RemoteParams, params: &ReturnedParameters) {
    if let Some(cpb) = params.cycles_per_bit {
        remote.cycles_per_bit = cpb;
    }
    if let Some(dms) = params.decompression_memory_size {
        remote.decompression_memory_size = dms;
    }
    if let Some(sms) = params.state_memory_size {
        remote.state_memory_size = sms;
    }
    if let Some(v) = params.sigcomp_version {
        remote.version = v;
    }
}

/// The peer returned our requested feedback item `[tag]`: the message with that tag was
/// accepted, so the state it asked for is stored (RFC 3321 §5.1.1).
fn acknowledge(p: &mut Peer, item: &[u8]) {
    let [tag] = item else {
        return;
    };
    let Some(g) = p.generation.as_mut() else {
        return;
    };
    if let Some(index) = g.outstanding.iter().position(|(t, _)| t == tag) {
        let (_, item) = g.outstanding.remove(index);
        g.outstanding.drain(..index);
        g.anchor = Some(item);
    }
}

/// Assembles the SigComp header (RFC 3320 §7) and `body`.
fn write_message(out: &mut Vec<u8>, feedback: Option<&[u8]>, g: &Generation, body: &[u8]) {
    let t_bit = if feedback.is_some() { 0x04 } else { 0 };
    match &g.anchor {
        Some(anchor) => {
            out.push(0xF8 | t_bit | 0x01);
            out.extend_from_slice(feedback.unwrap_or(&[]));
            out.extend_from_slice(&anchor.id[..6]);
        }
        None => {
            out.push(0xF8 | t_bit);
            out.extend_from_slice(feedback.unwrap_or(&[]));
            let code_len = g.bytecode.len() as u16;
            // destination field 1 = address 128 (RFC 3320 §7.3).
            out.push((code_len >> 4) as u8);
            out.push((((code_len & 0x0F) as u8) << 4) | 0x01);
            out.extend_from_slice(&g.bytecode);
        }
    }
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_parameters() {
        assert_eq!(encode_memory(16384), 4);
        assert_eq!(encode_memory(2048), 1);
        assert_eq!(encode_memory(3000), 1);
        assert_eq!(encode_memory(100), 0);
        assert_eq!(encode_cycles(64), 2);
    }

    #[test]
    fn round_trip_between_two_endpoints() {
        let now = Instant::now();
        let mut a: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let mut b: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let msg = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        let mut wire = Vec::new();
        let mut sip = Vec::new();
        for round in 0..4 {
            a.compress(now, &1, Transport::Message, msg, &mut wire)
                .unwrap();
            let Received::Message(u) = b
                .decompress(now, &0, Transport::Message, &wire, &mut sip)
                .unwrap()
            else {
                panic!("nack")
            };
            assert_eq!(sip, msg, "round {round}");
            b.confirm(now, &0, u);
            b.compress(now, &0, Transport::Message, msg, &mut wire)
                .unwrap();
            let Received::Message(u) = a
                .decompress(now, &1, Transport::Message, &wire, &mut sip)
                .unwrap()
            else {
                panic!("nack")
            };
            assert_eq!(sip, msg);
            a.confirm(now, &1, u);
        }
        // By now both sides reference saved state: a small partial-state message.
        a.compress(now, &1, Transport::Message, msg, &mut wire)
            .unwrap();
        assert_eq!(wire[0] & 0xFB, 0xF9, "partial-state message");
        assert!(wire.len() < msg.len() / 4, "{} bytes", wire.len());
    }
}
