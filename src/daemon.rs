//! Detaching a background mount: fork, new session, standard streams on
//! /dev/null, and a pipe on which the child tells the waiting parent whether
//! the mount is serving. Unsafe code of the binary lives here and in
//! `hygiene` only.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsRawFd;

/// Which side of the fork we are on.
pub enum Side {
    /// Wait on the reader for the child's verdict.
    Parent(PipeReader),
    /// Report on the writer once mounted (or failed), then serve.
    Child(PipeWriter),
}

/// Forks. The caller must still be single-threaded: only the calling thread
/// survives in the child.
pub fn fork() -> io::Result<Side> {
    let (reader, writer) = io::pipe()?;
    // SAFETY: the process is single-threaded at this point (the mount's
    // threads start after this call, in the child), so the child does not
    // inherit locks held by threads that no longer exist.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(reader);
            detach()?;
            Ok(Side::Child(writer))
        }
        _ => {
            drop(writer);
            Ok(Side::Parent(reader))
        }
    }
}

/// New session (no controlling terminal), working directory `/`, standard
/// streams on /dev/null so that `$(chronicle mount ...)` does not hang.
fn detach() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: both descriptors are valid: `null` is open and 0..=2 are
        // the standard streams, which dup2 replaces atomically.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child's verdict, as the parent reads it.
pub enum Verdict {
    Ready,
    Failed(String),
}

pub fn report(mut writer: PipeWriter, verdict: &Verdict) {
    let line = match verdict {
        Verdict::Ready => "ready\n".to_string(),
        Verdict::Failed(message) => format!("failed {message}\n"),
    };
    // The parent may have been killed; then nobody is waiting for this.
    let _ = writer.write_all(line.as_bytes());
}

pub fn await_verdict(mut reader: PipeReader) -> Verdict {
    let mut text = String::new();
    if let Err(e) = reader.read_to_string(&mut text) {
        return Verdict::Failed(format!("lost contact with the mount process: {e}"));
    }
    match text.lines().next() {
        Some("ready") => Verdict::Ready,
        Some(line) => Verdict::Failed(line.trim_start_matches("failed ").to_string()),
        None => Verdict::Failed("the mount process exited before the file system was ready".into()),
    }
}
