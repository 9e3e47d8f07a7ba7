//! Socket creation and the socket options the std library does not expose.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Receive buffer asked for on UDP sockets: bursts of SIP arrive faster than one core drains
/// them for a moment; the kernel caps it at `net.core.rmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// Binds a UDP socket with `SO_REUSEPORT` (every shard binds the same address and the kernel
/// spreads datagrams over them) and `IP_RECVERR` (ICMP errors are queued with the address
/// they concern, so a dead next hop is noticed on the first datagram).
pub(crate) fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    set_recverr(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a UDP socket private to one shard (no `SO_REUSEPORT`: every datagram sent to it
/// is for that shard), with the buffers and `IP_RECVERR` of [`bind_udp`].
pub(crate) fn bind_udp_private(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
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
    names: [libc::sockaddr_storage; RECV_BATCH],
    namelens: [libc::socklen_t; RECV_BATCH],
    lens: [usize; RECV_BATCH],
}

impl RecvBatch {
    /// Buffers for `RECV_BATCH` datagrams of up to `size` bytes each.
    pub(crate) fn new(size: usize) -> Self {
        Self {
            bufs: vec![0u8; size * RECV_BATCH],
            size,
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            names: unsafe { std::mem::zeroed() },
            namelens: [0; RECV_BATCH],
            lens: [0; RECV_BATCH],
        }
    }

    /// One non-blocking `recvmmsg`: how many datagrams were read (at least one), or
    /// `WouldBlock` when none was queued. Allocation-free: the message headers live on the
    /// stack and point into `self`.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let size = self.size;
        // SAFETY: iovec and mmsghdr are plain data; all zeroes is a valid value.
        let mut iovs: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (chunk, (iov, (msg, name))) in self.bufs.chunks_exact_mut(size).zip(
            iovs.iter_mut()
                .zip(msgs.iter_mut().zip(self.names.iter_mut())),
        ) {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
            msg.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            msg.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `fd` is an open socket; every header points to a live buffer of the stated
        // length (a chunk of `bufs`, one of `names`) and to its own iovec, all of which
        // outlive the call; the timeout is null (MSG_DONTWAIT returns at once).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0).min(RECV_BATCH);
        for (msg, (len, namelen)) in msgs
            .iter()
            .zip(self.lens.iter_mut().zip(self.namelens.iter_mut()))
            .take(n)
        {
            *len = (msg.msg_len as usize).min(size);
            *namelen = msg.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`recv`](Self::recv) and its source, `None` past the batch or
    /// for a source address that is not IP.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let name = *self.names.get(i)?;
        let namelen = *self.namelens.get(i)?;
        let len = *self.lens.get(i)?;
        // SAFETY: the kernel initialised `namelen` bytes of this sockaddr_storage (zeroed
        // before the first call, rewritten by each one).
        let addr = unsafe { SockAddr::new(name, namelen) }.as_socket()?;
        let start = i * self.size;
        Some((self.bufs.get(start..start + len)?, addr))
    }
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

/// Drains a non-blocking datagram socket (the handoff doorbell) without allocating.
pub(crate) fn drain(fd: RawFd) {
    let mut scratch = [0u8; 64];
    for _ in 0..1024 {
        // SAFETY: `scratch` is a live, writable buffer of the given length.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
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
}
