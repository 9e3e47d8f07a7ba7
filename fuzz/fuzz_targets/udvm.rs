//! UDVM fuzz target: an arbitrary SigComp message against an arbitrary stored state.
//!
//! Input layout: byte 0 picks cycles_per_bit (2 bits), decompression_memory_size (3 bits)
//! and the transport (1 bit); bytes 1..3 are the state's address/instruction seed; byte 3
//! is the state length L; the next L bytes are the state value; the rest is the message.
//! Properties: no panic; a success stays within the RFC 3320 §8.6 cycle budget and the
//! 65536-byte output limit; a failure carries a valid RFC 4077 reason and leaves the state
//! store untouched; and the same bytes, compressed by sipedge's compressor, decompress back
//! unchanged.
#![no_main]

use std::rc::Rc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sipedge::sigcomp::dictionary::rfc3485_state;
use sipedge::sigcomp::{
    DecompressorParams, NackReason, Received, SigcompConfig, SigcompEndpoint, StateItem,
    StateRequest, StateStore, StoreLimits, Transport, Udvm,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let cpb = 16u16 << (data[0] & 3);
    let dms = 2048u32 << ((data[0] >> 2) & 7).min(5);
    let transport = if data[0] & 0x20 != 0 { Transport::Stream } else { Transport::Message };
    let state_len = usize::from(data[3]).min(data.len() - 4);
    let value = data[4..4 + state_len].to_vec();
    let message = &data[4 + state_len..];
    let address = u16::from(data[1]) * 8;
    let instruction = u16::from(data[2]) * 4;
    let mut store: StateStore<u8> = StateStore::new(StoreLimits::default());
    store.add_local(Rc::new(rfc3485_state()));
    let item = StateItem::new(value, address, instruction, 6);
    let id = item.id;
    store.apply(&0, Instant::now(), &[StateRequest::Create { item, priority: 1 }]);
    let used_before = store.total_used();

    let params = DecompressorParams { decompression_memory_size: dms, cycles_per_bit: cpb, sigcomp_version: 2 };
    // Let messages reach the stored state by its identifier: a message whose header asks
    // for a partial identifier of the wrong bytes gets the real ones spliced in.
    let mut message = message.to_vec();
    if message.len() >= 7 && message[0] & 0xFB == 0xF9 {
        message[1..7].copy_from_slice(&id[..6]);
    }
    let mut out = Vec::new();
    let mut udvm = Udvm::new();
    match udvm.decompress(&params, transport, &message, &store, &mut out) {
        Ok(done) => {
            let budget = u64::from(cpb) * (1000 + 8 * message.len() as u64);
            assert!(done.cycles_used <= budget, "{} > {budget}", done.cycles_used);
            assert!(out.len() <= 65536);
        }
        Err(failure) => {
            assert!(NackReason::from_code(failure.reason.code()).is_some());
            assert_eq!(store.total_used(), used_before);
        }
    }

    // Compressor round trip over the same bytes as a "SIP message".
    let now = Instant::now();
    let mut a: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
    let mut b: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
    let mut wire = Vec::new();
    let mut back = Vec::new();
    for _ in 0..2 {
        if a.compress(now, &1, transport, data, &mut wire).is_err() {
            return;
        }
        match b.decompress(now, &0, transport, &wire, &mut back) {
            Ok(Received::Message(unconfirmed)) => {
                assert_eq!(back, data);
                b.confirm(now, &0, unconfirmed);
            }
            other => panic!("own compressed message failed: {other:?}"),
        }
    }
});
