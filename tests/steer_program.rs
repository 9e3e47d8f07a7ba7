//! The kernel steering program (`runtime::steer`) picks the same shard as `shard_of` for
//! every message of the RFC 4475 torture corpus and the realistic call flows.
//!
//! The program runs in this kernel through `BPF_PROG_TEST_RUN` (needs root or CAP_BPF, as
//! sipedge does to use it), on the same bytes a UDP socket would hand it.

use std::path::Path;

use sipedge::runtime::steer::{NO_CHOICE, SCAN_LIMIT, Steering};
use sipedge::shard::shard_of;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/testdata");

fn load(shards: u16) -> Steering {
    Steering::load(shards).unwrap_or_else(|e| {
        panic!(
            "loading the steering program for {shards} shards: {e} (run as root or with CAP_BPF)"
        )
    })
}

/// Every `.sip`/`.dat` message of one corpus directory with its file name.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let path = Path::new(SHARED).join(dir);
    let entries = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (../shared/testdata missing)", path.display()));
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sip" || x == "dat"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read message");
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            )
        })
        .collect();
    out.sort();
    assert!(out.len() > 10, "{}: too few messages", path.display());
    out
}

/// The Call-ID the shards go by: the parsed one, or the salvaged one for a message the
/// parser refuses.
fn call_id(bytes: &[u8]) -> Option<Vec<u8>> {
    call_id_if_parsed(bytes).or_else(|| {
        let salvage = sipedge::sip::salvage(bytes);
        salvage.call_id.map(|s| s.slice(bytes).to_vec())
    })
}

#[test]
fn realistic_messages_are_steered_to_their_owner() {
    for shards in [2u16, 3, 4, 7] {
        let steering = load(shards);
        for (name, bytes) in corpus("sip-realistic") {
            let id = call_id(&bytes).unwrap_or_else(|| panic!("{name}: no Call-ID"));
            let chosen = steering.choose(&bytes).expect("test run");
            assert_eq!(
                chosen,
                u32::from(shard_of(&id, shards)),
                "{name} with {shards} shards (Call-ID {})",
                String::from_utf8_lossy(&id)
            );
        }
    }
}

#[test]
fn torture_messages_are_steered_to_their_owner_or_left_to_the_kernel() {
    let steering = load(2);
    let (mut steered, mut left) = (0, Vec::new());
    for (name, bytes) in corpus("sip-torture/messages") {
        let chosen = steering.choose(&bytes).expect("test run");
        if chosen == NO_CHOICE {
            left.push(name);
            continue;
        }
        let id = call_id(&bytes)
            .unwrap_or_else(|| panic!("{name}: steered ({chosen}) without a Call-ID"));
        assert_eq!(chosen, u32::from(shard_of(&id, 2)), "{name}");
        steered += 1;
    }
    println!("steered {steered}, left to the kernel's hash: {left:?}");
    assert!(
        steered >= 30,
        "only {steered} torture messages steered; left: {left:?}"
    );
}

#[test]
fn header_forms_of_rfc3261_are_recognised() {
    let steering = load(4);
    let want = u32::from(shard_of(b"a84b4c76e66710@pc33.atlanta.com", 4));
    for header in [
        "Call-ID: a84b4c76e66710@pc33.atlanta.com",
        "call-id:a84b4c76e66710@pc33.atlanta.com",
        "CALL-ID \t:  a84b4c76e66710@pc33.atlanta.com  ",
        "i: a84b4c76e66710@pc33.atlanta.com",
        "I :a84b4c76e66710@pc33.atlanta.com",
    ] {
        let msg = format!(
            "BYE sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds10\r\n\
             Call-Info: <http://wwww.example.com/alice/photo.jpg>\r\nIn-Reply-To: 70710@saturn.bell-tel.com\r\n\
             {header}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            steering.choose(msg.as_bytes()).expect("run"),
            want,
            "{header:?}"
        );
    }
}

#[test]
fn anything_without_a_usable_call_id_is_left_to_the_kernel() {
    let steering = load(2);
    let far = format!(
        "INVITE sip:b@h SIP/2.0\r\nX-Pad: {}\r\nCall-ID: late@h\r\n\r\n",
        "x".repeat(SCAN_LIMIT as usize)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("keep-alive (RFC 5626 §4.4.1)", b"\r\n\r\n".to_vec()),
        (
            "SigComp",
            vec![
                0xf8, 0x00, 0x03, b'C', b'a', b'l', b'l', b'-', b'I', b'D', b':', b' ', b'x',
            ],
        ),
        (
            "no Call-ID",
            b"OPTIONS sip:h SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\nCall-ID: body\r\n".to_vec(),
        ),
        (
            "folded value",
            b"BYE sip:h SIP/2.0\r\nCall-ID:\r\n x@h\r\n\r\n".to_vec(),
        ),
        ("cut in the name", b"BYE sip:h SIP/2.0\r\nCall".to_vec()),
        (
            "cut in the value",
            b"BYE sip:h SIP/2.0\r\nCall-ID: abc".to_vec(),
        ),
        ("Call-ID past the scan limit", far.into_bytes()),
    ];
    for (what, bytes) in cases {
        assert_eq!(steering.choose(&bytes).expect("run"), NO_CHOICE, "{what}");
    }
}

