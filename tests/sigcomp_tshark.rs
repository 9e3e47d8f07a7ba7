//! An independent decoder agrees: tshark (Wireshark's SigComp/UDVM implementation) decodes
//! a pcap of sipedge's compressed UDP output back to the original SIP messages.
//!
//! The test writes the pcap itself (pcap global header; per packet Ethernet, IPv4 and UDP
//! headers, port 5060), runs tshark with SigComp decompression enabled, reads the hex dump
//! of each "Decompressed SigComp message" data source and compares it with the original.
//! Fails, naming the Debian package, when tshark is missing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use sipedge::sigcomp::{Received, SigcompConfig, SigcompEndpoint, Transport};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/sip-realistic"
);

/// Internet checksum (RFC 1071) for the IPv4 header.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// One pcap record: Ethernet II, IPv4, UDP (checksum 0 = none), payload.
fn packet(out: &mut Vec<u8>, index: u32, src: [u8; 4], dst: [u8; 4], payload: &[u8]) {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&(index as u16).to_be_bytes());
    ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&5060u16.to_be_bytes());
    frame.extend_from_slice(&5060u16.to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    out.extend_from_slice(&(1_795_000_000 + index).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
}

/// Byte strings of every data source named `name` in `tshark -x` output, in order.
fn hex_sources(dump: &str, name: &str) -> Vec<Vec<u8>> {
    let mut sources = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in dump.lines() {
        if line.starts_with(name) {
            if let Some(done) = current.take() {
                sources.push(done);
            }
            current = Some(Vec::new());
            continue;
        }
        let Some(bytes) = current.as_mut() else {
            continue;
        };
        // "0000  49 4e 56 ...  INV..." : offset, two spaces, up to 16 hex bytes.
        let mut parts = line.splitn(2, "  ");
        let (Some(offset), Some(rest)) = (parts.next(), parts.next()) else {
            sources.push(current.take().unwrap_or_default());
            continue;
        };
        if offset.len() != 4 || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            sources.push(current.take().unwrap_or_default());
            continue;
        }
        for token in rest.split(' ').take_while(|t| !t.is_empty()).take(16) {
            if token.len() == 2 {
                if let Ok(b) = u8::from_str_radix(token, 16) {
                    bytes.push(b);
                }
            }
        }
    }
    if let Some(done) = current {
        sources.push(done);
    }
    sources
}

#[test]
fn tshark_decompresses_sipedge_output_to_the_original_messages() {
    let tshark = Command::new("tshark").arg("--version").output();
    assert!(
        tshark.is_ok_and(|o| o.status.success()),
        "tshark not found: install the Debian package `tshark`"
    );
    let text = std::fs::read_to_string(format!("{DIR}/index.json"))
        .unwrap_or_else(|e| panic!("{DIR}/index.json: {e} (shared test data missing)"));
    let index: Value = serde_json::from_str(&text).unwrap();
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in index["entries"].as_array().unwrap() {
        let group = e["call_id_group"].as_str().unwrap().to_owned();
        groups
            .entry(group)
            .or_default()
            .push(e["file"].as_str().unwrap().to_owned());
    }
    // Requests go UA -> sipedge, responses sipedge -> UA, both compressed (as in the
    // round-trip test), so later messages reference saved state and tshark must follow it.
    let now = Instant::now();
    let mut pcap = Vec::new();
    pcap.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    pcap.extend_from_slice(&2u16.to_le_bytes());
    pcap.extend_from_slice(&4u16.to_le_bytes());
    pcap.extend_from_slice(&[0; 8]);
    pcap.extend_from_slice(&65535u32.to_le_bytes());
    pcap.extend_from_slice(&1u32.to_le_bytes());
    let mut originals = Vec::new();
    let mut partial_state_messages = 0;
    for (g, files) in groups.values().enumerate() {
        let mut edge: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let mut ua: SigcompEndpoint<u8> = SigcompEndpoint::new(SigcompConfig::default());
        let (edge_ip, ua_ip) = ([192, 0, 2, 1], [198, 51, 100, 1 + g as u8]);
        for file in files {
            let sip = std::fs::read(format!("{DIR}/{file}")).unwrap();
            let request = !sip.starts_with(b"SIP/2.0 ");
            let (sender, receiver, src, dst) = if request {
                (&mut ua, &mut edge, ua_ip, edge_ip)
            } else {
                (&mut edge, &mut ua, edge_ip, ua_ip)
            };
            let mut wire = Vec::new();
            sender
                .compress(now, &0, Transport::Message, &sip, &mut wire)
                .unwrap();
            let mut back = Vec::new();
            let Ok(Received::Message(u)) =
                receiver.decompress(now, &0, Transport::Message, &wire, &mut back)
            else {
                panic!("{file}: own decompression failed")
            };
            assert_eq!(back, sip);
            receiver.confirm(now, &0, u);
            if wire[0] & 0x03 != 0 {
                partial_state_messages += 1;
            }
            packet(&mut pcap, originals.len() as u32, src, dst, &wire);
            originals.push((file.clone(), sip));
        }
    }
    assert!(
        partial_state_messages > 0,
        "the capture exercises saved state"
    );
    let dir = std::env::temp_dir().join(format!("sipedge-sigcomp-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sigcomp.pcap");
    std::fs::write(&path, &pcap).unwrap();
    let output = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(Path::new(&path))
        .args([
            "-o",
            "sigcomp.decomp.msg:TRUE",
            "-o",
            "sigcomp.display.udvm.code:FALSE",
            "-o",
            "sigcomp.display.bytecode:FALSE",
            "-d",
            "udp.port==5060,sigcomp",
            "-x",
        ])
        .output()
        .expect("run tshark");
    let dump = String::from_utf8_lossy(&output.stdout);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoded = hex_sources(&dump, "Decompressed SigComp message");
    assert_eq!(
        decoded.len(),
        originals.len(),
        "tshark decompressed {} of {} messages:\n{dump}",
        decoded.len(),
        originals.len()
    );
    eprintln!(
        "tshark decoded {} messages, {} bytes",
        decoded.len(),
        decoded.iter().map(Vec::len).sum::<usize>()
    );
    for ((file, sip), got) in originals.iter().zip(&decoded) {
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(sip),
            "{file}"
        );
    }
}
