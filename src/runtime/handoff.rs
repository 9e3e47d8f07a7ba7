//! Cross-shard handoff: bounded lock-free mailboxes carrying pre-allocated parcels.
//!
//! Every shard owns a fixed set of [`Parcel`]s, allocated once at start and kept in its free
//! queues: many small ones (a SIP datagram is almost always below the 1,300 bytes of RFC 3261
//! §18.1.1) and a few that hold the largest UDP payload. To hand a message to another shard it pops a parcel from its own free queue, copies
//! the bytes in, and pushes it onto the owner's inbox; the owner processes it and pushes the
//! parcel back onto the origin's free queue. Both queues are `crossbeam::queue::ArrayQueue`s
//! (bounded, lock-free, multi-producer), so the message path takes no lock and allocates
//! nothing. A full inbox or an empty pool drops the message and counts it (UDP senders
//! retransmit, RFC 3261 §17.1.1.2), rather than blocking a shard behind another.
//!
//! Waking the owner: a shard about to sleep on its inbox sets `armed`; a sender that finds it
//! armed clears it and rings the shard's doorbell, one byte on a non-blocking Unix datagram
//! socket the owner's runtime waits on. While the owner is busy nobody rings, so under load a
//! handoff costs no system call; an idle owner is woken by exactly one.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam::queue::ArrayQueue;

use crate::shard::ShardId;

/// Largest message a parcel carries (the largest UDP payload; TCP messages above it are
/// refused by the framer long before).
pub(crate) const PARCEL_CAPACITY: usize = 65_535;

/// Capacity of a small parcel: every message up to it travels in one.
pub(crate) const SMALL_PARCEL_CAPACITY: usize = 4_096;

/// Small parcels each shard owns (8 MiB). Under a burst the owner may be descheduled (a
/// 2-vCPU machine shares its cores with the load) while the receiving shard keeps handing
/// over: 512 parcels of one size ran out with 1,000 calls in flight (`handoff_pool_empty`
/// drops, 1.7 % of the calls of a flat-out run); this covers a few thousand messages.
pub(crate) const SMALL_PARCELS_PER_SHARD: usize = 2_048;

/// Parcels of [`PARCEL_CAPACITY`] each shard owns, for the rare large message. Memory is
/// reserved up front but the kernel backs only the pages touched.
pub(crate) const LARGE_PARCELS_PER_SHARD: usize = 128;

/// Parcels each shard owns.
pub(crate) const PARCELS_PER_SHARD: usize = SMALL_PARCELS_PER_SHARD + LARGE_PARCELS_PER_SHARD;

/// What the receiving shard must do with a parcel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParcelKind {
    /// A message received by another shard whose call this shard owns: run it through the core.
    Inbound,
    /// Finished bytes for a TCP connection this shard owns: write them to it.
    ToFlow(u64),
    /// A SigComp datagram from `src` (still compressed) for the shard owning the peer's
    /// compartment, which decompresses it.
    SigcompDatagram,
    /// A plain SIP message to compress in the compartment of UDP peer `src` (owned by the
    /// receiving shard) and send from `local` (RFC 3486).
    CompressTo,
    /// A plain SIP message to compress in this connection's compartment and write to it.
    CompressToFlow(u64),
}

/// One message in flight between shards.
#[derive(Debug)]
pub(crate) struct Parcel {
    /// The shard whose free queue the parcel returns to.
    pub(crate) origin: ShardId,
    pub(crate) kind: ParcelKind,
    /// Where the message came from.
    pub(crate) src: SocketAddr,
    /// The local address it arrived on.
    pub(crate) local: SocketAddr,
    /// Whether it arrived over TCP.
    pub(crate) tcp: bool,
    /// The connection it arrived on, when it did.
    pub(crate) flow: Option<u64>,
    /// It arrived SigComp-compressed (and was decompressed by the sending shard).
    pub(crate) compressed: bool,
    pub(crate) len: usize,
    // INVARIANT: `data.len()` is `SMALL_PARCEL_CAPACITY` or `PARCEL_CAPACITY`, never
    // reallocated; it tells which free queue the parcel returns to.
    pub(crate) data: Box<[u8]>,
}

