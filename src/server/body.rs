//! Response bodies: whole ones (JSON, text, empty) and a stream fed by a
//! blocking task through a bounded channel, so that an export of any size
//! holds only a few chunks in memory and stops when the client goes away.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

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

/// A streaming body and the writer that feeds it. Dropping the writer ends
/// the body; `ChannelWriter::fail` ends it with an error, which aborts the
/// response (the client sees a truncated chunked body, not a complete one).
pub fn channel() -> (ChannelWriter, Body) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    (ChannelWriter { tx }, ChannelBody { rx }.boxed())
}

pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChannelWriter {
    pub fn fail(&self, error: io::Error) {
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl io::Write for ChannelWriter {
    /// Blocks while the client is behind (the channel is full); fails once
    /// the client has gone away.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|result| result.map(Frame::data)))
    }
}
