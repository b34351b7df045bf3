//! The `Mask` bitset of an architecture (one bit per parameter entry), saved as hex in
//! `architecture.json`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// A fixed-length bitset (one bit per parameter entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    len: usize,
    words: Vec<u64>,
}

impl Mask {
    /// All bits set.
    pub fn new_full(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        let rem = len % 64;
        if rem > 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << rem) - 1;
            }
        }
        Mask { len, words }
    }

    /// No bit set.
    pub fn new_empty(len: usize) -> Self {
        Mask {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    /// A mask with bit `i` set iff `f(i)`.
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> bool) -> Self {
        let mut m = Mask::new_empty(len);
        for i in 0..len {
            if f(i) {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        m
    }

    /// Bit `i`. Panics if `i >= len` (an index bug, not user input).
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "mask index {i} out of range {}", self.len);
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Sets bit `i`. Panics if `i >= len`.
    pub fn set(&mut self, i: usize, value: bool) {
        assert!(i < self.len, "mask index {i} out of range {}", self.len);
        if value {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask has zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every bit is set.
    pub fn all(&self) -> bool {
        self.count_ones() == self.len
    }

    /// Whether no bit is set.
    pub fn none(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Indices of the set bits, increasing.
    pub fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// 1.0 / 0.0 per bit, for multiplying into a tensor.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len)
            .map(|i| if self.get(i) { 1.0 } else { 0.0 })
            .collect()
    }

    /// 1 / 0 per bit, for saving as a `u8` tensor.
    pub fn to_u8(&self) -> Vec<u8> {
        (0..self.len).map(|i| self.get(i) as u8).collect()
    }
}

/// Serialized form of a [`Mask`]: its length and its bits as hex, least significant bit of
/// each byte first (8 entries per byte), so a 500k-entry mask takes ~125 kB of JSON.
#[derive(Serialize, Deserialize)]
struct MaskRepr {
    len: usize,
    hex: String,
}

impl Serialize for Mask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let nbytes = self.len.div_ceil(8);
        let mut hex = String::with_capacity(2 * nbytes);
        for b in 0..nbytes {
            let byte = (self.words[b / 8] >> (8 * (b % 8))) as u8;
            let _ = write!(hex, "{byte:02x}");
        }
        MaskRepr { len: self.len, hex }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = MaskRepr::deserialize(d)?;
        let nbytes = r.len.div_ceil(8);
        if r.hex.len() != 2 * nbytes || !r.hex.is_ascii() {
            return Err(D::Error::custom(format!(
                "mask of length {} needs {} hex digits, found {}",
                r.len,
                2 * nbytes,
                r.hex.len()
            )));
        }
        let mut m = Mask::new_empty(r.len);
        for b in 0..nbytes {
            let byte = u8::from_str_radix(&r.hex[2 * b..2 * b + 2], 16).map_err(|_| {
                D::Error::custom(format!(
                    "bad hex digits {:?} in mask",
                    &r.hex[2 * b..2 * b + 2]
                ))
            })?;
            m.words[b / 8] |= (byte as u64) << (8 * (b % 8));
        }
        if m != Mask::from_fn(r.len, |i| m.get(i)) {
            return Err(D::Error::custom(format!(
                "mask has bits set beyond its length {}",
                r.len
            )));
        }
        Ok(m)
    }
}
