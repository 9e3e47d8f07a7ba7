//! `sipedge-loadgen`: a SIP call generator for pushing a proxy past what sipp can offer.
//!
//! Each call is the exchange of sipp's built-in UAC scenario: INVITE (with SDP) → 180 → 200 →
//! ACK → BYE → 200, every request sent to `--target` (the proxy) with a unique Call-ID. A
//! proxy in the middle forwards 6 datagrams per call. Calls start at a fixed `--rate`, or flat
//! out with at most `--window` calls in flight, until `--calls` have started or `--duration`
//! has passed; then it waits at most `--timeout-ms` for the stragglers.
//!
//! It measures, per call, the INVITE → 200 and BYE → 200 round trips, and counts calls that
//! completed, failed (a final response ≥ 300) or timed out, replies that arrived out of order
//! (a 180 after the 200 of its call), duplicates and stray datagrams. No retransmissions: a
//! lost datagram is a lost call, which is what a loss figure should show. Replies are read with
//! the crate's own parser.
//!
//! `--junk-rate` adds, from a second socket, requests a proxy must refuse (the traffic of a
//! scanner or a broken client at a carrier's edge, see [`Junk`]), and counts the replies each
//! kind gets. `--calls 0` sends the junk alone.
//!
//! ```text
//! sipedge-loadgen --target 127.0.0.1:5060 --rate 5000 --calls 50000 --duration 20 --json
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sipedge::sip;

#[derive(Parser)]
#[command(about = "SIP call generator: INVITE/180/200/ACK/BYE/200 at a fixed rate or flat out")]
struct Args {
    /// Where every request goes (the proxy, or a responder for the floor).
    #[arg(long)]
    target: SocketAddr,
    /// Local UDP address.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Calls to start at most.
    #[arg(long, default_value_t = 10_000)]
    calls: u32,
    /// Seconds to keep starting calls at most.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Calls started per second; 0 = flat out, limited by --window.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most calls in flight at once.
    #[arg(long, default_value_t = 2_000)]
    window: u32,
    /// A call not finished this long after its INVITE counts as timed out.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Socket receive and send buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
    /// Requests per second that a proxy must refuse, sent from a second socket for as long as
    /// calls may start (--duration); 0 = none.
    #[arg(long, default_value_t = 0.0)]
    junk_rate: f64,
}

/// The requests `--junk-rate` sends, in turn, each with its own Call-ID and branch. A proxy
/// that checks what RFC 3261 §16.3 asks of it refuses each statelessly; none reaches a backend.
#[derive(Clone, Copy)]
enum Junk {
    /// §16.3 step 3: an INVITE with Max-Forwards 0 (483).
    MaxForwardsZero,
    /// §8.1.1: no Call-ID, which every request carries (400).
    NoCallId,
    /// §8.1.1.5: the CSeq method differs from the request's (400).
    CseqMethodMismatch,
    /// §7.1: a request line that is not SIP, a scanner's HTTP probe (dropped: it names no
    /// SIP transaction to answer).
    NotSip,
}

impl Junk {
    const ALL: [Self; 4] = [
        Self::MaxForwardsZero,
        Self::NoCallId,
        Self::CseqMethodMismatch,
        Self::NotSip,
    ];

    /// The kind of the `index`th junk request.
    fn of(index: u64) -> Self {
        Self::ALL[(index % Self::ALL.len() as u64) as usize]
    }

    fn name(self) -> &'static str {
        match self {
            Self::MaxForwardsZero => "max_forwards_0",
            Self::NoCallId => "no_call_id",
            Self::CseqMethodMismatch => "cseq_method_mismatch",
            Self::NotSip => "not_sip",
        }
    }
}

/// Progress of one call; the index into the table is the number in its Call-ID.
#[derive(Clone, Copy, Default)]
struct Call {
    /// Nanoseconds after the run's start when the INVITE left; 0 = not started.
    invite_sent: u64,
    /// Nanoseconds after the start when the BYE left; 0 = not yet.
    bye_sent: u64,
    got_provisional: bool,
    got_invite_final: bool,
    finished: bool,
}

