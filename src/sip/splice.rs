//! The splice serializer: a forwarded message is the original bytes with a few edits
//! (RFC 3261 §16.6: prepend Via, pop Route, rewrite Max-Forwards, add Record-Route), applied in
//! one pass that copies every untouched byte verbatim. No allocation.

use super::Span;

/// One edit against the original message, by offsets into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit<'e> {
    /// Insert `bytes` before offset `at`.
    Insert {
        /// Offset in the original message.
        at: usize,
        /// Bytes to insert.
        bytes: &'e [u8],
    },
    /// Remove a range.
    Remove(Span),
    /// Replace a range with `bytes`.
    Replace {
        /// The range replaced.
        span: Span,
        /// The new bytes.
        bytes: &'e [u8],
    },
}

impl Edit<'_> {
    fn range(&self) -> Span {
        match *self {
            Self::Insert { at, .. } => Span::new(at, at),
            Self::Remove(span) | Self::Replace { span, .. } => span,
        }
    }

    fn new_bytes(&self) -> &[u8] {
        match self {
            Self::Insert { bytes, .. } | Self::Replace { bytes, .. } => bytes,
            Self::Remove(_) => b"",
        }
    }
}

/// Why a splice failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceError {
    /// More edits than the list holds.
    TooManyEdits,
    /// An edit reaches past the end of the source, or two ranges overlap (an insertion may sit
    /// at either end of a removed range, not inside it).
    Overlap,
    /// `out` is too small; the whole output needs `required_size` bytes.
    InsufficientSize {
        /// Bytes needed.
        required_size: usize,
    },
}

/// A fixed-capacity list of edits. Edits may be added in any order; insertions at the same
/// offset come out in the order they were added, before any removal starting there.
#[derive(Debug, Clone)]
pub struct Splice<'e, const N: usize = 16> {
    edits: [Edit<'e>; N],
    len: usize,
}

impl<const N: usize> Default for Splice<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'e, const N: usize> Splice<'e, N> {
    /// An empty edit list.
    pub fn new() -> Self {
        Self {
            edits: [Edit::Remove(Span::new(0, 0)); N],
            len: 0,
        }
    }

    /// Number of edits so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no edits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an edit.
    pub fn push(&mut self, edit: Edit<'e>) -> Result<(), SpliceError> {
        let slot = self
            .edits
            .get_mut(self.len)
            .ok_or(SpliceError::TooManyEdits)?;
        *slot = edit;
        self.len += 1;
        Ok(())
    }

    /// Inserts `bytes` before offset `at`.
    pub fn insert(&mut self, at: usize, bytes: &'e [u8]) -> Result<(), SpliceError> {
        self.push(Edit::Insert { at, bytes })
    }

    /// Removes `span`.
    pub fn remove(&mut self, span: Span) -> Result<(), SpliceError> {
        self.push(Edit::Remove(span))
    }

    /// Replaces `span` with `bytes`.
    pub fn replace(&mut self, span: Span, bytes: &'e [u8]) -> Result<(), SpliceError> {
        self.push(Edit::Replace { span, bytes })
    }

