//! Framed record files (the WAL and the series log):
//!
//! ```text
//! [magic 8][version u32 LE]  then records: [len u32 LE][crc32 u32 LE][payload len bytes]
//! ```
//!
//! Recovery reads records until the end. A record cut short by a crash, or
//! whose checksum fails with nothing valid after it, is a torn tail: the
//! file is truncated to the last whole record. A bad record followed by a
//! valid one is corruption in the middle: an error, never silent loss.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{EngineError, IoContext, Result};

pub const HEADER_LEN: usize = 12;
pub const FRAME_OVERHEAD: usize = 8;
/// Largest payload accepted on reading; anything larger is corruption.
pub const MAX_PAYLOAD: usize = 256 << 20;

/// The records of a file, and where the valid prefix ends.
pub struct Recovered {
    pub records: Vec<Vec<u8>>,
    pub valid_len: u64,
    pub torn_bytes: u64,
}

pub fn header(magic: &[u8; 8], version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&version.to_le_bytes());
    h
}

pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses the frame starting at `at`, if it is whole and its checksum holds.
fn parse_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let head = bytes.get(at..at + FRAME_OVERHEAD)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, at + FRAME_OVERHEAD + len))
}

/// Whether any whole, valid frame starts somewhere after `from`: tells a
/// torn tail (nothing valid follows) from corruption in the middle.
fn valid_frame_after(bytes: &[u8], from: usize) -> bool {
    (from + 1..bytes.len().saturating_sub(FRAME_OVERHEAD))
        .any(|at| parse_at(bytes, at).is_some_and(|(payload, _)| !payload.is_empty()))
}

/// Reads every record of `path`, checking the header.
pub fn recover(path: &Path, magic: &[u8; 8], version: u32) -> Result<Recovered> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .context(|| format!("reading {}", path.display()))?;
    if bytes.len() < HEADER_LEN {
        // A crash between creating the file and writing its header.
        return Ok(Recovered {
            records: Vec::new(),
            valid_len: 0,
            torn_bytes: bytes.len() as u64,
        });
    }
    if bytes[..8] != magic[..] {
        return Err(EngineError::corrupt(path, "bad magic number"));
    }
    let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if found != version {
        return Err(EngineError::UnsupportedVersion {
            file: path.to_path_buf(),
            found,
        });
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        // An empty record is never written: eight zero bytes (a length of
        // 0 and the checksum of nothing) are a tail of zeros, which a crash
        // can leave where the length grew before the data came.
        match parse_at(&bytes, at).filter(|(payload, _)| !payload.is_empty()) {
            Some((payload, next)) => {
                records.push(payload.to_vec());
                at = next;
            }
            None if valid_frame_after(&bytes, at) => {
                return Err(EngineError::corrupt(
                    path,
                    format!("record at byte {at} fails its checksum, and valid records follow it"),
                ));
            }
            None => break,
        }
    }
    Ok(Recovered {
        records,
        valid_len: at as u64,
        torn_bytes: (bytes.len() - at) as u64,
    })
}

/// An append-only framed file.
pub struct RecordFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// Why appends are refused: one failed and its bytes could not be cut
    /// off, so the next would land before some of them (and leave whole
    /// stale records after it, which recovery would take as corruption).
    stuck: Option<String>,
}

