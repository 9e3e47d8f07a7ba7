//! Every message of the shared RFC 4475 torture corpus and of the realistic RFC flows is a test
//! case, driven by the corpora's `index.json`:
//!
//! * valid messages parse, and every field the index lists is checked against the parse;
//! * invalid messages fail with an error whose response matches the index's class and statuses
//!   (responses are dropped, never answered), and the salvage scan recovers what a stateless
//!   error response needs;
//! * semantic messages parse (or fail with the stated code) and the proxy-level rule the RFC
//!   names (416, 420, 483, 505 ...) is derivable from the typed accessors;
//! * serialize(parse(m)) with no edits is byte-identical to m.
//!
//! The data lives in `../shared/testdata`; the test fails, naming the path, when it is missing.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sipedge::sip::{
    self, EMPTY_HEADER, ErrorAction, HeaderName, Limits, Message, ResponseOptions, Rport, Splice,
    Transport,
};

fn shared(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata")).join(rel)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("shared test data missing: {}: {e}", path.display()))
}

fn index(rel: &str) -> Value {
    let path = shared(rel);
    serde_json::from_slice(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Collapses every run of linear white space (folds included) into one space.
fn collapse(b: &[u8]) -> String {
    let mut out = String::new();
    let mut in_ws = false;
    for c in text(b).chars() {
        if matches!(c, ' ' | '\t' | '\r' | '\n') {
            in_ws = true;
        } else {
            if in_ws && !out.is_empty() {
                out.push(' ');
            }
            in_ws = false;
            out.push(c);
        }
    }
    out
}

fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&text(&b[i + 1..i + 3]), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn check(ok: bool, what: &str, errors: &mut Vec<String>) {
    if !ok {
        errors.push(what.to_owned());
    }
}

/// The raw value of the first header with this name (case-insensitive, long form).
fn header_value(m: &Message<'_, '_>, name: &str) -> Option<String> {
    m.header_named(name.as_bytes()).map(|h| text(h.value))
}

/// The proxy-level verdict RFC 4475 asks for on a parsed request: 416 for a Request-URI that is
/// not SIP/SIPS (RFC 3261 §16.3 step 1), 483 for Max-Forwards 0 (§16.3 step 3), 420 for
/// Proxy-Require option tags this proxy does not support (it supports none, §16.3 step 5).
fn proxy_status(m: &Message<'_, '_>) -> Option<u16> {
    if !m.is_request() {
        return None;
    }
    if let Err(e) = m.request_sip_uri() {
        return Some(e.status_code());
    }
    if m.max_forwards().is_some_and(|mf| mf.value == 0) {
        return Some(483);
    }
    if m.option_tags(HeaderName::ProxyRequire).next().is_some() {
        return Some(420);
    }
    None
}

fn check_via(via: &sip::Via<'_>, buf: &[u8], expected: &Value, errors: &mut Vec<String>, at: &str) {
    if let Some(t) = expected.get("transport") {
        let t = str_of(t);
        check(
            text(via.transport_token) == t,
            &format!("{at}: transport token {} != {t}", text(via.transport_token)),
            errors,
        );
        let known = Transport::from_token(t.as_bytes());
        check(
            via.transport == known,
            &format!("{at}: transport {:?}", via.transport),
            errors,
        );
    }
    if let Some(s) = expected.get("sent_by") {
        let sent_by = text(via.sent_by.slice(buf));
        check(
            sent_by == str_of(s),
            &format!("{at}: sent_by {sent_by} != {s}"),
            errors,
        );
    }
    if let Some(b) = expected.get("branch") {
        let got = via.branch.map(text);
        check(
            got == b.as_str().map(str::to_owned),
            &format!("{at}: branch {got:?} != {b}"),
            errors,
        );
    }
    if let Some(r) = expected.get("rport") {
        let ok = match r.as_str() {
            Some("present, no value") => via.rport == Rport::Requested,
            _ => false,
        };
        check(ok, &format!("{at}: rport {:?} != {r}", via.rport), errors);
    }
}

/// Checks one listed field of a parsed message. Every key of the index must be handled here.
fn check_field(m: &Message<'_, '_>, bytes: &[u8], key: &str, v: &Value, errors: &mut Vec<String>) {
    let buf = m.buf();
    let top = m.top_via();
    macro_rules! eq {
        ($got:expr, $want:expr $(,)?) => {{
            let (got, want): (String, String) = ($got, $want);
            check(
                got == want,
                &format!("{key}: got {got:?}, want {want:?}"),
                errors,
            );
        }};
    }
    match key {
        "method" => eq!(text(m.method().as_bytes()), str_of(v)),
        "request_uri" => eq!(
            text(
                m.request_uri()
                    .map(|u| u.span().slice(buf))
                    .unwrap_or_default()
            ),
            str_of(v)
        ),
        "request_uri_user_unescaped" => eq!(
            text(&unescape(
                m.request_sip_uri()
                    .ok()
                    .and_then(|u| u.user)
                    .unwrap_or_default()
            )),
            str_of(v),
        ),
        "call_id" => eq!(text(m.call_id()), str_of(v)),
        "cseq" => {
            eq!(m.cseq().number.to_string(), v["number"].to_string());
            eq!(text(m.cseq().method), str_of(&v["method"]));
            if let Some(w) = v.get("as_written") {
                eq!(header_value(m, "CSeq").unwrap_or_default(), str_of(w));
            }
        }
        "max_forwards" => match v {
            Value::Null => eq!(format!("{:?}", m.max_forwards()), "None".into()),
            Value::Number(n) => eq!(
                m.max_forwards()
                    .map(|mf| mf.value.to_string())
                    .unwrap_or_default(),
                n.to_string()
            ),
            _ => {
                let mf = m.max_forwards();
                eq!(
                    mf.map(|mf| mf.value.to_string()).unwrap_or_default(),
                    v["value"].to_string()
                );
                eq!(
                    text(mf.map(|mf| mf.span.slice(buf)).unwrap_or_default()),
                    str_of(&v["as_written"])
                );
            }
        },
        "to" | "from" => match if key == "to" {
            m.read_to()
        } else {
            m.read_from()
        } {
            Ok(na) => {
                eq!(text(na.uri_bytes()), str_of(&v["uri"]));
                if let Some(t) = v.get("tag") {
                    eq!(text(na.tag.unwrap_or_default()), str_of(t));
                }
                if let Some(d) = v.get("display_name_as_written") {
                    eq!(text(na.display_name.unwrap_or_default()), str_of(d));
                }
            }
            Err(e) => check(false, &format!("{key} does not read: {e:?}"), errors),
        },
        "to_uri" => eq!(
            m.read_to().map(|t| text(t.uri_bytes())).unwrap_or_default(),
            str_of(v)
        ),
        "to_uri_prefix" => check(
            m.read_to()
                .is_ok_and(|t| text(t.uri_bytes()).starts_with(&str_of(v))),
            "to_uri_prefix",
            errors,
        ),
        "from_tag" => eq!(
            format!("{:?}", m.read_from().ok().and_then(|f| f.tag).map(text)),
            format!("{:?}", v.as_str())
        ),
        "content_length" => eq!(
            format!("{:?}", m.content_length()),
            format!("{:?}", v.as_u64().map(|n| n as u32))
        ),
        "content_length_as_written" => {
            // "Content-Length:0 (no SP after colon)": the header line as written.
            let line = m
                .headers_of(HeaderName::ContentLength)
                .next()
                .map(|h| text(h.line.slice(buf)))
                .unwrap_or_default();
            let written = str_of(v);
            let head = written.split(' ').next().unwrap_or_default().to_owned();
            check(
                line.starts_with(&head),
                &format!("content_length_as_written: {line:?}"),
                errors,
            );
        }
        "content_type" => eq!(
            header_value(m, "Content-Type")
                .or_else(|| header_value(m, "c"))
                .unwrap_or_default(),
            str_of(v)
        ),
        "subject" => {
            let want = if str_of(v) == "(empty)" {
                String::new()
            } else {
                str_of(v)
            };
            eq!(
                header_value(m, "Subject")
                    .or_else(|| header_value(m, "s"))
                    .unwrap_or_else(|| "(absent)".into()),
                want
            );
        }
        "accept" | "authorization" => eq!(header_value(m, key).unwrap_or_default(), str_of(v)),
        "date_as_written" => eq!(header_value(m, "Date").unwrap_or_default(), str_of(v)),
        "via_values_in_order" => {
            let vias: Vec<_> = m.vias().collect();
            eq!(
                vias.len().to_string(),
                v.as_array().map_or(0, Vec::len).to_string()
            );
            for (i, (via, want)) in vias
                .iter()
                .zip(v.as_array().into_iter().flatten())
                .enumerate()
            {
                check_via(&via.value, buf, want, errors, &format!("via[{i}]"));
            }
        }
        "via_transports_in_order" => {
            let got: Vec<_> = m.vias().map(|l| text(l.value.transport_token)).collect();
            let want: Vec<_> = v.as_array().into_iter().flatten().map(str_of).collect();
            eq!(format!("{got:?}"), format!("{want:?}"));
            let unknown = m
                .vias()
                .filter(|l| l.value.transport == Transport::Other)
                .count();
            eq!(
                unknown.to_string(),
                want.iter()
                    .filter(|t| t.as_str() == "UNKNOWN")
                    .count()
                    .to_string()
            );
        }
        "via_value_count" => eq!(m.vias().count().to_string(), v.to_string()),
        "top_via" => match v.as_str() {
            Some(prefix) => check(
                text(top.span.slice(buf)).starts_with(prefix),
                &format!("top_via prefix {prefix}"),
                errors,
            ),
            None => check_via(top, buf, v, errors, "top_via"),
        },
        "top_via_as_written" => eq!(text(top.span.slice(buf)), str_of(v)),
        "top_via_branch" => eq!(
            format!("{:?}", top.branch.map(text)),
            format!("{:?}", v.as_str())
        ),
        "bottom_via_branch" => eq!(
            text(
                m.vias()
                    .last()
                    .and_then(|l| l.value.branch)
                    .unwrap_or_default()
            ),
            str_of(v)
        ),
        "route" => eq!(
            m.routes()
                .map(|r| text(r.span.slice(buf)))
                .collect::<Vec<_>>()
                .join(", "),
            str_of(v)
        ),
        "record_route" => eq!(
            m.record_routes()
                .map(|r| text(r.span.slice(buf)))
                .collect::<Vec<_>>()
                .join(", "),
            str_of(v)
        ),
        "contact" => {
            let c = m.contacts().next().map(|c| c.value);
            eq!(
                text(c.map(|c| c.uri_bytes()).unwrap_or_default()),
                str_of(&v["uri"])
            );
            let params = c.map(|c| collapse(c.params.slice(buf))).unwrap_or_default();
            eq!(
                params.trim_start_matches(';').trim().to_owned(),
                str_of(&v["params_as_written"])
            );
        }
        "contact_uri" => eq!(
            text(
                m.contacts()
                    .next()
                    .map(|c| c.value.uri_bytes())
                    .unwrap_or_default()
            ),
            str_of(v)
        ),
        "contacts" => {
            let got: Vec<_> = m.contacts().map(|c| text(c.value.uri_bytes())).collect();
            let want: Vec<_> = v.as_array().into_iter().flatten().map(str_of).collect();
            eq!(format!("{got:?}"), format!("{want:?}"));
        }
        "contact_as_written" => eq!(
            header_value(m, "Contact")
                .map(|c| collapse(c.as_bytes()))
                .unwrap_or_default(),
            collapse(str_of(v).as_bytes())
        ),
        "contact_header_params" => {
            let got: Vec<_> = m
                .contacts()
                .next()
                .map(|c| c.value.params().map(|p| text(p.name)).collect())
                .unwrap_or_default();
            let want: Vec<_> = v.as_array().into_iter().flatten().map(str_of).collect();
            eq!(format!("{got:?}"), format!("{want:?}"));
        }
        "contact_uri_param_name_value" => {
            // RFC 4475 §3.1.1.3: the escaped parameter n%61me unescapes to "name", whose value
            // unescapes to "value%41".
            let uri = m
                .contacts()
                .next()
                .and_then(|c| c.value.uri.as_sip().copied());
            let value = uri.and_then(|u| {
                u.params()
                    .find(|(n, _)| unescape(n) == b"name")
                    .and_then(|(_, v)| v)
            });
            let want = str_of(v);
            let want = want.split(' ').next().unwrap_or_default();
            eq!(text(&unescape(value.unwrap_or_default())), want.to_owned());
        }
        "unknown_headers" => {
            for (name, want) in v.as_object().into_iter().flatten() {
                eq!(header_value(m, name).unwrap_or_default(), str_of(want));
                let h = m.header_named(name.as_bytes());
                check(
                    h.is_some_and(|h| h.kind == HeaderName::Other),
                    &format!("{name} is unknown"),
                    errors,
                );
            }
        }
        "require" | "proxy_require" => {
            let kind = if key == "require" {
                HeaderName::Require
            } else {
                HeaderName::ProxyRequire
            };
            let got: Vec<_> = m.option_tags(kind).map(|t| text(t.value)).collect();
            let want: Vec<_> = v.as_array().into_iter().flatten().map(str_of).collect();
            eq!(format!("{got:?}"), format!("{want:?}"));
        }
        "trailing_octets" => eq!((bytes.len() - m.len()).to_string(), v.to_string()),
        "body_octets" => eq!(m.body().len().to_string(), v.to_string()),
        "status_code" => eq!(format!("{:?}", m.status_code()), format!("Some({v})")),
        "reason_phrase" => eq!(text(m.reason_phrase().unwrap_or_default()), str_of(v)),
        "status_line_as_written" => {
            let line = text(m.start_line_span().slice(buf));
            let want = str_of(v);
            let want = want.split(" (").next().unwrap_or_default();
            eq!(line.trim_end_matches("\r\n").to_owned(), format!("{want} "));
        }
        other => errors.push(format!("index field {other:?} is not checked by this test")),
    }
}

/// Checks the listed fields of a message that failed to parse, against the salvage scan and
/// the raw text (the index lists them "as written").
fn check_unparsed(bytes: &[u8], key: &str, v: &Value, errors: &mut Vec<String>) {
    let s = sip::salvage(bytes);
    let raw = text(bytes);
    let span_text = |span: Option<sip::Span>| span.map(|sp| text(sp.slice(bytes)));
    macro_rules! eq {
        ($got:expr, $want:expr $(,)?) => {{
            let (got, want): (Option<String>, Option<String>) = ($got, $want);
            check(
                got == want,
                &format!("{key}: got {got:?}, want {want:?}"),
                errors,
            );
        }};
    }
    match key {
        "method" => eq!(s.method.map(text), v.as_str().map(str::to_owned)),
        "call_id" => eq!(span_text(s.call_id), v.as_str().map(str::to_owned)),
        "from" => eq!(span_text(s.from), v.as_str().map(str::to_owned)),
        "to" => eq!(span_text(s.to), v.as_str().map(str::to_owned)),
        "cseq" => {
            let got = span_text(s.cseq).map(|c| collapse(c.as_bytes()));
            eq!(
                got,
                Some(format!("{} {}", v["number"], str_of(&v["method"])))
            );
        }
        "cseq_as_written" => eq!(span_text(s.cseq), Some(str_of(v))),
        "via_as_written" | "top_via_as_written" => eq!(
            s.via_lines().first().map(|l| text(l.slice(bytes))),
            Some(str_of(v))
        ),
        "top_via_branch" => eq!(
            s.top_via().and_then(|t| t.branch.map(text)),
            v.as_str().map(str::to_owned)
        ),
        "from_as_written" => eq!(span_text(s.from), Some(str_of(v))),
        "to_as_written" => eq!(span_text(s.to), Some(str_of(v))),
        "content_length"
        | "max_forwards"
        | "content_length_as_written"
        | "max_forwards_as_written" => {
            let name = if key.starts_with("content") {
                ["Content-Length:", "l:"]
            } else {
                ["Max-Forwards:", "Max-Forwards:"]
            };
            let written = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            check(
                name.iter().any(|n| {
                    raw.contains(&format!("{n} {written}\r\n"))
                        || raw.contains(&format!("{n}{written}\r\n"))
                }),
                &format!("{key}: {written} not in the message"),
                errors,
            );
        }
        "actual_body_octets" => {
            let body = raw.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
            eq!(Some(body.to_string()), Some(v.to_string()));
        }
        "request_line_as_written"
        | "request_uri_as_written"
        | "contact_as_written"
        | "expires_as_written"
        | "contact_expires_as_written"
        | "status_code_as_written"
        | "reason_phrase"
        | "date_as_written" => {
            let want = str_of(v).replace("<SP>", " ");
            check(
                raw.contains(&want),
                &format!("{key}: {want:?} not in the message"),
                errors,
            );
        }
        other => errors.push(format!(
            "index field {other:?} is not checked for unparsed messages"
        )),
    }
}

fn round_trip(m: &Message<'_, '_>, errors: &mut Vec<String>) {
    let mut splice: Splice<'_, 1> = Splice::new();
    let mut out = vec![0u8; m.len()];
    match splice.apply(m.as_bytes(), &mut out) {
        Ok(n) => check(out[..n] == *m.as_bytes(), "round trip differs", errors),
        Err(e) => errors.push(format!("round trip failed: {e:?}")),
    }
}

/// Answers a failed request as a proxy would and checks the response is well-formed.
fn check_error_response(bytes: &[u8], e: &sip::ParseError, errors: &mut Vec<String>) {
    let s = sip::salvage(bytes);
    let mut out = [0u8; 8192];
    let opts = ResponseOptions {
        received: Some(b"192.0.2.200"),
        rport: Some(5060),
        partial: true,
        ..Default::default()
    };
    match sip::write_response(&s, e.status_code(), e.reason().as_bytes(), &opts, &mut out) {
        Ok(n) => {
            let mut slots = [EMPTY_HEADER; 64];
            let resp = sip::parse(&out[..n], &mut slots, &Limits::default());
            let code = resp.as_ref().ok().and_then(Message::status_code);
            // The response mirrors Via, From, To, Call-ID and CSeq byte for byte (RFC 3261
            // §8.2.6.2), so it parses unless the defect is in one of them, or one is missing
            // (RFC 4475 insuf).
            let mirrored = matches!(
                e.header,
                Some(
                    HeaderName::Via
                        | HeaderName::From
                        | HeaderName::To
                        | HeaderName::CallId
                        | HeaderName::CSeq
                )
            );
            if s.is_answerable() && !mirrored {
                check(
                    code == Some(e.status_code()),
                    &format!("error response does not parse: {:?}", resp.err()),
                    errors,
                );
            }
        }
        // Without a Via there is nowhere to send a response (RFC 3261 §18.2.2): drop.
        Err(sip::ResponseError::NotAnswerable) if s.via_lines().is_empty() => {}
        Err(err) => errors.push(format!("no error response could be built: {err:?}")),
    }
}

#[test]
fn torture_corpus() {
    let idx = index("sip-torture/index.json");
    let entries = idx["entries"].as_array().expect("entries");
    let files = std::fs::read_dir(shared("sip-torture/messages"))
        .expect("sip-torture/messages")
        .count();
    assert_eq!(
        entries.len(),
        files,
        "every torture file has an index entry"
    );
    let mut failures = Vec::new();
    for e in entries {
        let file = str_of(&e["file"]);
        let bytes = read(&shared(&format!("sip-torture/{file}")));
        let class = str_of(&e["class"]);
        let exp = &e["proxy_expectation"];
        let action = exp["action"].as_str().unwrap_or("reject");
        let statuses: Vec<u64> = exp["statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        let is_response = e["message_kind"] == "response";
        let fields = e["expected"]["fields"].as_object().expect("fields");
        let mut errors = Vec::new();
        let mut slots = [EMPTY_HEADER; 128];
        match sip::parse(&bytes, &mut slots, &Limits::default()) {
            Ok(m) => {
                round_trip(&m, &mut errors);
                for (k, v) in fields {
                    check_field(&m, &bytes, k, v, &mut errors);
                }
                let status = proxy_status(&m);
                match (class.as_str(), action) {
                    ("invalid", "forward_or_reject") | ("valid", _) => check(
                        status.is_none(),
                        &format!("valid message gets {status:?}"),
                        &mut errors,
                    ),
                    ("semantic", "forward") => {
                        check(status.is_none(), &format!("gets {status:?}"), &mut errors)
                    }
                    ("semantic", _) => check(
                        status.is_some_and(|s| statuses.contains(&u64::from(s))),
                        &format!("semantic: proxy status {status:?} not in {statuses:?}"),
                        &mut errors,
                    ),
                    _ => errors.push(format!("{class} message parsed (action {action})")),
                }
            }
            Err(err) => {
                check(
                    class != "valid",
                    &format!("valid message failed: {err}"),
                    &mut errors,
                );
                check(err.offset <= bytes.len(), "offset in range", &mut errors);
                for (k, v) in fields {
                    check_unparsed(&bytes, k, v, &mut errors);
                }
                let salvage = sip::salvage(&bytes);
                check(
                    salvage.is_request != is_response,
                    "salvage sees the message kind",
                    &mut errors,
                );
                match err.action(salvage.is_request) {
                    ErrorAction::Drop => check(
                        is_response && action == "drop",
                        &format!("dropped: {err}"),
                        &mut errors,
                    ),
                    ErrorAction::Respond { code, .. } => {
                        check(!is_response, "a response is answered", &mut errors);
                        check(
                            statuses.is_empty() || statuses.contains(&u64::from(code)),
                            &format!("answered {code} ({err}), index wants {statuses:?}"),
                            &mut errors,
                        );
                        check_error_response(&bytes, &err, &mut errors);
                    }
                    ErrorAction::SigComp => errors.push("not SigComp".into()),
                }
            }
        }
        if !errors.is_empty() {
            failures.push(format!("{file} ({class}): {}", errors.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing entries:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn realistic_corpus() {
    let idx = index("sip-realistic/index.json");
    let entries = idx["entries"].as_array().expect("entries");
    assert_eq!(Some(entries.len() as u64), idx["counts"]["total"].as_u64());
    let files = std::fs::read_dir(shared("sip-realistic"))
        .expect("sip-realistic")
        .filter(|f| {
            f.as_ref()
                .is_ok_and(|f| f.path().extension().is_some_and(|x| x == "sip"))
        })
        .count();
    assert_eq!(
        entries.len(),
        files,
        "every realistic file has an index entry"
    );
    let mut failures = Vec::new();
    for e in entries {
        let file = str_of(&e["file"]);
        let bytes = read(&shared(&format!("sip-realistic/{file}")));
        let mut errors = Vec::new();
        check(
            e["class"] == "valid",
            "only valid messages in this corpus",
            &mut errors,
        );
        check(
            format!("{:x}", Sha256::digest(&bytes)) == str_of(&e["sha256"]),
            "sha256",
            &mut errors,
        );
        check(
            Some(bytes.len() as u64) == e["size"].as_u64(),
            "size",
            &mut errors,
        );
        let mut slots = [EMPTY_HEADER; 64];
        match sip::parse_stream_message(&bytes, &mut slots, &Limits::default()) {
            Ok(m) => {
                round_trip(&m, &mut errors);
                check(
                    m.len() == bytes.len(),
                    "whole file is one message",
                    &mut errors,
                );
                let first_line = text(m.start_line_span().slice(&bytes));
                check(
                    first_line.trim_end() == str_of(&e["start_line"]),
                    &format!("start line {first_line:?}"),
                    &mut errors,
                );
                check(
                    text(m.top_via().transport_token) == str_of(&e["transport_in_top_via"]),
                    "top via transport",
                    &mut errors,
                );
                check(
                    text(m.call_id()) == str_of(&e["call_id"]),
                    "call-id",
                    &mut errors,
                );
                let cseq = format!("{} {}", m.cseq().number, text(m.cseq().method));
                check(
                    cseq == str_of(&e["cseq"]),
                    &format!("cseq {cseq}"),
                    &mut errors,
                );
                check(
                    m.content_length().map(u64::from) == e["content_length"].as_u64(),
                    "content-length",
                    &mut errors,
                );
                check(
                    Some(m.body().len() as u64) == e["body_length"].as_u64(),
                    "body length",
                    &mut errors,
                );
                // The index counts continuation lines.
                let folded: usize = m
                    .headers()
                    .iter()
                    .map(|h| h.value.iter().filter(|&&b| b == b'\n').count())
                    .sum();
                check(
                    Some(folded as u64) == e["folded_header_lines"].as_u64(),
                    &format!("folded lines {folded}"),
                    &mut errors,
                );
                check(proxy_status(&m).is_none(), "forwardable", &mut errors);
                check(
                    sip::frame(&bytes, &Limits::default())
                        == Ok(sip::Frame::Message { len: bytes.len() }),
                    "stream framing",
                    &mut errors,
                );
            }
            Err(err) => errors.push(format!("failed: {err}")),
        }
        if !errors.is_empty() {
            failures.push(format!("{file}: {}", errors.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing entries:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The properties the `sip_datagram` fuzz target asserts, for one input.
fn datagram_properties(bytes: &[u8], errors: &mut Vec<String>) -> bool {
    let limits = Limits::default();
    let mut slots = [EMPTY_HEADER; 128];
    let mut out = vec![0u8; 70_000];
    match sip::parse(bytes, &mut slots, &limits) {
        Ok(m) => {
            round_trip(&m, errors);
            if let Some(first) = m.routes().next() {
                let mut edit: Splice<'_, 1> = Splice::new();
                let n = edit
                    .remove(first.removal)
                    .and_then(|()| edit.apply(m.as_bytes(), &mut out))
                    .unwrap_or(0);
                let mut slots2 = [EMPTY_HEADER; 128];
                let popped = sip::parse(&out[..n], &mut slots2, &limits);
                check(
                    popped
                        .as_ref()
                        .is_ok_and(|p| p.routes().count() + 1 == m.routes().count()),
                    &format!("route removal: {:?}", popped.err()),
                    errors,
                );
            }
            let basis = sip::Salvage::from_message(&m);
            let opts = ResponseOptions {
                received: Some(b"192.0.2.1"),
                rport: Some(5060),
                ..Default::default()
            };
            if let Ok(n) = sip::write_response(&basis, 400, b"Bad Request", &opts, &mut out) {
                let mut slots3 = [EMPTY_HEADER; 128];
                let resp = sip::parse(&out[..n], &mut slots3, &limits);
                check(
                    resp.as_ref()
                        .is_ok_and(|r| r.read_to().is_ok_and(|to| to.tag.is_some())),
                    &format!("response: {:?}", resp.err()),
                    errors,
                );
            }
            true
        }
        Err(e) => {
            check(e.offset <= bytes.len(), "offset in range", errors);
            let _ = sip::write_response(
                &sip::salvage(bytes),
                e.status_code(),
                e.reason().as_bytes(),
                &ResponseOptions::default(),
                &mut out,
            );
            false
        }
    }
}

/// Vectors of this crate's own (`tests/vectors/sip/valid`, `invalid`) and inputs the fuzzers
/// once crashed on (`tests/vectors/sip/fuzz/<target>-*`), replayed through the fuzz properties.
#[test]
fn own_vectors_and_fuzz_regressions() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/sip"));
    let mut failures = Vec::new();
    let mut seen = 0;
    for (dir, must_parse) in [
        ("valid", Some(true)),
        ("invalid", Some(false)),
        ("fuzz", None),
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            assert!(
                dir == "fuzz",
                "vectors missing: {}",
                root.join(dir).display()
            );
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let bytes = read(&path);
            let mut errors = Vec::new();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with("sip_stream") {
                stream_properties(&bytes, &mut errors);
            } else {
                let parsed = datagram_properties(&bytes, &mut errors);
                if let Some(want) = must_parse {
                    check(parsed == want, &format!("parsed: {parsed}"), &mut errors);
                }
            }
            seen += 1;
            if !errors.is_empty() {
                failures.push(format!("{dir}/{name}: {}", errors.join("; ")));
            }
        }
    }
    assert!(seen >= 10, "only {seen} vectors found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The properties the `sip_stream` fuzz target asserts, for one input.
fn stream_properties(data: &[u8], errors: &mut Vec<String>) {
    let limits = Limits {
        max_message_size: 4096,
        ..Limits::default()
    };
    let mut consumed = 0usize;
    while consumed < data.len() {
        let rest = &data[consumed..];
        match sip::frame(rest, &limits) {
            Ok(sip::Frame::Message { len }) | Ok(sip::Frame::KeepAlive { len, .. }) => {
                check(
                    len > 0 && len <= rest.len(),
                    "frame length in range",
                    errors,
                );
                if len == 0 || len > rest.len() {
                    return;
                }
                if let Ok(sip::Frame::Message { len: again }) = sip::frame(&rest[..len], &limits) {
                    check(again == len, "reframing gives the same length", errors);
                }
                let mut slots = [EMPTY_HEADER; 64];
                let _ = sip::parse_stream_message(&rest[..len], &mut slots, &limits);
                consumed += len;
            }
            _ => break,
        }
    }
}

#[test]
fn stream_of_the_realistic_corpus() {
    // All realistic messages back to back with keep-alives between them frame one by one.
    let idx = index("sip-realistic/index.json");
    let mut stream = Vec::new();
    let mut lengths = Vec::new();
    for e in idx["entries"].as_array().into_iter().flatten() {
        let bytes = read(&shared(&format!("sip-realistic/{}", str_of(&e["file"]))));
        stream.extend_from_slice(b"\r\n\r\n");
        lengths.push(4);
        stream.extend_from_slice(&bytes);
        lengths.push(bytes.len());
    }
    let mut consumed = 0;
    let mut got = Vec::new();
    while consumed < stream.len() {
        match sip::frame(&stream[consumed..], &Limits::default()) {
            Ok(sip::Frame::Message { len }) | Ok(sip::Frame::KeepAlive { len, .. }) => {
                got.push(len);
                consumed += len;
            }
            other => panic!("at {consumed}: {other:?}"),
        }
    }
    assert_eq!(got, lengths);
    // Every prefix that cuts a message short is Partial, never an error or a wrong length.
    let first = lengths[0] + lengths[1];
    for cut in lengths[0] + 1..first {
        assert_eq!(
            sip::frame(&stream[lengths[0]..cut], &Limits::default()),
            Ok(sip::Frame::Partial),
            "cut at {cut}"
        );
    }
}

/// Every file under `dir`, recursively.
/// Every message file of the corpora (torture, realistic) and of this crate's vectors.
fn every_message_file() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    files_under(&shared("sip-torture"), &mut paths);
    files_under(&shared("sip-realistic"), &mut paths);
    files_under(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/sip")),
        &mut paths,
    );
    paths
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("test data missing: {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The shard a message belongs to is decided by `salvage_call_id`, which reads only up to the
/// Call-ID line; it must find exactly what the full `salvage` scan finds, on every message of
/// the corpora and vectors and on the header forms that could set them apart.
#[test]
fn call_id_scan_agrees_with_salvage_and_parse() {
    let paths = every_message_file();
    let mut inputs: Vec<(String, Vec<u8>)> = paths
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .map(|p| (p.display().to_string(), read(p)))
        .collect();
    assert!(inputs.len() >= 50, "only {} files found", inputs.len());
    for (name, text) in [
        (
            "compact",
            &b"INVITE sip:a SIP/2.0\r\nv: x\r\ni: abc@h\r\n\r\n"[..],
        ),
        (
            "any case, space before colon",
            b"BYE sip:a SIP/2.0\r\ncAlL-iD  : abc\r\n\r\n",
        ),
        ("folded", b"BYE sip:a SIP/2.0\r\nCall-ID:\r\n  abc\r\n\r\n"),
        (
            "second wins not",
            b"BYE sip:a SIP/2.0\r\nCall-ID: one\r\ni: two\r\n\r\n",
        ),
        (
            "after the body",
            b"BYE sip:a SIP/2.0\r\nTo: b\r\n\r\nCall-ID: body\r\n",
        ),
        ("unterminated", b"SIP/2.0 200 OK\r\nVia: x\r\nCall-ID: last"),
        ("none", b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n"),
        ("line breaks only", b"\r\n\r\n"),
        ("empty", b""),
        (
            "no colon",
            b"INVITE sip:a SIP/2.0\r\nCall-ID abc\r\nCall-ID: def\r\n\r\n",
        ),
        ("bare LF", b"INVITE sip:a SIP/2.0\nCall-ID: lf@h\n\n"),
    ] {
        inputs.push((name.to_owned(), text.to_vec()));
    }
    inputs.push((
        "white space around the value".to_owned(),
        b"BYE sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
          To: <sip:b@h>\r\nCall-ID: \t ws@h \t\r\nCSeq: 1 BYE\r\n\r\n"
            .to_vec(),
    ));
    let mut failures = Vec::new();
    let (mut found, mut parsed) = (0, 0);
    for (name, bytes) in &inputs {
        let fast = sip::salvage_call_id(bytes);
        let full = sip::salvage(bytes).call_id;
        found += usize::from(fast.is_some());
        if fast != full {
            failures.push(format!("{name}: {fast:?} vs {full:?}"));
        }
        // A shard reading a kernel-steered socket checks the parsed Call-ID instead: for a
        // message that parses, it must be the scanned one, or a call could span two shards.
        let mut slots = [EMPTY_HEADER; 128];
        if let Ok(msg) = sip::parse(bytes, &mut slots, &Limits::default()) {
            parsed += 1;
            let scanned = fast.map(|span| span.slice(bytes));
            if scanned != Some(msg.call_id()) {
                failures.push(format!(
                    "{name}: parsed {:?} vs scanned {scanned:?}",
                    msg.call_id()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        found * 2 > inputs.len(),
        "only {found} of {} had a Call-ID",
        inputs.len()
    );
    assert!(
        parsed * 3 > inputs.len(),
        "only {parsed} of {} parsed",
        inputs.len()
    );
}

/// A relayed response loses its top Via by `top_via_removal` and goes where `second_via`
/// says: both must be exactly what walking `vias()` gives, on every message of the corpora and
/// vectors, with every line ending cut short, and on the Via shapes that could set them apart.
#[test]
fn top_via_removal_and_second_via_agree_with_vias() {
    let paths = every_message_file();
    let mut inputs: Vec<Vec<u8>> = paths
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "json"))
        .map(|p| read(p))
        .collect();
    let tail = "From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: v@h\r\nCSeq: 1 INVITE\r\n\r\n";
    for vias in [
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\n",
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b\r\n",
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1 ,\r\n SIP/2.0/UDP b , SIP/2.0/TCP c\r\n",
        "v: SIP/2.0/UDP a;x=\"q,q\"\r\nVia: SIP/2.0/UDP b\r\n",
        "Via: SIP/2.0/UDP a;x=\"q,q\", SIP/2.0/UDP b\r\n",
        "Via: SIP/2.0/UDP a\r\nMax-Forwards: 7\r\nVia: SIP/2.0/UDP b, SIP/2.0/UDP c\r\n",
        "Via: SIP/2.0/UDP a\r\n",
    ] {
        for start in ["SIP/2.0 200 OK\r\n", "INVITE sip:x@h SIP/2.0\r\n"] {
            inputs.push(format!("{start}{vias}{tail}").into_bytes());
        }
    }
    let mut checked = 0;
    for text in &inputs {
        for end in std::iter::once(text.len()).chain((0..text.len()).filter(|&i| text[i] == b'\n'))
        {
            let mut slots = [EMPTY_HEADER; 128];
            let Ok(msg) = sip::parse(&text[..end], &mut slots, &Limits::default()) else {
                continue;
            };
            let mut vias = msg.vias();
            let top = vias.next().expect("a parsed message has a top Via");
            assert_eq!(
                msg.top_via_removal(),
                top.removal,
                "{}",
                String::from_utf8_lossy(&text[..end])
            );
            assert_eq!(&top.value, msg.top_via());
            assert_eq!(msg.second_via().copied(), vias.next().map(|v| v.value));
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} messages parsed");
}
