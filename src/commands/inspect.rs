//! `chronicle inspect`: what anyone who can read BACKING sees, without the
//! key. Checks that every file is a chronicle ciphertext file, measures how
//! random its bytes look, and searches the raw bytes for given plaintext.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::Result;
use chronicle_mount::layout::{self, FileHeader, HEADER_LEN};

use super::walk::walk;

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

/// What one raw file shows: its header, and which needles occur in it.
struct RawFile {
    len: u64,
    header: String,
    found: Vec<bool>,
}

/// Reads a raw file in 1 MiB chunks (a database file can be large),
/// counting byte frequencies past the header and searching for each needle
/// across chunk boundaries.
fn scan(path: &Path, needles: &[String], counts: &mut [u64; 256]) -> Result<RawFile> {
    let mut file = fs::File::open(path)?;
    let longest = needles.iter().map(String::len).max().unwrap_or(0);
    let mut found = vec![false; needles.len()];
    let mut window: Vec<u8> = Vec::with_capacity((1 << 20) + longest);
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
        window.extend_from_slice(data);
        for (needle, hit) in needles.iter().zip(found.iter_mut()) {
            let bytes = needle.as_bytes();
            if !bytes.is_empty() && window.windows(bytes.len()).any(|w| w == bytes) {
                *hit = true;
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

pub fn inspect(backing: &Path, needles: &[String]) -> Result<()> {
    chronicle_mount::VolumeConfig::load(backing)?;
    let entries = walk(backing)?;
    let mut counts = [0u64; 256];
    let (mut files, mut bad_headers) = (0u64, 0u64);
    let mut found = vec![0u64; needles.len()];
    println!(
        "{:<10} {:>12} {:>12}  file",
        "header", "raw bytes", "plaintext"
    );
    for entry in entries.iter().filter(|e| e.meta.is_file()) {
        files += 1;
        let path = backing.join(&entry.relative);
        let raw = scan(&path, needles, &mut counts)?;
        if raw.header.starts_with("BAD") || raw.header == "TORN" || raw.header == "NONE" {
            bad_headers += 1;
        }
        println!(
            "{:<10} {:>12} {:>12}  {}",
            raw.header,
            raw.len,
            layout::plaintext_size_lossy(raw.len),
            entry.relative.display()
        );
        for ((needle, hits), hit) in needles.iter().zip(found.iter_mut()).zip(&raw.found) {
            if *hit {
                *hits += 1;
                println!("FOUND plaintext {needle:?} in {}", path.display());
            }
        }
    }
    let h = entropy(&counts);
    println!();
    println!("Files: {files}");
    println!("Entropy of block bytes: {h:.4} bits per byte (8 is random; text is about 4.5)");
    for (needle, hits) in needles.iter().zip(&found) {
        println!("Search for {needle:?}: found in {hits} file(s)");
    }
    // Plaintext first: it is the finding a script asserting "no plaintext
    // here" must not miss behind another error.
    let matches: u64 = found.iter().sum();
    if matches > 0 {
        return Err(PlaintextFound(matches).into());
    }
    if bad_headers > 0 {
        return Err(BadHeaders(bad_headers).into());
    }
    println!("Every file is chronicle ciphertext.");
    Ok(())
}
