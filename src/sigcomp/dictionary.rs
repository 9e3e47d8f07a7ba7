//! The RFC 3485 SIP/SDP static dictionary, a locally available state of every SIP
//! SigComp endpoint (RFC 3486 §4.4).

use super::state::StateItem;

/// The dictionary's state value (RFC 3485 §3), 4836 bytes.
pub const RFC3485_DICTIONARY: &[u8; 4836] = include_bytes!("rfc3485-dictionary.bin");

/// Its state identifier as printed in RFC 3485 Table 1.
pub const RFC3485_STATE_ID: [u8; 20] = [
    0xfb, 0xe5, 0x07, 0xdf, 0xe5, 0xe6, 0xaa, 0x5a, 0xf2, 0xab, 0xb9, 0x14, 0xce, 0xaa, 0x05, 0xf9,
    0x9c, 0xe6, 0x1b, 0xa5,
];

/// The dictionary as a state item: address 0, instruction 0, minimum_access_length 6
/// (RFC 3485 Table 1).
pub fn rfc3485_state() -> StateItem {
    StateItem::new(RFC3485_DICTIONARY.to_vec(), 0, 0, 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_matches_rfc3485_table_1() {
        assert_eq!(rfc3485_state().id, RFC3485_STATE_ID);
        assert_eq!(rfc3485_state().length(), 0x12E4);
    }
}
