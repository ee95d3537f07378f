//! `SEEK_DATA` and `SEEK_HOLE` in plaintext offsets, from the backing
//! file's own holes. A plaintext block is a hole when its whole stored
//! range is a hole in the backing file; since blocks are not aligned to
//! the backing file system's pages, a hole block beside data may be
//! reported as data, which POSIX allows.

use rustix::fs::SeekFrom;

use super::EncryptedFile;
use crate::error::{Result, VolumeError};
use crate::layout::{block_at, block_count, block_offset, BLOCK_SIZE};

impl EncryptedFile {
    /// The first offset at or after `offset` that holds data, or `None`
    /// past the end (ENXIO).
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        let state = self.state()?;
        let size = self.checked_size(&state)?;
        if offset >= size {
            return Ok(None);
        }
        if !self.valid_header(&state)?.sparse() {
            return Ok(Some(offset));
        }
        let block = offset / BLOCK_SIZE;
        let data = self
            .next_data_block(block)?
            .unwrap_or(block_count(size) - 1);
        Ok(Some(if data <= block {
            offset
        } else {
            data * BLOCK_SIZE
        }))
    }

    /// The first offset at or after `offset` that starts a hole (the end of
    /// the file counts as one), or `None` past the end (ENXIO).
    pub fn seek_hole(&self, offset: u64) -> Result<Option<u64>> {
        let state = self.state()?;
        let size = self.checked_size(&state)?;
        if offset >= size {
            return Ok(None);
        }
        if !self.valid_header(&state)?.sparse() {
            return Ok(Some(size));
        }
        let last = block_count(size) - 1;
        let mut block = offset / BLOCK_SIZE;
        while block < last {
            let hole_at = self.backing_seek(SeekFrom::Hole(block_offset(block)))?;
            // The first block that starts inside that backing hole.
            let candidate = match hole_at {
                Some(at) if at > block_offset(block) => block_at(at - 1) + 1,
                Some(_) => block,
                None => break,
            };
            if candidate >= last {
                break;
            }
            let data_at = self.backing_seek(SeekFrom::Data(block_offset(candidate)))?;
            if data_at.is_none_or(|at| at >= block_offset(candidate + 1)) {
                return Ok(Some((candidate * BLOCK_SIZE).max(offset)));
            }
            block = candidate + 1;
        }
        Ok(Some(size))
    }

    /// The first block at or after `block` with any data in the backing
    /// file, or `None` if only holes follow.
    pub(super) fn next_data_block(&self, block: u64) -> Result<Option<u64>> {
        Ok(self
            .backing_seek(SeekFrom::Data(block_offset(block)))?
            .map(|at| block_at(at).max(block)))
    }

    /// `lseek` with SEEK_DATA or SEEK_HOLE (`whence`, with its offset) on
    /// the backing file; `None` where it answers ENXIO (nothing of that kind
    /// after the offset).
    fn backing_seek(&self, whence: SeekFrom) -> Result<Option<u64>> {
        match rustix::fs::seek(&self.file, whence) {
            Ok(at) => Ok(Some(at)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(VolumeError::io(
                format!("seeking in {}", self.backing_path().display()),
                e.into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    #[test]
    fn block_of_backing_offsets() {
        assert_eq!(block_at(layout::HEADER_LEN as u64), 0);
        assert_eq!(block_at(block_offset(3) + 1), 3);
    }
}
