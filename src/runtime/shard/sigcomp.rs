//! The shard's SigComp paths (RFC 3320, 3486, 4077, 5049): one [`SigcompEndpoint`] per
//! shard, driven as `crate::sigcomp` documents.
//!
//! Placement (see the `crate::sigcomp` module documentation): a compartment is keyed by the
//! peer's transport address. On UDP it lives on [`udp_owner`]`(peer)`: a compressed
//! datagram the kernel delivered to another shard is handed, still compressed, to the owner,
//! which decompresses it; the SIP message then follows the Call-ID handoff like any other.
//! A message to compress toward a UDP peer is likewise handed (plain) to the peer's owner,
//! which compresses and sends it. On TCP the compartment is the connection's, on the shard
//! that owns the connection.
//!
//! Buffers: decompressed messages, compressed output and records come from a small per-shard
//! pool of vectors that are handed back after use, so in steady state SigComp traffic costs
//! no buffer allocation in this shell (the compressor has its own working memory). Plain SIP
//! never enters this file: the receive loops test one byte, `transmit` one flag.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Conn, SendMode, Shard, flow_owner};
use crate::config::SigcompSettings;
use crate::metrics::{DropReason, ErrorReason, SigcompResult};
use crate::proxy::{Dest, FlowId, Inbound, Placement, Transmit};
use crate::runtime::handoff::ParcelKind;
use crate::shard::{ShardId, shard_of};
use crate::sigcomp::compartment::StoreLimits;
use crate::sigcomp::{
    DecompressorParams, Received, SigcompConfig, SigcompEndpoint, Transport as SigcompTransport,
    framing,
};
use crate::sip::{self, EMPTY_HEADER, Limits, Transport};

/// Spare buffers kept per shard (more are freed when returned).
const SPARE_BUFFERS: usize = 16;
/// Header slots for the "is it SIP?" check before confirming a message.
const HEADER_SLOTS: usize = 128;

/// Who a compartment belongs to (RFC 3486 §4.1: a flow, or the peer's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PeerKey {
    /// A UDP peer, by source address and port.
    Udp(SocketAddr),
    /// A TCP connection of this shard.
    Flow(FlowId),
}

/// The endpoint settings of one shard: the configured resources, the process-wide memory
/// bound split over the shards. `None` when SigComp is disabled.
pub(crate) fn endpoint_config(settings: &SigcompSettings, shards: u16) -> Option<SigcompConfig> {
    settings.enabled.then(|| SigcompConfig {
        decompressor: DecompressorParams {
            decompression_memory_size: settings.decompression_memory_size,
            cycles_per_bit: settings.cycles_per_bit,
            sigcomp_version: 2,
        },
        limits: StoreLimits {
            state_memory_size: settings.state_memory_size,
            total_memory: (settings.total_memory / usize::from(shards.max(1)))
                .max(settings.state_memory_size),
            idle_timeout: settings.idle_timeout,
        },
    })
}

