//! Bit-level writer and reader for the Gorilla encodings.

#[derive(Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0 means a new byte is needed).
    used: u8,
}

impl BitWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if bit {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 0x80 >> self.used;
            }
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `count` bits of `value`, most significant first.
    pub fn write_bits(&mut self, value: u64, count: u8) {
        let mut remaining = count;
        while remaining > 0 {
            if self.used == 0 {
                self.bytes.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(remaining);
            let shift = remaining - take;
            let chunk = ((value >> shift) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= chunk << (free - take);
            }
            self.used = (self.used + take) % 8;
            remaining -= take;
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Ran out of bits: the encoded data is truncated or corrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBits;

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    pub fn read_bit(&mut self) -> Result<bool, OutOfBits> {
        let byte = *self.bytes.get(self.pos / 8).ok_or(OutOfBits)?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Ok(bit)
    }

    pub fn read_bits(&mut self, count: u8) -> Result<u64, OutOfBits> {
        let mut out = 0u64;
        let mut remaining = count;
        while remaining > 0 {
            let byte = *self.bytes.get(self.pos / 8).ok_or(OutOfBits)?;
            let offset = (self.pos % 8) as u8;
            let avail = 8 - offset;
            let take = avail.min(remaining);
            let chunk = (byte >> (avail - take)) & ((1u16 << take) - 1) as u8;
            out = (out << take) | u64::from(chunk);
            self.pos += take as usize;
            remaining -= take;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: bits written come back in order, across byte boundaries.
    #[test]
    fn round_trip() {
        let mut w = BitWriter::new();
        let items: Vec<(u64, u8)> = vec![
            (1, 1),
            (0b101, 3),
            (0xDEAD_BEEF, 32),
            (u64::MAX, 64),
            (0, 7),
            (3, 2),
        ];
        for &(v, n) in &items {
            w.write_bits(v, n);
        }
        w.write_bit(true);
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, n) in &items {
            assert_eq!(r.read_bits(n), Ok(v), "{n} bits");
        }
        assert_eq!(r.read_bit(), Ok(true));
    }
}