/// Round-trip times with 1 µs resolution up to 1 s, plus an overflow count.
struct Histogram {
    buckets: Vec<u32>,
    overflow: u32,
    count: u64,
    max_us: u64,
}

impl Histogram {
    const SPAN_US: usize = 1_000_000;

    fn new() -> Self {
        Self {
            buckets: vec![0; Self::SPAN_US],
            overflow: 0,
            count: 0,
            max_us: 0,
        }
    }

    fn record(&mut self, nanos: u64) {
        let us = nanos / 1_000;
        self.count += 1;
        self.max_us = self.max_us.max(us);
        match self.buckets.get_mut(us as usize) {
            Some(b) => *b += 1,
            None => self.overflow += 1,
        }
    }

    /// The smallest value (µs) at or below which `q` of the samples lie.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (us, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return us as u64;
            }
        }
        self.max_us
    }

    fn summary(&self) -> String {
        format!(
            "{{\"count\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            self.count,
            self.quantile(0.50),
            self.quantile(0.90),
            self.quantile(0.99),
            self.quantile(0.999),
            self.max_us
        )
    }
}

#[derive(Default)]
struct Counters {
    started: u64,
    completed: u64,
    failed: u64,
    timed_out: u64,
    reordered: u64,
    duplicates: u64,
    stray: u64,
    datagrams_sent: u64,
    datagrams_received: u64,
    send_errors: u64,
    junk_sent: u64,
    /// Replies the junk got: per kind (`Junk::ALL` order), by status code.
    junk_replies: [Vec<(u16, u64)>; Junk::ALL.len()],
    /// Datagrams on the junk socket that are not a response to a junk request.
    junk_stray: u64,
}

impl Counters {
    /// Counts a datagram that came to the junk socket.
    fn count_junk_reply(&mut self, datagram: &[u8]) {
        match junk_reply(datagram) {
            Some((index, status)) => {
                let replies = &mut self.junk_replies[index as usize % Junk::ALL.len()];
                match replies.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, n)) => *n += 1,
                    None => replies.push((status, 1)),
                }
            }
            None => self.junk_stray += 1,
        }
    }
}

/// How long the junk socket is read after the last junk request left: a reply slower than
/// this is not counted.
const JUNK_GRACE: Duration = Duration::from_millis(200);

/// The parts of a response the generator acts on.
struct Reply<'a> {
    status: u16,
    call_index: u32,
    cseq_method: &'a [u8],
    /// The To header value (with the UAS's tag), for the ACK and BYE of the dialog.
    to_value: &'a [u8],
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipedge-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a response with the crate's parser; `None` for requests, other runs' Call-IDs and
/// unparseable datagrams.
fn parse_reply<'a>(datagram: &'a [u8], run_tag: &str) -> Option<Reply<'a>> {
    let mut slots = [sip::EMPTY_HEADER; 32];
    let msg = sip::parse(datagram, &mut slots, &sip::Limits::default()).ok()?;
    let status = msg.status_code()?;
    let call_id = msg.call_id();
    let dash = call_id.iter().position(|&b| b == b'-')?;
    if &call_id[dash + 1..] != run_tag.as_bytes() {
        return None;
    }
    Some(Reply {
        status,
        call_index: std::str::from_utf8(&call_id[..dash]).ok()?.parse().ok()?,
        cseq_method: msg.cseq().method,
        to_value: msg
            .headers()
            .get(msg.header_index(sip::HeaderName::To)?)?
            .value,
    })
}

