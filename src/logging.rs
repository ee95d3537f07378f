//! Log destinations: standard error for commands and foreground mounts; for
//! a background mount, whose standard error is gone, a file if given and
//! the system log otherwise.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

fn builder(default_level: &str) -> env_logger::Builder {
    let env = env_logger::Env::default().filter_or("RUST_LOG", default_level);
    env_logger::Builder::from_env(env)
}

/// Warnings and errors on standard error (RUST_LOG overrides).
pub fn init_cli() {
    let _ = builder("warn")
        .format_timestamp(None)
        .format_target(false)
        .try_init();
}

/// A foreground mount logs what it does.
pub fn init_foreground() {
    let _ = builder(MOUNT_LEVELS).try_init();
}

/// What a mount logs by default: its own messages from info up, the FUSE
/// library's only when they are errors (RUST_LOG overrides).
const MOUNT_LEVELS: &str = "info,fuser=error";

/// A background mount logs to `path` if given, else to syslog.
pub fn init_background(path: Option<&Path>) -> Result<()> {
    let Some(path) = path else {
        return crate::syslog::init().context("installing the syslog logger");
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    let target: Box<dyn Write + Send> = Box::new(file);
    let mut b = builder(MOUNT_LEVELS);
    b.target(env_logger::Target::Pipe(target));
    b.try_init().context("installing the logger")
}
