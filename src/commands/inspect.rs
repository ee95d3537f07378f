//! `chronicle inspect`: what anyone who can read BACKING sees, without the
//! key. Checks that every file is a chronicle ciphertext file, measures how
//! random its bytes look, and searches the raw bytes for given plaintext.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Result};
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

pub fn inspect(backing: &Path, needles: &[String]) -> Result<()> {
    chronicle_mount::VolumeConfig::load(backing)?;
    let entries = walk(backing)?;
    let mut counts = [0u64; 256];
    let (mut files, mut bad_headers) = (0u64, 0u64);
    let mut found = vec![0u64; needles.len()];
    let mut raw = Vec::new();
    println!(
        "{:<10} {:>12} {:>12}  file",
        "header", "raw bytes", "plaintext"
    );
    for entry in entries.iter().filter(|e| e.meta.is_file()) {
        files += 1;
        let path = backing.join(&entry.relative);
        raw.clear();
        fs::File::open(&path)?.read_to_end(&mut raw)?;
        let header = match raw.get(..HEADER_LEN) {
            None if raw.is_empty() => "empty".to_string(),
            None => "TORN".to_string(),
            Some(bytes) => {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(bytes);
                match FileHeader::decode(&h) {
                    Ok(_) => "CHRF v1".to_string(),
                    Err(e) => format!("BAD ({e})"),
                }
            }
        };
        if header.starts_with("BAD") || header == "TORN" {
            bad_headers += 1;
        }
        // The header is structure, not secret; measure the blocks.
        for &b in raw.iter().skip(HEADER_LEN) {
            counts[b as usize] += 1;
        }
        println!(
            "{header:<10} {:>12} {:>12}  {}",
            raw.len(),
            layout::plaintext_size_lossy(raw.len() as u64),
            entry.relative.display()
        );
        for (needle, hits) in needles.iter().zip(found.iter_mut()) {
            let n = needle.as_bytes();
            if !n.is_empty() && raw.windows(n.len()).any(|w| w == n) {
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
    if bad_headers > 0 {
        return Err(BadHeaders(bad_headers).into());
    }
    if found.iter().any(|&hits| hits > 0) {
        bail!("plaintext found in the backing directory");
    }
    println!("Every file is chronicle ciphertext.");
    Ok(())
}
