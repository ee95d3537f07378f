//! Response bodies: whole ones (JSON, text, empty) and a stream fed by a
//! blocking task through a bounded channel, so that an export of any size
//! holds only a few chunks in memory and stops when the client goes away.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, io::Error>;

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

pub fn bytes(
    status: StatusCode,
    content_type: &'static str,
    data: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(
        Full::new(data.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes(status, "application/json", format!("{value}\n"))
}

/// The error body the InfluxDB APIs use: `{"error": "..."}`, plus the
/// line number when a line is at fault.
pub fn error(status: StatusCode, message: &str, line: Option<u64>) -> Response<Body> {
    let mut doc = serde_json::json!({ "error": message });
    if let Some(line) = line {
        doc["line"] = line.into();
    }
    json(status, &doc)
}

/// Chunks handed from a blocking producer to the response, a few at a time.
const CHANNEL_CHUNKS: usize = 4;

/// A streaming body and the writer that feeds it. `ChannelWriter::finish`
/// ends the body; if the writer is dropped without it (an error, a client
/// that stopped reading), the body ends with an error, which aborts the
/// response: the client sees a truncated chunked body, never one that
/// looks complete.
pub fn channel() -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (
        ChannelWriter { tx },
        ChannelBody {
            rx,
            finished: false,
        }
        .boxed(),
    )
}

pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChannelWriter {
    /// Ends the body: everything was written.
    pub fn finish(self) -> io::Result<()> {
        // The end marker: `write` never sends an empty chunk.
        self.send(Ok(Bytes::new()))
    }

    /// Sends one item, waiting while the client is behind (the channel is
    /// full) for at most `STALLED_CLIENT`.
    fn send(&self, item: io::Result<Bytes>) -> io::Result<()> {
        let mut item = item;
        let deadline = std::time::Instant::now() + STALLED_CLIENT;
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the client went away",
                    ))
                }
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if std::time::Instant::now() > deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client stopped reading",
                        ));
                    }
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

/// How long a client may leave a streamed answer unread before the
/// producer gives up (and frees its thread).
const STALLED_CLIENT: Duration = Duration::from_secs(60);

impl io::Write for ChannelWriter {
    /// Waits while the client is behind (the channel is full), for at most
    /// `STALLED_CLIENT`; fails once the client has gone away.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.send(Ok(Bytes::copy_from_slice(buf)))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    finished: bool,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|chunk| match chunk {
            Some(Ok(data)) if data.is_empty() => {
                self.finished = true;
                None
            }
            Some(result) => Some(result.map(Frame::data)),
            None => Some(Err(io::Error::other("the answer ended early"))),
        })
    }
}
