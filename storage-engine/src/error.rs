//! The engine's error type: each variant names the file or line at fault.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum EngineError {
    /// An operating-system error and what we were doing.
    Io { context: String, source: io::Error },
    /// Stored data failed its checksum or does not parse: names the file.
    Corrupt { file: PathBuf, detail: String },
    /// Another process holds the data directory.
    Locked { dir: PathBuf },
    /// A malformed line of line protocol or JSON input.
    BadInput { line: u64, detail: String },
    /// A query that cannot run (unknown function, bad regex...).
    BadQuery(String),
    /// Writes are refused until the database is reopened (an fsync failed).
    Broken(String),
    /// A write larger than one WAL record can hold.
    TooLarge(String),
    /// A write that would take the database past one of its limits.
    Limit(String),
    /// A format version this build cannot read.
    UnsupportedVersion { file: PathBuf, found: u32 },
}

impl EngineError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn corrupt(file: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        EngineError::Corrupt {
            file: file.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Io { context, source } => write!(f, "{context}: {source}"),
            EngineError::Corrupt { file, detail } => {
                write!(f, "{} is corrupt: {detail}", file.display())
            }
            EngineError::Locked { dir } => write!(
                f,
                "{} is in use by another process (only one may open a data directory)",
                dir.display()
            ),
            EngineError::BadInput { line, detail } => write!(f, "line {line}: {detail}"),
            EngineError::BadQuery(detail) => write!(f, "bad query: {detail}"),
            EngineError::Broken(why) => write!(
                f,
                "the database refuses writes until it is reopened: {why}"
            ),
            EngineError::TooLarge(what) | EngineError::Limit(what) => write!(f, "{what}"),
            EngineError::UnsupportedVersion { file, found } => write!(
                f,
                "{} has format version {found}, which this build cannot read \
                 (export the database with the chronicle that wrote it, then import it with this one)",
                file.display()
            ),
        }
    }
}

// No `source`: the message already ends with the I/O error's own, and
// `{:#}` (how the program prints errors) would show it twice.
impl std::error::Error for EngineError {}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| EngineError::Io {
            context: what(),
            source,
        })
    }
}
