//! A `log` logger that writes to the system log, where a background mount
//! without `--log-file` sends its messages (integrity errors above all).
//! The libc calls are the only unsafe code here.
#![allow(unsafe_code)]

use std::ffi::CString;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Syslog;

fn priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

impl Log for Syslog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // The FUSE library's own chatter (such as its late attempt to
        // unmount what `chronicle umount` already unmounted) only if it is an error.
        let floor = if metadata.target().starts_with("fuser") {
            Level::Error
        } else {
            Level::Info
        };
        metadata.level() <= floor
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // A message with a NUL byte cannot be passed to syslog; drop the NULs.
        let text = format!("{}", record.args()).replace('\0', "");
        let Ok(message) = CString::new(text) else {
            return;
        };
        // SAFETY: the format is a static "%s" and its one argument a valid
        // NUL-terminated string that outlives the call.
        unsafe { libc::syslog(priority(record.level()), c"%s".as_ptr(), message.as_ptr()) };
    }

    fn flush(&self) {}
}

/// Sends log records at info level and above to syslog as "chronicle[PID]".
pub fn init() -> Result<(), log::SetLoggerError> {
    // SAFETY: the identity is a static NUL-terminated string, as openlog
    // keeps the pointer for later calls.
    unsafe { libc::openlog(c"chronicle".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    log::set_logger(&Syslog)?;
    log::set_max_level(LevelFilter::Info);
    Ok(())
}
