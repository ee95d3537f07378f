//! Writes the fuzz targets' seed corpus (fuzz/corpus/TARGET/*): real files of
//! every kind each target parses, so that fuzzing starts from valid inputs
//! and mutates them, instead of from noise that fails the first check.
//!
//! cargo run --release --example fuzz_corpus -- fuzz/corpus

use std::fs;
use std::path::Path;
use std::sync::Arc;

use chronicle_engine::{Engine, Options, SyncPolicy};
use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::name_cipher::{BackingName, NameCipher};
use chronicle_mount::{SecretKey, UserKey, VolumeConfig};

/// The key the content and name targets open their inputs with.
const FUZZ_KEY: [u8; 32] = [0x5e; 32];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let out = Path::new(&out);
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes(FUZZ_KEY),
        Backend::Ring,
    ));
    content(&out.join("content_file"), &crypto)?;
    names(&out.join("names"), &crypto)?;
    config(&out.join("volume_config"))?;
    engine(&out.join("engine_dir"), &out.join("segment"))?;
    text(&out.join("line_protocol"), &out.join("jsonl"))?;
    Ok(())
}

fn content(dir: &Path, crypto: &Arc<ContentCrypto>) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let scratch = tempfile::tempdir()?;
    // Small files: libFuzzer mutates best around a few kilobytes. The
    // punched one carries the sparse flag and a hole.
    let shapes: [(&str, u64, bool); 5] = [
        ("empty", 0, false),
        ("one-byte", 1, false),
        ("one-block", 4096, false),
        ("three-and-a-bit", 3 * 4096 + 100, false),
        ("punched", 5 * 4096, true),
    ];
    for (name, len, punch) in shapes {
        let path = scratch.path().join(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let file = EncryptedFile::create(file, Arc::clone(crypto), path.clone())?;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_at(0, &data)?;
        if punch {
            file.punch_hole(4096, 2 * 4096)?;
        }
        fs::copy(&path, dir.join(name))?;
    }
    Ok(())
}

fn names(dir: &Path, crypto: &Arc<ContentCrypto>) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let cipher = NameCipher::new(crypto);
    let dir_id = [7u8; 16];
    for (i, name) in ["a", "seg-000001.seg", &"x".repeat(175), &"y".repeat(255)]
        .iter()
        .enumerate()
    {
        match cipher.encrypt_name(&dir_id, std::ffi::OsStr::new(name)) {
            BackingName::Short(stored) => {
                fs::write(dir.join(format!("name{i}")), stored.as_encoded_bytes())?
            }
            BackingName::Long { encoded, .. } => fs::write(dir.join(format!("long{i}")), encoded)?,
        }
    }
    fs::write(
        dir.join("target"),
        cipher
            .seal_target(std::ffi::OsStr::new("../data/wal"))
            .as_encoded_bytes(),
    )?;
    fs::write(dir.join("dirid"), cipher.new_dir_id().1)?;
    Ok(())
}

fn config(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    let master = SecretKey::from_bytes([3; 32]);
    let raw = VolumeConfig::create(
        &master,
        &UserKey::Raw(SecretKey::from_bytes([1; 32])),
        None,
        chronicle_mount::names::NameMode::Encrypted,
    )?;
    fs::write(dir.join("raw-key"), raw.encode())?;
    let params = chronicle_mount::KdfParams::with_cost(8, 1)?;
    let pass = UserKey::Passphrase(zeroize::Zeroizing::new("fuzz".into()));
    let pass = VolumeConfig::create(
        &master,
        &pass,
        Some(params),
        chronicle_mount::names::NameMode::Plaintext,
    )?;
    fs::write(dir.join("passphrase"), pass.encode())?;
    Ok(())
}

/// An engine directory packed as engine_dir reads it: four length bytes
/// (each times 16) and the WAL, series log and manifest, then the segment.
fn engine(dir: &Path, segments: &Path) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(dir)?;
    fs::create_dir_all(segments)?;
    let scratch = tempfile::tempdir()?;
    let db = scratch.path().join("db");
    let options = Options {
        sync: SyncPolicy::Never,
        memtable_points: 500,
        retention: None,
        ..Options::default()
    };
    {
        let engine = Engine::open(&db, options)?;
        let mut lines = String::new();
        for i in 0..800 {
            lines.push_str(&format!(
                "cpu,host=h{} value={} {}\n",
                i % 3,
                i as f64 * 0.5,
                1_700_000_000_000_000_000i64 + i * 10_000_000_000
            ));
        }
        engine.write_lines(lines.as_bytes(), 1)?;
    }
    let mut wal = Vec::new();
    let mut segment = Vec::new();
    for entry in fs::read_dir(&db)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("wal-") && wal.is_empty() {
            wal = fs::read(&path)?;
        }
        if name.starts_with("seg-") && segment.is_empty() {
            segment = fs::read(&path)?;
        }
    }
    let series = fs::read(db.join("series.log")).unwrap_or_default();
    let manifest = fs::read(db.join("MANIFEST")).unwrap_or_default();
    let pad = |mut v: Vec<u8>| {
        v.truncate(255 * 16);
        let len = v.len().div_ceil(16);
        v.resize(len * 16, b' ');
        (len as u8, v)
    };
    let (lw, wal) = pad(wal);
    let (ls, series) = pad(series);
    let (lm, manifest) = pad(manifest);
    let mut packed = vec![lw, ls, lm, 0];
    packed.extend_from_slice(&wal);
    packed.extend_from_slice(&series);
    packed.extend_from_slice(&manifest);
    packed.extend_from_slice(&segment);
    fs::write(dir.join("engine"), packed)?;
    if !segment.is_empty() {
        fs::write(segments.join("segment"), segment)?;
    }
    Ok(())
}

fn text(lines: &Path, jsonl: &Path) -> Result<(), Box<dyn std::error::Error>> {
    fs::create_dir_all(lines)?;
    fs::create_dir_all(jsonl)?;
    fs::write(
        lines.join("points"),
        "cpu,host=a,region=eu\\ west usage=0.5,idle=99i 1700000000000000000\nmem free=4096i\nweird\\,name,t\\=k=v f=\"s\" 1\n",
    )?;
    fs::write(
        jsonl.join("points"),
        "{\"metric\":\"cpu\",\"tags\":{\"host\":\"a\"},\"field\":\"value\",\"time\":1700000000000000000,\"value\":0.5}\n",
    )?;
    Ok(())
}
