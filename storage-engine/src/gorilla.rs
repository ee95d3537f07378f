//! Gorilla compression (Pelkonen et al., VLDB 2015): timestamps as
//! delta-of-delta with variable-length buckets, values as the XOR with the
//! previous value, storing only the meaningful bits.
//!
//! Timestamps here are nanoseconds, so the buckets are wider than the
//! paper's (which used seconds): a regular series costs 1 bit per timestamp
//! whatever its unit.

use crate::bits::{BitReader, BitWriter, OutOfBits};

/// Delta-of-delta buckets: (prefix, prefix length, value bits).
const BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 7), (0b110, 3, 16), (0b1110, 4, 32)];

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes sorted timestamps.
pub fn encode_timestamps(ts: &[i64]) -> Vec<u8> {
    let mut w = BitWriter::new();
    let Some((&first, rest)) = ts.split_first() else {
        return w.finish();
    };
    w.write_bits(first as u64, 64);
    let (mut prev, mut prev_delta) = (first, 0i64);
    for &t in rest {
        let delta = t.wrapping_sub(prev);
        let dod = delta.wrapping_sub(prev_delta);
        if dod == 0 {
            w.write_bit(false);
        } else {
            let z = zigzag(dod);
            match BUCKETS.iter().find(|&&(_, _, bits)| z < 1u64 << bits) {
                Some(&(prefix, plen, bits)) => {
                    w.write_bits(prefix, plen);
                    w.write_bits(z, bits);
                }
                None => {
                    w.write_bits(0b1111, 4);
                    w.write_bits(z, 64);
                }
            }
        }
        prev = t;
        prev_delta = delta;
    }
    w.finish()
}

/// Decodes `count` timestamps into `out`.
pub fn decode_timestamps(bytes: &[u8], count: usize, out: &mut Vec<i64>) -> Result<(), OutOfBits> {
    if count == 0 {
        return Ok(());
    }
    let mut r = BitReader::new(bytes);
    let first = r.read_bits(64)? as i64;
    out.push(first);
    let (mut prev, mut prev_delta) = (first, 0i64);
    for _ in 1..count {
        let dod = if !r.read_bit()? {
            0
        } else if !r.read_bit()? {
            unzigzag(r.read_bits(7)?)
        } else if !r.read_bit()? {
            unzigzag(r.read_bits(16)?)
        } else if !r.read_bit()? {
            unzigzag(r.read_bits(32)?)
        } else {
            unzigzag(r.read_bits(64)?)
        };
        let delta = prev_delta.wrapping_add(dod);
        let t = prev.wrapping_add(delta);
        out.push(t);
        prev = t;
        prev_delta = delta;
    }
    Ok(())
}

/// Encodes values (bit patterns, so NaN, infinities and -0.0 survive).
pub fn encode_values(values: &[f64]) -> Vec<u8> {
    let mut w = BitWriter::new();
    let Some((&first, rest)) = values.split_first() else {
        return w.finish();
    };
    let mut prev = first.to_bits();
    w.write_bits(prev, 64);
    // The current window of meaningful bits: (leading zeros, length).
    let mut window: Option<(u32, u32)> = None;
    for &v in rest {
        let bits = v.to_bits();
        let xor = bits ^ prev;
        prev = bits;
        if xor == 0 {
            w.write_bit(false);
            continue;
        }
        w.write_bit(true);
        let leading = xor.leading_zeros().min(31);
        let trailing = xor.trailing_zeros();
        match window {
            Some((lead, len)) if leading >= lead && trailing >= 64 - lead - len => {
                w.write_bit(false);
                w.write_bits(xor >> (64 - lead - len), len as u8);
            }
            _ => {
                let len = 64 - leading - trailing;
                w.write_bit(true);
                w.write_bits(u64::from(leading), 5);
                // Length 1..=64 stored as length - 1 in 6 bits.
                w.write_bits(u64::from(len - 1), 6);
                w.write_bits(xor >> trailing, len as u8);
                window = Some((leading, len));
            }
        }
    }
    w.finish()
}

/// Decodes `count` values into `out`.
pub fn decode_values(bytes: &[u8], count: usize, out: &mut Vec<f64>) -> Result<(), OutOfBits> {
    if count == 0 {
        return Ok(());
    }
    let mut r = BitReader::new(bytes);
    let mut prev = r.read_bits(64)?;
    out.push(f64::from_bits(prev));
    let mut window = (0u32, 64u32);
    for _ in 1..count {
        if r.read_bit()? {
            if r.read_bit()? {
                let lead = r.read_bits(5)? as u32;
                let len = r.read_bits(6)? as u32 + 1;
                window = (lead, len);
            }
            let (lead, len) = window;
            let shift = 64u32.checked_sub(lead + len).ok_or(OutOfBits)?;
            let meaningful = r.read_bits(len as u8)?;
            prev ^= meaningful << shift;
        }
        out.push(f64::from_bits(prev));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn round_trip(ts: &[i64], values: &[f64]) {
        let mut got_ts = Vec::new();
        decode_timestamps(&encode_timestamps(ts), ts.len(), &mut got_ts).expect("timestamps");
        assert_eq!(got_ts, ts);
        let mut got = Vec::new();
        decode_values(&encode_values(values), values.len(), &mut got).expect("values");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(values));
    }

    // Protects: special values survive bit for bit.
    #[test]
    fn special_values() {
        let values = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            1.0,
            1.0,
            1.0,
        ];
        let ts: Vec<i64> = (0..values.len() as i64).collect();
        round_trip(&ts, &values);
    }

    // Protects: regular, irregular, extreme and equal timestamps; random values.
    #[test]
    fn random_and_irregular() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let n = rng.random_range(1..600);
            let mut t = rng.random_range(-(1i64 << 62)..(1i64 << 62));
            let mut ts = Vec::new();
            for _ in 0..n {
                ts.push(t);
                t = t.saturating_add(match rng.random_range(0..4) {
                    0 => 10_000_000_000,
                    1 => rng.random_range(0..1000),
                    2 => rng.random_range(0..1i64 << 40),
                    _ => 0,
                });
            }
            let values: Vec<f64> = (0..n)
                .map(|_| match rng.random_range(0..3) {
                    0 => f64::from_bits(rng.random()),
                    1 => (rng.random_range(0..1000) as f64) / 10.0,
                    _ => 42.0,
                })
                .collect();
            round_trip(&ts, &values);
        }
        round_trip(&[i64::MIN, 0, i64::MAX], &[1.0, 2.0, 3.0]);
    }

    // Protects: the compression actually compresses a regular gauge.
    #[test]
    fn regular_gauge_compresses() {
        let ts: Vec<i64> = (0..1000)
            .map(|i| 1_700_000_000_000_000_000 + i * 10_000_000_000)
            .collect();
        let values: Vec<f64> = (0..1000)
            .map(|i| 50.0 + ((i / 7) % 10) as f64 * 0.5)
            .collect();
        let bytes = encode_timestamps(&ts).len() + encode_values(&values).len();
        assert!(bytes < 1000 * 2, "{bytes} bytes for 1000 points");
    }
}
