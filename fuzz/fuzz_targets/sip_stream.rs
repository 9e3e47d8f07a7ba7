//! Stream framer. Properties: no panic; frame lengths are positive, within the buffer and add up
//! to the bytes consumed; a prefix of the input never frames a message longer than what the whole
//! input frames (framing is monotonic in the bytes received).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge::sip::{self, EMPTY_HEADER, Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_message_size: 4096, ..Limits::default() };
    let mut consumed = 0usize;
    let mut steps = 0usize;
    while consumed < data.len() {
        steps += 1;
        assert!(steps <= data.len());
        let rest = &data[consumed..];
        match sip::frame(rest, &limits) {
            Ok(Frame::Message { len }) | Ok(Frame::KeepAlive { len, .. }) => {
                assert!(len > 0 && len <= rest.len());
                // The same decision with one byte less must be Partial (for messages) or the same.
                if let Ok(Frame::Message { len: again }) = sip::frame(&rest[..len], &limits) {
                    assert_eq!(again, len);
                }
                let mut slots = [EMPTY_HEADER; 64];
                let _ = sip::parse_stream_message(&rest[..len], &mut slots, &limits);
                consumed += len;
            }
            Ok(Frame::Partial) | Ok(Frame::SigComp) | Err(_) => break,
        }
    }
    assert!(consumed <= data.len());
});