impl Parcel {
    fn new(origin: ShardId, capacity: usize) -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            origin,
            kind: ParcelKind::Inbound,
            src: unspecified,
            local: unspecified,
            tcp: false,
            flow: None,
            compressed: false,
            len: 0,
            // Resident from the start: parcels are used rarely and in turn, and pages first
            // touched hours in would look like growth.
            data: crate::shard::resident_zeroes(capacity).into_boxed_slice(),
        }
    }

    /// The message bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[..self.len.min(self.data.len())]
    }
}

/// Why a handoff did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandoffError {
    /// The sender has no free parcel left.
    PoolEmpty,
    /// The owner's inbox is full.
    QueueFull,
    /// The message is larger than a parcel.
    TooLarge,
}

/// One shard's side of the handoff: its inbox, its free parcels and its doorbell.
#[derive(Debug)]
pub(crate) struct Mailbox {
    inbox: ArrayQueue<Box<Parcel>>,
    free: ArrayQueue<Box<Parcel>>,
    free_large: ArrayQueue<Box<Parcel>>,
    armed: AtomicBool,
    bell: UnixDatagram,
}

impl Mailbox {
    /// Creates the mailbox of shard `id` with its parcels; returns it with the receiving end
    /// of its doorbell, for the shard's runtime to wait on.
    pub(crate) fn new(id: ShardId) -> io::Result<(Self, UnixDatagram)> {
        let (bell, bell_rx) = UnixDatagram::pair()?;
        bell.set_nonblocking(true)?;
        bell_rx.set_nonblocking(true)?;
        let free = ArrayQueue::new(SMALL_PARCELS_PER_SHARD);
        for _ in 0..SMALL_PARCELS_PER_SHARD {
            let _ = free.push(Box::new(Parcel::new(id, SMALL_PARCEL_CAPACITY)));
        }
        let free_large = ArrayQueue::new(LARGE_PARCELS_PER_SHARD);
        for _ in 0..LARGE_PARCELS_PER_SHARD {
            let _ = free_large.push(Box::new(Parcel::new(id, PARCEL_CAPACITY)));
        }
        Ok((
            Self {
                // Room for every parcel of two shards: the inbox fills only when the owner
                // is far behind.
                inbox: ArrayQueue::new(PARCELS_PER_SHARD * 2),
                free,
                free_large,
                armed: AtomicBool::new(false),
                bell,
            },
            bell_rx,
        ))
    }

    /// Messages waiting in the inbox.
    pub(crate) fn depth(&self) -> usize {
        self.inbox.len()
    }

    /// Takes the next message handed to this shard.
    pub(crate) fn take(&self) -> Option<Box<Parcel>> {
        self.inbox.pop()
    }

    /// Announces that the owner is about to wait on its doorbell. Returns `false` when
    /// something arrived meanwhile (the owner must drain again instead of waiting).
    pub(crate) fn arm(&self) -> bool {
        self.armed.store(true, Ordering::SeqCst);
        if self.inbox.is_empty() {
            true
        } else {
            self.armed.store(false, Ordering::SeqCst);
            false
        }
    }

    /// The owner woke up.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    fn deliver(&self, parcel: Box<Parcel>) -> Result<(), Box<Parcel>> {
        self.inbox.push(parcel)?;
        if self.armed.swap(false, Ordering::SeqCst) {
            // A full socket buffer means wake-ups are already pending: nothing to do.
            let _ = self.bell.send(&[1]);
        }
        Ok(())
    }

    /// A free parcel of this shard that holds `len` bytes: a small one when it fits and one
    /// is left, else a large one.
    fn pop_free(&self, len: usize) -> Option<Box<Parcel>> {
        if len <= SMALL_PARCEL_CAPACITY {
            if let Some(p) = self.free.pop() {
                return Some(p);
            }
        }
        self.free_large.pop()
    }

    /// Returns a parcel to this (its origin) shard's free queue of its size.
    pub(crate) fn recycle(&self, parcel: Box<Parcel>) {
        // Cannot be full: each queue holds every parcel of its size this shard owns.
        if parcel.data.len() == PARCEL_CAPACITY {
            let _ = self.free_large.push(parcel);
        } else {
            let _ = self.free.push(parcel);
        }
    }
}

/// The mailboxes of every shard, indexed by [`ShardId`].
#[derive(Debug)]
pub(crate) struct PostOffice {
    boxes: Box<[Mailbox]>,
}

