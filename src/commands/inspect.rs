//! `chronicle inspect`: what anyone who can read BACKING sees, without the
//! key. Checks that every file is a chronicle ciphertext file, measures how
//! random its bytes look, and searches the raw bytes for given plaintext.

use std::fs;
use std::io::Read;
use std::path::Path;

use std::os::unix::ffi::OsStrExt;

use anyhow::Result;
use chronicle_mount::layout::{self, FileHeader, HEADER_LEN};
use chronicle_mount::tree::{self, Root, Visit, Visitor};
use rustix::fs::{FileType, OFlags};

/// The error `inspect` ends with when a header is not a chronicle header (exit 26).
#[derive(Debug)]
pub struct BadHeaders(pub u64);

impl std::fmt::Display for BadHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} file(s) do not start with a valid chronicle header",
            self.0
        )
    }
}

impl std::error::Error for BadHeaders {}

/// The error `inspect` ends with when a searched text was found (exit 3).
#[derive(Debug)]
pub struct PlaintextFound(pub u64);

impl std::fmt::Display for PlaintextFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plaintext found in the backing directory ({} match(es) above)",
            self.0
        )
    }
}

impl std::error::Error for PlaintextFound {}

/// Shannon entropy, in bits per byte, of a byte histogram.
pub fn entropy(counts: &[u64; 256]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

/// What one raw file shows: its header, and where each needle first occurs.
struct RawFile {
    len: u64,
    header: String,
    found: Vec<Option<u64>>,
}

/// Reads a raw file in 1 MiB chunks (a database file can be large),
/// counting byte frequencies past the header and searching for each needle
/// across chunk boundaries.
fn scan(mut file: fs::File, needles: &[String], counts: &mut [u64; 256]) -> Result<RawFile> {
    let longest = needles.iter().map(String::len).max().unwrap_or(0);
    let mut found = vec![None; needles.len()];
    let mut window: Vec<u8> = Vec::with_capacity((1 << 20) + longest);
    // File offset of window[0].
    let mut window_at = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut head = Vec::with_capacity(HEADER_LEN);
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        let data = &chunk[..n];
        let skip = (HEADER_LEN as u64).saturating_sub(offset).min(n as u64) as usize;
        head.extend_from_slice(&data[..skip]);
        for &b in &data[skip..] {
            counts[b as usize] += 1;
        }
        // Keep the tail of the previous chunk so a needle split across
        // two reads is still found.
        let keep = window.len().saturating_sub(longest.saturating_sub(1));
        window.drain(..keep);
        window_at += keep as u64;
        window.extend_from_slice(data);
        for (needle, hit) in needles.iter().zip(found.iter_mut()) {
            let bytes = needle.as_bytes();
            if hit.is_none() && !bytes.is_empty() {
                *hit = window
                    .windows(bytes.len())
                    .position(|w| w == bytes)
                    .map(|at| window_at + at as u64);
            }
        }
        offset += n as u64;
    }
    let header = match <[u8; HEADER_LEN]>::try_from(head.as_slice()) {
        Err(_) if head.is_empty() => "NONE".to_string(),
        Err(_) => "TORN".to_string(),
        Ok(h) => match FileHeader::decode(&h) {
            Ok(_) => format!("CHRF v{}", layout::FILE_VERSION),
            Err(e) => format!("BAD ({e})"),
        },
    };
    Ok(RawFile {
        len: offset,
        header,
        found,
    })
}

/// Inspects every entry of the backing tree as it is walked.
struct Inspector<'a> {
    backing: &'a Path,
    needles: &'a [String],
    counts: [u64; 256],
    files: u64,
    bad_headers: u64,
    /// Matches per needle: in contents, names and symlink targets.
    found: Vec<u64>,
}

impl Inspector<'_> {
    fn search_text(&mut self, text: &[u8], what: &str, path: &Path) {
        for (needle, hits) in self.needles.iter().zip(self.found.iter_mut()) {
            let bytes = needle.as_bytes();
            if !bytes.is_empty() && text.windows(bytes.len()).any(|w| w == bytes) {
                *hits += 1;
                println!(
                    "FOUND plaintext {needle:?} in the {what} {}",
                    path.display()
                );
            }
        }
    }

    fn file(&mut self, visit: &Visit) -> Result<()> {
        self.files += 1;
        let path = self.backing.join(visit.relative);
        let raw = scan(visit.open(OFlags::RDONLY)?, self.needles, &mut self.counts)?;
        if raw.header.starts_with("BAD") || raw.header == "TORN" || raw.header == "NONE" {
            self.bad_headers += 1;
        }
        println!(
            "{:<10} {:>12} {:>12}  {}",
            raw.header,
            raw.len,
            layout::plaintext_size_lossy(raw.len),
            visit.relative.display()
        );
        for ((needle, hits), at) in self
            .needles
            .iter()
            .zip(self.found.iter_mut())
            .zip(&raw.found)
        {
            if let Some(at) = at {
                *hits += 1;
                println!(
                    "FOUND plaintext {needle:?} in {} at offset {at}",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

impl Visitor for Inspector<'_> {
    fn entry(&mut self, visit: &Visit) -> std::io::Result<()> {
        let path = self.backing.join(visit.relative);
        self.search_text(visit.name.as_bytes(), "name", &path);
        match visit.kind() {
            FileType::RegularFile => self.file(visit).map_err(std::io::Error::other),
            FileType::Symlink => {
                let target = visit.read_link()?;
                self.search_text(target.as_bytes(), "symlink target of", &path);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

pub fn inspect(backing: &Path, needles: &[String]) -> Result<()> {
    let mode = chronicle_mount::VolumeConfig::load(backing)?.name_mode();
    println!(
        "{:<10} {:>12} {:>12}  file",
        "header", "raw bytes", "plaintext"
    );
    let mut inspector = Inspector {
        backing,
        needles,
        counts: [0; 256],
        files: 0,
        bad_headers: 0,
        found: vec![0; needles.len()],
    };
    tree::walk(backing, Root::Volume(mode), &mut inspector)?;
    let h = entropy(&inspector.counts);
    println!();
    println!("Files: {}", inspector.files);
    println!("Entropy of block bytes: {h:.4} bits per byte (8 is random; text is about 4.5)");
    for (needle, hits) in needles.iter().zip(&inspector.found) {
        println!("Search for {needle:?}: found {hits} time(s)");
    }
    // Plaintext first: it is the finding a script asserting "no plaintext
    // here" must not miss behind another error.
    let matches: u64 = inspector.found.iter().sum();
    if matches > 0 {
        return Err(PlaintextFound(matches).into());
    }
    if inspector.bad_headers > 0 {
        return Err(BadHeaders(inspector.bad_headers).into());
    }
    println!("Every file is chronicle ciphertext.");
    Ok(())
}