impl RecordFile {
    /// Creates a new file with its header (durably, with the directory entry).
    pub fn create(path: &Path, magic: &[u8; 8], version: u32) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .context(|| format!("creating {}", path.display()))?;
        file.write_all(&header(magic, version))
            .and_then(|()| file.sync_all())
            .context(|| format!("writing {}", path.display()))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(RecordFile {
            file,
            path: path.to_path_buf(),
            len: HEADER_LEN as u64,
            stuck: None,
        })
    }

    /// Opens a recovered file for appending after its valid prefix,
    /// truncating a torn tail.
    pub fn reopen(path: &Path, valid_len: u64, magic: &[u8; 8], version: u32) -> Result<Self> {
        if valid_len < HEADER_LEN as u64 {
            std::fs::remove_file(path).context(|| format!("removing {}", path.display()))?;
            return Self::create(path, magic, version);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .context(|| format!("opening {}", path.display()))?;
        file.set_len(valid_len)
            .and_then(|()| file.sync_all())
            .context(|| format!("truncating the torn tail of {}", path.display()))?;
        Ok(RecordFile {
            file,
            path: path.to_path_buf(),
            len: valid_len,
            stuck: None,
        })
    }

    /// Appends already-framed bytes (one or more records). One that fails
    /// leaves nothing of itself: what it wrote is cut off.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let context = || format!("appending to {}", self.path.display());
        if let Some(why) = &self.stuck {
            return Err(EngineError::io(
                context(),
                std::io::Error::other(why.clone()),
            ));
        }
        if let Err(e) = self.file.write_all_at(framed, self.len) {
            if let Err(cut) = self.file.set_len(self.len) {
                self.stuck = Some(format!(
                    "an append failed ({e}) and could not be cut off ({cut}); open it again"
                ));
            }
            return Err(EngineError::io(context(), e));
        }
        self.len += framed.len() as u64;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with a new one holding `framed` (`replace_file`;
    /// appends go to the new one from here on). `Err`: the old file is
    /// still in place; `Ok(Err)`: the new one is, but the directory's sync
    /// failed, so a crash may bring the old one back.
    pub fn replace(
        &mut self,
        tmp: &Path,
        magic: &[u8; 8],
        version: u32,
        framed: &[u8],
    ) -> Result<Result<()>> {
        let (file, synced) = replace_file(tmp, &self.path, &[&header(magic, version), framed])?;
        self.file = file;
        self.len = (HEADER_LEN + framed.len()) as u64;
        self.stuck = None;
        Ok(synced)
    }

    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .context(|| format!("syncing {}", self.path.display()))
    }

    pub fn try_clone_file(&self) -> Result<File> {
        self.file
            .try_clone()
            .context(|| format!("duplicating the handle of {}", self.path.display()))
    }
}

