//! Sequences of integers (deltas of timestamps or of decimal values) in
//! few bits, for a segment block before general compression.
//!
//! Packed form: the values less their minimum, divided by their common
//! factor (a memory gauge moves in pages of 4096, a CPU gauge in steps of
//! 5 tenths), each in the same number of bits. Patched form, for values
//! with a few outliers (a spike, a corrected sample): each value divided by
//! the factor and zigzagged, its low bits packed, and the high bits of the
//! few that do not fit listed after them with their positions. Sparse form,
//! for sequences that are mostly zero (a gauge that rarely moves): a bitmap
//! of the non-zero positions, then the non-zero values in one of the other
//! forms. The encoder keeps the shortest. The decoder is told how many
//! values there are.
//!
//! ```text
//! packed   0 | minimum (varint) | factor (varint) | width u8 | values, width bits each, LSB first
//! sparse   1 | bitmap (1 bit a value, LSB first) | the non-zero values, packed or patched
//! patched  2 | factor (varint) | width u8 | patches (varint) | low bits, width each, LSB first
//!          | per patch: position − previous position (varint) | high bits (varint)
//! ```

const PACKED: u8 = 0;
const SPARSE: u8 = 1;
const PATCHED: u8 = 2;

/// Bytes that cannot be decoded (only damaged or hostile bytes are).
#[derive(Debug)]
pub struct Undecodable;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends `v` as a zigzag LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn varint_len(v: i64) -> usize {
    let bits = 64 - zigzag(v).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Reads what `put_varint` and `encode` write.
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    pub fn byte(&mut self) -> Result<u8, Undecodable> {
        let b = *self.bytes.get(self.at).ok_or(Undecodable)?;
        self.at += 1;
        Ok(b)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Undecodable> {
        let end = self.at.checked_add(n).ok_or(Undecodable)?;
        let taken = self.bytes.get(self.at..end).ok_or(Undecodable)?;
        self.at = end;
        Ok(taken)
    }

    pub fn varint(&mut self) -> Result<i64, Undecodable> {
        let mut z = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(unzigzag(z));
            }
        }
        Err(Undecodable)
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }
}

/// Differences between neighbours: `[b - a, c - b, ...]`.
pub fn differences(values: &[i64]) -> Vec<i64> {
    values.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect()
}

/// Adds back what `differences` took: `first`, then running sums.
pub fn running_sums(first: i64, diffs: &[i64], out: &mut Vec<i64>) {
    let mut v = first;
    out.push(v);
    for &d in diffs {
        v = v.wrapping_add(d);
        out.push(v);
    }
}

/// A column of integers: the first as a varint, then the differences
/// between neighbours in whichever form is shorter.
pub fn encode_column(values: &[i64], out: &mut Vec<u8>) {
    put_varint(out, values.first().copied().unwrap_or(0));
    encode(&differences(values), out);
}

/// Reads `count` values written by `encode_column`.
pub fn decode_column(
    r: &mut Reader<'_>,
    count: usize,
    out: &mut Vec<i64>,
) -> Result<(), Undecodable> {
    let first = r.varint()?;
    let mut diffs = Vec::with_capacity(count.saturating_sub(1));
    decode(r, count.saturating_sub(1), &mut diffs)?;
    if count > 0 {
        running_sums(first, &diffs, out);
    }
    Ok(())
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The packed form's parameters: minimum, factor, width.
fn packing(values: &[i64]) -> (i64, u64, u32) {
    let min = values.iter().copied().min().unwrap_or(0);
    let offsets = || values.iter().map(move |&v| v.wrapping_sub(min) as u64);
    let factor = offsets().fold(0, gcd).max(1);
    let max = offsets().map(|o| o / factor).max().unwrap_or(0);
    (min, factor, 64 - max.leading_zeros())
}

fn packed_len(values: &[i64], (min, factor, width): (i64, u64, u32)) -> usize {
    1 + varint_len(min)
        + varint_len(factor as i64)
        + 1
        + (values.len() * width as usize).div_ceil(8)
}

/// The patched form's parameters: factor, width, and its length.
fn patching(values: &[i64]) -> (u64, u32, usize) {
    let factor = values.iter().fold(0, |g, &v| gcd(g, v.unsigned_abs()));
    // 2^63 (only i64::MIN has it) is no i64: no factor then.
    let factor = if factor == 0 || factor > i64::MAX as u64 {
        1
    } else {
        factor
    };
    // How many values need each number of bits.
    let mut by_bits = [0usize; 65];
    for &v in values {
        by_bits[64 - zigzag(v / factor as i64).leading_zeros() as usize] += 1;
    }
    let present: Vec<(usize, usize)> = by_bits
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(bits, &n)| (bits, n))
        .collect();
    let widest = present.last().map_or(0, |&(bits, _)| bits);
    let len_at = |width: usize| -> usize {
        let over = present.iter().filter(|&&(bits, _)| bits > width);
        let patches: usize = over.clone().map(|&(_, n)| n).sum();
        // Each patch: a position gap (about a byte) and its high bits.
        let patch_bytes: usize = over
            .map(|&(bits, n)| n * (1 + (bits - width).div_ceil(7)))
            .sum();
        1 + varint_len(factor as i64)
            + 1
            + varint_len(patches as i64)
            + patch_bytes
            + (values.len() * width).div_ceil(8)
    };
    let width = (0..=widest).min_by_key(|&w| len_at(w)).unwrap_or(widest);
    (factor, width as u32, len_at(width))
}