/// A response to a junk request: `(index, status)`, the index read from its branch
/// (`z9hG4bK-junk-INDEX`). Read from the bytes alone, not with the parser: the refusal of a
/// request without a Call-ID has none either, and the parser would reject it.
fn junk_reply(datagram: &[u8]) -> Option<(u64, u16)> {
    let status = match datagram.strip_prefix(b"SIP/2.0 ")? {
        [a @ b'1'..=b'6', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return None,
    };
    const MARK: &[u8] = b"z9hG4bK-junk-";
    let at = datagram.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let digits = datagram[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let index = std::str::from_utf8(&datagram[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((index, status))
}

/// The junk's replies as JSON: `{"kind": {"status": count, ...}, ...}`.
fn junk_replies_json(replies: &[Vec<(u16, u64)>; Junk::ALL.len()]) -> String {
    let mut json = String::from("{");
    for (i, (kind, by_status)) in Junk::ALL.iter().zip(replies).enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(json, "{sep}\"{}\":{{", kind.name());
        for (j, (status, n)) in by_status.iter().enumerate() {
            let sep = if j == 0 { "" } else { "," };
            let _ = write!(json, "{sep}\"{status}\":{n}");
        }
        json.push('}');
    }
    json.push('}');
    json
}

/// SDP offer carried by every INVITE (one audio stream, like sipp's UAC).
const SDP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

struct Builder {
    local: SocketAddr,
    target: SocketAddr,
    run_tag: String,
    out: String,
}

impl Builder {
    /// The `index`th request of `--junk-rate` (of kind [`Junk::of`]), its Via naming `local`
    /// (the junk socket) and its branch the index.
    fn junk(&mut self, local: SocketAddr, index: u64) -> &[u8] {
        let Self {
            target,
            run_tag,
            out,
            ..
        } = self;
        out.clear();
        let (method, cseq_method, max_forwards, call_id) = match Junk::of(index) {
            Junk::MaxForwardsZero => ("INVITE", "INVITE", 0, true),
            Junk::NoCallId => ("INVITE", "INVITE", 70, false),
            Junk::CseqMethodMismatch => ("INVITE", "BYE", 70, true),
            Junk::NotSip => {
                let _ = write!(
                    out,
                    "GET /{index} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: scanner\r\n\r\n"
                );
                return out.as_bytes();
            }
        };
        let _ = write!(
            out,
            "{method} sip:{index}@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-junk-{index};rport\r\n\
             Max-Forwards: {max_forwards}\r\n\
             From: \"scanner\" <sip:{index}@{local}>;tag=j{index}\r\n\
             To: <sip:{index}@{target}>\r\n"
        );
        if call_id {
            let _ = write!(out, "Call-ID: junk-{index}-{run_tag}\r\n");
        }
        let _ = write!(
            out,
            "CSeq: 1 {cseq_method}\r\nUser-Agent: scanner\r\nContent-Length: 0\r\n\r\n"
        );
        out.as_bytes()
    }

    /// `method` with CSeq `cseq`; `to_value` is the To header value of the dialog (tag
    /// included) for ACK and BYE.
    fn request(&mut self, method: &str, index: u32, cseq: u32, to_value: Option<&[u8]>) -> &[u8] {
        let Self {
            local,
            target,
            run_tag,
            out,
        } = self;
        out.clear();
        let _ = write!(
            out,
            "{method} sip:service@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-lg-{index}-{cseq}-{method};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"sipedge loadgen\" <sip:loadgen@{local}>;tag={index}\r\n"
        );
        match to_value {
            Some(to) => {
                out.push_str("To: ");
                out.push_str(&String::from_utf8_lossy(to));
                out.push_str("\r\n");
            }
            None => {
                let _ = write!(out, "To: <sip:service@{target}>\r\n");
            }
        }
        let _ = write!(
            out,
            "Call-ID: {index}-{run_tag}\r\nCSeq: {cseq} {method}\r\nContact: <sip:loadgen@{local}>\r\n"
        );
        if method == "INVITE" {
            let _ = write!(
                out,
                "Subject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_OFFER}",
                SDP_OFFER.len()
            );
        } else {
            out.push_str("Content-Length: 0\r\n\r\n");
        }
        out.as_bytes()
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let socket = UdpSocket::bind(args.bind)?;
    let sock2 = socket2::SockRef::from(&socket);
    sock2.set_recv_buffer_size(args.socket_buffer)?;
    sock2.set_send_buffer_size(args.socket_buffer)?;
    let local = socket.local_addr()?;
    let run_tag = format!("{}.{}@loadgen.invalid", std::process::id(), local.port());
    let junk_socket = UdpSocket::bind(SocketAddr::new(args.bind.ip(), 0))?;
    junk_socket.set_nonblocking(true)?;
    let junk_local = junk_socket.local_addr()?;
    let mut builder = Builder {
        local,
        target: args.target,
        run_tag: run_tag.clone(),
        out: String::with_capacity(2048),
    };

    // Grown as calls start: a flat-out run is bounded by --duration, not by --calls.
    let mut calls: Vec<Call> = Vec::with_capacity((args.calls as usize).min(1 << 20));
    let mut invite_rtt = Histogram::new();
    let mut bye_rtt = Histogram::new();
    let mut c = Counters::default();
    let mut in_flight: u32 = 0;
    let mut oldest: usize = 0; // every call below this index is finished
    let mut last_finish = Duration::ZERO;
    let mut buf = vec![0u8; 65_535];
    let mut current_timeout = Duration::ZERO;
    let timeout = Duration::from_millis(args.timeout_ms);
    let start_window = Duration::from_secs_f64(args.duration.max(0.0));
    let start = Instant::now();

    loop {
        let now = start.elapsed();
        let starting = now < start_window && c.started < u64::from(args.calls);
        let junking = args.junk_rate > 0.0 && now < start_window;
        if junking {
            let due = (now.as_secs_f64() * args.junk_rate) as u64 + 1;
            while c.junk_sent < due {
                match junk_socket.send_to(builder.junk(junk_local, c.junk_sent), args.target) {
                    Ok(_) => c.junk_sent += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.send_errors += 1;
                        c.junk_sent += 1;
                    }
                }
            }
        }
        // What the junk got back: counted by class, never waited for.
        while let Ok((len, _)) = junk_socket.recv_from(&mut buf) {
            c.count_junk_reply(&buf[..len]);
        }
        // Start the calls that are due.
        if starting {
            let due = if args.rate > 0.0 {
                ((now.as_secs_f64() * args.rate) as u64 + 1).min(u64::from(args.calls))
            } else {
                u64::from(args.calls)
            };
            while c.started < due && in_flight < args.window {
                let index = c.started as u32;
                let sent_at = start.elapsed().as_nanos().max(1) as u64;
                match socket.send_to(builder.request("INVITE", index, 1, None), args.target) {
                    Ok(_) => c.datagrams_sent += 1,
                    Err(_) => c.send_errors += 1,
                }
                calls.push(Call {
                    invite_sent: sent_at,
                    ..Call::default()
                });
                c.started += 1;
                in_flight += 1;
            }
        }
        // Retire the calls that ran out of time.
        while oldest < c.started as usize {
            let call = &mut calls[oldest];
            if !call.finished {
                if Duration::from_nanos(call.invite_sent) + timeout > now {
                    break;
                }
                call.finished = true;
                c.timed_out += 1;
                in_flight -= 1;
            }
            oldest += 1;
        }
        if !starting && !junking && in_flight == 0 {
            break;
        }
        // Wait for a reply no longer than until the next call is due.
        let wait = if starting && args.rate > 0.0 && in_flight < args.window {
            let next_due = Duration::from_secs_f64((c.started as f64) / args.rate);
            next_due.saturating_sub(now).max(Duration::from_micros(20))
        } else {
            Duration::from_millis(5)
        };
        let wait = if junking {
            let next_junk = Duration::from_secs_f64((c.junk_sent as f64) / args.junk_rate);
            wait.min(next_junk.saturating_sub(now).max(Duration::from_micros(20)))
        } else {
            wait
        };
        let wait = wait.min(Duration::from_millis(5));
        if wait.abs_diff(current_timeout) > current_timeout / 4 {
            socket.set_read_timeout(Some(wait))?;
            current_timeout = wait;
        }
        let len = match socket.recv_from(&mut buf) {
            Ok((len, _)) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        c.datagrams_received += 1;
        let received_at = start.elapsed();
        let Some(reply) = parse_reply(&buf[..len], &run_tag) else {
            c.stray += 1;
            continue;
        };
        let Some(call) = calls.get_mut(reply.call_index as usize) else {
            c.stray += 1;
            continue;
        };
        if call.invite_sent == 0 || call.finished {
            c.stray += 1; // late reply of a timed-out call, or one that never started
            continue;
        }
        let nanos = received_at.as_nanos() as u64;
        match (reply.cseq_method, reply.status) {
            (b"INVITE", 100..=199) => {
                if call.got_invite_final {
                    c.reordered += 1; // RFC 3261 §17.1.1.2: nothing provisional follows the final
                } else {
                    call.got_provisional = true;
                }
            }
            (b"INVITE", 200..=299) => {
                if call.got_invite_final {
                    c.duplicates += 1;
                    continue;
                }
                call.got_invite_final = true;
                invite_rtt.record(nanos.saturating_sub(call.invite_sent));
                let index = reply.call_index;
                for (method, cseq) in [("ACK", 1), ("BYE", 2)] {
                    match socket.send_to(
                        builder.request(method, index, cseq, Some(reply.to_value)),
                        args.target,
                    ) {
                        Ok(_) => c.datagrams_sent += 1,
                        Err(_) => c.send_errors += 1,
                    }
                }
                call.bye_sent = start.elapsed().as_nanos() as u64;
            }
            (b"BYE", 200..=299) => {
                if call.bye_sent == 0 {
                    c.stray += 1;
                    continue;
                }
                bye_rtt.record(nanos.saturating_sub(call.bye_sent));
                call.finished = true;
                c.completed += 1;
                in_flight -= 1;
                last_finish = received_at;
            }
            (_, 300..) => {
                call.finished = true;
                c.failed += 1;
                in_flight -= 1;
            }
            _ => c.stray += 1,
        }
    }

    // The replies to the last junk requests are still on their way: read them for a moment.
    if args.junk_rate > 0.0 {
        junk_socket.set_nonblocking(false)?;
        junk_socket.set_read_timeout(Some(JUNK_GRACE))?;
        while let Ok((len, _)) = junk_socket.recv_from(&mut buf) {
            c.count_junk_reply(&buf[..len]);
        }
    }

    let elapsed = last_finish.max(Duration::from_micros(1)).as_secs_f64();
    let calls_per_s = c.completed as f64 / elapsed;
    let datagrams_per_s = (c.datagrams_sent + c.datagrams_received) as f64 / elapsed;
    let lost = c.started - c.completed;
    let loss_pct = if c.started == 0 {
        0.0
    } else {
        100.0 * lost as f64 / c.started as f64
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{{\"started\":{},\"completed\":{},\"failed\":{},\"timed_out\":{},\"loss_pct\":{loss_pct:.4},\
             \"reordered\":{},\"duplicates\":{},\"stray\":{},\"datagrams_sent\":{},\"datagrams_received\":{},\
             \"send_errors\":{},\"elapsed_s\":{elapsed:.4},\"calls_per_s\":{calls_per_s:.1},\
             \"datagrams_per_s\":{datagrams_per_s:.1},\"invite_rtt_us\":{},\"bye_rtt_us\":{},\
             \"junk_sent\":{},\"junk_replies\":{},\"junk_stray\":{}}}",
            c.started,
            c.completed,
            c.failed,
            c.timed_out,
            c.reordered,
            c.duplicates,
            c.stray,
            c.datagrams_sent,
            c.datagrams_received,
            c.send_errors,
            invite_rtt.summary(),
            bye_rtt.summary(),
            c.junk_sent,
            junk_replies_json(&c.junk_replies),
            c.junk_stray
        )?;
    } else {
        writeln!(
            out,
            "calls: {} started, {} completed, {} failed, {} timed out ({loss_pct:.3} % lost)\n\
             replies: {} reordered, {} duplicates, {} stray; {} send errors\n\
             rate: {calls_per_s:.0} calls/s, {datagrams_per_s:.0} datagrams/s over {elapsed:.3} s\n\
             INVITE->200 us: {}\nBYE->200 us: {}\n\
             junk: {} sent, replies by kind and status {}, {} stray",
            c.started,
            c.completed,
            c.failed,
            c.timed_out,
            c.reordered,
            c.duplicates,
            c.stray,
            c.send_errors,
            invite_rtt.summary(),
            bye_rtt.summary(),
            c.junk_sent,
            junk_replies_json(&c.junk_replies),
            c.junk_stray
        )?;
    }
    Ok(())
}
