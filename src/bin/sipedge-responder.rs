//! `sipedge-responder`: a stateless SIP backend for load tests, far cheaper than `sipp -sn uas`.
//!
//! It answers each request from the datagram alone and keeps no state, the way sipp's built-in
//! UAS scenario looks from the wire: INVITE → 180 Ringing + 200 OK (with an SDP answer),
//! ACK → nothing, anything else (BYE, REGISTER, OPTIONS, …) → 200 OK. Replies copy the
//! request's Via, From, To, Call-ID, CSeq and Record-Route headers (RFC 3261 §8.2.6.2) and go
//! back to the datagram's source address, as they would to a proxy in between. Responses it
//! receives are ignored.
//!
//! ```text
//! sipedge-responder --listen 127.0.0.1:5070 --listen 127.0.0.1:5071
//! ```
//!
//! One thread per listen address; it runs until killed.

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Stateless SIP UAS for load tests: INVITE -> 180 + 200, BYE -> 200, ACK -> nothing"
)]
struct Args {
    /// UDP address to answer on; repeat for several backends (one thread each).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Also send 100 Trying before 180 Ringing.
    #[arg(long)]
    trying: bool,
    /// Socket receive and send buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
}

/// SDP answer carried by the 200 OK to INVITE, shaped like sipp's UAS answer.
const SDP_ANSWER: &[u8] = b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn main() -> ExitCode {
    let args = Args::parse();
    let mut threads = Vec::new();
    for &addr in &args.listen {
        let socket = match bind(addr, args.socket_buffer) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sipedge-responder: bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let trying = args.trying;
        threads.push(std::thread::spawn(move || serve(&socket, trying)));
    }
    for t in threads {
        if let Ok(Err(e)) = t.join() {
            eprintln!("sipedge-responder: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn bind(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let sock2 = socket2::SockRef::from(&socket);
    sock2.set_recv_buffer_size(buffer)?;
    sock2.set_send_buffer_size(buffer)?;
    Ok(socket)
}

/// The request headers a response copies (RFC 3261 §8.2.6.2), as whole lines without CRLF.
#[derive(Default)]
struct Copied<'a> {
    vias: [&'a [u8]; 16],
    via_count: usize,
    record_routes: [&'a [u8]; 16],
    record_route_count: usize,
    from: &'a [u8],
    to: &'a [u8],
    to_has_tag: bool,
    call_id: &'a [u8],
    cseq: &'a [u8],
}

/// Splits a request into its method and the headers to copy; `None` for responses and for
/// anything too broken to answer.
fn scan(datagram: &[u8]) -> Option<(&[u8], Copied<'_>)> {
    let mut lines = datagram
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next()?;
    if start.starts_with(b"SIP/") {
        return None;
    }
    let method = start.split(|&b| b == b' ').next()?;
    let mut c = Copied::default();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let is = |long: &[u8], short: &[u8]| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        };
        if is(b"via", b"v") && c.via_count < c.vias.len() {
            c.vias[c.via_count] = line;
            c.via_count += 1;
        } else if is(b"record-route", b"record-route")
            && c.record_route_count < c.record_routes.len()
        {
            c.record_routes[c.record_route_count] = line;
            c.record_route_count += 1;
        } else if is(b"from", b"f") {
            c.from = line;
        } else if is(b"to", b"t") {
            c.to = line;
            c.to_has_tag = line.windows(5).any(|w| w.eq_ignore_ascii_case(b";tag="));
        } else if is(b"call-id", b"i") {
            c.call_id = line;
        } else if is(b"cseq", b"cseq") {
            c.cseq = line;
        }
    }
    if c.via_count == 0
        || c.from.is_empty()
        || c.to.is_empty()
        || c.call_id.is_empty()
        || c.cseq.is_empty()
    {
        return None;
    }
    Some((method, c))
}

/// Writes one response into `out` (cleared first).
fn respond(out: &mut Vec<u8>, status: &str, req: &Copied<'_>, local: SocketAddr, sdp: bool) {
    out.clear();
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in req.vias[..req.via_count]
        .iter()
        .chain(&req.record_routes[..req.record_route_count])
    {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(req.from);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.to);
    if !req.to_has_tag && !status.starts_with("100") {
        // RFC 3261 §8.2.6.2: a UAS adds a To tag; one derived from the Call-ID keeps it stable.
        let _ = write!(out, ";tag=r{:x}", sipedge::shard::fnv1a64(req.call_id));
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.call_id);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(req.cseq);
    out.extend_from_slice(b"\r\n");
    let _ = write!(out, "Contact: <sip:responder@{local}>\r\n");
    if sdp {
        let _ = write!(
            out,
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
            SDP_ANSWER.len()
        );
        out.extend_from_slice(SDP_ANSWER);
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

fn serve(socket: &UdpSocket, trying: bool) -> std::io::Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Some((method, req)) = scan(&buf[..len]) else {
            continue;
        };
        let replies: &[(&str, bool)] = match method {
            b"ACK" => &[],
            b"INVITE" if trying => &[
                ("100 Trying", false),
                ("180 Ringing", false),
                ("200 OK", true),
            ],
            b"INVITE" => &[("180 Ringing", false), ("200 OK", true)],
            _ => &[("200 OK", false)],
        };
        for &(status, sdp) in replies {
            respond(&mut out, status, &req, local, sdp);
            // A full socket buffer or an unreachable peer loses this reply, as UDP would.
            let _ = socket.send_to(&out, src);
        }
    }
}