/// A sequence's dense form, chosen once with its parameters.
enum Dense {
    Packed(i64, u64, u32),
    Patched(u64, u32),
}

/// The shorter of the packed and patched forms, and its length.
fn dense(values: &[i64]) -> (Dense, usize) {
    let (factor, width, patched_len) = patching(values);
    let packed = packing(values);
    let packed_len = packed_len(values, packed);
    if patched_len < packed_len {
        (Dense::Patched(factor, width), patched_len)
    } else {
        (Dense::Packed(packed.0, packed.1, packed.2), packed_len)
    }
}

fn encode_dense(values: &[i64], form: Dense, out: &mut Vec<u8>) {
    match form {
        Dense::Packed(min, factor, width) => encode_packed(values, (min, factor, width), out),
        Dense::Patched(factor, width) => encode_patched(values, factor, width, out),
    }
}

/// Appends `values` in whichever form is shorter.
pub fn encode(values: &[i64], out: &mut Vec<u8>) {
    let (form, len) = dense(values);
    let zeros = values.iter().filter(|&&v| v == 0).count();
    if zeros * 2 > values.len() {
        let non_zero: Vec<i64> = values.iter().copied().filter(|&v| v != 0).collect();
        let (sparse_form, sparse_len) = dense(&non_zero);
        if 1 + values.len().div_ceil(8) + sparse_len < len {
            out.push(SPARSE);
            let mut bitmap = vec![0u8; values.len().div_ceil(8)];
            for (i, _) in values.iter().enumerate().filter(|(_, &v)| v != 0) {
                bitmap[i / 8] |= 1 << (i % 8);
            }
            out.extend_from_slice(&bitmap);
            encode_dense(&non_zero, sparse_form, out);
            return;
        }
    }
    encode_dense(values, form, out);
}

fn encode_patched(values: &[i64], factor: u64, width: u32, out: &mut Vec<u8>) {
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let zigzagged: Vec<u64> = values.iter().map(|&v| zigzag(v / factor as i64)).collect();
    let patches: Vec<(usize, u64)> = zigzagged
        .iter()
        .enumerate()
        .filter(|(_, &z)| z & !mask != 0)
        .map(|(i, &z)| (i, z >> width))
        .collect();
    out.push(PATCHED);
    put_varint(out, factor as i64);
    out.push(width as u8);
    put_varint(out, patches.len() as i64);
    put_bits(zigzagged.iter().map(|&z| z & mask), width, out);
    let mut previous = 0;
    for (i, high) in patches {
        put_varint(out, (i - previous) as i64);
        put_varint(out, high as i64);
        previous = i;
    }
}

