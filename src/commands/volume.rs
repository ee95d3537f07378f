//! `init`, `info` and `speed`: creating and describing volumes.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use chronicle_mount::cipher::{self, Backend};
use chronicle_mount::config::VolumeFeatures;
use chronicle_mount::config::{config_path, KeySource};
use chronicle_mount::names::NameMode;
use chronicle_mount::{KdfParams, UserKey, Volume, VolumeConfig};
use serde_json::json;

use crate::cli::{KdfArgs, KeyArgs};
use crate::keysource::{self, Purpose};

pub fn kdf_params(user: &UserKey, kdf: &KdfArgs) -> Result<Option<KdfParams>> {
    Ok(match user {
        UserKey::Passphrase(_) => Some(KdfParams::with_cost(
            kdf.kdf_memory_mib.saturating_mul(1024),
            kdf.kdf_iterations,
        )?),
        UserKey::Raw(_) => None,
    })
}

/// `--plaintext-names` and `--xattrs` as the library's volume features.
pub fn features(plaintext_names: bool, xattrs: bool) -> VolumeFeatures {
    VolumeFeatures {
        names: if plaintext_names {
            NameMode::Plaintext
        } else {
            NameMode::Encrypted
        },
        xattrs,
    }
}

pub fn init(backing: &Path, key: &KeyArgs, kdf: &KdfArgs, features: VolumeFeatures) -> Result<()> {
    let backing = &chronicle_mount::volume::resolve_named_dir(backing)?;
    let user = keysource::resolve(key, Purpose::Create, "CHRONICLE_PASSPHRASE")?;
    let params = kdf_params(&user, kdf)?;
    let volume = Volume::init(backing, &user, params, features)?;
    println!(
        "Created an encrypted volume in {} ({}).",
        backing.display(),
        volume.config().key_source.describe()
    );
    println!(
        "Mount it with: chronicle mount {} MOUNTPOINT",
        backing.display()
    );
    println!("Keep the key safe and apart from backups: without it the data cannot be read.");
    Ok(())
}

pub fn info(backing: &Path, as_json: bool) -> Result<()> {
    let config = VolumeConfig::load(backing)?;
    let acc = chronicle_mount::volume::usage(backing)?;
    let overhead = if acc.plaintext_bytes > 0 {
        (acc.ciphertext_bytes as f64 / acc.plaintext_bytes as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    let volume_id = hex::encode(config.volume_id);
    let (kdf_json, source_name) = match config.key_source {
        KeySource::RawKey => (serde_json::Value::Null, "raw key"),
        KeySource::Passphrase(p) => (
            json!({"algorithm": "argon2id", "memory_kib": p.memory_kib,
                   "iterations": p.iterations, "parallelism": p.parallelism}),
            "passphrase",
        ),
    };
    if as_json {
        let doc = json!({
            "encrypted": true,
            "algorithm": "AES-256-GCM",
            "block_size": config.block_size,
            "format_version": config.format_version,
            "key_source": source_name,
            "kdf": kdf_json,
            "volume_id": volume_id,
            "feature_flags": config.features,
            "file_names": names_word(&config),
            "extended_attributes": config.xattrs(),
            "config_path": config_path(backing),
            "files": acc.files,
            "directories": acc.directories,
            "plaintext_bytes": acc.plaintext_bytes,
            "ciphertext_bytes": acc.ciphertext_bytes,
        });
        println!("{doc}");
        return Ok(());
    }
    println!("Encrypted: true");
    println!("Algorithm: AES-256-GCM");
    println!("Block size: {}", config.block_size);
    println!("Format version: {}", config.format_version);
    println!("Key source: {}", config.key_source.describe());
    println!("Volume ID: {volume_id}");
    println!("Feature flags: {:#x}", config.features);
    println!("Names: {}", names_word(&config));
    println!(
        "Extended attributes: {}",
        if config.xattrs() {
            "user.* stored, sealed"
        } else {
            "not stored (init --xattrs)"
        }
    );
    println!("Files: {}", acc.files);
    println!("Directories: {}", acc.directories);
    println!("Plaintext bytes: {}", acc.plaintext_bytes);
    println!(
        "Ciphertext bytes: {} ({overhead:.1}% overhead)",
        acc.ciphertext_bytes
    );
    Ok(())
}

fn names_word(config: &VolumeConfig) -> &'static str {
    match config.name_mode() {
        NameMode::Encrypted => "encrypted",
        NameMode::Plaintext => "plaintext",
    }
}

/// `chronicle path`: a plaintext path to its backing path, or back.
pub fn map_path(backing: &Path, path: &Path, key: &KeyArgs, to_plain: bool) -> Result<()> {
    let user = keysource::resolve(key, Purpose::Open, "CHRONICLE_PASSPHRASE")?;
    let volume = Volume::open(backing, &user)?;
    let relative = path.strip_prefix(backing).unwrap_or(path);
    let relative = relative.strip_prefix("/").unwrap_or(relative);
    if to_plain {
        println!("{}", volume.plain_path(relative)?.display());
    } else {
        println!("{}", backing.join(volume.backing_path(relative)?).display());
    }
    Ok(())
}

pub fn speed() -> Result<()> {
    println!("AES-256-GCM over 4 KiB blocks, one core:");
    let best = cipher::fastest();
    for backend in Backend::ALL {
        let t = cipher::measure(backend, Duration::from_millis(600));
        let mark = if backend == best { "  (used)" } else { "" };
        println!(
            "  {:<22} seal {:>7.0} MB/s   open {:>7.0} MB/s{mark}",
            backend.name(),
            t.seal_mb_per_s,
            t.open_mb_per_s
        );
    }
    Ok(())
}
