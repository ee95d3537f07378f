//! How a segment block's points are encoded before compression.
//!
//! Timestamps: a regular series (one step) is its step alone; otherwise
//! the first delta and then the deltas of deltas, packed (intpack.rs). The
//! first timestamp is the block's `min_ts`, which the segment index holds.
//!
//! Values: collectors report decimals (a CPU percentage with one decimal,
//! bytes, counters). When every value of the block is `m / 10^e` exactly,
//! bit for bit, for integers `m` and one exponent `e`, the block stores `e`,
//! the first `m`, and the rest as packed deltas or deltas of deltas,
//! whichever is shorter: a few bits a point. Any other block (NaN, -0.0,
//! infinities, full-precision floats) falls back to Gorilla XOR, so every
//! value round-trips bit for bit.
//!
//! ```text
//! timestamps  0 | step (varint)
//!             1 | first delta (varint) | deltas of deltas (packed)
//! values      0 | Gorilla XOR bits
//!             1 | e u8 | first m (varint) | deltas (packed)
//!             2 | e u8 | first m (varint) | first delta (varint) | deltas of deltas (packed)
//! ```

use crate::gorilla;
use crate::intpack::{self, differences, put_varint, running_sums, Reader};

pub use crate::intpack::Undecodable;

const TS_REGULAR: u8 = 0;
const TS_DELTA_OF_DELTA: u8 = 1;
const VALUES_GORILLA: u8 = 0;
const VALUES_DECIMAL_DELTA: u8 = 1;
const VALUES_DECIMAL_DELTA_OF_DELTA: u8 = 2;