/// Appends each value's low `width` bits, LSB first.
fn put_bits(values: impl Iterator<Item = u64>, width: u32, out: &mut Vec<u8>) {
    let (mut acc, mut bits) = (0u128, 0u32);
    for v in values {
        acc |= u128::from(v) << bits;
        bits += width;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
}

fn encode_packed(values: &[i64], (min, factor, width): (i64, u64, u32), out: &mut Vec<u8>) {
    out.push(PACKED);
    put_varint(out, min);
    put_varint(out, factor as i64);
    out.push(width as u8);
    put_bits(
        values.iter().map(|&v| v.wrapping_sub(min) as u64 / factor),
        width,
        out,
    );
}

/// Reads `count` values written by `encode`, appending them to `out`.
pub fn decode(r: &mut Reader<'_>, count: usize, out: &mut Vec<i64>) -> Result<(), Undecodable> {
    match r.byte()? {
        PACKED => decode_packed(r, count, out),
        PATCHED => decode_patched(r, count, out),
        SPARSE => {
            let bitmap = r.take(count.div_ceil(8))?;
            let is_set = |i: usize| bitmap[i / 8] & (1 << (i % 8)) != 0;
            let set = (0..count).filter(|&i| is_set(i)).count();
            let mut non_zero = Vec::with_capacity(set);
            match r.byte()? {
                PACKED => decode_packed(r, set, &mut non_zero)?,
                PATCHED => decode_patched(r, set, &mut non_zero)?,
                _ => return Err(Undecodable),
            }
            let mut next = non_zero.into_iter();
            out.reserve(count);
            for i in 0..count {
                out.push(if is_set(i) {
                    next.next().ok_or(Undecodable)?
                } else {
                    0
                });
            }
            Ok(())
        }
        _ => Err(Undecodable),
    }
}

fn decode_packed(r: &mut Reader<'_>, count: usize, out: &mut Vec<i64>) -> Result<(), Undecodable> {
    let min = r.varint()?;
    let factor = r.varint()? as u64;
    let width = u32::from(r.byte()?);
    if factor == 0 {
        return Err(Undecodable);
    }
    let offsets = take_bits(r, count, width)?;
    out.extend(
        offsets
            .into_iter()
            .map(|o| min.wrapping_add(o.wrapping_mul(factor) as i64)),
    );
    Ok(())
}

fn decode_patched(r: &mut Reader<'_>, count: usize, out: &mut Vec<i64>) -> Result<(), Undecodable> {
    let factor = r.varint()?;
    let width = u32::from(r.byte()?);
    let patches = r.varint()? as usize;
    if factor <= 0 || patches > count {
        return Err(Undecodable);
    }
    let mut zigzagged = take_bits(r, count, width)?;
    let mut at = 0usize;
    for n in 0..patches {
        let gap = r.varint()? as usize;
        at = if n == 0 {
            gap
        } else {
            at.checked_add(gap).ok_or(Undecodable)?
        };
        let high = r.varint()? as u64;
        let z = zigzagged.get_mut(at).ok_or(Undecodable)?;
        *z |= high.checked_shl(width).ok_or(Undecodable)?;
    }
    out.extend(
        zigzagged
            .into_iter()
            .map(|z| unzigzag(z).wrapping_mul(factor)),
    );
    Ok(())
}

/// Reads `count` values of `width` bits each, LSB first.
fn take_bits(r: &mut Reader<'_>, count: usize, width: u32) -> Result<Vec<u64>, Undecodable> {
    if width > 64 {
        return Err(Undecodable);
    }
    let bits = count.checked_mul(width as usize).ok_or(Undecodable)?;
    let bytes = r.take(bits.div_ceil(8))?;
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let (mut acc, mut bits) = (0u128, 0u32);
    let mut next = bytes.iter();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        while bits < width {
            acc |= u128::from(*next.next().ok_or(Undecodable)?) << bits;
            bits += 8;
        }
        out.push(acc as u64 & mask);
        acc >>= width;
        bits -= width;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[i64]) -> usize {
        let mut bytes = Vec::new();
        encode(values, &mut bytes);
        let mut got = Vec::new();
        let mut r = Reader::new(&bytes);
        decode(&mut r, values.len(), &mut got).expect("decodes");
        assert_eq!(got, values);
        assert!(r.rest().is_empty(), "every byte is used");
        bytes.len()
    }

    // Protects: every form round-trips, extremes included, and the forms
    // are as small as their description says.
    #[test]
    fn forms_round_trip() {
        round_trip(&[]);
        round_trip(&[7]);
        assert_eq!(
            round_trip(&[5; 1000]),
            4,
            "a constant: min, factor, width 0"
        );
        let pages: Vec<i64> = (0..100).map(|i| (i % 7 - 3) * 4096).collect();
        assert_eq!(
            round_trip(&pages),
            1 + 2 + 1 + 1 + 38,
            "patched: factor 4096, 3 bits each"
        );
        let mostly_zero: Vec<i64> = (0..360).map(|i| if i % 20 == 0 { 5 } else { 0 }).collect();
        assert!(round_trip(&mostly_zero) < 360 / 8 + 8, "sparse");
        round_trip(&[i64::MIN, i64::MAX, 0, -1, 1]);
        round_trip(&[i64::MIN, 0, 0, 0, 0, 0, i64::MAX]);
        // A gauge moving by ±5 with two spikes: the spikes are patches.
        let mut spiky: Vec<i64> = (0..360).map(|i| [5, -5, 0][i % 3]).collect();
        spiky[100] = 765;
        spiky[101] = -765;
        assert!(
            round_trip(&spiky) < 360 * 2 / 8 + 16,
            "patched, 2 bits a value"
        );
        let mut sparse_spiky: Vec<i64> = (0..360).map(|i| if i % 4 == 0 { 5 } else { 0 }).collect();
        sparse_spiky[8] = i64::MIN;
        sparse_spiky[12] = i64::MAX;
        round_trip(&sparse_spiky);
        round_trip(&[i64::MIN, 0]);
        round_trip(&[i64::MIN, i64::MIN, 0, 0, 0, 0, 0]);
    }

    // Protects: damaged input is refused, never a panic or a huge read.
    #[test]
    fn garbage_is_undecodable() {
        for bytes in [
            &[][..],
            &[9],
            &[0, 0, 0, 65],
            &[0, 0, 0, 8, 1],
            &[0, 0, 2, 8],
            &[1, 0xff],
        ] {
            let mut out = Vec::new();
            assert!(
                decode(&mut Reader::new(bytes), 3, &mut out).is_err(),
                "{bytes:?}"
            );
        }
    }
}
