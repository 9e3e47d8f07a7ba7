//! State items (RFC 3320 §3.3.3) and the requests a UDVM run makes about them.

use std::rc::Rc;

use sha1::{Digest, Sha1};

/// One SigComp state item: a byte string the UDVM can load by (partial) identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateItem {
    /// SHA-1 over length, address, instruction, minimum_access_length and value
    /// (RFC 3320 §9.4.9).
    pub id: [u8; 20],
    /// Where STATE-ACCESS / a partial-state message loads the value by default.
    pub address: u16,
    /// Where execution starts after loading, 0 for "continue".
    pub instruction: u16,
    /// Shortest partial identifier that may access this item (6..=20).
    pub minimum_access_length: u16,
    /// The state value; its length is `state_length`.
    pub value: Vec<u8>,
}

impl StateItem {
    /// Builds an item and computes its identifier. `value` longer than 65535 bytes is cut
    /// (state_length is a 2-byte field).
    pub fn new(value: Vec<u8>, address: u16, instruction: u16, minimum_access_length: u16) -> Self {
        let mut value = value;
        value.truncate(usize::from(u16::MAX));
        let id = state_identifier(&value, address, instruction, minimum_access_length);
        Self {
            id,
            address,
            instruction,
            minimum_access_length,
            value,
        }
    }

    /// state_length.
    pub fn length(&self) -> u16 {
        // INVARIANT: value.len() <= 65535 (enforced by `new`).
        self.value.len() as u16
    }

    /// Memory this item costs a compartment (RFC 3320 §6.2: state_length + 64).
    pub fn cost(&self) -> usize {
        self.value.len() + 64
    }
}

/// RFC 3320 §9.4.9: SHA-1(state_length ‖ state_address ‖ state_instruction ‖
/// minimum_access_length ‖ state_value), each parameter 2 bytes big-endian.
pub fn state_identifier(
    value: &[u8],
    address: u16,
    instruction: u16,
    minimum_access_length: u16,
) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update((value.len() as u16).to_be_bytes());
    h.update(address.to_be_bytes());
    h.update(instruction.to_be_bytes());
    h.update(minimum_access_length.to_be_bytes());
    h.update(value);
    h.finalize().into()
}

/// A state creation or free request made by one UDVM run, in the order the bytecode made
/// them (RFC 3320 §9.4.9). They take effect only when the application confirms the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRequest {
    /// STATE-CREATE or END-MESSAGE: the value was captured at END-MESSAGE time.
    Create {
        /// The item as requested (before any SMS truncation by the state handler).
        item: StateItem,
        /// state_retention_priority (never 65535).
        priority: u16,
    },
    /// STATE-FREE: the partial identifier bytes (6..=20 of them).
    Free {
        /// Partial identifier.
        partial_id: Vec<u8>,
    },
}

/// Result of looking up a partial identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// No item matches.
    NotFound,
    /// More than one item matches.
    NotUnique,
}

/// Read access to the states a UDVM may load: the endpoint's stored states plus its locally
/// available ones (RFC 3320 §7.2, §9.4.5).
pub trait StateLookup {
    /// The single item whose identifier starts with `partial_id`.
    fn lookup(&self, partial_id: &[u8]) -> Result<Rc<StateItem>, LookupError>;
}

/// A lookup over a plain list of items (locally available states, tests).
impl StateLookup for Vec<Rc<StateItem>> {
    fn lookup(&self, partial_id: &[u8]) -> Result<Rc<StateItem>, LookupError> {
        let mut found: Option<&Rc<StateItem>> = None;
        for item in self {
            if item.id.starts_with(partial_id) {
                if found.is_some_and(|f| f.id != item.id) {
                    return Err(LookupError::NotUnique);
                }
                found = Some(item);
            }
        }
        found.cloned().ok_or(LookupError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_covers_parameters() {
        let a = StateItem::new(b"abc".to_vec(), 512, 0, 6);
        let b = StateItem::new(b"abc".to_vec(), 512, 0, 7);
        assert_ne!(a.id, b.id);
        assert_eq!(a.length(), 3);
        assert_eq!(a.cost(), 67);
        let list = vec![Rc::new(a.clone()), Rc::new(b)];
        assert_eq!(list.lookup(&a.id[..20]).unwrap().id, a.id);
        assert_eq!(list.lookup(&[0xEE; 6]), Err(LookupError::NotFound));
    }
}
