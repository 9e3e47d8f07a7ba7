//! Datagram parser. Properties: no panic; a parsed message copied through an empty splice is
//! byte-identical and parses to the same fields; removing the first Route value (by its
//! removal span) leaves a message that parses with one Route value fewer; salvage and the
//! stateless response writer never panic, and a written response parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::sip::{self, EMPTY_HEADER, Limits, ResponseOptions, Splice};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut slots = [EMPTY_HEADER; 128];
    let parsed = sip::parse(data, &mut slots, &limits);
    let mut out = [0u8; 70_000];
    match parsed {
        Ok(msg) => {
            let mut splice: Splice<'_, 4> = Splice::new();
            let n = splice.apply(msg.as_bytes(), &mut out).expect("empty splice fits");
            assert_eq!(&out[..n], msg.as_bytes());
            let mut slots2 = [EMPTY_HEADER; 128];
            let again = sip::parse(&out[..n], &mut slots2, &limits).expect("round trip parses");
            assert_eq!(again.headers().len(), msg.headers().len());
            assert_eq!(again.call_id(), msg.call_id());
            assert_eq!(again.vias().count(), msg.vias().count());
            assert_eq!(again.routes().count(), msg.routes().count());
            assert_eq!(again.body(), msg.body());

            let routes = msg.routes().count();
            if let Some(first) = msg.routes().next() {
                let mut edit: Splice<'_, 4> = Splice::new();
                edit.remove(first.removal).expect("one edit");
                let n = edit.apply(msg.as_bytes(), &mut out).expect("smaller output fits");
                let mut slots3 = [EMPTY_HEADER; 128];
                let popped = sip::parse(&out[..n], &mut slots3, &limits).expect("route removal keeps the message valid");
                assert_eq!(popped.routes().count(), routes - 1);
            }

            let basis = sip::Salvage::from_message(&msg);
            let opts = ResponseOptions { received: Some(b"192.0.2.1"), rport: Some(5060), ..ResponseOptions::default() };
            if let Ok(n) = sip::write_response(&basis, 400, b"Bad Request", &opts, &mut out) {
                let mut slots4 = [EMPTY_HEADER; 128];
                let resp = sip::parse(&out[..n], &mut slots4, &limits).expect("response parses");
                assert_eq!(resp.call_id(), msg.call_id());
                assert!(resp.read_to().is_ok_and(|to| to.tag.is_some()));
            }
        }
        Err(e) => {
            assert!(e.offset <= data.len());
            let basis = sip::salvage(data);
            let _ = sip::write_response(&basis, e.status_code(), e.reason().as_bytes(), &ResponseOptions::default(), &mut out);
        }
    }
});
