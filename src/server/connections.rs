//! How many client connections are served at once, and for how long one
//! that makes no progress keeps its place. Every connection holds a
//! descriptor, and the engine needs descriptors of its own (a flush
//! creates segments, a compaction merges them): connections beyond the
//! limit wait in the kernel's listen queue instead of taking them.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

/// Descriptors kept for the database (its WAL, lock and manifest, the
/// segments a flush or compaction writes) and the runtime, whatever the
/// clients do.
const DESCRIPTORS_KEPT: u64 = 256;

/// The default limit where descriptors allow it.
const DEFAULT_CONNECTIONS: u64 = 1024;

/// How long an answer may make no progress (the client reads none of it)
/// before its connection is closed, giving its place to another.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// How many connections to serve at once with `open_files` descriptors:
/// the number asked for, if it leaves `DESCRIPTORS_KEPT`; by default as
/// many as leave them, up to `DEFAULT_CONNECTIONS`.
pub fn limit(asked: Option<usize>, open_files: u64) -> Result<usize> {
    let room = open_files.saturating_sub(DESCRIPTORS_KEPT);
    match asked {
        Some(0) => anyhow::bail!("--max-connections must be at least 1"),
        Some(n) if n as u64 > room => anyhow::bail!(
            "--max-connections {n} leaves too few of this process's {open_files} open files \
             for the database (it keeps {DESCRIPTORS_KEPT}): ask for at most {room}, or raise \
             the limit (ulimit -n, LimitNOFILE=)"
        ),
        Some(n) => Ok(n),
        None if room == 0 => anyhow::bail!(
            "an open-file limit of {open_files} leaves no connections beside the {DESCRIPTORS_KEPT} \
             descriptors kept for the database: raise it (ulimit -n, LimitNOFILE=)"
        ),
        None => Ok(room.min(DEFAULT_CONNECTIONS) as usize),
    }
}

/// The connections being served, against their limit.
pub struct Connections {
    /// One permit per connection served; the accept loop takes one before
    /// it accepts.
    permits: Arc<Semaphore>,
    limit: usize,
    open: Arc<AtomicUsize>,
}

impl Connections {
    pub fn new(limit: usize) -> Connections {
        Connections {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits until one more connection may be served.
    pub async fn room(&self) -> Room {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        Room(permit)
    }

    /// Starts serving `stream` in `room`: the stream closes itself when an
    /// answer makes no progress for `WRITE_STALL`, and the returned value
    /// holds the place until it is dropped.
    pub fn serve(
        &self,
        room: Room,
        stream: TcpStream,
    ) -> (Served, Pin<Box<TimeoutStream<TcpStream>>>) {
        self.open.fetch_add(1, Ordering::Relaxed);
        let served = Served {
            _permit: room.0,
            open: Arc::clone(&self.open),
        };
        let mut stream = TimeoutStream::new(stream);
        stream.set_write_timeout(Some(WRITE_STALL));
        (served, Box::pin(stream))
    }

    /// Whether every place is taken now.
    pub fn full(&self) -> bool {
        self.permits.available_permits() == 0
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// A place for one connection, not yet taken by one.
pub struct Room(OwnedSemaphorePermit);

/// A connection being served: its place, and its count in the
/// connections open, both given back when it ends.
pub struct Served {
    _permit: OwnedSemaphorePermit,
    open: Arc<AtomicUsize>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_the_database() {
        assert_eq!(limit(None, 20_000).ok(), Some(1024));
        assert_eq!(limit(None, 1024).ok(), Some(768));
        assert_eq!(limit(None, 257).ok(), Some(1));
        assert!(limit(None, 256).is_err());
        assert_eq!(limit(Some(4), 1024).ok(), Some(4));
        assert_eq!(limit(Some(768), 1024).ok(), Some(768));
        let Err(refused) = limit(Some(769), 1024) else {
            panic!("769 of 1024 descriptors accepted");
        };
        assert!(
            refused.to_string().contains("ask for at most 768"),
            "{refused}"
        );
        assert!(limit(Some(0), 1024).is_err());
    }
}
