//! Header slots and the table of header names the message core understands.

use super::Span;

/// A header name the parser recognises, in long or compact form (RFC 3261 §7.3.3, §20 and the
/// IANA compact-form registry), compared case-insensitively. Everything else is
/// [`HeaderName::Other`] and is kept byte-exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderName {
    /// `Via` / `v`.
    Via,
    /// `Route`.
    Route,
    /// `Record-Route`.
    RecordRoute,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq`.
    CSeq,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Content-Type` / `c`.
    ContentType,
    /// `Content-Encoding` / `e`.
    ContentEncoding,
    /// `Contact` / `m`.
    Contact,
    /// `Require`.
    Require,
    /// `Proxy-Require`.
    ProxyRequire,
    /// `Supported` / `k`.
    Supported,
    /// `Unsupported`.
    Unsupported,
    /// `Path` (RFC 3327).
    Path,
    /// `Expires`.
    Expires,
    /// `Allow`.
    Allow,
    /// `Subject` / `s`.
    Subject,
    /// `Event` / `o` (RFC 6665).
    Event,
    /// `Allow-Events` / `u` (RFC 6665).
    AllowEvents,
    /// `Refer-To` / `r` (RFC 3515).
    ReferTo,
    /// `Referred-By` / `b` (RFC 3892).
    ReferredBy,
    /// `Session-Expires` / `x` (RFC 4028).
    SessionExpires,
    /// `Identity` / `y` (RFC 8224).
    Identity,
    /// `Proxy-Authorization`.
    ProxyAuthorization,
    /// `Authorization`.
    Authorization,
    /// `Flow-Timer` (RFC 5626).
    FlowTimer,
    /// `Warning`.
    Warning,
    /// `Retry-After`.
    RetryAfter,
    /// Any other header; the name as written is in [`Header::name`].
    Other,
}

impl HeaderName {
    /// Classifies a header name as written (long or compact form, any case).
    #[inline(always)]
    pub fn classify(name: &[u8]) -> Self {
        // One candidate per (length, first letter, last letter), found by hashing them, then
        // one comparison: no table scan and no branch tree on the per-message path.
        let (Some(&first), Some(&last)) = (name.first(), name.last()) else {
            return Self::Other;
        };
        let slot = NAME_SLOTS[name_hash(name.len(), first | 0x20, last | 0x20)];
        let Some(known) = NAMES.get(usize::from(slot)) else {
            return Self::Other;
        };
        if eq_folded(name, known.as_bytes()) {
            known.kind
        } else {
            Self::Other
        }
    }

    /// The canonical long name, as written by this crate.
    pub fn as_str(self) -> &'static str {
        LONG_NAMES
            .iter()
            .find(|(_, h)| *h == self)
            .and_then(|(long, _)| std::str::from_utf8(long).ok())
            .unwrap_or("(other)")
    }

    /// True for headers that may carry a comma-separated list of values (RFC 3261 §7.3.1)
    /// which this crate splits.
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Self::Via
                | Self::Route
                | Self::RecordRoute
                | Self::Contact
                | Self::Require
                | Self::ProxyRequire
                | Self::Supported
                | Self::Unsupported
                | Self::Path
                | Self::Allow
                | Self::AllowEvents
        )
    }

    /// True for headers that must appear at most once (RFC 3261 §7.3.1, §20).
    pub fn is_singleton(self) -> bool {
        matches!(
            self,
            Self::CallId
                | Self::CSeq
                | Self::From
                | Self::To
                | Self::MaxForwards
                | Self::ContentLength
        )
    }
}

