//! A mergeable quantile sketch stored with every rollup bucket: values are
//! counted in logarithmic bins, bin `i` holding `(γ^(i-1), γ^i]` with
//! `γ = (1 + α) / (1 - α)`, as DDSketch does. Any quantile read back is
//! within a relative error `α` (1 %) of a value whose rank is exactly that
//! quantile's, however many sketches were merged: merging adds bin counts.
//! Values below `MIN_VALUE` (idle CPU, zero IO) are counted as zero.
//!
//! Encoding (`bytea`, little endian): version byte 1, LEB128 zero count,
//! LEB128 number of bins, then per bin the zigzag LEB128 delta of its index
//! from the previous bin's and its LEB128 count. A minute of one series
//! at 1 s sampling takes a few dozen bytes.

use std::collections::BTreeMap;

/// Relative accuracy of every quantile.
pub const ALPHA: f64 = 0.01;
/// Values at or below this are counted as zero.
pub const MIN_VALUE: f64 = 1e-9;

/// Counts of values in logarithmic bins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    zero: u64,
    bins: BTreeMap<i32, u64>,
}

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

impl Sketch {
    /// Adds one value (negative values count as zero; they are refused at
    /// ingest anyway).
    pub fn add(&mut self, value: f64) {
        if value.is_nan() || value <= MIN_VALUE {
            self.zero += 1;
        } else {
            let index = (value.ln() / gamma().ln()).ceil() as i32;
            *self.bins.entry(index).or_default() += 1;
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        self.zero += other.zero;
        for (i, c) in &other.bins {
            *self.bins.entry(*i).or_default() += c;
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.zero + self.bins.values().sum::<u64>()
    }

    /// The `q` quantile (0 ≤ q ≤ 1) by the lower rank `floor(q·(n−1))`,
    /// within relative error `ALPHA`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
        if rank < self.zero {
            return Some(0.0);
        }
        let mut seen = self.zero;
        for (i, c) in &self.bins {
            seen += c;
            if seen > rank {
                // The point of the bin with the smallest relative error.
                return Some(2.0 * gamma().powi(*i) / (gamma() + 1.0));
            }
        }
        None
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bins.len() * 3);
        out.push(1);
        leb128(&mut out, self.zero);
        leb128(&mut out, self.bins.len() as u64);
        let mut previous = 0i64;
        for (i, c) in &self.bins {
            let delta = i64::from(*i) - previous;
            leb128(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
            leb128(&mut out, *c);
            previous = i64::from(*i);
        }
        out
    }

    /// Reads the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut input = bytes;
        match input.split_first() {
            Some((1, rest)) => input = rest,
            Some((v, _)) => return Err(format!("sketch version {v} is not known")),
            None => return Err("empty sketch".into()),
        }
        let zero = read_leb128(&mut input)?;
        let len = read_leb128(&mut input)?;
        let mut bins = BTreeMap::new();
        let mut previous = 0i64;
        for _ in 0..len {
            let z = read_leb128(&mut input)?;
            let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
            previous += delta;
            let index = i32::try_from(previous).map_err(|_| "sketch bin out of range")?;
            bins.insert(index, read_leb128(&mut input)?);
        }
        if !input.is_empty() {
            return Err("trailing bytes after sketch".into());
        }
        Ok(Self { zero, bins })
    }
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(input: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or("truncated sketch")?;
        *input = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("sketch varint too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    proptest! {
        #[test]
        fn quantiles_stay_within_alpha_of_the_exact_ones_after_merging(
            values in prop::collection::vec(0.0f64..1e12, 1..400),
            split in 0usize..400,
        ) {
            let split = split.min(values.len());
            let (mut a, mut b) = (Sketch::default(), Sketch::default());
            values[..split].iter().for_each(|v| a.add(*v));
            values[split..].iter().for_each(|v| b.add(*v));
            a.merge(&b);
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0] {
                let want = exact(&sorted, q);
                let got = a.quantile(q).unwrap();
                if want <= MIN_VALUE {
                    prop_assert_eq!(got, 0.0);
                } else {
                    prop_assert!((got - want).abs() <= ALPHA * want * 1.000001,
                        "q{q}: got {got}, want {want}");
                }
            }
            prop_assert_eq!(Sketch::decode(&a.encode()).unwrap(), a);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sketch::decode(&bytes);
        }
    }
}
