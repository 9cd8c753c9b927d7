//! The bounded reorder window of an upload: writes that arrive out of order are held until
//! the bytes before them arrive, then released in order. Sans-IO: no store, no clock.
//!
//! A multipart upload only grows at its end, so the window accepts a write at `next` (the
//! first byte not yet released) or after it, as long as everything held stays within
//! `window` bytes of `next`. It refuses what cannot be honoured without corrupting the
//! object: a write before `next` (those bytes are already on their way to the store), a
//! write overlapping one it holds, and a write ending further than the window reaches (the
//! caller may wait for the gap to fill and try again).

use std::collections::BTreeMap;

use bytes::Bytes;

/// Holds out-of-order writes of one upload.
#[derive(Debug)]
pub(crate) struct Reorder {
    next: u64,
    window: u64,
    held: BTreeMap<u64, Bytes>,
    held_bytes: u64,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The write starts before `next`: it would rewrite bytes already released.
    Rewrite { offset: u64, next: u64 },
    /// The write ends more than the window beyond `next`.
    BeyondWindow { offset: u64, next: u64 },
    /// The write overlaps a write held in the window.
    Overlap { offset: u64 },
    /// `offset + len` does not fit in 64 bits.
    Overflow,
}

impl Reorder {
    /// A window of `window` bytes whose next expected byte is at `next`.
    pub(crate) fn new(next: u64, window: u64) -> Reorder {
        Reorder {
            next,
            window,
            held: BTreeMap::new(),
            held_bytes: 0,
        }
    }