/// `name` equals the lower-case `long` (same length) ignoring ASCII case, a word at a time.
///
/// `long` holds only lower-case letters and `-`. Letters are the bytes with bit 0x40 set, so
/// `(long & 0x40..) >> 1` puts 0x20 exactly where `long` has a letter: setting that bit in
/// `name` folds `A`-`Z` onto `a`-`z` there, while a `-` must match as it is. Exact for any input.
#[inline]
fn eq_folded(name: &[u8], long: &[u8]) -> bool {
    const LETTER: u64 = 0x4040_4040_4040_4040;
    let n = name.len();
    if n != long.len() {
        return false;
    }
    let word = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    // Shorter names: two overlapping loads of four (or two) bytes each.
    if n < 8 {
        if n >= 4 {
            let word = |b: &[u8], at: usize| {
                let mut w = [0u8; 4];
                w.copy_from_slice(&b[at..at + 4]);
                u32::from_le_bytes(w)
            };
            let same = |at: usize| {
                let l = word(long, at);
                word(name, at) | ((l & LETTER as u32) >> 1) == l
            };
            return same(0) && same(n - 4);
        }
        if n >= 2 {
            let word = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
            let same = |at: usize| {
                let l = word(long, at);
                word(name, at) | ((l & LETTER as u16) >> 1) == l
            };
            return same(0) && same(n - 2);
        }
        return name
            .iter()
            .zip(long)
            .all(|(&a, &b)| a.to_ascii_lowercase() == b);
    }
    // Whole words, then one last word overlapping the previous one (compares some bytes twice).
    let same = |at: usize| {
        let l = word(long, at);
        word(name, at) | ((l & LETTER) >> 1) == l
    };
    let mut at = 0;
    while at + 8 <= n {
        if !same(at) {
            return false;
        }
        at += 8;
    }
    at == n || same(n - 8)
}

/// The compact forms (RFC 3261 §7.3.3 and the IANA registry), lower case.
const COMPACT_NAMES: [(u8, HeaderName); 16] = [
    (b'v', HeaderName::Via),
    (b'i', HeaderName::CallId),
    (b'f', HeaderName::From),
    (b't', HeaderName::To),
    (b'l', HeaderName::ContentLength),
    (b'c', HeaderName::ContentType),
    (b'e', HeaderName::ContentEncoding),
    (b'm', HeaderName::Contact),
    (b'k', HeaderName::Supported),
    (b's', HeaderName::Subject),
    (b'o', HeaderName::Event),
    (b'u', HeaderName::AllowEvents),
    (b'r', HeaderName::ReferTo),
    (b'b', HeaderName::ReferredBy),
    (b'x', HeaderName::SessionExpires),
    (b'y', HeaderName::Identity),
];

/// The longest name in [`LONG_NAMES`] (`Proxy-Authorization`).
const NAME_MAX: usize = 19;

/// A name [`HeaderName::classify`] recognises, lower case, in a fixed-size array so that the
/// table can be folded from [`LONG_NAMES`] at compile time.
#[derive(Clone, Copy)]
struct FoldedName {
    bytes: [u8; NAME_MAX],
    len: u8,
    kind: HeaderName,
}

