//! `chronicle engine serve`: the engine behind an HTTP server, so that
//! InfluxDB clients and collectors can write to it and dashboards can read
//! from it while it runs (on a plain directory or on a chronicle mount).
//!
//! One process owns the data directory (the engine's lock refuses a second
//! one). Requests are served by a small tokio runtime; engine calls run on
//! its blocking pool. Compaction and retention run on a schedule. SIGTERM or
//! SIGINT stops accepting, lets requests in flight finish, and closes the
//! engine, which flushes everything to segments.

mod body;
mod browsers;
mod connections;
mod metrics;
mod routes;
mod write;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chronicle_engine::{Engine, Options, Retention};
use clap::Args;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

use crate::engine_args::{LimitArgs, SyncArg};
use metrics::Metrics;

pub const LONG_ABOUT: &str = "\
Serve the database in DIR over HTTP until SIGTERM or Ctrl-C.

  POST /write, POST /api/v2/write   InfluxDB line protocol, as the 1.x and 2.x
                                    clients send it (precision=ns|us|ms|s,
                                    gzip bodies); 204 once durable, 400 naming
                                    the malformed line (nothing of the request
                                    is written), 413 over --max-body-size
  GET  /api/v1/query                the parameters of `engine query` (metric,
                                    tag, tag_regex, start, end, window, agg,
                                    group_by); its --format json document
  GET  /api/v1/export               every point as JSON Lines
  GET  /health, /ping               liveness (InfluxDB clients ping)
  GET  /metrics                     Prometheus text format

The database and retention policy named by clients (db, bucket, org) are
ignored: the server has one database. It has no authentication: it listens on
the loopback address unless told otherwise, and refuses requests that web
pages make (403): any with an Origin or a cross-site Sec-Fetch-Site header,
and any whose Host is not an IP address, localhost or a name
given with --allow-host (a page that rebinds its DNS name to the server
asks for that name).

Example, on an encrypted mount:
  chronicle mount /srv/metrics.enc /srv/metrics
  chronicle engine serve --data-dir /srv/metrics/db &
  curl -XPOST 'http://127.0.0.1:8086/write?precision=s' --data-binary 'cpu,host=a value=0.5 1700000000'
  curl 'http://127.0.0.1:8086/api/v1/query?metric=cpu&tag=host=a'";

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The database's directory, created if missing (on a chronicle mount,
    /// its files are encrypted at rest)
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    /// When a write is acknowledged: after an fsync shared by the writers
    /// waiting for it (always), or before it (interval: up to a second of
    /// acknowledged writes may be lost in a power cut; never)
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Largest request body, compressed or not, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_body_size: usize,
    /// How often each hour's segments are merged (and --retention applied)
    #[arg(long, value_name = "DUR", default_value = "10m",
          value_parser = crate::engine_args::duration)]
    compact_every: i64,
    /// Drop hours older than DUR (e.g. 30d), and forget the series left
    /// without points; kept forever when absent
    #[arg(long, value_name = "DUR", value_parser = crate::engine_args::duration)]
    retention: Option<i64>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Client connections served at once; more wait to be accepted until
    /// one closes (an idle one closes after 30 s, one whose client reads
    /// nothing of its answer for 60 s is closed). By default 1024, or
    /// fewer where the open-file limit leaves less beside the 256
    /// descriptors kept for the database
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// A host name clients reach the server by, besides IP addresses and
    /// localhost (repeat for each): requests naming any other host in
    /// `Host` are refused, as a page that rebinds its DNS name would send
    #[arg(long = "allow-host", value_name = "NAME", value_parser = browsers::allowed_host)]
    allow_hosts: Vec<String>,
}

/// Write requests whose bodies may be in memory at once. With the default
/// body limit this bounds them to 4 × 2 × 16 MiB (compressed and
/// decompressed): the server's memory stays bounded whatever the number of
/// clients.
const WRITES_IN_FLIGHT: usize = 4;

/// Queries and exports running at once: each may hold a large result or
/// a blocking thread while its client reads.
const READS_IN_FLIGHT: usize = 4;

/// How long a request waits for a write or read slot before it is told to
/// come back (503 with Retry-After): clients slow to send or to read, which
/// hold the slots, must not hold every other request for as long as they
/// last. InfluxDB clients retry a 503.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// A slot from `acquire` (a semaphore's), or the answer to give instead:
/// 503 when none came free within `SLOT_WAIT`, or when the server is
/// stopping.
async fn take_slot<P>(
    app: &App,
    slot: metrics::Slot,
    acquire: impl std::future::Future<Output = Result<P, tokio::sync::AcquireError>>,
) -> Result<P, hyper::Response<body::Body>> {
    let busy = match tokio::time::timeout(SLOT_WAIT, acquire).await {
        Ok(Ok(slot)) => return Ok(slot),
        Ok(Err(_)) => {
            return Err(body::error(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
                None,
            ))
        }
        Err(_) => {
            app.metrics.slot_wait_timed_out(slot);
            format!(
                "every {} slot stayed taken for {SLOT_WAIT:?} (slow or large requests in \
                 flight): try again",
                slot.label()
            )
        }
    };
    let mut answer = body::error(hyper::StatusCode::SERVICE_UNAVAILABLE, &busy, None);
    answer.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    Err(answer)
}

impl App {
    /// Slots and connections free now.
    fn room(&self) -> metrics::Room {
        metrics::Room {
            write: self.write_permits.available_permits(),
            read: self.read_permits.available_permits(),
            connections_open: self.connections.open(),
            connection_limit: self.connections.limit(),
        }
    }
}

