//! Socket creation and the socket options the std library does not expose.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Receive buffer asked for on UDP sockets: bursts of SIP arrive faster than one core drains
/// them for a moment; the kernel caps it at `net.core.rmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// Binds a UDP socket with `SO_REUSEPORT` (every shard binds the same address and the kernel
/// spreads datagrams over them) and `IP_RECVERR` (ICMP errors are queued with the address
/// they concern, so a dead next hop is noticed on the first datagram).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    udp_socket(addr, true)
}

/// Binds a UDP socket private to one shard (no `SO_REUSEPORT`: every datagram sent to it
/// is for that shard), with the buffers and `IP_RECVERR` of [`bind_udp`].
pub(crate) fn bind_udp_private(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    udp_socket(addr, false)
}

fn udp_socket(addr: SocketAddr, shared: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if shared {
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    set_recverr(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a TCP listener with `SO_REUSEPORT`.
pub(crate) fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn set_recverr(socket: &Socket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a pointer to a c_int that lives across the call and
    // its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads every queued error of a UDP socket with `IP_RECVERR` (`MSG_ERRQUEUE`, non-blocking)
/// and calls `report` with the destination of each datagram that failed.
pub(crate) fn drain_error_queue(fd: RawFd, mut report: impl FnMut(SocketAddr)) {
    // Bounded: the kernel caps the queue by the socket buffer; 64 per call is plenty.
    for _ in 0..64 {
        let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
        let mut control = [0u64; 64];
        let mut data = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: msghdr is plain data; every pointer set below points to a live local
        // buffer of the stated length.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = name.as_mut_ptr().cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `fd` is an open socket and `msg` describes valid buffers (see above).
        let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return;
        }
        let len = msg.msg_namelen;
        // SAFETY: the kernel initialised `len` bytes of the sockaddr_storage (zeroed before).
        let addr = unsafe { SockAddr::new(name.assume_init(), len) };
        if let Some(addr) = addr.as_socket() {
            report(addr);
        }
    }
}

/// Datagrams one [`RecvBatch::recv`] reads at most.
pub(crate) const RECV_BATCH: usize = 8;

/// Keeps transparent huge pages out of this process (`prctl(PR_SET_THP_DISABLE)`); called
/// first thing in `main`, before the shards allocate. The allocator advises its arenas for huge
/// pages (`madvise(MADV_HUGEPAGE)`), and then the first byte touched in a 2 MiB region makes
/// all of it resident: 26 MiB of an idle two-shard proxy's 103 MiB were that rounding, and a few
/// bytes of cold-path work (a health probe) landing in a fresh region showed as a 2 MiB step of
/// "growth". A fault in a region advised for huge pages may also compact memory synchronously
/// (`defrag=madvise`), a stall a shard should not take. A shard's buffers and tables are
/// touched once, at start (`crate::shard`), so 4 KiB pages cost the message path no fault.
/// Returns the error of a kernel without the call; sipedge runs correctly with huge pages.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Puts the calling thread under `SCHED_BATCH` (`sched_setscheduler(0, …)` acts on the
/// caller only). A batch thread woken by a datagram does not preempt the task running on its
/// CPU; it runs when that task blocks or its slice ends, so datagrams that arrive meanwhile
/// are read in the same wake-up, and the shard is not itself preempted half-way through a
/// batch by the peers its `sendmmsg` wakes. On a core the shard has to itself this changes
/// nothing (there is no task to preempt); on a shared one it trades at most one slice of
/// latency (a few ms, `sched_base_slice_ns`) for fewer context switches. Any user may choose
/// it (sched(7)).
pub fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the whole call; pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers for `recvmmsg`, allocated once per receive loop: one system call reads
/// every datagram queued (up to [`RECV_BATCH`]), and a short batch tells the loop the queue
/// is (almost certainly) empty, so it can wait for readiness without a `recvfrom` that only
/// returns `EAGAIN`. The readiness wait itself re-checks the socket (io_uring `PollAdd`
/// completes at once on a readable socket; the epoll driver calls `poll` before it sleeps),
/// so a datagram that arrives after the batch is never missed.
pub(crate) struct RecvBatch {
    /// `RECV_BATCH` buffers of `size` bytes, back to back.
    bufs: Vec<u8>,
    size: usize,
    /// Where the kernel writes each datagram's source.
    names: [libc::sockaddr_storage; RECV_BATCH],
    /// One iovec per buffer of `bufs` (which is on the heap, so they never go stale).
    iovs: [libc::iovec; RECV_BATCH],
    /// The headers `recvmmsg` reads, built once; a call only points them at `names` and
    /// `iovs` again (the batch may have moved) and resets the name lengths.
    msgs: [libc::mmsghdr; RECV_BATCH],
    lens: [usize; RECV_BATCH],
}

impl RecvBatch {
    /// Buffers for `RECV_BATCH` datagrams of up to `size` bytes each.
    pub(crate) fn new(size: usize) -> Self {
        let mut bufs = crate::shard::resident_zeroes(size * RECV_BATCH);
        // SAFETY: iovec is plain data; all zeroes is a valid value.
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (chunk, iov) in bufs.chunks_exact_mut(size).zip(iovs.iter_mut()) {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
        }
        // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for msg in &mut msgs {
            msg.msg_hdr.msg_iovlen = 1;
        }
        Self {
            bufs,
            size,
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            names: unsafe { std::mem::zeroed() },
            iovs,
            msgs,
            lens: [0; RECV_BATCH],
        }
    }

    /// One non-blocking `recvmmsg`: how many datagrams were read (at least one), or
    /// `WouldBlock` when none was queued. Allocation-free: the message headers were built by
    /// [`RecvBatch::new`] and point into `self`.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // The kernel writes each header's name length (the room, on the way in), received
        // length, control length and flags; the rest of a header stays as `new` built it.
        for (msg, (iov, name)) in self
            .msgs
            .iter_mut()
            .zip(self.iovs.iter_mut().zip(self.names.iter_mut()))
        {
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = iov;
        }
        // SAFETY: `fd` is an open socket; every header points to a live buffer of the stated
        // length (a chunk of `bufs`, one of `names`) and to its own iovec, all of which
        // outlive the call; the timeout is null (MSG_DONTWAIT returns at once).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0).min(RECV_BATCH);
        for (msg, len) in self.msgs.iter().zip(self.lens.iter_mut()).take(n) {
            *len = (msg.msg_len as usize).min(self.size);
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`recv`](Self::recv) and its source, `None` past the batch or
    /// for a source address that is not IP.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let addr = read_sockaddr(self.names.get(i)?)?;
        let len = *self.lens.get(i)?;
        let start = i * self.size;
        Some((self.bufs.get(start..start + len)?, addr))
    }
}

/// The IP socket address the kernel wrote into `name`, `None` for another family (what
/// `SockAddr::as_socket` reads, without copying the whole `sockaddr_storage` twice).
fn read_sockaddr(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; a sockaddr_storage is
            // larger than and aligned for any socket address.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `name` as the kernel reads a socket address; its length. What
/// `SockAddr::from` builds, without zeroing a whole `sockaddr_storage` per datagram.
fn write_sockaddr(
    addr: SocketAddr,
    name: &mut MaybeUninit<libc::sockaddr_storage>,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_storage is larger than and aligned for a sockaddr_in.
            unsafe { name.as_mut_ptr().cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for a sockaddr_in6.
            unsafe { name.as_mut_ptr().cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// One non-blocking `recvfrom` into `buf`: the datagram's length (at most `buf.len()`) and
/// source. `WouldBlock` when none is queued. Allocation-free.
pub(crate) fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
    let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is a live, writable slice of the given length; `name` is a zeroed
    // sockaddr_storage with its size in `name_len`; both outlive the call.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            name.as_mut_ptr().cast(),
            &mut name_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed above, then written by the kernel: a valid sockaddr_storage either way.
    let name = unsafe { name.assume_init() };
    Ok((
        usize::try_from(n).unwrap_or(0).min(buf.len()),
        read_sockaddr(&name),
    ))
}

/// One non-blocking `sendto`. `WouldBlock` when the socket buffer is full. Allocation-free.
pub(crate) fn send_to(fd: RawFd, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
    let addr = SockAddr::from(to);
    // SAFETY: `buf` is a live slice of the given length; `addr` is a valid socket address
    // of the stated length.
    let n = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            addr.as_ptr().cast(),
            addr.len(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Datagrams a [`SendBatch`] holds: a receive batch that forwards each message and answers
/// some fits without a flush in between.
pub(crate) const SEND_BATCH: usize = RECV_BATCH * 2;

/// What one [`SendBatch::send`] did.
#[derive(Debug)]
pub(crate) enum Sent {
    /// Nothing was pending.
    Empty,
    /// Every pending datagram of the socket that heads the batch left, in order.
    All,
    /// Only the first datagrams of socket `fd` left. `sendmmsg` reports an error only for the
    /// first datagram of a call, so whatever stopped the next one is unknown (a full buffer,
    /// or an ICMP error of an earlier datagram, which `IP_RECVERR` also queued); that
    /// datagram heads the batch now.
    Part(RawFd),
    /// The datagram heading the batch (socket `fd`, toward `to`) failed; it stays at the
    /// head until [`SendBatch::drop_pending`] with its `id`.
    Failed {
        fd: RawFd,
        to: SocketAddr,
        error: io::Error,
        id: u64,
    },
}

/// Datagrams waiting to leave with one `sendmmsg` per socket, allocated once per shard: a
/// receive batch then costs one send system call instead of one per message. Datagrams
/// leave in the order they were pushed, per socket; [`SendBatch::conflicts`] tells the caller
/// when a push would let a destination's datagrams overtake each other across sockets.
pub(crate) struct SendBatch {
    /// `SEND_BATCH` slots of `size` bytes each, each its own buffer so that
    /// [`SendBatch::push_owned`] can trade it for the caller's.
    bufs: Vec<Vec<u8>>,
    size: usize,
    lens: [usize; SEND_BATCH],
    fds: [RawFd; SEND_BATCH],
    dests: [SocketAddr; SEND_BATCH],
    /// Each slot's datagram's number, unique per batch.
    ids: [u64; SEND_BATCH],
    next_id: u64,
    /// Slots holding a datagram, oldest first: `order[..pending]`.
    order: [u8; SEND_BATCH],
    pending: usize,
    /// Bit `i` set: slot `i` holds a datagram.
    used: u32,
}

// Slots are indexed by `u8` and tracked in a `u32` bitmask.
const _: () = assert!(SEND_BATCH <= 32);

impl SendBatch {
    /// Slots for `SEND_BATCH` datagrams of up to `size` bytes each.
    pub(crate) fn new(size: usize) -> Self {
        Self {
            bufs: (0..SEND_BATCH)
                .map(|_| crate::shard::resident_zeroes(size))
                .collect(),
            size,
            lens: [0; SEND_BATCH],
            fds: [-1; SEND_BATCH],
            dests: [SocketAddr::from(([0, 0, 0, 0], 0)); SEND_BATCH],
            ids: [0; SEND_BATCH],
            next_id: 0,
            order: [0; SEND_BATCH],
            pending: 0,
            used: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.pending >= SEND_BATCH
    }

    /// Whether a datagram toward `to` is pending on a socket other than `fd`: the batch
    /// flushes socket by socket, so it must be flushed before such a push to keep the
    /// destination's datagrams in order.
    pub(crate) fn conflicts(&self, fd: RawFd, to: SocketAddr) -> bool {
        self.order[..self.pending].iter().any(|&slot| {
            let slot = usize::from(slot);
            self.fds[slot] != fd && self.dests[slot] == to
        })
    }

    /// Copies `bytes` into a free slot, to be sent from `fd` to `to`. `false` when the batch
    /// is full or `bytes` is larger than a slot. The shard uses [`SendBatch::push_owned`];
    /// tests fill a batch from literals.
    #[cfg(test)]
    pub(crate) fn push(&mut self, fd: RawFd, bytes: &[u8], to: SocketAddr) -> bool {
        let slot = self.used.trailing_ones() as usize;
        if slot >= SEND_BATCH || self.pending >= SEND_BATCH || bytes.len() > self.size {
            return false;
        }
        let Some(dst) = self
            .bufs
            .get_mut(slot)
            .and_then(|b| b.get_mut(..bytes.len()))
        else {
            return false;
        };
        dst.copy_from_slice(bytes);
        self.record(slot, bytes.len(), fd, to);
        true
    }

    /// Takes `buf`, whose first `len` bytes are a datagram to send from `fd` to `to`, into a
    /// free slot without copying it, and hands back that slot's buffer (as large as `buf`)
    /// in exchange. `Err(buf)` when the batch is full or `buf` is not the size of a slot
    /// (the caller sends it another way).
    pub(crate) fn push_owned(
        &mut self,
        fd: RawFd,
        buf: Vec<u8>,
        len: usize,
        to: SocketAddr,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let slot = self.used.trailing_ones() as usize;
        if !self.takes(&buf, len) {
            return Err(buf);
        }
        let Some(spare) = self.bufs.get_mut(slot) else {
            return Err(buf);
        };
        let spare = std::mem::replace(spare, buf);
        self.record(slot, len, fd, to);
        Ok(spare)
    }

    /// Whether [`SendBatch::push_owned`] would take `buf` with a datagram of `len` bytes: the
    /// batch has room and `buf` is the size of a slot.
    pub(crate) fn takes(&self, buf: &[u8], len: usize) -> bool {
        self.pending < SEND_BATCH && buf.len() == self.size && len <= buf.len()
    }

    /// Marks free slot `slot` as holding a datagram of `len` bytes, the newest.
    fn record(&mut self, slot: usize, len: usize, fd: RawFd, to: SocketAddr) {
        self.lens[slot] = len;
        self.fds[slot] = fd;
        self.dests[slot] = to;
        self.ids[slot] = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.used |= 1 << slot;
        self.order[self.pending] = slot as u8;
        self.pending += 1;
    }

    /// Forgets datagram `id` (of [`Sent::Failed`]) if it is still pending.
    pub(crate) fn drop_pending(&mut self, id: u64) {
        let Some(i) = self.order[..self.pending]
            .iter()
            .position(|&slot| self.ids[usize::from(slot)] == id)
        else {
            return;
        };
        let slot = usize::from(self.order[i]);
        self.used &= !(1 << slot);
        self.order.copy_within(i + 1..self.pending, i);
        self.pending -= 1;
    }

    /// One non-blocking `sendmmsg` of the pending datagrams of the socket that heads the
    /// batch, oldest first; the datagrams that left are removed. Allocation-free: the
    /// message headers and addresses live on the stack and point into `self`.
    pub(crate) fn send(&mut self) -> Sent {
        let Some(&head) = self.order[..self.pending].first() else {
            return Sent::Empty;
        };
        let head = usize::from(head);
        let fd = self.fds[head];
        // Only the first `count` entries are written, and only they are read (by the kernel):
        // a batch is mostly one or two datagrams, and zeroing the headers and addresses of a
        // full one would cost more than the rest of the call.
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; SEND_BATCH];
        let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SEND_BATCH];
        let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; SEND_BATCH];
        let mut count = 0;
        for &slot in &self.order[..self.pending] {
            let slot = usize::from(slot);
            if self.fds[slot] != fd {
                continue;
            }
            let len = self.lens[slot];
            // Always in range (`push` checks the length); skipping a slot instead would
            // make the count of datagrams sent name the wrong ones.
            let chunk = self
                .bufs
                .get_mut(slot)
                .and_then(|b| b.get_mut(..len))
                .unwrap_or_default();
            let (Some(iov), Some(msg), Some(name)) = (
                iovs.get_mut(count),
                msgs.get_mut(count),
                names.get_mut(count),
            ) else {
                break;
            };
            let namelen = write_sockaddr(self.dests[slot], name);
            let iov = iov.write(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            });
            // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = name.as_mut_ptr().cast();
            header.msg_hdr.msg_namelen = namelen;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            msg.write(header);
            count += 1;
        }
        // SAFETY: `fd` is an open socket; each of the first `count` headers is initialised and
        // points to its own iovec (a live chunk of `bufs` of the stated length) and to its own
        // initialised address of the stated length, all of which outlive the call; the
        // kernel reads no header past `count`.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr().cast::<libc::mmsghdr>(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let error = match usize::try_from(n) {
            Ok(n) if n > 0 => None,
            // A batch with nothing to send would never drain (each pending slot holds at
            // most `size` bytes, so it does not happen).
            _ if count == 0 => Some(io::Error::from(io::ErrorKind::InvalidInput)),
            Ok(_) => Some(io::Error::from(io::ErrorKind::WriteZero)),
            Err(_) => Some(io::Error::last_os_error()),
        };
        if let Some(error) = error {
            return Sent::Failed {
                fd,
                to: self.dests[head],
                error,
                id: self.ids[head],
            };
        }
        let n = usize::try_from(n).unwrap_or(0).min(count);
        self.remove_first_of(fd, n);
        if n < count { Sent::Part(fd) } else { Sent::All }
    }

    /// Removes the `n` oldest pending datagrams of `fd`, keeping the others in order.
    fn remove_first_of(&mut self, fd: RawFd, n: usize) {
        let mut removed = 0;
        let mut kept = 0;
        for i in 0..self.pending {
            let slot = self.order[i];
            let s = usize::from(slot);
            if removed < n && self.fds[s] == fd {
                self.used &= !(1 << s);
                removed += 1;
            } else {
                self.order[kept] = slot;
                kept += 1;
            }
        }
        self.pending = kept;
    }
}

/// Drains a non-blocking datagram socket (the handoff doorbell) without allocating.
pub(crate) fn drain(fd: RawFd) {
    let mut scratch = [0u8; 64];
    for _ in 0..1024 {
        // An empty datagram or an error (`WouldBlock` once the queue is empty) ends it.
        if !matches!(recv_from(fd, &mut scratch), Ok((n, _)) if n > 0) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmp_port_unreachable_names_the_destination() {
        let sock = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        // A port nobody listens on: bind, learn it, close.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        sock.send_to(b"OPTIONS", dead_addr).unwrap();
        let mut seen = Vec::new();
        for _ in 0..100 {
            use std::os::fd::AsRawFd;
            drain_error_queue(sock.as_raw_fd(), |a| seen.push(a));
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen, vec![dead_addr]);
    }

    /// What `Shard::udp_send_failed` relies on: the ICMP error of a datagram to a closed port
    /// fails the socket's next send, to anyone, which sends nothing; the error queue names the
    /// closed port, and the same datagram goes out when sent again.
    #[test]
    fn an_icmp_error_fails_the_next_send_to_another_destination_which_sends_nothing() {
        use std::os::fd::AsRawFd;
        let sock = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let fd = sock.as_raw_fd();
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        live.set_nonblocking(true).unwrap();
        let live_addr = live.local_addr().unwrap();
        send_to(fd, b"INVITE", dead_addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let err = send_to(fd, b"for the live one", live_addr).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
        let mut buf = [0u8; 64];
        assert_eq!(
            live.recv_from(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the failed send sent nothing"
        );
        let mut named = Vec::new();
        drain_error_queue(fd, |a| named.push(a));
        assert_eq!(named, vec![dead_addr]);
        send_to(fd, b"for the live one", live_addr).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (n, _) = live.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"for the live one");
    }

    #[test]
    fn reuseport_lets_two_shards_bind_the_same_address() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_udp(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let t = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let taddr = t.local_addr().unwrap();
        assert!(bind_tcp(taddr).is_ok());
    }

    #[test]
    fn recv_batch_reads_every_queued_datagram_then_would_block() {
        use std::os::fd::AsRawFd;
        let sock = bind_udp_private("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = sock.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(b"one", to).unwrap();
        b.send_to(b"two!", to).unwrap();
        a.send_to(b"", to).unwrap();
        let mut batch = RecvBatch::new(16);
        let n = batch.recv(sock.as_raw_fd()).unwrap();
        assert_eq!(n, 3);
        assert_eq!(batch.get(0), Some((&b"one"[..], a.local_addr().unwrap())));
        assert_eq!(batch.get(1), Some((&b"two!"[..], b.local_addr().unwrap())));
        assert_eq!(batch.get(2), Some((&b""[..], a.local_addr().unwrap())));
        assert_eq!(batch.get(RECV_BATCH), None);
        let err = batch.recv(sock.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // More than a batch queued: a full batch first, the rest on the next call.
        for i in 0..RECV_BATCH + 2 {
            a.send_to(&[b'a' + i as u8], to).unwrap();
        }
        assert_eq!(batch.recv(sock.as_raw_fd()).unwrap(), RECV_BATCH);
        assert_eq!(
            batch.get(RECV_BATCH - 1).unwrap().0,
            &[b'a' + (RECV_BATCH - 1) as u8]
        );
        assert_eq!(batch.recv(sock.as_raw_fd()).unwrap(), 2);
    }

    #[test]
    fn socket_addresses_read_and_write_as_socket2_does() {
        for text in ["192.0.2.7:5060", "[2001:db8::1]:5061", "[fe80::1%3]:7"] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
            let len = write_sockaddr(addr, &mut name);
            let reference = SockAddr::from(addr);
            assert_eq!(len, reference.len());
            // SAFETY: zeroed, then written; both are plain data of at least `len` bytes.
            let (ours, theirs) = unsafe {
                (
                    std::slice::from_raw_parts(name.as_ptr().cast::<u8>(), len as usize),
                    std::slice::from_raw_parts(reference.as_ptr().cast::<u8>(), len as usize),
                )
            };
            assert_eq!(ours, theirs, "{text}");
            // SAFETY: zeroed, then written.
            assert_eq!(read_sockaddr(unsafe { name.assume_init_ref() }), Some(addr));
        }
        // SAFETY: all zeroes is a valid sockaddr_storage (family AF_UNSPEC).
        let unspec: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(read_sockaddr(&unspec), None);
    }

    fn recv_all(sock: &std::net::UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
        got
    }

    #[test]
    fn send_batch_sends_per_socket_in_order() {
        use std::os::fd::AsRawFd;
        let a = bind_udp_private("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind_udp_private("127.0.0.1:0".parse().unwrap()).unwrap();
        let x = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let y = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (xa, ya) = (x.local_addr().unwrap(), y.local_addr().unwrap());
        let mut batch = SendBatch::new(16);
        assert!(matches!(batch.send(), Sent::Empty));
        assert!(batch.push(a.as_raw_fd(), b"1", xa));
        assert!(batch.push(b.as_raw_fd(), b"2", ya));
        assert!(batch.push(a.as_raw_fd(), b"3", xa));
        assert!(!batch.push(a.as_raw_fd(), &[0u8; 17], xa));
        // `y` already waits for a datagram from `b`: one from `a` could overtake it.
        assert!(batch.conflicts(a.as_raw_fd(), ya));
        assert!(batch.conflicts(b.as_raw_fd(), xa));
        assert!(!batch.conflicts(b.as_raw_fd(), ya));
        assert!(!batch.conflicts(a.as_raw_fd(), xa));
        // One call per socket, the oldest socket first.
        assert!(matches!(batch.send(), Sent::All));
        assert!(matches!(batch.send(), Sent::All));
        assert!(batch.is_empty());
        assert!(matches!(batch.send(), Sent::Empty));
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        assert_eq!(recv_all(&x), vec![(b"1".to_vec(), aa), (b"3".to_vec(), aa)]);
        assert_eq!(recv_all(&y), vec![(b"2".to_vec(), ba)]);
        // Slots are reused once sent.
        for i in 0..SEND_BATCH {
            assert!(batch.push(a.as_raw_fd(), &[i as u8], xa));
        }
        assert!(batch.is_full());
        assert!(!batch.push(a.as_raw_fd(), b"!", xa));
        assert!(matches!(batch.send(), Sent::All));
        let got: Vec<u8> = recv_all(&x).into_iter().map(|(d, _)| d[0]).collect();
        assert_eq!(got, (0..SEND_BATCH as u8).collect::<Vec<_>>());
    }

    #[test]
    fn send_batch_takes_a_buffer_in_exchange_for_a_spare_one() {
        use std::os::fd::AsRawFd;
        let a = bind_udp_private("127.0.0.1:0".parse().unwrap()).unwrap();
        let x = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let xa = x.local_addr().unwrap();
        let mut batch = SendBatch::new(16);
        assert!(batch.push(a.as_raw_fd(), b"1", xa));
        let mut mine = vec![0u8; 16];
        mine[..2].copy_from_slice(b"22");
        let spare = batch.push_owned(a.as_raw_fd(), mine, 2, xa).unwrap();
        assert_eq!(spare.len(), 16);
        // Not the size of a slot, or longer than the buffer: refused and handed back.
        assert_eq!(
            batch.push_owned(a.as_raw_fd(), vec![7; 8], 1, xa),
            Err(vec![7; 8])
        );
        assert!(
            batch
                .push_owned(a.as_raw_fd(), vec![0; 16], 17, xa)
                .is_err()
        );
        assert!(matches!(batch.send(), Sent::All));
        let got: Vec<Vec<u8>> = recv_all(&x).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, vec![b"1".to_vec(), b"22".to_vec()]);
        // A full batch refuses too.
        let mut spare = spare;
        for _ in 0..SEND_BATCH {
            spare = batch.push_owned(a.as_raw_fd(), spare, 1, xa).unwrap();
        }
        assert!(batch.push_owned(a.as_raw_fd(), spare, 1, xa).is_err());
    }

    #[test]
    fn send_batch_reports_the_failed_datagram_and_sends_the_others() {
        use std::os::fd::AsRawFd;
        let a = bind_udp_private("127.0.0.1:0".parse().unwrap()).unwrap();
        let x = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let xa = x.local_addr().unwrap();
        // An IPv6 destination from an IPv4 socket fails on its own, whatever precedes it.
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let mut batch = SendBatch::new(16);
        assert!(batch.push(a.as_raw_fd(), b"1", xa));
        assert!(batch.push(a.as_raw_fd(), b"2", bad));
        assert!(batch.push(a.as_raw_fd(), b"3", xa));
        // The kernel reports no error past the first datagram: the call stops short.
        assert!(matches!(batch.send(), Sent::Part(fd) if fd == a.as_raw_fd()));
        let Sent::Failed { fd, to, id, .. } = batch.send() else {
            panic!("the failed datagram heads the next call");
        };
        assert_eq!((fd, to), (a.as_raw_fd(), bad));
        batch.drop_pending(id);
        batch.drop_pending(id);
        assert!(matches!(batch.send(), Sent::All));
        assert!(batch.is_empty());
        let got: Vec<Vec<u8>> = recv_all(&x).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, vec![b"1".to_vec(), b"3".to_vec()]);
    }
}
