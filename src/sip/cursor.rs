//! A bounded cursor over a region of the message buffer, with absolute offsets.

use super::Span;
use super::chars::{TOKEN, class_len, find_any3, find_either, is_lws, is_token};

#[derive(Clone)]
/// Reads `buf[pos..end]`; every position it reports is an offset into the whole buffer.
pub(crate) struct Cursor<'b> {
    pub(crate) buf: &'b [u8],
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl<'b> Cursor<'b> {
    pub(crate) fn new(buf: &'b [u8], span: Span) -> Self {
        let end = span.end.min(buf.len());
        Self {
            buf,
            pos: span.start.min(end),
            end,
        }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            self.buf.get(self.pos).copied()
        } else {
            None
        }
    }

    #[inline]
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    /// Skips linear white space (folds included); returns whether any was skipped.
    #[inline]
    pub(crate) fn skip_lws(&mut self) -> bool {
        let n = self.count_while(is_lws);
        self.pos += n;
        n > 0
    }

    /// How many bytes from the position on satisfy `pred`: one bounds check for the region,
    /// then a plain slice scan (this runs for every token, host and parameter of a message).
    #[inline]
    fn count_while(&self, pred: impl Fn(u8) -> bool) -> usize {
        let rest = self.buf.get(self.pos..self.end).unwrap_or(&[]);
        rest.iter().position(|&b| !pred(b)).unwrap_or(rest.len())
    }

    #[inline]
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes bytes while `pred` holds and returns their span (possibly empty).
    #[inline]
    pub(crate) fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> Span {
        let start = self.pos;
        self.pos += self.count_while(pred);
        Span::new(start, self.pos)
    }

    /// Consumes a non-empty token.
    #[inline]
    pub(crate) fn token(&mut self) -> Option<Span> {
        let span = self.take_while(is_token);
        (!span.is_empty()).then_some(span)
    }

    /// Consumes a quoted-string (RFC 3261 §25.1) including its quotes. Backslash escapes any
    /// byte except CR and LF. On failure the position is where the scan stopped.
    pub(crate) fn quoted_string(&mut self) -> Option<Span> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        let region = self.buf.get(..self.end).unwrap_or_default();
        match quoted_string_end(region, start) {
            Ok(end) => {
                self.pos = end;
                Some(Span::new(start, end))
            }
            Err(stop) => {
                self.pos = stop;
                None
            }
        }
    }

    #[inline]
    pub(crate) fn slice(&self, span: Span) -> &'b [u8] {
        span.slice(self.buf)
    }
}

/// Offset of the first byte at or after `from` in `s` that is not linear white space.
#[inline]
pub(crate) fn skip_lws(s: &[u8], from: usize) -> usize {
    let mut i = from;
    while s.get(i).is_some_and(|&b| is_lws(b)) {
        i += 1;
    }
    i
}

/// Offset of the first byte at or after `from` in `s` that is not a token character.
#[inline]
pub(crate) fn token_end(s: &[u8], from: usize) -> usize {
    from + class_len(s.get(from..).unwrap_or_default(), &TOKEN)
}

/// The quoted-string (RFC 3261 §25.1: `DQUOTE *(qdtext / quoted-pair) DQUOTE`, where a
/// quoted-pair is a backslash and any byte but CR and LF) whose opening quote is at
/// `s[open]`: the offset after its closing quote, or, when it is not closed, the offset where
/// reading stopped (after a backslash that escapes CR, LF or nothing, or the end of `s`).
/// Jumps from quote or backslash to the next one, eight bytes at a time in between.
#[inline]
pub(crate) fn quoted_string_end(s: &[u8], open: usize) -> Result<usize, usize> {
    let mut i = open + 1;
    loop {
        let rest = s.get(i..).unwrap_or_default();
        let Some(at) = find_either(rest, b'"', b'\\') else {
            return Err(s.len().max(i));
        };
        i += at + 1;
        if rest[at] == b'"' {
            return Ok(i);
        }
        match s.get(i) {
            Some(b'\r' | b'\n') | None => return Err(i),
            Some(_) => i += 1,
        }
    }
}

/// Splits a comma-separated header value into elements (RFC 3261 §7.3.1), honouring quoted
/// strings and `<...>`. Each element is trimmed of white space; an empty element (`a,,b`) comes
/// out as an empty span so validators can reject it.
pub(crate) struct ListIter<'b> {
    buf: &'b [u8],
    pos: usize,
    end: usize,
    done: bool,
}

impl<'b> ListIter<'b> {
    pub(crate) fn new(buf: &'b [u8], span: Span) -> Self {
        let end = span.end.min(buf.len());
        Self {
            buf,
            pos: span.start.min(end),
            end,
            done: false,
        }
    }
}

impl Iterator for ListIter<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        if self.done {
            return None;
        }
        let start = self.pos;
        let stop = element_end(self.buf, start, self.end);
        if stop >= self.end {
            self.done = true;
        } else {
            self.pos = stop + 1;
        }
        Some(trim(self.buf, Span::new(start, stop)))
    }
}