impl FoldedName {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Every name [`HeaderName::classify`] recognises, lower case: the long forms of
/// [`LONG_NAMES`], then [`COMPACT_NAMES`].
const NAMES: [FoldedName; LONG_NAMES.len() + COMPACT_NAMES.len()] = {
    let empty = FoldedName {
        bytes: [0; NAME_MAX],
        len: 0,
        kind: HeaderName::Other,
    };
    let mut names = [empty; LONG_NAMES.len() + COMPACT_NAMES.len()];
    let mut i = 0;
    while i < LONG_NAMES.len() {
        let (long, kind) = LONG_NAMES[i];
        assert!(
            long.len() <= NAME_MAX,
            "NAME_MAX is shorter than a long name"
        );
        let mut j = 0;
        while j < long.len() {
            names[i].bytes[j] = long[j].to_ascii_lowercase();
            j += 1;
        }
        names[i].len = long.len() as u8;
        names[i].kind = kind;
        i += 1;
    }
    let mut c = 0;
    while c < COMPACT_NAMES.len() {
        let (letter, kind) = COMPACT_NAMES[c];
        names[i + c].bytes[0] = letter;
        names[i + c].len = 1;
        names[i + c].kind = kind;
        c += 1;
    }
    names
};

/// Bits of [`name_hash`]: 128 slots for the 47 names of [`NAMES`].
const HASH_BITS: u32 = 7;

/// The slot of a name by its length and its first and last bytes with bit 0x20 set (every name
/// in [`NAMES`] starts and ends with a letter, which that bit folds to lower case). A
/// multiplicative hash; [`NAME_SLOTS`] fails to compile if two names of [`NAMES`] collide, and
/// anything else that lands on a name's slot is turned away by the comparison.
#[inline]
const fn name_hash(len: usize, first: u8, last: u8) -> usize {
    let key = (len as u32) ^ ((first as u32) << 8) ^ ((last as u32) << 16);
    (key.wrapping_mul(0xc028_d2af) >> (32 - HASH_BITS)) as usize
}

/// Index into [`NAMES`] by [`name_hash`]; `NAMES.len()` marks an empty slot.
static NAME_SLOTS: [u8; 1 << HASH_BITS] = {
    let mut slots = [NAMES.len() as u8; 1 << HASH_BITS];
    let mut i = 0;
    while i < NAMES.len() {
        let name = NAMES[i];
        let h = name_hash(
            name.len as usize,
            name.bytes[0],
            name.bytes[name.len as usize - 1],
        );
        assert!(
            slots[h] as usize == NAMES.len(),
            "two header names share a hash slot"
        );
        slots[h] = i as u8;
        i += 1;
    }
    slots
};

/// The long forms as this crate writes them (canonical case); [`NAMES`] folds them for
/// [`HeaderName::classify`].
const LONG_NAMES: [(&[u8], HeaderName); 31] = [
    (b"Via", HeaderName::Via),
    (b"Route", HeaderName::Route),
    (b"Record-Route", HeaderName::RecordRoute),
    (b"Call-ID", HeaderName::CallId),
    (b"CSeq", HeaderName::CSeq),
    (b"From", HeaderName::From),
    (b"To", HeaderName::To),
    (b"Max-Forwards", HeaderName::MaxForwards),
    (b"Content-Length", HeaderName::ContentLength),
    (b"Content-Type", HeaderName::ContentType),
    (b"Content-Encoding", HeaderName::ContentEncoding),
    (b"Contact", HeaderName::Contact),
    (b"Require", HeaderName::Require),
    (b"Proxy-Require", HeaderName::ProxyRequire),
    (b"Supported", HeaderName::Supported),
    (b"Unsupported", HeaderName::Unsupported),
    (b"Path", HeaderName::Path),
    (b"Expires", HeaderName::Expires),
    (b"Allow", HeaderName::Allow),
    (b"Subject", HeaderName::Subject),
    (b"Event", HeaderName::Event),
    (b"Allow-Events", HeaderName::AllowEvents),
    (b"Refer-To", HeaderName::ReferTo),
    (b"Referred-By", HeaderName::ReferredBy),
    (b"Session-Expires", HeaderName::SessionExpires),
    (b"Identity", HeaderName::Identity),
    (b"Proxy-Authorization", HeaderName::ProxyAuthorization),
    (b"Authorization", HeaderName::Authorization),
    (b"Flow-Timer", HeaderName::FlowTimer),
    (b"Warning", HeaderName::Warning),
    (b"Retry-After", HeaderName::RetryAfter),
];

/// One header line of a parsed message. The caller supplies the slots
/// (`[EMPTY_HEADER; N]`), as with `httparse`; the parser fills them in order of appearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'b> {
    /// The recognised name, or [`HeaderName::Other`].
    pub kind: HeaderName,
    /// The name as written (without the colon or surrounding white space).
    pub name: &'b [u8],
    /// The value with leading and trailing white space removed. A folded value keeps its
    /// CRLF + white space inside; RFC 3261 §7.3.1 makes that equal to one space.
    pub value: &'b [u8],
    /// Offsets of [`Header::value`] in the message buffer.
    pub value_span: Span,
    /// Offsets of the whole header line in the buffer, from the first byte of the name to
    /// just after the line's terminating CRLF (or LF). Removing this span removes the header.
    pub line: Span,
}