/// xorshift64*: a fixed-seed generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Random messages built from the header forms RFC 3261 allows (name case, compact form,
/// whitespace around the colon, header order, Call-ID characters and length, padding that
/// moves the Call-ID across the scan limit): wherever the parser accepts the message, the
/// kernel must pick `shard_of` of the parsed Call-ID, or leave it to its hash when the
/// Call-ID line starts past the scan limit.
#[test]
fn random_messages_agree_with_the_parser() {
    const WORD: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~()<>:\\\"/[]?{}";
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let steerings: Vec<Steering> = [2u16, 3, 4].map(load).into();
    let (mut parsed, mut steered, mut past_limit) = (0, 0, 0);
    for case in 0..3_000 {
        let mut id = String::new();
        for _ in 0..1 + rng.below(40) {
            id.push(char::from(WORD[rng.below(WORD.len())]));
        }
        if rng.below(2) == 0 {
            id.push('@');
            for _ in 0..1 + rng.below(20) {
                id.push(char::from(WORD[rng.below(WORD.len())]));
            }
        }
        let name = rng.pick(&["Call-ID", "call-id", "CALL-ID", "cAlL-iD", "i", "I"]);
        let before = rng.pick(&["", "", " ", "\t", "  "]);
        let after = rng.pick(&["", " ", " ", "\t", "   "]);
        let trail = rng.pick(&["", "", " ", "\t"]);
        let mut headers = vec![
            format!(
                "Via: SIP/2.0/UDP 192.0.2.{};branch=z9hG4bK{}",
                rng.below(255),
                rng.next()
            ),
            format!("From: <sip:a@example.com>;tag={}", rng.next()),
            "To: <sip:b@example.com>".to_owned(),
            "CSeq: 1 INVITE".to_owned(),
            "Max-Forwards: 70".to_owned(),
            "Call-Info: <http://example.com/a.jpg>;purpose=icon".to_owned(),
            "In-Reply-To: 70710@saturn.example.com".to_owned(),
            format!("{name}{before}:{after}{id}{trail}"),
        ];
        if rng.below(3) == 0 {
            headers.push(format!("X-Pad: {}", "p".repeat(rng.below(1_100))));
        }
        // Shuffle (Fisher-Yates).
        for i in (1..headers.len()).rev() {
            headers.swap(i, rng.below(i + 1));
        }
        let msg = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n{}\r\nContent-Length: 0\r\n\r\n",
            headers.join("\r\n")
        );
        let bytes = msg.as_bytes();
        let Some(parsed_id) = call_id_if_parsed(bytes) else {
            continue;
        };
        parsed += 1;
        let line = msg
            .find(&format!("\r\n{name}{before}:"))
            .expect("the Call-ID line is in the message");
        // The scan looks at the '\n' before the name.
        let newline = line + 1;
        for steering in &steerings {
            let chosen = steering.choose(bytes).expect("test run");
            let want = if newline < SCAN_LIMIT as usize {
                u32::from(shard_of(&parsed_id, steering.shard_count()))
            } else {
                NO_CHOICE
            };
            assert_eq!(
                chosen,
                want,
                "case {case}, {} shards:\n{msg}",
                steering.shard_count()
            );
        }
        if newline < SCAN_LIMIT as usize {
            steered += 1;
        } else {
            past_limit += 1;
        }
    }
    println!(
        "{parsed} parsed: {steered} steered, {past_limit} with the Call-ID past the scan limit"
    );
    assert!(
        parsed > 2_500,
        "the parser accepted only {parsed} of 3000 generated messages"
    );
    assert!(
        past_limit > 50 && steered > 2_000,
        "{steered} steered, {past_limit} past the limit"
    );
}

fn call_id_if_parsed(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut slots = [sipedge::sip::EMPTY_HEADER; 128];
    sipedge::sip::parse(bytes, &mut slots, &sipedge::sip::Limits::default())
        .ok()
        .map(|m| m.call_id().to_vec())
}