impl PostOffice {
    /// Wraps the shards' mailboxes (index = shard id).
    pub(crate) fn new(boxes: Vec<Mailbox>) -> Self {
        Self {
            boxes: boxes.into_boxed_slice(),
        }
    }

    /// The mailbox of shard `id`, if it exists.
    pub(crate) fn mailbox(&self, id: ShardId) -> Option<&Mailbox> {
        self.boxes.get(usize::from(id))
    }

    /// Copies a message into one of `from`'s parcels and delivers it to `to`.
    pub(crate) fn send(
        &self,
        from: ShardId,
        to: ShardId,
        fill: impl FnOnce(&mut Parcel),
        bytes: &[u8],
    ) -> Result<(), HandoffError> {
        if bytes.len() > PARCEL_CAPACITY {
            return Err(HandoffError::TooLarge);
        }
        let (Some(origin), Some(owner)) = (self.mailbox(from), self.mailbox(to)) else {
            return Err(HandoffError::QueueFull);
        };
        let mut parcel = origin
            .pop_free(bytes.len())
            .ok_or(HandoffError::PoolEmpty)?;
        parcel.origin = from;
        parcel.compressed = false;
        parcel.len = bytes.len();
        parcel.data[..bytes.len()].copy_from_slice(bytes);
        fill(&mut parcel);
        owner.deliver(parcel).map_err(|parcel| {
            origin.recycle(parcel);
            HandoffError::QueueFull
        })
    }

    /// Returns a processed parcel to the shard it came from.
    pub(crate) fn recycle(&self, parcel: Box<Parcel>) {
        if let Some(origin) = self.mailbox(parcel.origin) {
            origin.recycle(parcel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parcel_travels_and_returns() {
        let (a, _bell_a) = Mailbox::new(0).unwrap();
        let (b, bell_b) = Mailbox::new(1).unwrap();
        let post = PostOffice::new(vec![a, b]);
        assert!(post.mailbox(1).unwrap().arm());
        post.send(0, 1, |p| p.kind = ParcelKind::Inbound, b"INVITE")
            .unwrap();
        // The armed owner got exactly one doorbell byte.
        let mut buf = [0u8; 8];
        assert_eq!(bell_b.recv(&mut buf).unwrap(), 1);
        assert!(bell_b.recv(&mut buf).is_err());
        let parcel = post.mailbox(1).unwrap().take().unwrap();
        assert_eq!(parcel.bytes(), b"INVITE");
        assert_eq!(parcel.origin, 0);
        let free_before = post.mailbox(0).unwrap().free.len();
        post.recycle(parcel);
        assert_eq!(post.mailbox(0).unwrap().free.len(), free_before + 1);
        assert_eq!(free_before + 1, SMALL_PARCELS_PER_SHARD);
        // A message too large for a small parcel takes a large one, which returns to its queue.
        let big = vec![7u8; SMALL_PARCEL_CAPACITY + 1];
        post.send(0, 1, |_| {}, &big).unwrap();
        let parcel = post.mailbox(1).unwrap().take().unwrap();
        assert_eq!(parcel.bytes(), &big[..]);
        assert_eq!(
            post.mailbox(0).unwrap().free_large.len(),
            LARGE_PARCELS_PER_SHARD - 1
        );
        post.recycle(parcel);
        assert_eq!(
            post.mailbox(0).unwrap().free_large.len(),
            LARGE_PARCELS_PER_SHARD
        );
    }

    #[test]
    fn busy_owner_is_not_rung_and_full_inbox_refuses() {
        let (a, _bell_a) = Mailbox::new(0).unwrap();
        let (b, bell_b) = Mailbox::new(1).unwrap();
        let post = PostOffice::new(vec![a, b]);
        let mut sent = 0;
        let err = loop {
            match post.send(0, 1, |_| {}, b"x") {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        // Shard 0 runs out of parcels before shard 1's inbox fills.
        assert_eq!(err, HandoffError::PoolEmpty);
        assert_eq!(sent, PARCELS_PER_SHARD);
        let mut buf = [0u8; 8];
        assert!(bell_b.recv(&mut buf).is_err(), "owner was never armed");
        // Arming with a non-empty inbox refuses to sleep.
        assert!(!post.mailbox(1).unwrap().arm());
    }
}