    /// Offers a write; returns what is now contiguous from the old `next`, in order (empty
    /// when the write is held).
    pub(crate) fn push(&mut self, offset: u64, data: Bytes) -> Result<Vec<Bytes>, Refusal> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Refusal::Overflow)?;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if offset < self.next {
            return Err(Refusal::Rewrite {
                offset,
                next: self.next,
            });
        }
        if offset > self.next {
            if end - self.next > self.window {
                return Err(Refusal::BeyondWindow {
                    offset,
                    next: self.next,
                });
            }
            let before = self.held.range(..offset).next_back();
            let overlaps_before = before.is_some_and(|(o, d)| o + d.len() as u64 > offset);
            let overlaps_after = self.held.range(offset..end).next().is_some();
            if overlaps_before || overlaps_after {
                return Err(Refusal::Overlap { offset });
            }
            self.held_bytes += data.len() as u64;
            self.held.insert(offset, data);
            return Ok(Vec::new());
        }
        // In order, but it may still run into a write held further on.
        if self.held.range(..end).next().is_some() {
            return Err(Refusal::Overlap { offset });
        }
        let mut ready = vec![data];
        self.next = end;
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let data = entry.remove();
            self.held_bytes -= data.len() as u64;
            self.next += data.len() as u64;
            ready.push(data);
        }
        Ok(ready)
    }

    /// The first byte not yet released.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// The end of the furthest write seen (what FSTAT reports as the size).
    pub(crate) fn end(&self) -> u64 {
        self.held
            .last_key_value()
            .map_or(self.next, |(o, d)| o + d.len() as u64)
    }

    /// Where the first gap is, if writes are held behind one.
    pub(crate) fn gap(&self) -> Option<u64> {
        (!self.held.is_empty()).then_some(self.next)
    }

    /// Bytes held (at most the window).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn concat(parts: Vec<Bytes>) -> String {
        parts
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn in_order_passes_through() {
        let mut r = Reorder::new(0, 10);
        assert_eq!(concat(r.push(0, bytes("ab")).unwrap()), "ab");
        assert_eq!(concat(r.push(2, bytes("cd")).unwrap()), "cd");
        assert_eq!(r.next(), 4);
        assert_eq!(r.gap(), None);
    }
    #[test]
    fn out_of_order_is_released_in_order() {
        let mut r = Reorder::new(0, 10);
        assert!(r.push(4, bytes("ef")).unwrap().is_empty());
        assert!(r.push(2, bytes("cd")).unwrap().is_empty());
        assert_eq!(r.gap(), Some(0));
        assert_eq!(r.end(), 6);
        assert_eq!(concat(r.push(0, bytes("ab")).unwrap()), "abcdef");
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.gap(), None);
    }
    #[test]
    fn starts_at_base() {
        let mut r = Reorder::new(100, 10);
        assert_eq!(
            r.push(0, bytes("x")),
            Err(Refusal::Rewrite {
                offset: 0,
                next: 100
            })
        );
        assert_eq!(concat(r.push(100, bytes("x")).unwrap()), "x");
    }
    #[test]
    fn rewrite_refused() {
        let mut r = Reorder::new(0, 10);
        r.push(0, bytes("abcd")).unwrap();
        assert_eq!(
            r.push(2, bytes("zz")),
            Err(Refusal::Rewrite { offset: 2, next: 4 })
        );
    }
    #[test]
    fn beyond_window_refused() {
        let mut r = Reorder::new(0, 10);
        assert!(r.push(8, bytes("ab")).unwrap().is_empty());
        assert_eq!(
            r.push(9, bytes("abc")),
            Err(Refusal::BeyondWindow { offset: 9, next: 0 })
        );
        assert_eq!(
            r.push(10, bytes("a")),
            Err(Refusal::BeyondWindow {
                offset: 10,
                next: 0
            })
        );
    }
    #[test]
    fn overlap_refused() {
        let mut r = Reorder::new(0, 10);
        r.push(4, bytes("abcd")).unwrap();
        assert_eq!(r.push(6, bytes("x")), Err(Refusal::Overlap { offset: 6 }));
        assert_eq!(r.push(2, bytes("xxx")), Err(Refusal::Overlap { offset: 2 }));
        assert!(r.push(2, bytes("xx")).unwrap().is_empty());
        // An in-order write running into a held one.
        assert_eq!(r.push(0, bytes("xxx")), Err(Refusal::Overlap { offset: 0 }));
    }
    #[test]
    fn empty_write_is_nothing() {
        let mut r = Reorder::new(5, 10);
        assert!(r.push(0, Bytes::new()).unwrap().is_empty());
        assert!(r.push(1000, Bytes::new()).unwrap().is_empty());
        assert_eq!(r.next(), 5);
    }
    #[test]
    fn overflow_refused() {
        let mut r = Reorder::new(0, 10);
        assert_eq!(r.push(u64::MAX, bytes("ab")), Err(Refusal::Overflow));
    }

    proptest! {
        /// Any permutation of a file's blocks whose spread fits the window comes out as the
        /// file, in order, and the window never holds more than its size.
        #[test]
        fn permutations_within_the_window(
            sizes in proptest::collection::vec(1usize..50, 1..40),
            seed in any::<u64>(),
        ) {
            let mut blocks = Vec::new();
            let mut offset = 0u64;
            for (i, size) in sizes.iter().enumerate() {
                blocks.push((offset, Bytes::from(vec![i as u8; *size])));
                offset += *size as u64;
            }
            let total = offset;
            // Shuffle locally: sort by index plus a random 0..4, so no block moves more
            // than 3 places and the spread of what is held is bounded.
            let mut s = seed;
            let mut keyed: Vec<(usize, usize)> = (0..blocks.len())
                .map(|i| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (i + (s >> 33) as usize % 4, i)
                })
                .collect();
            keyed.sort();
            let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
            let window = 50 * 8;
            let mut r = Reorder::new(0, window);
            let mut out = Vec::new();
            for i in order {
                let (o, d) = blocks[i].clone();
                out.extend(r.push(o, d).expect("within the window"));
                prop_assert!(r.held_bytes() <= window);
            }
            prop_assert_eq!(r.next(), total);
            prop_assert_eq!(r.gap(), None);
            let got: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
            let want: Vec<u8> = blocks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            prop_assert_eq!(got, want);
        }

        /// Whatever is offered, what comes out is contiguous from the start, `next` is its
        /// length, and nothing held lies before `next` or beyond the window.
        #[test]
        fn never_corrupts(writes in proptest::collection::vec((0u64..200, 0usize..30), 0..60)) {
            let mut r = Reorder::new(0, 64);
            let mut released = 0u64;
            for (offset, len) in writes {
                let data = Bytes::from((0..len).map(|i| (offset as usize + i) as u8).collect::<Vec<_>>());
                if let Ok(ready) = r.push(offset, data) {
                    for chunk in ready {
                        // Every released byte is the byte written at its offset.
                        for (i, b) in chunk.iter().enumerate() {
                            prop_assert_eq!(*b, (released as usize + i) as u8);
                        }
                        released += chunk.len() as u64;
                    }
                }
                prop_assert_eq!(r.next(), released);
                prop_assert!(r.end() - r.next() <= 64);
            }
        }
    }
}
