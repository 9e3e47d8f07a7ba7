//! The admin HTTP endpoint on the metrics listener: a tiny HTTP/1.1 server on its own thread.
//!
//! Cold path only (scrapes, probes, an operator's `curl`), so it is plain blocking std I/O,
//! one request per connection, with short timeouts so a stuck client cannot hold it.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | 200 while the process runs (liveness) |
//! | `GET /ready` | 200 when every shard's listeners are bound, at least one backend is up and the process is not draining; else 503 with the reason (readiness) |
//! | `POST /drain` | starts draining: new calls get 503, in-dialog requests and responses still flow; the process becomes not-ready |

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::shard::Shared;

/// Largest request head the admin server reads.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves admin requests on `listener` until the process exits.
pub(crate) fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let _ = handle(stream, &shared);
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Why the process is not ready, or `None` when it is.
pub(crate) fn not_ready_reason(shared: &Shared) -> Option<&'static str> {
    if shared.draining.load(Ordering::SeqCst) {
        Some("draining")
    } else if shared.started.load(Ordering::SeqCst) < usize::from(shared.shards) {
        Some("listeners not bound yet")
    } else if !shared.pool.load().backends().iter().any(|b| b.is_up()) {
        Some("no backend up")
    } else {
        None
    }
}

/// Starts draining (idempotent). Returns whether this call started it.
pub(crate) fn start_drain(shared: &Shared) -> bool {
    let first = !shared.draining.swap(true, Ordering::SeqCst);
    shared.metrics.set_draining(true);
    shared.metrics.set_ready(false);
    first
}

fn handle(mut stream: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == head.len() {
            return respond(&mut stream, 431, "text/plain", "request too large\n");
        }
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line_end = head[..len]
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(len);
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            shared.metrics.set_ready(not_ready_reason(shared).is_none());
            super::publish_blacklist(shared);
            let body = shared.metrics.encode_prometheus();
            respond(
                &mut stream,
                200,
                crate::metrics::PROMETHEUS_CONTENT_TYPE,
                &body,
            )
        }
        ("GET", "/health") => respond(&mut stream, 200, "text/plain", "ok\n"),
        ("GET", "/ready") => match not_ready_reason(shared) {
            None => respond(&mut stream, 200, "text/plain", "ready\n"),
            Some(reason) => respond(
                &mut stream,
                503,
                "text/plain",
                &format!("not ready: {reason}\n"),
            ),
        },
        ("POST", "/drain") => {
            if start_drain(shared) {
                tracing::info!("drain requested over the admin endpoint: refusing new calls");
            }
            respond(&mut stream, 200, "text/plain", "draining\n")
        }
        (_, "/metrics" | "/health" | "/ready" | "/drain") => {
            respond(&mut stream, 405, "text/plain", "method not allowed\n")
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
