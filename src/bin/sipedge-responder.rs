//! `sipedge-responder`: a stateless SIP backend for load tests, far cheaper than `sipp -sn uas`.
//!
//! It answers each request from the datagram alone and keeps no state, the way sipp's built-in
//! UAS scenario looks from the wire: INVITE → 180 Ringing + 200 OK (with an SDP answer),
//! ACK → nothing, anything else (BYE, REGISTER, OPTIONS, …) → 200 OK. Requests are read with
//! the crate's parser and answered with its stateless response writer (Via lines, From, To
//! with a tag, Call-ID, CSeq: RFC 3261 §8.2.6.2), sent back to the datagram's source address
//! as they would be to a proxy in between. Unparseable datagrams and responses are ignored.
//!
//! ```text
//! sipedge-responder --listen 127.0.0.1:5070 --listen 127.0.0.1:5071
//! ```
//!
//! One thread per listen address; it runs until killed.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;

use clap::Parser;
use sipedge::sip;

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

/// Writes one response into `out` and returns its length: the crate's stateless response
/// (Via lines, From, To with a tag, Call-ID, CSeq) plus a Contact, and for `with_sdp` an SDP
/// answer (`sdp_tail`: its Content-Type, Content-Length and body) in place of the empty body.
fn respond(
    req: &sip::Salvage<'_>,
    code: u16,
    reason: &[u8],
    contact: &[u8],
    sdp_tail: Option<&[u8]>,
    out: &mut [u8],
) -> Option<usize> {
    const EMPTY_TAIL: &[u8] = b"Content-Length: 0\r\n\r\n";
    let opts = sip::ResponseOptions {
        extra_headers: contact,
        ..Default::default()
    };
    let mut len = sip::write_response(req, code, reason, &opts, out).ok()?;
    if let Some(tail) = sdp_tail {
        // The writer always ends with an empty body; swap that tail for the SDP answer.
        len = len.checked_sub(EMPTY_TAIL.len())?;
        out.get_mut(len..len + tail.len())?.copy_from_slice(tail);
        len += tail.len();
    }
    Some(len)
}

fn serve(socket: &UdpSocket, trying: bool) -> std::io::Result<()> {
    let contact = format!("Contact: <sip:responder@{}>\r\n", socket.local_addr()?);
    let mut sdp_tail = format!(
        "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
        SDP_ANSWER.len()
    )
    .into_bytes();
    sdp_tail.extend_from_slice(SDP_ANSWER);
    let limits = sip::Limits::default();
    let mut buf = vec![0u8; 65_535];
    let mut out = vec![0u8; 65_535];
    loop {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut slots = [sip::EMPTY_HEADER; 64];
        let Ok(msg) = sip::parse(&buf[..len], &mut slots, &limits) else {
            continue;
        };
        if !msg.is_request() {
            continue;
        }
        let replies: &[(u16, &[u8], bool)] = match msg.method().as_bytes() {
            b"ACK" => &[],
            b"INVITE" if trying => &[
                (100, b"Trying", false),
                (180, b"Ringing", false),
                (200, b"OK", true),
            ],
            b"INVITE" => &[(180, b"Ringing", false), (200, b"OK", true)],
            _ => &[(200, b"OK", false)],
        };
        let req = sip::Salvage::from_message(&msg);
        for &(code, reason, sdp) in replies {
            let Some(n) = respond(
                &req,
                code,
                reason,
                contact.as_bytes(),
                sdp.then_some(&sdp_tail[..]),
                &mut out,
            ) else {
                continue;
            };
            // A full socket buffer or an unreachable peer loses this reply, as UDP would.
            let _ = socket.send_to(&out[..n], src);
        }
    }
}