/// Where the list element starting at `start` ends: the offset of the first comma outside a
/// quoted string and outside `<...>`, or `end`. Jumps from one of the bytes that matter
/// (`,` `"` `<` outside brackets, `"` `>` inside) to the next, eight bytes at a time in between:
/// values joined into one line (`Via: a, b`) are long and hold few of them. Inside quotes a
/// backslash escapes the next byte, whatever it is; an unclosed quote or bracket runs to `end`.
#[inline]
fn element_end(buf: &[u8], start: usize, end: usize) -> usize {
    let mut in_angle = false;
    let mut i = start;
    while i < end {
        let rest = &buf[i..end];
        let found = if in_angle {
            find_either(rest, b'"', b'>')
        } else {
            find_any3(rest, b',', b'"', b'<')
        };
        let Some(at) = found else {
            return end;
        };
        i += at;
        match buf[i] {
            b',' => return i,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            _ => {
                // A quoted string: to the byte after its closing quote.
                i += 1;
                loop {
                    let Some(q) = find_either(buf.get(i..end).unwrap_or_default(), b'"', b'\\')
                    else {
                        return end;
                    };
                    i += q;
                    if buf[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
        }
        i += 1;
    }
    end
}

/// Trims linear white space from both ends of a span (inlined: it runs for every header line).
#[inline(always)]
pub(crate) fn trim(buf: &[u8], span: Span) -> Span {
    let mut s = span.start;
    let mut e = span.end.min(buf.len());
    while s < e && is_lws(buf[s]) {
        s += 1;
    }
    while e > s && is_lws(buf[e - 1]) {
        e -= 1;
    }
    Span::new(s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        ListIter::new(text.as_bytes(), Span::new(0, text.len()))
            .map(|s| std::str::from_utf8(s.slice(text.as_bytes())).unwrap_or("?"))
            .collect()
    }

    macro_rules! list_table {
        ($($name:ident: $input:expr => [$($out:expr),*];)*) => {
            $(#[test] fn $name() {
                let expected: Vec<&str> = vec![$($out),*];
                assert_eq!(split($input), expected);
            })*
        };
    }

    list_table! {
        single: "a" => ["a"];
        two: "a, b" => ["a", "b"];
        folded: "a,\r\n b" => ["a", "b"];
        comma_in_quotes: "\"x, y\" <sip:a>, <sip:b>" => ["\"x, y\" <sip:a>", "<sip:b>"];
        comma_in_angle: "<sip:a;x=1,2>, <sip:b>" => ["<sip:a;x=1,2>", "<sip:b>"];
        escaped_quote: "\"a\\\",\" <sip:a>,b" => ["\"a\\\",\" <sip:a>", "b"];
        empty_elements: "a,,b" => ["a", "", "b"];
        trailing_comma: "a," => ["a", ""];
        empty: "" => [""];
    }

    /// The byte-at-a-time splitter [`element_end`] replaced: the reference it must agree with.
    fn element_end_by_bytes(buf: &[u8], start: usize, end: usize) -> usize {
        let (mut in_quotes, mut in_angle) = (false, false);
        let mut i = start;
        while i < end {
            let b = buf[i];
            if in_quotes {
                match b {
                    b'\\' => i += 1,
                    b'"' => in_quotes = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_quotes = true,
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b',' if !in_angle => break,
                    _ => {}
                }
            }
            i += 1;
        }
        i.min(end)
    }

    #[test]
    fn element_end_agrees_with_the_byte_walk_on_every_short_string() {
        // Every string of up to 7 bytes over the bytes that matter, plus a filler, at every
        // start offset; and longer ones, so the eight-byte steps are crossed.
        let alphabet = [b',', b'"', b'<', b'>', b'\\', b'a', b' '];
        let mut text = Vec::new();
        for len in 0..=7u32 {
            for mut n in 0..alphabet.len().pow(len) {
                text.clear();
                for _ in 0..len {
                    text.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                for start in 0..=text.len() {
                    assert_eq!(
                        element_end(&text, start, text.len()),
                        element_end_by_bytes(&text, start, text.len()),
                        "{:?} from {start}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
        let long: &[&[u8]] = &[
            b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-1;rport, SIP/2.0/UDP 10.0.0.1:5090;branch=z9hG4bK-2",
            b"\"Alice, the \\\"first\\\"\" <sip:alice@example.com;x=1,2>;tag=abc, <sip:bob@b>",
            b"<sip:a@b;lr>,<sip:c@d;lr>\r\n ,  <sip:e@f> , \"unclosed, quote",
            b"<sip:unclosed@bracket, and more, text",
        ];
        for text in long {
            for start in 0..=text.len() {
                for end in start..=text.len() {
                    assert_eq!(
                        element_end(text, start, end),
                        element_end_by_bytes(text, start, end),
                        "{:?} {start}..{end}",
                        String::from_utf8_lossy(text)
                    );
                }
            }
        }
    }

    #[test]
    fn quoted_string_bounds() {
        let text = b"\"a\\\"b\" rest";
        let mut cur = Cursor::new(text, Span::new(0, text.len()));
        assert_eq!(cur.quoted_string(), Some(Span::new(0, 6)));
        let unterminated = b"\"abc";
        let mut cur = Cursor::new(unterminated, Span::new(0, 4));
        assert_eq!(cur.quoted_string(), None);
    }
}
