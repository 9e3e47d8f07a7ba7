//! The message engine a shard drives: the interface between the shell and the proxy core.
//!
//! Interim: until the stateless proxy core is wired in, this is a minimal Call-ID relay
//! with the same shape (`handle_inbound` → `Verdict`) so the shell (shards, handoff, UDP,
//! TCP, metrics) can run end to end. It forwards requests from outside to the backend owning
//! the Call-ID and relays everything from a backend back to the client of that Call-ID. It
//! does none of RFC 3261 §16 (no Via, no Max-Forwards, no Record-Route).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::balance::{Blacklist, Pool};
use crate::shard::{ShardId, shard_of};

pub(crate) use crate::sip::Transport;

/// A TCP connection, named by the runtime; the top 16 bits are the owning shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowId(pub(crate) u64);

pub(crate) struct Inbound<'b> {
    pub(crate) now: Instant,
    pub(crate) src: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) flow: Option<FlowId>,
    pub(crate) handed_off: bool,
    pub(crate) bytes: &'b [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dest {
    Addr(Transport, SocketAddr),
    Flow(FlowId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub(crate) dest: Dest,
    pub(crate) src: Option<SocketAddr>,
    pub(crate) len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Forward(Transmit),
    #[allow(dead_code)]
    Respond(Transmit),
    Handoff(ShardId),
    Drop(crate::metrics::DropReason),
}

/// One shard's engine.
pub(crate) struct Engine {
    shard: ShardId,
    shards: u16,
    pool: Arc<ArcSwap<Pool>>,
    clients: HashMap<Vec<u8>, (Transport, SocketAddr, Option<FlowId>)>,
}

impl Engine {
    pub(crate) fn new(shard: ShardId, shards: u16, pool: Arc<ArcSwap<Pool>>) -> Self {
        Self {
            shard,
            shards,
            pool,
            clients: HashMap::new(),
        }
    }

    pub(crate) fn handle_inbound(
        &mut self,
        d: Inbound<'_>,
        blacklist: &Blacklist,
        out: &mut [u8],
    ) -> Verdict {
        use crate::metrics::DropReason;
        let Some(call_id) = header_value(d.bytes, b"call-id", b"i") else {
            return Verdict::Drop(DropReason::NotSip);
        };
        let owner = shard_of(call_id, self.shards);
        if owner != self.shard && !d.handed_off {
            return Verdict::Handoff(owner);
        }
        if d.bytes.len() > out.len() {
            return Verdict::Drop(DropReason::TooLarge);
        }
        out[..d.bytes.len()].copy_from_slice(d.bytes);
        let pool = self.pool.load();
        let transmit = |dest| {
            Verdict::Forward(Transmit {
                dest,
                src: None,
                len: d.bytes.len(),
            })
        };
        if pool.is_backend(d.src) {
            return match self.clients.get(call_id) {
                Some(&(_, _, Some(flow))) => transmit(Dest::Flow(flow)),
                Some(&(t, addr, None)) => transmit(Dest::Addr(t, addr)),
                None => Verdict::Drop(DropReason::NoRoute),
            };
        }
        if self.clients.len() > 100_000 {
            self.clients.clear();
        }
        self.clients
            .entry(call_id.to_vec())
            .or_insert((d.transport, d.src, d.flow));
        match pool.select(call_id, d.now, blacklist) {
            Some(b) => transmit(Dest::Addr(b.transport(), b.addr())),
            None => Verdict::Drop(DropReason::NoBackend),
        }
    }
}

/// Finds the value of a header by long or compact name, case-insensitively.
fn header_value<'b>(msg: &'b [u8], long: &[u8], compact: &[u8]) -> Option<&'b [u8]> {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(msg.len());
    for line in msg[..end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(compact) {
            return Some(line[colon + 1..].trim_ascii());
        }
    }
    None
}