/// How long requests in flight may take to finish once a stop is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request handler shares.
pub struct App {
    engine: Arc<Engine>,
    metrics: Metrics,
    max_body_bytes: usize,
    /// Host names besides addresses and localhost, lowercase (`browsers`).
    allowed_hosts: Vec<String>,
    write_permits: Semaphore,
    read_permits: Arc<Semaphore>,
    /// Taken by each `/metrics` while it gathers its figures.
    metrics_gate: Arc<tokio::sync::Mutex<()>>,
    connections: connections::Connections,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let (compact_every, retention) = (nanos_to_duration(args.compact_every), args.retention);
    let connection_limit = connections::limit(
        args.max_connections,
        crate::hygiene::raise_open_file_limit(),
    )?;
    let engine = Engine::open(
        &args.data_dir,
        args.limits.apply(Options {
            sync: args.sync.policy(),
            retention,
            ..Options::default()
        }),
    )
    .with_context(|| format!("cannot open the database in {}", args.data_dir.display()))?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    // The address actually bound (the port, when asked for port 0).
    let bound = listener.local_addr()?;
    if !args.listen.ip().to_canonical().is_loopback() {
        log::warn!(
            "listening on {} without authentication: anyone who can reach it can read and write",
            args.listen
        );
    }
    let app = Arc::new(App {
        engine: Arc::new(engine),
        metrics: Metrics::default(),
        max_body_bytes: args.max_body_size,
        allowed_hosts: args.allow_hosts,
        write_permits: Semaphore::new(WRITES_IN_FLIGHT),
        read_permits: Arc::new(Semaphore::new(READS_IN_FLIGHT)),
        metrics_gate: Arc::new(tokio::sync::Mutex::new(())),
        connections: connections::Connections::new(connection_limit),
    });
    // Blocking threads: the write and read slots' worth, and room for
    // maintenance and metrics.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(WRITES_IN_FLIGHT + READS_IN_FLIGHT + 8)
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    eprintln!(
        "serving {} on http://{bound} (sync {:?}); SIGTERM or Ctrl-C stops",
        args.data_dir.display(),
        args.sync
    );
    let served = runtime.block_on(serve(listener, Arc::clone(&app), compact_every, retention));
    // Blocking tasks (a write, an export) finish before the engine closes.
    runtime.shutdown_timeout(DRAIN_TIMEOUT);
    let points = app.metrics.points_written();
    close(app)?;
    served?;
    eprintln!("stopped: {points} points written, all flushed to segments");
    Ok(())
}

fn nanos_to_duration(nanos: i64) -> Duration {
    Duration::from_nanos(nanos.max(1) as u64)
}

async fn serve(
    listener: std::net::TcpListener,
    app: Arc<App>,
    compact_every: Duration,
    retention: Option<i64>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let maintenance = tokio::spawn(maintain(Arc::clone(&app), compact_every, retention));
    let graceful = GracefulShutdown::new();
    let mut told_full = false;
    loop {
        // A connection is accepted only with a permit in hand: beyond the
        // limit, clients wait in the listen queue, not in our descriptors.
        let room = tokio::select! {
            room = app.connections.room() => room,
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, usually: wait rather than spin.
                        log::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (served, stream) = app.connections.serve(room, stream);
                if app.connections.full() && !told_full {
                    told_full = true;
                    log::warn!(
                        "serving {} connections, the limit (--max-connections): more wait to be \
                         accepted until one closes; told once",
                        app.connections.limit()
                    );
                }
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(routes::handle(app, request).await) }
                });
                let connection = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    let _served = served;
                    if let Err(e) = connection.await {
                        log::debug!("connection: {e}");
                    }
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    eprintln!("stopping: finishing requests in flight");
    drop(listener);
    maintenance.abort();
    app.write_permits.close();
    app.read_permits.close();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            log::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
    Ok(())
}

/// Compaction and retention, every `every`.
async fn maintain(app: Arc<App>, every: Duration, retention: Option<i64>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate; the engine just opened
    loop {
        tick.tick().await;
        let engine = Arc::clone(&app.engine);
        let done = tokio::task::spawn_blocking(move || {
            let dropped = match retention {
                Some(keep) => engine.apply_retention(keep)?,
                None => Retention::default(),
            };
            engine.compact().map(|c| (dropped, c))
        })
        .await;
        match done {
            Ok(Ok((dropped, compacted))) => log::info!(
                "maintenance: {} partition(s) past retention dropped and {} series left without \
                 points forgotten, {} merged from {} segment(s)",
                dropped.partitions,
                dropped.series,
                compacted.partitions,
                compacted.segments_merged
            ),
            Ok(Err(e)) => log::error!("maintenance: {e}"),
            Err(e) => log::error!("maintenance task: {e}"),
        }
    }
}

/// Closes the engine: everything in memory goes to segments.
fn close(app: Arc<App>) -> Result<()> {
    let app = Arc::try_unwrap(app).map_err(|_| anyhow::anyhow!("a request outlived the server"));
    let engine = app.and_then(|app| {
        Arc::try_unwrap(app.engine).map_err(|_| anyhow::anyhow!("a request outlived the server"))
    });
    match engine {
        Ok(engine) => engine.close().context("closing the database"),
        Err(e) => {
            Err(e.context("the database was not closed cleanly; its WAL replays on the next start"))
        }
    }
}
