//! `POST /write` and `POST /api/v2/write`: line protocol as the InfluxDB 1.x
//! and 2.x clients send it.
//!
//! A request is all or nothing. Its body is received whole (within the size
//! limit) before anything is written, so a client that disconnects part-way
//! leaves nothing behind; then the engine writes it as one WAL batch, which
//! a malformed line rejects whole. The answer (204) comes only once the
//! batch is durable under the server's sync policy; concurrent requests
//! share one fsync (the engine's group commit).

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chronicle_engine::lineproto::Precision;
use chronicle_engine::EngineError;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use hyper::{Request, Response, StatusCode};

use super::body::{self, Body};
use super::metrics::Slot;
use super::App;

/// Points one request may carry: InfluxDB clients send batches of a few
/// thousand lines; this bounds the memory one request takes while it is
/// parsed (about 50 bytes a point) whatever --max-body-size is.
pub const MAX_POINTS_PER_REQUEST: usize = 1_000_000;

/// How long a request body may take to arrive, so that slow clients cannot
/// hold the write slots (`App::write_permits`) for ever.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn write(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let precision = match precision(request.uri().query()) {
        Ok(p) => p,
        Err(message) => return body::error(StatusCode::BAD_REQUEST, &message, None),
    };
    let gzip = match request.headers().get(CONTENT_ENCODING).map(|v| v.to_str()) {
        None | Some(Ok("identity")) => false,
        Some(Ok("gzip")) => true,
        Some(_) => {
            return body::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be gzip or identity",
                None,
            )
        }
    };
    let limit = app.max_body_bytes;
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Refused before a byte of the body is read.
        return too_large(limit);
    }
    // Bounds the memory that bodies in flight take (see App::write_permits).
    // Held until the write is done: the body stays in memory until then.
    let _permit = match super::take_slot(&app, Slot::Write, app.write_permits.acquire()).await {
        Ok(permit) => permit,
        Err(answer) => return answer,
    };
    let collect = Limited::new(request.into_body(), limit).collect();
    let received = match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(limit),
        Ok(Err(e)) => {
            // Usually the client went away: it will not see this answer,
            // and nothing of its request was written.
            let message = format!("the request body was not received whole: {e}");
            return body::error(StatusCode::BAD_REQUEST, &message, None);
        }
        Err(_) => {
            let message = format!("the request body took over {BODY_TIMEOUT:?} to arrive");
            return body::error(StatusCode::REQUEST_TIMEOUT, &message, None);
        }
    };
    let engine = Arc::clone(&app.engine);
    // Decompression and parsing take CPU: off the async workers.
    let written = tokio::task::spawn_blocking(move || {
        let text = if gzip {
            gunzip(&received, limit)?
        } else {
            received
        };
        engine
            .write_lines_in(&text, 1, precision, MAX_POINTS_PER_REQUEST)
            .map_err(Refused::Engine)
    })
    .await;
    match written {
        Ok(Ok(points)) => {
            app.metrics.write_acknowledged(points, started.elapsed());
            body::empty(StatusCode::NO_CONTENT)
        }
        Ok(Err(Refused::TooLarge)) => too_large(limit),
        Ok(Err(Refused::Gzip(e))) => body::error(
            StatusCode::BAD_REQUEST,
            &format!("the gzip body does not decompress: {e}"),
            None,
        ),
        Ok(Err(Refused::Engine(EngineError::BadInput { line, detail }))) => body::error(
            StatusCode::BAD_REQUEST,
            &format!("line {line}: {detail}"),
            Some(line),
        ),
        Ok(Err(Refused::Engine(e @ EngineError::TooLarge(_)))) => {
            body::error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None)
        }
        Ok(Err(Refused::Engine(e @ EngineError::Limit(_)))) => {
            body::error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string(), None)
        }
        Ok(Err(Refused::Engine(e @ EngineError::Broken(_)))) => {
            log::error!("write refused: {e}");
            body::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None)
        }
        Ok(Err(Refused::Engine(e))) => {
            log::error!("write failed: {e}");
            body::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None)
        }
        Err(e) => {
            log::error!("write task failed: {e}");
            body::error(StatusCode::INTERNAL_SERVER_ERROR, "the write failed", None)
        }
    }
}

/// Why a received body was not written.
enum Refused {
    TooLarge,
    Gzip(std::io::Error),
    Engine(EngineError),
}

fn too_large(limit: usize) -> Response<Body> {
    body::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is over the limit of {limit} bytes (--max-body-size); send smaller batches"),
        None,
    )
}

/// The `precision` parameter (nanoseconds when absent).
fn precision(query: Option<&str>) -> Result<Precision, String> {
    let given = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(name, _)| name == "precision")
        .map(|(_, value)| value.into_owned());
    match given {
        None => Ok(Precision::Nanoseconds),
        Some(name) => Precision::parse(&name).ok_or_else(|| {
            format!("unknown precision `{name}` (expected ns, us, ms, s, or the 1.x n, u, m, h)")
        }),
    }
}

/// Decompresses a gzip body, refusing one that expands past `limit`
/// without ever holding more than `limit + 1` bytes of it.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, Refused> {
    let mut text = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut text)
        .map_err(Refused::Gzip)?;
    if text.len() > limit {
        return Err(Refused::TooLarge);
    }
    Ok(text.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("compress");
        encoder.finish().expect("finish")
    }

    // Protects: a gzip bomb is refused once it passes the limit, and a
    // body at the limit is accepted.
    #[test]
    fn gunzip_enforces_the_limit() {
        let zeros = gzip(&vec![b'0'; 1 << 20]);
        assert!(matches!(gunzip(&zeros, 1000), Err(Refused::TooLarge)));
        assert_eq!(gunzip(&zeros, 1 << 20).map(|b| b.len()).ok(), Some(1 << 20));
        assert!(matches!(gunzip(b"not gzip", 1000), Err(Refused::Gzip(_))));
    }

    #[test]
    fn precision_parameter() {
        assert_eq!(precision(None), Ok(Precision::Nanoseconds));
        assert_eq!(precision(Some("db=x&precision=s")), Ok(Precision::Seconds));
        assert_eq!(
            precision(Some("precision=ms&org=o")),
            Ok(Precision::Milliseconds)
        );
        assert!(precision(Some("precision=fortnight")).is_err());
    }
}