/// The largest number of decimals tried.
const MAX_DECIMALS: usize = 15;
/// 10^e for e in 0..=MAX_DECIMALS, each exact in an f64.
const POW10: [f64; MAX_DECIMALS + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers above this are not all exact in an f64.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// The largest encoding of `count` points (a bound for decompression):
/// Gorilla's worst case is under 10 bytes a value, packing's 8 bytes a
/// value plus a bitmap, with a few dozen bytes of headers.
pub fn max_encoded_len(count: usize) -> usize {
    64 + 20 * count
}

/// Encodes one block's timestamps (sorted, the first being the block's
/// `min_ts`) and values into `out`.
pub fn encode(ts: &[i64], values: &[f64], out: &mut Vec<u8>) {
    encode_timestamps(ts, out);
    encode_values(values, out);
}

/// Decodes a block of `count` points whose first timestamp is `first`,
/// appending to `ts` and `values`.
pub fn decode(
    bytes: &[u8],
    count: usize,
    first: i64,
    ts: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), Undecodable> {
    let mut r = Reader::new(bytes);
    decode_timestamps(&mut r, count, first, ts)?;
    decode_values(&mut r, count, values)
}

fn encode_timestamps(ts: &[i64], out: &mut Vec<u8>) {
    let deltas = differences(ts);
    let step = deltas.first().copied().unwrap_or(0);
    if deltas.iter().all(|&d| d == step) {
        out.push(TS_REGULAR);
        put_varint(out, step);
        return;
    }
    out.push(TS_DELTA_OF_DELTA);
    put_varint(out, step);
    intpack::encode(&differences(&deltas), out);
}

fn decode_timestamps(
    r: &mut Reader<'_>,
    count: usize,
    first: i64,
    ts: &mut Vec<i64>,
) -> Result<(), Undecodable> {
    let kind = r.byte()?;
    let step = r.varint()?;
    if count == 0 {
        return Ok(());
    }
    let deltas = match kind {
        TS_REGULAR => vec![step; count - 1],
        TS_DELTA_OF_DELTA if count >= 2 => {
            let mut dods = Vec::with_capacity(count - 2);
            intpack::decode(r, count - 2, &mut dods)?;
            let mut deltas = Vec::with_capacity(count - 1);
            running_sums(step, &dods, &mut deltas);
            deltas
        }
        _ => return Err(Undecodable),
    };
    ts.reserve(count);
    running_sums(first, &deltas, ts);
    Ok(())
}

/// The integer `m` with `m / 10^e == v` bit for bit, if there is one.
fn mantissa(v: f64, e: usize) -> Option<i64> {
    let scaled = (v * POW10[e]).round();
    if scaled.is_nan() || scaled.abs() >= MAX_EXACT {
        return None;
    }
    let m = scaled as i64;
    ((m as f64 / POW10[e]).to_bits() == v.to_bits()).then_some(m)
}

/// `v` as `(m, e)` with `m / 10^e == v` bit for bit and `e <= max_e`,
/// the fewest decimals that do, if any do (the WAL's point values).
pub fn decimal(v: f64, max_e: usize) -> Option<(i64, usize)> {
    (0..=max_e.min(MAX_DECIMALS)).find_map(|e| mantissa(v, e).map(|m| (m, e)))
}

/// The value `decimal` took apart.
pub fn from_decimal(m: i64, e: usize) -> Option<f64> {
    POW10.get(e).map(|scale| m as f64 / scale)
}

/// The fewest decimals that represent every value exactly, if any do.
fn common_exponent(values: &[f64]) -> Option<usize> {
    let mut e = 0;
    for &v in values {
        while mantissa(v, e).is_none() {
            e += 1;
            if e > MAX_DECIMALS {
                return None;
            }
        }
    }
    Some(e)
}

fn encode_values(values: &[f64], out: &mut Vec<u8>) {
    let decimal = common_exponent(values).and_then(|e| {
        let ms: Option<Vec<i64>> = values.iter().map(|&v| mantissa(v, e)).collect();
        ms.map(|ms| (e as u8, ms))
    });
    let Some((e, ms)) = decimal.filter(|(_, ms)| !ms.is_empty()) else {
        out.push(VALUES_GORILLA);
        out.extend_from_slice(&gorilla::encode_values(values));
        return;
    };
    // Deltas suit gauges and counters with varying increments; deltas of
    // deltas suit counters that grow steadily. Both are tried.
    let deltas = differences(&ms);
    let mut by_delta = vec![VALUES_DECIMAL_DELTA, e];
    put_varint(&mut by_delta, ms[0]);
    intpack::encode(&deltas, &mut by_delta);
    if let Some(&first_delta) = deltas.first() {
        let mut by_dod = vec![VALUES_DECIMAL_DELTA_OF_DELTA, e];
        put_varint(&mut by_dod, ms[0]);
        put_varint(&mut by_dod, first_delta);
        intpack::encode(&differences(&deltas), &mut by_dod);
        if by_dod.len() < by_delta.len() {
            out.extend_from_slice(&by_dod);
            return;
        }
    }
    out.extend_from_slice(&by_delta);
}

fn decode_values(
    r: &mut Reader<'_>,
    count: usize,
    values: &mut Vec<f64>,
) -> Result<(), Undecodable> {
    let kind = r.byte()?;
    if kind == VALUES_GORILLA {
        return gorilla::decode_values(r.rest(), count, values).map_err(|_| Undecodable);
    }
    if count == 0 {
        return Err(Undecodable);
    }
    let scale = *POW10.get(r.byte()? as usize).ok_or(Undecodable)?;
    let first = r.varint()?;
    let deltas = match kind {
        VALUES_DECIMAL_DELTA => {
            let mut deltas = Vec::with_capacity(count - 1);
            intpack::decode(r, count - 1, &mut deltas)?;
            deltas
        }
        VALUES_DECIMAL_DELTA_OF_DELTA if count >= 2 => {
            let first_delta = r.varint()?;
            let mut dods = Vec::with_capacity(count - 2);
            intpack::decode(r, count - 2, &mut dods)?;
            let mut deltas = Vec::with_capacity(count - 1);
            running_sums(first_delta, &dods, &mut deltas);
            deltas
        }
        _ => return Err(Undecodable),
    };
    // Decimal values end exactly where the block does (Gorilla bits, above,
    // take the rest, padded to a byte).
    if !r.rest().is_empty() {
        return Err(Undecodable);
    }
    let mut ms = Vec::with_capacity(count);
    running_sums(first, &deltas, &mut ms);
    values.extend(ms.into_iter().map(|m| m as f64 / scale));
    Ok(())
}

/// Values no decimal represents, which every encoding must keep bit for
/// bit (the segment and WAL tests share them).
#[cfg(test)]
pub(crate) const SPECIAL_VALUES: [f64; 6] = [
    f64::NAN,
    f64::from_bits(0x7ff8_dead_beef_0001),
    -0.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE / 3.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(ts: &[i64], values: &[f64]) -> usize {
        let mut bytes = Vec::new();
        encode(ts, values, &mut bytes);
        assert!(bytes.len() <= max_encoded_len(ts.len()));
        let (mut got_ts, mut got_values) = (Vec::new(), Vec::new());
        decode(
            &bytes,
            ts.len(),
            ts.first().copied().unwrap_or(0),
            &mut got_ts,
            &mut got_values,
        )
        .expect("decodes");
        assert_eq!(got_ts, ts);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got_values), bits(values));
        bytes.len()
    }

    fn regular(n: usize) -> Vec<i64> {
        (0..n as i64)
            .map(|i| 1_700_000_000_000_000_000 + i * 10_000_000_000)
            .collect()
    }

    // Protects: decimals take the compact form, and each kind of value
    // that is not a decimal (or breaks the block's exponent) round-trips
    // bit for bit through the fallback.
    #[test]
    fn values_round_trip_bit_for_bit() {
        let ts = regular(6);
        let tenths = [23.5, 24.0, 23.5, 0.1, 99.9, 100.0];
        assert!(round_trip(&ts, &tenths) < 24, "decimals stay small");
        for special in SPECIAL_VALUES {
            round_trip(&ts, &[1.5, 2.0, special, 3.0, 4.25, 5.0]);
        }
        round_trip(
            &ts,
            &[
                0.1 + 0.2,
                1.0 / 3.0,
                f64::MAX,
                f64::MIN,
                1e300,
                9.007_199_254_740_993e15,
            ],
        );
        round_trip(&ts, &[4096.0 * 1e12, 1e15, -1e15, 0.0, 1.0, 2.0]);
        round_trip(&[], &[]);
        round_trip(&ts[..1], &[42.0]);
    }

    // Protects: irregular and hostile timestamps (wrapping deltas)
    // round-trip; a regular series costs one step for the whole block.
    #[test]
    fn timestamps_round_trip() {
        let ts = regular(1000);
        let values = vec![1.0; 1000];
        assert!(round_trip(&ts, &values) < 1010);
        round_trip(&[5, 7, 8, 100, 1_000_000], &[1.0; 5]);
        round_trip(&[i64::MIN, -1, 0, i64::MAX], &[1.0; 4]);
    }

    // Protects: garbage is refused, never a panic or an endless read.
    #[test]
    fn garbage_is_undecodable() {
        let (mut ts, mut values) = (Vec::new(), Vec::new());
        for bytes in [
            &[][..],
            &[7],
            &[0, 0x80],
            &[0, 2, 1, 99],
            &[1, 0xff, 0xff],
            &[0, 2, 1, 16],
        ] {
            assert!(
                decode(bytes, 3, 0, &mut ts, &mut values).is_err(),
                "{bytes:?}"
            );
        }
    }
}
