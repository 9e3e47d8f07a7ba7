//! `udp-relay`: the UDP forwarding floor that sipedge is measured against.
//!
//! It stands in the proxy's place and does the least a SIP load balancer must do: read a
//! batch of datagrams with one `recvmmsg`, send each on with one `sendmmsg`. A datagram from
//! a backend goes back to the client that sent the call; any other datagram goes to a backend
//! chosen by a hash of its Call-ID, so every message of one call reaches the same backend. It
//! adds no Via and rewrites nothing, so what it costs is the kernel's UDP path plus a line
//! scan: the physical floor of a UDP proxy on this machine (see `perf/README.md`).
//!
//! ```text
//! udp-relay --listen 127.0.0.1:5060 --backend 127.0.0.1:5070 --backend 127.0.0.1:5071
//! ```
//!
//! With `--threads N` it is the floor of a proxy on N cores laid out as sipedge's shards are:
//! N threads, each pinned to its own CPU with its own `SO_REUSEPORT` socket, and sipedge's
//! Call-ID steering program attached to the group, so every message of a call reaches the
//! thread that saw its first one (needs `CAP_BPF`).
//!
//! IPv4 only. It runs until killed; pin a one-thread relay with `taskset`.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use clap::Parser;
use sipedge::config::Scheduling;

/// Datagrams moved per system call.
const BATCH: usize = 64;
/// Largest datagram relayed (SIP over UDP stays well below it, RFC 3261 §18.1.1).
const DATAGRAM_MAX: usize = 65_535;
/// Slots of the Call-ID hash → client address table (power of two).
const CLIENT_SLOTS: usize = 1 << 16;

#[derive(Parser)]
#[command(about = "Raw recvmmsg/sendmmsg UDP relay: the forwarding floor for sipedge's benchmarks")]
struct Args {
    /// Address to receive on (clients and backends both send here).
    #[arg(long)]
    listen: SocketAddrV4,
    /// Backend address; repeat for a pool. Calls are spread by Call-ID hash.
    #[arg(long, required = true)]
    backend: Vec<SocketAddrV4>,
    /// Socket receive and send buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
    /// Relay threads, one per CPU, each with its own socket; datagrams are steered to a
    /// thread by the Call-ID, as sipedge steers them to its shards.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// CPU scheduling of the relay threads, as sipedge's `scheduling`: batch or normal. The
    /// floor is measured under the policy the proxy beside it runs with.
    #[arg(long, default_value = "batch", value_parser = parse_scheduling)]
    scheduling: Scheduling,
}

fn parse_scheduling(s: &str) -> Result<Scheduling, String> {
    s.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the Call-ID value (RFC 3261 §20.8, compact form `i`) or the whole datagram when
/// there is none, so malformed input still maps to some backend.
fn call_id(datagram: &[u8]) -> &[u8] {
    for line in datagram.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            return line[colon + 1..].trim_ascii();
        }
    }
    datagram
}

fn sockaddr_of(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn same_addr(a: &libc::sockaddr_in, b: &libc::sockaddr_in) -> bool {
    a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr
}

fn run(args: &Args) -> std::io::Result<()> {
    if args.threads == 1 {
        let socket = bind(args, false)?;
        set_scheduling(args);
        return relay(args, &socket);
    }
    let sockets = (0..args.threads)
        .map(|_| bind(args, true))
        .collect::<std::io::Result<Vec<_>>>()?;
    // The program goes on the group (any member will do); socket i is thread i.
    let steering = sipedge::runtime::steer::Steering::load(args.threads)?;
    steering.attach(sockets[0].as_raw_fd())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        let threads: Vec<_> = sockets
            .iter()
            .enumerate()
            .map(|(index, socket)| {
                scope.spawn(move || {
                    pin_to_cpu(index % cpus);
                    set_scheduling(args);
                    relay(args, socket)
                })
            })
            .collect();
        for thread in threads {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => return Err(std::io::Error::other("a relay thread panicked")),
            }
        }
        Ok(())
    })
}

fn bind(args: &Args, reuse_port: bool) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_recv_buffer_size(args.socket_buffer)?;
    socket.set_send_buffer_size(args.socket_buffer)?;
    socket.bind(&SocketAddr::V4(args.listen).into())?;
    Ok(socket.into())
}

fn set_scheduling(args: &Args) {
    if args.scheduling == Scheduling::Batch {
        if let Err(e) = sipedge::runtime::set_batch_scheduling() {
            eprintln!("udp-relay: could not make a thread SCHED_BATCH: {e}");
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("udp-relay: could not pin a thread to CPU {cpu}");
        }
    }
}

fn relay(args: &Args, socket: &UdpSocket) -> std::io::Result<()> {
    let fd = socket.as_raw_fd();
    let backends: Vec<libc::sockaddr_in> = args.backend.iter().map(|&b| sockaddr_of(b)).collect();
    let unset = sockaddr_of(SocketAddrV4::new(0.into(), 0));
    let mut clients = vec![unset; CLIENT_SLOTS];

    let mut buffers = vec![0u8; BATCH * DATAGRAM_MAX];
    let mut addrs = [unset; BATCH];
    let mut dests = [unset; BATCH];
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes are valid.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut recv_hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut send_hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    loop {
        for i in 0..BATCH {
            iovecs[i] = libc::iovec {
                iov_base: buffers[i * DATAGRAM_MAX..].as_mut_ptr().cast(),
                iov_len: DATAGRAM_MAX,
            };
            recv_hdrs[i].msg_hdr.msg_iov = &mut iovecs[i];
            recv_hdrs[i].msg_hdr.msg_iovlen = 1;
            recv_hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            recv_hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        // SAFETY: every header points at a live iovec, buffer slice and address of this frame,
        // and the lengths given are the sizes of those objects.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                recv_hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut outgoing = 0;
        for i in 0..received as usize {
            let len = recv_hdrs[i].msg_len as usize;
            let datagram = &buffers[i * DATAGRAM_MAX..i * DATAGRAM_MAX + len];
            let hash = sipedge::shard::fnv1a64(call_id(datagram));
            let slot = (hash as usize) & (CLIENT_SLOTS - 1);
            let dest = if backends.iter().any(|b| same_addr(b, &addrs[i])) {
                clients[slot]
            } else {
                clients[slot] = addrs[i];
                backends[(hash % backends.len() as u64) as usize]
            };
            if dest.sin_port == 0 {
                continue; // A reply for a call never seen from a client: nowhere to send it.
            }
            dests[outgoing] = dest;
            iovecs[outgoing].iov_base = buffers[i * DATAGRAM_MAX..].as_mut_ptr().cast();
            iovecs[outgoing].iov_len = len;
            send_hdrs[outgoing].msg_hdr.msg_iov = &mut iovecs[outgoing];
            send_hdrs[outgoing].msg_hdr.msg_iovlen = 1;
            send_hdrs[outgoing].msg_hdr.msg_name =
                (&mut dests[outgoing] as *mut libc::sockaddr_in).cast();
            send_hdrs[outgoing].msg_hdr.msg_namelen =
                size_of::<libc::sockaddr_in>() as libc::socklen_t;
            outgoing += 1;
        }
        let mut sent = 0;
        while sent < outgoing {
            // SAFETY: headers 0..outgoing were filled above and point at live buffers/addresses.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    send_hdrs[sent..].as_mut_ptr(),
                    (outgoing - sent) as u32,
                    0,
                )
            };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    // A full or refusing peer drops that one datagram, as UDP would.
                    _ => sent += 1,
                }
            } else {
                sent += n as usize;
            }
        }
    }
}