    /// Sorts edits by position (stable, so insertions at one offset keep their order) and checks
    /// that they fit `src_len` and do not overlap.
    fn sorted(&mut self, src_len: usize) -> Result<&[Edit<'e>], SpliceError> {
        let edits = &mut self.edits[..self.len];
        // Insertion sort: N is small and stability matters.
        for i in 1..edits.len() {
            let mut j = i;
            while j > 0 && key(&edits[j - 1]) > key(&edits[j]) {
                edits.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut covered_to = 0usize;
        for e in edits.iter() {
            let r = e.range();
            if r.start > r.end || r.end > src_len || r.start < covered_to {
                return Err(SpliceError::Overlap);
            }
            covered_to = r.end;
        }
        Ok(edits)
    }

    /// The size of the output for a source of `src_len` bytes.
    pub fn output_len(&mut self, src_len: usize) -> Result<usize, SpliceError> {
        let edits = self.sorted(src_len)?;
        Ok(edits
            .iter()
            .fold(src_len, |n, e| n - e.range().len() + e.new_bytes().len()))
    }

    /// Writes `src` with the edits applied into `out`; returns the bytes written. Fails with
    /// [`SpliceError::InsufficientSize`] (and writes nothing useful) when `out` is too small.
    pub fn apply(&mut self, src: &[u8], out: &mut [u8]) -> Result<usize, SpliceError> {
        // One sort and check serves both the size and the copy.
        let edits = self.sorted(src.len())?;
        let required_size = edits
            .iter()
            .fold(src.len(), |n, e| n - e.range().len() + e.new_bytes().len());
        if out.len() < required_size {
            return Err(SpliceError::InsufficientSize { required_size });
        }
        let mut read = 0usize;
        let mut written = 0usize;
        let mut copy = |bytes: &[u8], written: &mut usize| {
            out[*written..*written + bytes.len()].copy_from_slice(bytes);
            *written += bytes.len();
        };
        for e in edits {
            let r = e.range();
            copy(&src[read..r.start], &mut written);
            copy(e.new_bytes(), &mut written);
            read = r.end;
        }
        copy(&src[read..], &mut written);
        Ok(written)
    }
}

/// Sort key: by start; at equal start, insertions (empty ranges) first.
fn key(e: &Edit<'_>) -> (usize, usize) {
    let r = e.range();
    (r.start, r.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! splice_table {
        ($($name:ident: $src:expr, [$($edit:expr),*] => $expected:expr;)*) => {
            $(#[test] fn $name() {
                let mut s: Splice<'_, 8> = Splice::new();
                $(s.push($edit).unwrap_or_else(|e| panic!("{e:?}"));)*
                let mut out = [0u8; 128];
                let r = s.apply($src, &mut out).map(|n| &out[..n]);
                assert_eq!(r, $expected);
            })*
        };
    }

    splice_table! {
        no_edits: b"abc", [] => Ok(&b"abc"[..]);
        insert_front: b"abc", [Edit::Insert { at: 0, bytes: b"X" }] => Ok(&b"Xabc"[..]);
        insert_end: b"abc", [Edit::Insert { at: 3, bytes: b"X" }] => Ok(&b"abcX"[..]);
        remove_middle: b"abcde", [Edit::Remove(Span::new(1, 3))] => Ok(&b"ade"[..]);
        replace: b"abcde", [Edit::Replace { span: Span::new(1, 4), bytes: b"Z" }] => Ok(&b"aZe"[..]);
        unordered: b"abcdef", [Edit::Remove(Span::new(4, 5)), Edit::Insert { at: 1, bytes: b"-" }] => Ok(&b"a-bcdf"[..]);
        inserts_keep_order: b"ab", [Edit::Insert { at: 1, bytes: b"1" }, Edit::Insert { at: 1, bytes: b"2" }] => Ok(&b"a12b"[..]);
        insert_before_remove: b"abc", [Edit::Remove(Span::new(1, 2)), Edit::Insert { at: 1, bytes: b"X" }] => Ok(&b"aXc"[..]);
        overlap: b"abcdef", [Edit::Remove(Span::new(1, 4)), Edit::Remove(Span::new(2, 5))] => Err(SpliceError::Overlap);
        insert_inside_remove: b"abcdef", [Edit::Remove(Span::new(1, 4)), Edit::Insert { at: 2, bytes: b"X" }] => Err(SpliceError::Overlap);
        past_end: b"abc", [Edit::Remove(Span::new(2, 9))] => Err(SpliceError::Overlap);
    }

    #[test]
    fn too_small_reports_required_size() {
        let mut s: Splice<'_, 2> = Splice::new();
        assert!(s.insert(0, b"12345").is_ok());
        let mut out = [0u8; 4];
        assert_eq!(
            s.apply(b"abc", &mut out),
            Err(SpliceError::InsufficientSize { required_size: 8 })
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let mut s: Splice<'_, 1> = Splice::new();
        assert!(s.insert(0, b"a").is_ok());
        assert_eq!(s.insert(0, b"b"), Err(SpliceError::TooManyEdits));
    }
}