/// An unused header slot, to initialise the array passed to [`super::parse`].
pub const EMPTY_HEADER: Header<'static> = Header {
    kind: HeaderName::Other,
    name: b"",
    value: b"",
    value_span: Span { start: 0, end: 0 },
    line: Span { start: 0, end: 0 },
};

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! name_table {
        ($($name:ident: $input:expr => $expected:expr,)*) => {
            $(#[test] fn $name() { assert_eq!(HeaderName::classify($input), $expected); })*
        };
    }

    name_table! {
        via_long: b"Via" => HeaderName::Via,
        via_compact: b"v" => HeaderName::Via,
        via_compact_upper: b"V" => HeaderName::Via,
        call_id_any_case: b"cAlL-iD" => HeaderName::CallId,
        call_id_compact: b"i" => HeaderName::CallId,
        cseq_lower: b"cseq" => HeaderName::CSeq,
        max_forwards: b"MaX-fOrWaRdS" => HeaderName::MaxForwards,
        content_length_compact: b"L" => HeaderName::ContentLength,
        contact_compact: b"m" => HeaderName::Contact,
        supported_compact: b"k" => HeaderName::Supported,
        record_route: b"record-route" => HeaderName::RecordRoute,
        identity_compact: b"y" => HeaderName::Identity,
        unknown_single: b"z" => HeaderName::Other,
        unknown_long: b"NewFangledHeader" => HeaderName::Other,
        prefix_is_not_match: b"Vias" => HeaderName::Other,
        cr_is_not_a_hyphen: b"max\rforwards" => HeaderName::Other,
        underscore_is_not_a_hyphen: b"content_length" => HeaderName::Other,
        long_upper: b"PROXY-AUTHORIZATION" => HeaderName::ProxyAuthorization,
        last_word_differs: b"proxy-authorizatioN" => HeaderName::ProxyAuthorization,
        last_byte_wrong: b"proxy-authorizaxion" => HeaderName::Other,
        to_mixed_case: b"tO" => HeaderName::To,
        to_wrong: b"tp" => HeaderName::Other,
        via_mixed_case: b"vIA" => HeaderName::Via,
        via_middle_wrong: b"vxa" => HeaderName::Other,
        from_upper: b"FROM" => HeaderName::From,
        from_middle_wrong: b"frxm" => HeaderName::Other,
        contact_mixed: b"CoNtAcT" => HeaderName::Contact,
        contact_middle_wrong: b"conxact" => HeaderName::Other,
        call_id_underscore: b"call_id" => HeaderName::Other,
    }

    /// The plain reading of the name table: a case-insensitive match of a long or compact form.
    fn plain(name: &[u8]) -> HeaderName {
        NAMES
            .iter()
            .find(|known| name.eq_ignore_ascii_case(known.as_bytes()))
            .map_or(HeaderName::Other, |known| known.kind)
    }

    #[test]
    fn classify_matches_a_plain_lookup() {
        let mut names: Vec<Vec<u8>> = vec![b"".to_vec(), b"x-".to_vec(), b"-".to_vec()];
        for known in NAMES {
            let spelled = known.as_bytes();
            names.push(spelled.to_vec());
            names.push(spelled.to_ascii_uppercase());
            names.push(spelled[..spelled.len() - 1].to_vec());
            names.push([spelled, &b"s"[..]].concat());
            names.push([&b"x"[..], spelled].concat());
        }
        for name in names {
            assert_eq!(HeaderName::classify(&name), plain(&name), "{name:?}");
            // Every byte at every position: a letter's other case, '-' against '\r' or '_',
            // high bytes whose low bits look like a letter.
            for at in 0..name.len() {
                for byte in 0..=255u8 {
                    let mut changed = name.clone();
                    changed[at] = byte;
                    assert_eq!(
                        HeaderName::classify(&changed),
                        plain(&changed),
                        "{changed:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn canonical_names_classify_back() {
        for (long, kind) in LONG_NAMES {
            assert_eq!(HeaderName::classify(long), kind);
            assert_eq!(kind.as_str().as_bytes(), long);
        }
    }
}