/// The shard owning a UDP peer's compartment: a hash of its address and port.
pub(super) fn udp_owner(peer: SocketAddr, shards: u16) -> ShardId {
    let mut key = [0u8; 18];
    let len = match peer.ip() {
        IpAddr::V4(ip) => {
            key[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            key[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    key[len..len + 2].copy_from_slice(&peer.port().to_be_bytes());
    shard_of(&key[..len + 2], shards)
}

/// One shard's SigComp state.
pub(super) struct ShardSigcomp {
    endpoint: RefCell<SigcompEndpoint<PeerKey>>,
    spare: RefCell<Vec<Vec<u8>>>,
    idle_timeout: Duration,
}

impl ShardSigcomp {
    pub(super) fn new(config: SigcompConfig) -> Self {
        Self {
            idle_timeout: config.limits.idle_timeout,
            endpoint: RefCell::new(SigcompEndpoint::new(config)),
            spare: RefCell::new(Vec::new()),
        }
    }

    fn take_buf(&self) -> Vec<u8> {
        self.spare.borrow_mut().pop().unwrap_or_default()
    }

    fn give_buf(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }

    /// Forgets a connection's compartment (RFC 3486 §4.1: it lives as long as the flow).
    pub(super) fn close_flow(&self, flow: FlowId) {
        self.endpoint.borrow_mut().close(&PeerKey::Flow(flow));
    }
}

/// What became of the SigComp record at the start of a TCP connection's buffer.
pub(super) enum RecordOutcome {
    /// A record of this many bytes (delimiter included) was handled.
    Consumed(usize),
    /// The record is not complete yet.
    Partial,
    /// A framing error (RFC 3320 §4.2.2): close the connection.
    Close,
}

/// True when `bytes` parse as one SIP message: the application accepts it, so its state is
/// saved (RFC 3320 §6.2).
fn is_sip(bytes: &[u8], stream: bool) -> bool {
    let mut slots = [EMPTY_HEADER; HEADER_SLOTS];
    let limits = Limits::default();
    if stream {
        sip::parse_stream_message(bytes, &mut slots, &limits).is_ok()
    } else {
        sip::parse(bytes, &mut slots, &limits).is_ok()
    }
}

impl Shard {
    /// A UDP datagram whose first byte marks SigComp (RFC 3320 §7), from `src` on `local`.
    pub(super) async fn receive_sigcomp_datagram(
        self: &Rc<Self>,
        src: SocketAddr,
        local: SocketAddr,
        message: &[u8],
        sbuf: Vec<u8>,
    ) -> Vec<u8> {
        let metrics = self.metrics();
        let Some(sc) = &self.sigcomp else {
            metrics.message();
            metrics.drop(DropReason::Sigcomp);
            return sbuf;
        };
        let owner = udp_owner(src, self.shared.shards);
        if owner != self.id {
            // The compartment lives on the owner: hand the datagram over still compressed.
            let result = self.shared.post.send(
                self.id,
                owner,
                |p| {
                    p.kind = ParcelKind::SigcompDatagram;
                    p.src = src;
                    p.local = local;
                    p.tcp = false;
                    p.flow = None;
                },
                message,
            );
            self.count_handoff(result);
            return sbuf;
        }
        let peer = PeerKey::Udp(src);
        let now = Instant::now();
        let mut sip = sc.take_buf();
        let outcome = sc.endpoint.borrow_mut().decompress(
            now,
            &peer,
            SigcompTransport::Message,
            message,
            &mut sip,
        );
        let mut sbuf = sbuf;
        match outcome {
            Ok(Received::Message(token)) => {
                metrics.sigcomp(SigcompResult::Decompressed);
                if is_sip(&sip, false) {
                    let mut endpoint = sc.endpoint.borrow_mut();
                    endpoint.confirm(now, &peer, token);
                    metrics.set_sigcomp_compartments(endpoint.store().compartment_count());
                }
                if !sip.is_empty() {
                    let input = Inbound {
                        now,
                        src,
                        local,
                        transport: Transport::Udp,
                        flow: None,
                        placement: Placement::Unknown,
                        compressed: true,
                        bytes: &sip,
                    };
                    sbuf = self.dispatch(input, sbuf, SendMode::Now).await;
                }
            }
            Ok(Received::Nack(_)) => metrics.sigcomp(SigcompResult::NackReceived),
            Err(failure) => {
                // RFC 4077: tell the peer why, so it resets its compressor.
                metrics.sigcomp(SigcompResult::Failed);
                let written = sc
                    .endpoint
                    .borrow()
                    .write_nack(&failure, message, &mut sbuf);
                if let Ok(n) = written {
                    sbuf = self.send_udp(local, src, sbuf, n, SendMode::Now).await;
                }
            }
        }
        sc.give_buf(sip);
        sbuf
    }

    /// The SigComp record starting `input` (a message boundary of `conn` whose first byte
    /// marks SigComp; RFC 3320 §4.2.2, RFC 5049).
    pub(super) async fn receive_sigcomp_record(
        self: &Rc<Self>,
        conn: &Rc<Conn>,
        input: &[u8],
        sbuf: Vec<u8>,
    ) -> (RecordOutcome, Vec<u8>) {
        let metrics = self.metrics();
        let Some(sc) = &self.sigcomp else {
            // Not spoken here: the stream cannot be resynchronised as SIP.
            metrics.drop(DropReason::Sigcomp);
            return (RecordOutcome::Close, sbuf);
        };
        let mut record = sc.take_buf();
        let consumed = match framing::deframe_record(input, &mut record) {
            Ok(Some(consumed)) => consumed,
            Ok(None) => {
                sc.give_buf(record);
                return (RecordOutcome::Partial, sbuf);
            }
            Err(_) => {
                metrics.error(ErrorReason::TcpFraming);
                sc.give_buf(record);
                return (RecordOutcome::Close, sbuf);
            }
        };
        if record.is_empty() {
            // A bare delimiter (RFC 4465 A.2.4 sends one first): nothing to decompress.
            sc.give_buf(record);
            return (RecordOutcome::Consumed(consumed), sbuf);
        }
        let peer = PeerKey::Flow(conn.id);
        let now = Instant::now();
        let mut sip = sc.take_buf();
        let outcome = sc.endpoint.borrow_mut().decompress(
            now,
            &peer,
            SigcompTransport::Stream,
            &record,
            &mut sip,
        );
        let mut sbuf = sbuf;
        match outcome {
            Ok(Received::Message(token)) => {
                metrics.sigcomp(SigcompResult::Decompressed);
                if is_sip(&sip, true) {
                    let mut endpoint = sc.endpoint.borrow_mut();
                    endpoint.confirm(now, &peer, token);
                    metrics.set_sigcomp_compartments(endpoint.store().compartment_count());
                }
                if !sip.is_empty() {
                    let input = Inbound {
                        now,
                        src: conn.peer,
                        local: conn.local,
                        transport: Transport::Tcp,
                        flow: Some(conn.id),
                        placement: Placement::Unknown,
                        compressed: true,
                        bytes: &sip,
                    };
                    sbuf = self.dispatch(input, sbuf, SendMode::Now).await;
                }
            }
            Ok(Received::Nack(_)) => metrics.sigcomp(SigcompResult::NackReceived),
            Err(failure) => {
                metrics.sigcomp(SigcompResult::Failed);
                let written = sc
                    .endpoint
                    .borrow()
                    .write_nack(&failure, &record, &mut sbuf);
                if let Ok(n) = written {
                    let mut framed = sc.take_buf();
                    framing::encode_record(&sbuf[..n], &mut framed);
                    conn.enqueue(&framed, metrics);
                    sc.give_buf(framed);
                }
            }
        }
        sc.give_buf(sip);
        sc.give_buf(record);
        (RecordOutcome::Consumed(consumed), sbuf)
    }

    /// Sends `sbuf[..t.len]` compressed for its destination (RFC 3486), on the shard that
    /// owns the destination's compartment.
    pub(super) async fn transmit_compressed(
        self: &Rc<Self>,
        t: Transmit,
        arrived_on: SocketAddr,
        sbuf: Vec<u8>,
    ) -> Vec<u8> {
        let Some(plain) = sbuf.get(..t.len) else {
            return sbuf;
        };
        match t.dest {
            Dest::Addr(Transport::Udp, to) => {
                let from = t.src.unwrap_or(arrived_on);
                let owner = udp_owner(to, self.shared.shards);
                if owner != self.id {
                    let result = self.shared.post.send(
                        self.id,
                        owner,
                        |p| {
                            p.kind = ParcelKind::CompressTo;
                            p.src = to;
                            p.local = from;
                            p.tcp = false;
                            p.flow = None;
                        },
                        plain,
                    );
                    self.count_handoff(result);
                    return sbuf;
                }
                self.send_udp_compressed(from, to, sbuf, t.len).await
            }
            Dest::Addr(Transport::Tcp, to) => {
                let conn = self.tcp_conn(to);
                self.enqueue_compressed(&conn, plain);
                sbuf
            }
            Dest::Flow(flow) => {
                self.send_flow_compressed(flow, plain);
                sbuf
            }
            Dest::Addr(_, _) => {
                self.metrics().drop(DropReason::NoRoute);
                sbuf
            }
        }
    }

    /// Compresses `sbuf[..len]` toward UDP peer `to` (this shard owns its compartment) and
    /// sends it from `from`; sends it plain when compression is impossible.
    pub(super) async fn send_udp_compressed(
        self: &Rc<Self>,
        from: SocketAddr,
        to: SocketAddr,
        sbuf: Vec<u8>,
        len: usize,
    ) -> Vec<u8> {
        let Some(sc) = &self.sigcomp else {
            return self.send_udp(from, to, sbuf, len, SendMode::Now).await;
        };
        let Some(plain) = sbuf.get(..len) else {
            return sbuf;
        };
        let mut wire = sc.take_buf();
        let compressed = sc.endpoint.borrow_mut().compress(
            Instant::now(),
            &PeerKey::Udp(to),
            SigcompTransport::Message,
            plain,
            &mut wire,
        );
        if compressed.is_ok() {
            self.metrics().sigcomp(SigcompResult::Compressed);
            let n = wire.len();
            let wire = self.send_udp(from, to, wire, n, SendMode::Now).await;
            sc.give_buf(wire);
            sbuf
        } else {
            // Compression is a SHOULD (RFC 3486 §4): plain SIP always works.
            self.metrics().sigcomp(SigcompResult::SentPlain);
            sc.give_buf(wire);
            self.send_udp(from, to, sbuf, len, SendMode::Now).await
        }
    }

    /// Writes `plain` compressed on connection `flow`, or hands it to the shard owning it.
    pub(super) fn send_flow_compressed(self: &Rc<Self>, flow: FlowId, plain: &[u8]) {
        let owner = flow_owner(flow);
        if owner != self.id {
            let result = self.shared.post.send(
                self.id,
                owner,
                |p| p.kind = ParcelKind::CompressToFlow(flow.0),
                plain,
            );
            self.count_handoff(result);
            return;
        }
        let conn = self.conns.borrow().by_id.get(&flow).cloned();
        match conn {
            Some(conn) => self.enqueue_compressed(&conn, plain),
            None => self.metrics().drop(DropReason::UnknownFlow),
        }
    }

    /// Compresses `plain` in `conn`'s compartment and queues it as one record (RFC 3320
    /// §4.2.2); queues it plain when compression is impossible.
    fn enqueue_compressed(&self, conn: &Conn, plain: &[u8]) {
        let metrics = self.metrics();
        let Some(sc) = &self.sigcomp else {
            conn.enqueue(plain, metrics);
            return;
        };
        let mut wire = sc.take_buf();
        let compressed = sc.endpoint.borrow_mut().compress(
            Instant::now(),
            &PeerKey::Flow(conn.id),
            SigcompTransport::Stream,
            plain,
            &mut wire,
        );
        if compressed.is_ok() {
            metrics.sigcomp(SigcompResult::Compressed);
            let mut framed = sc.take_buf();
            framing::encode_record(&wire, &mut framed);
            conn.enqueue(&framed, metrics);
            sc.give_buf(framed);
        } else {
            metrics.sigcomp(SigcompResult::SentPlain);
            conn.enqueue(plain, metrics);
        }
        sc.give_buf(wire);
    }
}

/// Closes idle compartments when the endpoint says (RFC 3320 §6: compartments expire), and
/// keeps the compartment gauge current. Sleeps in between; never polls faster than every
/// 100 ms, nor slower than the idle timeout (at most a minute).
pub(super) async fn timer_loop(shard: Rc<Shard>) {
    let Some(sc) = &shard.sigcomp else {
        return;
    };
    let longest = sc.idle_timeout.min(Duration::from_secs(60));
    loop {
        let now = Instant::now();
        let due = sc.endpoint.borrow().poll_timeout();
        let wake = due.map_or(now + longest, |d| d.min(now + longest));
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(100));
        monoio::time::sleep(wait).await;
        let now = Instant::now();
        let mut endpoint = sc.endpoint.borrow_mut();
        if due.is_some_and(|d| d <= now) {
            endpoint.handle_timeout(now);
        }
        shard
            .metrics()
            .set_sigcomp_compartments(endpoint.store().compartment_count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_owner_is_stable_and_spreads_peers() {
        let peer: SocketAddr = "198.51.100.7:5090".parse().unwrap();
        assert_eq!(udp_owner(peer, 4), udp_owner(peer, 4));
        assert_eq!(udp_owner(peer, 1), 0);
        let mut seen = [0usize; 4];
        for port in 5000..5400u16 {
            let owner = udp_owner(SocketAddr::new(peer.ip(), port), 4);
            seen[usize::from(owner)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        let v6: SocketAddr = "[2001:db8::7]:5090".parse().unwrap();
        assert!(udp_owner(v6, 4) < 4);
    }

    #[test]
    fn endpoint_config_splits_the_memory_bound_over_shards() {
        let settings = crate::config::Config::default().sigcomp;
        let config = endpoint_config(&settings, 4).unwrap();
        assert_eq!(config.limits.total_memory, settings.total_memory / 4);
        assert_eq!(config.limits.state_memory_size, settings.state_memory_size);
        assert_eq!(config.decompressor.cycles_per_bit, settings.cycles_per_bit);
        assert_eq!(
            config,
            SigcompConfig {
                limits: StoreLimits {
                    total_memory: SigcompConfig::default().limits.total_memory / 4,
                    ..SigcompConfig::default().limits
                },
                ..SigcompConfig::default()
            },
            "the defaults are the module's"
        );
        let off = SigcompSettings {
            enabled: false,
            ..settings
        };
        assert_eq!(endpoint_config(&off, 4), None);
    }
}
