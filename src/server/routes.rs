//! Which handler answers which request, and the read-side handlers:
//! queries, export, health and metrics. Engine calls block (they read
//! files, possibly on a FUSE mount), so they run on the blocking pool.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::body::{self, Body};
use super::metrics::{route_label, Slot};
use super::{browsers, write, App};
use crate::engine_args::QueryArgs;
use crate::query_output;

/// The most points (or windows) a query answers with (as JSON, about 40
/// bytes each).
const MAX_QUERY_POINTS: u64 = 5_000_000;

/// The version InfluxDB 1.x clients read from `/ping`.
const VERSION_HEADER: &str = concat!("chronicle-", env!("CARGO_PKG_VERSION"));

pub async fn handle(app: Arc<App>, request: Request<Incoming>) -> Response<Body> {
    let route = route_label(request.uri().path());
    if let Some(why) = browsers::refusal(request.headers(), &app.allowed_hosts) {
        app.metrics.responded(route, StatusCode::FORBIDDEN.as_u16());
        return body::error(StatusCode::FORBIDDEN, &why, None);
    }
    let response = match (request.method(), route) {
        (&Method::POST, "/write" | "/api/v2/write") => {
            write::write(Arc::clone(&app), request).await
        }
        (&Method::GET, "/api/v1/query") => query(&app, request.uri().query()).await,
        (&Method::GET, "/api/v1/export") => export(&app).await,
        (&Method::GET | &Method::HEAD, "/health") => {
            body::json(StatusCode::OK, &serde_json::json!({ "status": "pass" }))
        }
        (&Method::GET | &Method::HEAD, "/ping") => ping(),
        (&Method::GET, "/metrics") => metrics(&app).await,
        (_, "other") => body::error(StatusCode::NOT_FOUND, "no such endpoint", None),
        _ => body::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
            None,
        ),
    };
    app.metrics.responded(route, response.status().as_u16());
    response
}

/// What an InfluxDB 1.x client checks before it writes.
fn ping() -> Response<Body> {
    let mut response = body::empty(StatusCode::NO_CONTENT);
    response.headers_mut().insert(
        "X-Influxdb-Version",
        HeaderValue::from_static(VERSION_HEADER),
    );
    response
}

async fn query(app: &Arc<App>, url_query: Option<&str>) -> Response<Body> {
    let params: Vec<(String, String)> = form_urlencoded::parse(url_query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let args = match QueryArgs::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(args) => args,
        Err(e) => return body::error(StatusCode::BAD_REQUEST, &e.to_string(), None),
    };
    let mut q = match args.to_query_but_regexes() {
        Ok(q) => q,
        Err(e) => return body::error(StatusCode::BAD_REQUEST, &e.to_string(), None),
    };
    // Owned, and moved into the work: a client that hangs up drops this
    // handler, and the slot must stay taken until the work is done.
    let permit = match super::take_slot(
        app,
        Slot::Read,
        Arc::clone(&app.read_permits).acquire_owned(),
    )
    .await
    {
        Ok(permit) => permit,
        Err(answer) => return answer,
    };
    let engine = Arc::clone(&app.engine);
    // Compiling the tag regexes takes CPU too: in the slot, off the async
    // workers.
    let answered = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if let Err(e) = args.add_regexes(&mut q) {
            return Err(Refused::Query(e.to_string()));
        }
        engine
            .query_at_most(&q, MAX_QUERY_POINTS)
            .map(|answer| answer.map(|result| query_output::json_document(&args, &q, &result)))
            .map_err(Refused::Engine)
    })
    .await;
    match answered {
        Ok(Ok(Some(doc))) => body::json(StatusCode::OK, &doc),
        Ok(Ok(None)) => body::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the answer holds over {MAX_QUERY_POINTS} points or windows: narrow the time \
                 range, aggregate with window and agg (or a wider window), or use /api/v1/export"
            ),
            None,
        ),
        Ok(Err(Refused::Query(e))) => body::error(StatusCode::BAD_REQUEST, &e, None),
        Ok(Err(Refused::Engine(e @ chronicle_engine::EngineError::BadQuery(_)))) => {
            body::error(StatusCode::BAD_REQUEST, &e.to_string(), None)
        }
        Ok(Err(Refused::Engine(e))) => {
            log::error!("query failed: {e}");
            body::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None)
        }
        Err(e) => {
            log::error!("query task failed: {e}");
            body::error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed", None)
        }
    }
}

/// Why a query was not answered.
enum Refused {
    /// Its parameters do not make a query.
    Query(String),
    Engine(chronicle_engine::EngineError),
}

/// Every point as JSON Lines, streamed as the engine reads it.
async fn export(app: &Arc<App>) -> Response<Body> {
    let permit = match super::take_slot(
        app,
        Slot::Read,
        Arc::clone(&app.read_permits).acquire_owned(),
    )
    .await
    {
        Ok(permit) => permit,
        Err(answer) => return answer,
    };
    let (writer, stream) = body::channel();
    let engine = Arc::clone(&app.engine);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = std::io::BufWriter::with_capacity(64 << 10, writer);
        let result = engine.export_json(&mut out);
        // On success the body is finished; otherwise the writer is just
        // dropped, which aborts the response (see body::channel).
        match (result, out.into_inner()) {
            (Ok(_), Ok(writer)) => {
                if let Err(e) = writer.finish() {
                    log::warn!("export: {e}");
                }
            }
            (Err(e), _) => log::error!("export failed: {e}"),
            (Ok(_), Err(e)) => log::warn!("export: {}", e.error()),
        }
    });
    let mut response = Response::new(stream);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn metrics(app: &Arc<App>) -> Response<Body> {
    // One at a time: each lists the data directory on a blocking thread,
    // and scrapes sent at once would otherwise take the whole pool. Owned
    // and moved into the work, as a query's slot is.
    let one_at_a_time = Arc::clone(&app.metrics_gate).lock_owned().await;
    let engine = Arc::clone(&app.engine);
    let stats = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = one_at_a_time;
        engine.stats().map(|s| (s, engine.activity()))
    })
    .await;
    match stats {
        Ok(Ok((stats, activity))) => body::bytes(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            app.metrics
                .render(&stats, &activity, app.engine.options(), app.room()),
        ),
        Ok(Err(e)) => body::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
        Err(e) => body::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}