/// Replaces `path` with a file holding `parts`: written to `tmp`, synced,
/// renamed over `path`, and the directory synced. `Err`: `path` is as it
/// was (and `tmp` is gone); `Ok((file, Err))`: the new file is in place,
/// but the directory's sync failed, so a crash may bring the old one back.
/// `file` is the new file, open for writing.
pub fn replace_file(tmp: &Path, path: &Path, parts: &[&[u8]]) -> Result<(File, Result<()>)> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(tmp)
        .context(|| format!("creating {}", tmp.display()))?;
    let written = parts
        .iter()
        .try_for_each(|part| file.write_all(part))
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", tmp.display()));
    if let Err(e) = written.and_then(|()| {
        std::fs::rename(tmp, path).context(|| format!("renaming {} into place", tmp.display()))
    }) {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    let synced = path.parent().map_or(Ok(()), sync_dir);
    Ok((file, synced))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = *b"TESTLOG1";

    fn write(path: &Path, records: &[&[u8]]) {
        let mut f = RecordFile::create(path, &MAGIC, 1).expect("create");
        let mut buf = Vec::new();
        for r in records {
            frame(r, &mut buf);
        }
        f.append(&buf).expect("append");
    }

    // Protects: the sizes drawn in docs/FORMAT.md.
    #[test]
    fn layout_matches_format_doc() {
        assert_eq!((HEADER_LEN, FRAME_OVERHEAD), (12, 8));
        let mut out = Vec::new();
        frame(b"abc", &mut out);
        assert_eq!(out.len(), FRAME_OVERHEAD + 3);
        assert_eq!(&out[..4], &3u32.to_le_bytes());
        assert_eq!(&out[4..8], &crc32fast::hash(b"abc").to_le_bytes());
    }

    // Protects: a torn tail (cut record, or garbage after the last record)
    // is dropped; what came before survives.
    #[test]
    fn torn_tails_recover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write(&path, &[b"one", b"two", b"three"]);
        let full = std::fs::read(&path).expect("read");
        for cut in [full.len() - 1, full.len() - 4, full.len() - 8] {
            std::fs::write(&path, &full[..cut]).expect("cut");
            let r = recover(&path, &MAGIC, 1).expect("recover");
            assert_eq!(
                r.records,
                vec![b"one".to_vec(), b"two".to_vec()],
                "cut at {cut}"
            );
        }
        let mut garbage = full.clone();
        garbage.extend_from_slice(&[0xAB; 37]);
        std::fs::write(&path, &garbage).expect("garbage");
        let r = recover(&path, &MAGIC, 1).expect("recover");
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.torn_bytes, 37);
        let mut reopened = RecordFile::reopen(&path, r.valid_len, &MAGIC, 1).expect("reopen");
        let mut buf = Vec::new();
        frame(b"four", &mut buf);
        reopened.append(&buf).expect("append");
        assert_eq!(recover(&path, &MAGIC, 1).expect("recover").records.len(), 4);
    }

    // Protects: a tail of zeros (a crash after the file grew, before its
    // data came) is a torn tail, not empty records nor corruption.
    #[test]
    fn a_tail_of_zeros_is_torn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write(&path, &[b"one", b"two"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &bytes).expect("zeros");
        let r = recover(&path, &MAGIC, 1).expect("recover");
        assert_eq!(r.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(r.torn_bytes, 4096);
    }

    // Protects: after an append that failed and could not be cut off,
    // appends are refused (the next would land before its bytes), until
    // the file is replaced.
    #[test]
    fn an_append_that_cannot_be_cut_off_stops_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, tmp) = (dir.path().join("log"), dir.path().join("log.tmp"));
        write(&path, &[b"one"]);
        let len = std::fs::metadata(&path).expect("len").len();
        let mut file = RecordFile {
            // Read-only: the write fails, and so does the cut.
            file: File::open(&path).expect("open"),
            path: path.clone(),
            len,
            stuck: None,
        };
        let mut two = Vec::new();
        frame(b"two", &mut two);
        assert!(file.append(&two).is_err());
        let refused = file.append(&two).expect_err("stuck");
        assert!(
            refused.to_string().contains("could not be cut off"),
            "{refused}"
        );
        file.replace(&tmp, &MAGIC, 1, &two)
            .expect("replaced")
            .expect("synced");
        file.append(&two).expect("appends again");
        assert_eq!(recover(&path, &MAGIC, 1).expect("recover").records.len(), 2);
    }

    // Protects: a replaced file holds only the new records, and appends
    // after the replacement land in it, not in the file it replaced.
    #[test]
    fn a_replaced_file_takes_the_appends_that_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, tmp) = (dir.path().join("log"), dir.path().join("log.tmp"));
        write(&path, &[b"one", b"two", b"three"]);
        let r = recover(&path, &MAGIC, 1).expect("recover");
        let mut file = RecordFile::reopen(&path, r.valid_len, &MAGIC, 1).expect("reopen");
        let mut kept = Vec::new();
        frame(b"two", &mut kept);
        file.replace(&tmp, &MAGIC, 1, &kept)
            .expect("replaced")
            .expect("synced");
        let mut more = Vec::new();
        frame(b"four", &mut more);
        file.append(&more).expect("append");
        let records = recover(&path, &MAGIC, 1).expect("recover").records;
        assert_eq!(records, vec![b"two".to_vec(), b"four".to_vec()]);
        assert!(!tmp.exists());
    }

    // Protects: a damaged record with valid records after it is an error.
    #[test]
    fn corruption_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write(&path, &[b"first record", b"second record", b"third record"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER_LEN + FRAME_OVERHEAD + 2] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let err = recover(&path, &MAGIC, 1).err().expect("corruption");
        assert!(matches!(err, EngineError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("log is corrupt"), "{err}");
    }
}
