//! `chronicle engine serve`: the HTTP API of CONTRACT.md, driven as clients
//! drive it: InfluxDB line-protocol writes (plain, gzip, with a precision;
//! the Debian `influx` 1.x CLI when installed), queries equal to what
//! `engine query --format json` prints, export, metrics; all-or-nothing
//! requests; the size limit; restarts; SIGTERM; the directory lock; and a
//! load of concurrent writers after which every acknowledged point is kept,
//! even when the server is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A running server; killed on drop if still running.
struct Server {
    child: Child,
    stderr: BufReader<ChildStderr>,
    base: String,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(dir, "127.0.0.1:0", extra)
    }

    fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = bin()
            .args([
                "engine",
                "serve",
                "--data-dir",
                path_str(dir),
                "--listen",
                listen,
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        // Warnings may come before the line that gives the address.
        let mut said = String::new();
        let addr = loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).unwrap_or(0);
            said.push_str(&line);
            if let Some(addr) = line
                .split("http://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                break addr.to_string();
            }
            if read == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start: {said}");
            }
        };
        Server {
            base: format!("http://{addr}"),
            child,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// SIGTERM, then the exit status and what the server said meanwhile.
    fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with("TERM")
    }

    fn stop_with(mut self, signal_name: &str) -> (std::process::ExitStatus, String) {
        signal(&self.child, signal_name);
        let status = self.child.wait().expect("wait for the server");
        let mut rest = String::new();
        let _ = self.stderr.read_to_string(&mut rest);
        (status, rest)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// (status, body) of a request; 4xx and 5xx are answers too.
fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    let (code, response) = match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("request failed: {e}"),
    };
    let mut body = String::new();
    response
        .into_reader()
        .read_to_string(&mut body)
        .expect("read the body");
    (code, body)
}

fn post(url: &str, body: &[u8]) -> (u16, String) {
    answer(ureq::post(url).send_bytes(body))
}

fn get(url: &str) -> (u16, String) {
    answer(ureq::get(url).call())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("finish")
}

/// Raw points of `metric` by its `host` tag, through the HTTP query API.
fn hosts(server: &Server, metric: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    let (code, body) = get(&server.url(&format!("/api/v1/query?metric={metric}")));
    assert_eq!(code, 200, "{body}");
    json(&body)["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            let points = s["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| (p[0].as_i64().expect("time"), p[1].as_f64().expect("value")))
                .collect();
            (
                s["tags"]["host"].as_str().expect("host").to_string(),
                points,
            )
        })
        .collect()
}

/// Writes (both endpoints, precisions, gzip), queries, the same answer as
/// the CLI, a restart, export, health and metrics: on `db`.
fn write_query_restart(db: &Path) {
    let server = Server::start(db, &[]);
    assert_eq!(get(&server.url("/health")).0, 200);
    assert_eq!(get(&server.url("/ping")).0, 204);
    let (code, body) = post(
        &server.url("/write?db=ignored&precision=s"),
        b"cpu,host=a value=0.5 1700000000\ncpu,host=b value=1.5 1700000010\n",
    );
    assert_eq!((code, body.as_str()), (204, ""));
    let (code, body) = post(
        &server.url("/api/v2/write?org=o&bucket=b&precision=ms"),
        b"cpu,host=a value=2.5 1700000020000\n",
    );
    assert_eq!((code, body.as_str()), (204, ""));
    let zipped =
        gzip(b"cpu,host=c value=7 1700000030000000000\nmem,host=c value=1 1700000030000000000\n");
    let (code, body) = answer(
        ureq::post(&server.url("/api/v2/write"))
            .set("Content-Encoding", "gzip")
            .send_bytes(&zipped),
    );
    assert_eq!((code, body.as_str()), (204, ""));
    let expected = vec![
        (
            "a".to_string(),
            vec![
                (1_700_000_000_000_000_000, 0.5),
                (1_700_000_020_000_000_000, 2.5),
            ],
        ),
        ("b".to_string(), vec![(1_700_000_010_000_000_000, 1.5)]),
        ("c".to_string(), vec![(1_700_000_030_000_000_000, 7.0)]),
    ];
    assert_eq!(hosts(&server, "cpu"), expected);
    let aggregate = "/api/v1/query?metric=cpu&start=1700000000000000000&window=1m&agg=sum&group_by=host&tag_regex=host%3D%5Bab%5D";
    let (code, http_windows) = get(&server.url(aggregate));
    assert_eq!(code, 200, "{http_windows}");
    let (code, export) = get(&server.url("/api/v1/export"));
    assert_eq!(code, 200);
    assert_eq!(export.lines().count(), 5, "{export}");
    for line in export.lines() {
        let point = json(line);
        assert!(
            point["metric"].is_string() && point["timestamp"].is_i64(),
            "{line}"
        );
    }
    let (code, metrics) = get(&server.url("/metrics"));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nchronicle_points_written_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chronicle_write_duration_seconds_count 3\n"),
        "{metrics}"
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
    assert!(said.contains("stopped: 5 points written"), "{said}");

    // The CLI answers the same query with the same document.
    let out = run(
        &[
            "engine",
            "query",
            "--data-dir",
            path_str(db),
            "--metric",
            "cpu",
            "--start",
            "1700000000000000000",
            "--window",
            "1m",
            "--agg",
            "sum",
            "--group-by",
            "host",
            "--tag-regex",
            "host=[ab]",
            "--format",
            "json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&stdout(&out)), json(&http_windows));
    let windows = json(&http_windows);
    assert_eq!(windows["groups"][0]["windows"][0]["value"], 3.0);

    // After a restart, the same points.
    let server = Server::start(db, &[]);
    assert_eq!(hosts(&server, "cpu"), expected);
    assert_eq!(
        hosts(&server, "mem"),
        [("c".to_string(), vec![(1_700_000_030_000_000_000, 1.0)])]
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

// Protects: the HTTP API on a plain directory, end to end.
#[test]
fn serve_writes_queries_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_query_restart(&dir.path().join("db"));
}

// Protects: the same on a chronicle mount, whose backing files stay
// ciphertext.
#[test]
fn serve_on_a_mount() {
    let Some(m) = mount_or_skip(&[]) else { return };
    write_query_restart(&m.path("db"));
    let out = run(&["inspect", m.fixture.b(), "--grep", "cpu"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

// Protects: a malformed line rejects its whole request with 400 naming the
// line, and nothing of it is written (not its good lines, not its series);
// an unknown precision or encoding is refused too.
#[test]
fn a_malformed_line_rejects_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let (code, body) = post(
        &server.url("/write"),
        b"cpu,host=a value=1 10\ncpu,host=b value=2 20\ncpu,host=c value=three 30\n",
    );
    assert_eq!(code, 400, "{body}");
    let error = json(&body);
    assert_eq!(error["line"], 3, "{body}");
    assert!(
        error["error"]
            .as_str()
            .expect("error")
            .starts_with("line 3:"),
        "{body}"
    );
    assert!(hosts(&server, "cpu").is_empty());
    let (code, body) = post(
        &server.url("/write?precision=fortnight"),
        b"cpu value=1 1\n",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("precision"), "{body}");
    let (code, _) = answer(
        ureq::post(&server.url("/write"))
            .set("Content-Encoding", "br")
            .send_bytes(b"cpu value=1 1\n"),
    );
    assert_eq!(code, 415);
    let (code, body) = answer(
        ureq::post(&server.url("/write"))
            .set("Content-Encoding", "gzip")
            .send_bytes(b"cpu value=1 1\n"),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        get(&server.url("/api/v1/query?metric=cpu&window=1m")).0,
        400
    );
    // Over the points one request may carry (a small body can hold many).
    let mut many = b"cpu,host=z a=1".to_vec();
    for _ in 0..1_000_000 {
        many.extend_from_slice(b",a=1");
    }
    many.extend_from_slice(b" 5\n");
    let (code, body) = post(&server.url("/write"), &many);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("more than 1000000 points"), "{body}");
    assert_eq!(get(&server.url("/nowhere")).0, 404);
    assert_eq!(answer(ureq::delete(&server.url("/write")).call()).0, 405);
    assert!(hosts(&server, "cpu").is_empty());
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

// Protects: bodies over --max-body-size get 413 whether the size is
// declared, streamed in chunks, or reached by decompression; nothing of
// them is written, and the server keeps serving.
#[test]
fn oversized_bodies_get_413() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &["--max-body-size", "4096"]);
    let big: Vec<u8> = (0..200)
        .flat_map(|i| format!("cpu,host=a value={i} {i}\n").into_bytes())
        .collect();
    assert!(big.len() > 4096);
    assert_eq!(post(&server.url("/write"), &big).0, 413);
    // Chunked: no Content-Length, so the limit is found while reading.
    let (code, body) = answer(ureq::post(&server.url("/write")).send(&big[..]));
    assert_eq!(code, 413, "{body}");
    let bomb = gzip(&vec![b'#'; 1 << 20]);
    assert!(bomb.len() < 4096);
    let (code, body) = answer(
        ureq::post(&server.url("/write"))
            .set("Content-Encoding", "gzip")
            .send_bytes(&bomb),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("max-body-size"), "{body}");
    // A declared size far beyond memory is refused before reading.
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    write!(
        stream,
        "POST /write HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000000000000\r\n\r\n",
        server.addr()
    )
    .expect("send headers");
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).expect("read the answer");
    assert!(String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 413"));
    assert!(hosts(&server, "cpu").is_empty());
    assert_eq!(
        post(&server.url("/write"), b"cpu,host=a value=1 1\n").0,
        204
    );
    assert_eq!(hosts(&server, "cpu").len(), 1);
    server.kill();
}

// Protects: a request whose points lie in more hours than --max-partitions
// allows gets 422 naming the limit, with nothing of it written; a request
// within the limit is taken. Before the limit, one request of lines an
// hour apart made the server's flushes fail for want of memory maps.
#[test]
fn writes_past_the_partition_limit_get_422() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &["--max-partitions", "10", "--max-future", "1d"],
    );
    let hours = |n: u64| -> Vec<u8> {
        (0..n)
            .flat_map(|h| format!("cpu,host=h{h} value=1 {}\n", h * 3600).into_bytes())
            .collect()
    };
    let url = server.url("/write?precision=s");
    let (code, body) = post(&url, &hours(11));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("--max-partitions"), "{body}");
    assert!(hosts(&server, "cpu").is_empty(), "nothing of it");
    assert_eq!(post(&url, &hours(10)).0, 204);
    assert_eq!(hosts(&server, "cpu").len(), 10);
    let (code, metrics) = get(&server.url("/metrics"));
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nchronicle_partition_limit 10\n"),
        "{metrics}"
    );
    // A point a year ahead, past --max-future: 400 naming its line.
    let (code, body) = post(
        &url,
        b"cpu,host=h0 value=1 1700000000\ncpu,host=h0 value=2 4102444800\n",
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("line 2") && body.contains("--max-future"),
        "{body}"
    );
    server.kill();
}

// Protects: a client that disconnects in the middle of its body leaves
// nothing written, even of the complete lines it sent.
#[test]
fn a_disconnect_mid_request_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let lines = b"cpu,host=a value=1 10\ncpu,host=b value=2 20\n";
    {
        let mut stream = TcpStream::connect(server.addr()).expect("connect");
        write!(
            stream,
            "POST /write HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            server.addr(),
            lines.len() + 1000
        )
        .expect("headers");
        stream.write_all(lines).expect("part of the body");
        stream.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(200));
    } // dropped: the connection closes with the body incomplete
    std::thread::sleep(Duration::from_millis(200));
    assert!(hosts(&server, "cpu").is_empty());
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
    let server = Server::start(dir.path(), &[]);
    assert!(hosts(&server, "cpu").is_empty());
    server.kill();
}

// Protects: a second server on the same directory is refused with one
// line and exit code 1; the first keeps serving, and SIGINT (Ctrl-C)
// stops it cleanly.
#[test]
fn a_second_server_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let out = run(
        &[
            "engine",
            "serve",
            "--data-dir",
            path_str(dir.path()),
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );
    assert_eq!(get(&server.url("/health")).0, 200);
    let (status, said) = server.stop_with("INT");
    assert!(status.success(), "{said}");
    assert!(said.contains("stopped:"), "{said}");
}

// Protects: the Debian `influx` 1.x CLI imports into the server unchanged
// (skipped, with a message, where the package is not installed).
#[test]
fn influx_cli_imports() {
    if std::process::Command::new("influx")
        .arg("-version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `influx` CLI (apt-get install influxdb-client)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("import.txt");
    std::fs::write(
        &file,
        "# DML\n# CONTEXT-DATABASE: telegraf\ncpu,host=x value=1 1700000000\ncpu,host=y value=2 1700000060\n",
    )
    .expect("write the import file");
    let server = Server::start(&dir.path().join("db"), &[]);
    let (host, port) = server.addr().split_once(':').expect("host:port");
    let out = std::process::Command::new("influx")
        .args([
            "-host",
            host,
            "-port",
            port,
            "-import",
            "-path",
            path_str(&file),
            "-precision",
            "s",
        ])
        .output()
        .expect("run influx");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("Processed 2 inserts") && said.contains("Failed 0 inserts"),
        "{said}"
    );
    assert_eq!(
        hosts(&server, "cpu"),
        [
            ("x".to_string(), vec![(1_700_000_000_000_000_000, 1.0)]),
            ("y".to_string(), vec![(1_700_000_060_000_000_000, 2.0)]),
        ]
    );
    server.kill();
}

// Protects: under concurrent writers (sharing group commit), every
// acknowledged point survives a SIGKILL of the server, memory stays under
// 256 MiB, and the WAL syncs are fewer than the writes (they are shared).
#[test]
fn every_acknowledged_point_survives_a_kill_under_load() {
    const WRITERS: usize = 8;
    const BATCH: usize = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = server.url("/write");
            std::thread::spawn(move || {
                let mut acknowledged = 0usize;
                while Instant::now() < deadline {
                    let body: String = (acknowledged..acknowledged + BATCH)
                        .map(|i| {
                            format!(
                                "load,host=w{w} value={i} {}\n",
                                1_700_000_000_000_000_000i64 + i as i64
                            )
                        })
                        .collect();
                    let (code, said) = post(&url, body.as_bytes());
                    assert_eq!(code, 204, "{said}");
                    acknowledged += BATCH;
                }
                acknowledged
            })
        })
        .collect();
    let acknowledged: Vec<usize> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    let (_, metrics) = get(&server.url("/metrics"));
    let figure = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let requests = acknowledged.iter().sum::<usize>() / BATCH;
    assert_eq!(
        figure("chronicle_points_written_total"),
        (requests * BATCH) as u64
    );
    assert!(figure("chronicle_wal_syncs_total") <= requests as u64);
    let peak = server.peak_rss_kib();
    assert!(peak > 0 && peak < 256 * 1024, "peak RSS {peak} KiB");
    server.kill(); // no flush, no close: the WAL must carry everything

    let server = Server::start(dir.path(), &[]);
    let stored = hosts(&server, "load");
    assert_eq!(stored.len(), WRITERS);
    for (w, (host, points)) in stored.iter().enumerate() {
        assert_eq!(host, &format!("w{w}"));
        assert!(
            points.len() >= acknowledged[w],
            "writer {w}: {} < {}",
            points.len(),
            acknowledged[w]
        );
        for (i, &(t, v)) in points.iter().take(acknowledged[w]).enumerate() {
            assert_eq!((t, v), (1_700_000_000_000_000_000 + i as i64, i as f64));
        }
    }
    eprintln!(
        "load: {} requests of {BATCH} points acknowledged by {WRITERS} writers in 3 s, peak RSS {} MiB",
        requests,
        peak / 1024
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

// Protects: compaction and retention run on their schedule while the
// server serves: two segments of one hour become one, and hours past
// --retention are dropped.
#[test]
fn maintenance_runs_on_a_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let hour_start = now / 3600 * 3600;
    // Two runs, each closed (flushed to a segment of the current hour).
    for value in [1, 2] {
        let server = Server::start(dir.path(), &[]);
        let line = format!(
            "fresh,host=a value={value} {}\nold,host=a value=1 1000\n",
            hour_start + value
        );
        assert_eq!(
            post(&server.url("/write?precision=s"), line.as_bytes()).0,
            204
        );
        let (status, said) = server.stop();
        assert!(status.success(), "{said}");
    }
    let server = Server::start(dir.path(), &["--compact-every", "1s", "--retention", "30d"]);
    let metric = |name: &str| -> Option<u64> {
        get(&server.url("/metrics"))
            .1
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    // Retention applies at start: the 1970 hour is gone already, and its
    // series with it.
    assert!(hosts(&server, "old").is_empty());
    assert_eq!(metric("chronicle_series"), Some(1));
    assert_eq!(metric("chronicle_series_forgotten_total"), Some(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric("chronicle_compactions_total") == Some(0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric("chronicle_compactions_total"), Some(1));
    assert_eq!(metric("chronicle_segments"), Some(1));
    let points: Vec<f64> = hosts(&server, "fresh")[0].1.iter().map(|p| p.1).collect();
    assert_eq!(points, [1.0, 2.0]);
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

// Protects: clients that hold every write slot (each sent its headers and
// then nothing of its body) make another writer wait at most the slot
// wait, then get 503 with Retry-After instead of hanging; once they go,
// writes are taken again.
#[test]
fn held_write_slots_give_503_then_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("db"), &[]);
    let holders: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr()).expect("connect");
            let head = format!(
                "POST /write HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n",
                server.addr()
            );
            stream.write_all(head.as_bytes()).expect("send the headers");
            stream
        })
        .collect();
    // The server has taken their slots before the writer comes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get(&server.url("/metrics"))
        .1
        .contains("chronicle_http_slots_free{kind=\"write\"} 0\n")
    {
        assert!(
            Instant::now() < deadline,
            "the holders never took the slots"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let refused = ureq::post(&server.url("/write")).send_bytes(b"cpu,host=a value=1 1\n");
    let waited = started.elapsed();
    let Err(ureq::Error::Status(503, response)) = refused else {
        panic!("expected 503, got {refused:?}");
    };
    assert_eq!(response.header("Retry-After"), Some("1"));
    let body = response.into_string().expect("body");
    assert!(body.contains("every write slot stayed taken"), "{body}");
    assert!(
        waited >= Duration::from_secs(9),
        "answered after {waited:?}"
    );
    let (_, metrics) = get(&server.url("/metrics"));
    assert!(
        metrics.contains("chronicle_http_slot_timeouts_total{kind=\"write\"} 1\n"),
        "{metrics}"
    );
    drop(holders);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = post(&server.url("/write"), b"cpu,host=a value=1 1\n");
        if code == 204 {
            break;
        }
        assert!(Instant::now() < deadline, "still {code}: {body}");
    }
    assert_eq!(
        hosts(&server, "cpu"),
        vec![("a".to_string(), vec![(1, 1.0)])]
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

/// The status line and body of a GET sent with exactly this Host.
fn get_as_host(server: &Server, path: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

/// A page in the operator's browser can post to a loopback server without
/// asking, and read its answers once it rebinds its own name to 127.0.0.1:
/// what browsers add to such requests (Origin, Sec-Fetch-Site, the page's
/// name in Host) gets them refused; programs' requests are served.
#[test]
fn requests_from_web_pages_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("db"), &[]);
    let posted = ureq::post(&server.url("/write"))
        .set("Origin", "https://evil.example")
        .set("Content-Type", "text/plain")
        .send_bytes(b"cpu,host=page value=1 1\n");
    let (code, body) = answer(posted);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin: https://evil.example"), "{body}");
    let (code, body) = answer(
        ureq::get(&server.url("/api/v1/export"))
            .set("Sec-Fetch-Site", "cross-site")
            .call(),
    );
    assert_eq!(code, 403, "{body}");

    assert_eq!(
        post(&server.url("/write"), b"cpu,host=program value=2 2\n").0,
        204
    );
    let port = server.addr().rsplit(':').next().expect("port");
    let rebound = get_as_host(&server, "/api/v1/export", &format!("evil.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    assert!(rebound.contains("DNS rebinding"), "{rebound}");
    assert!(!rebound.contains("program"), "{rebound}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let served = get_as_host(&server, "/api/v1/export", &host);
        assert!(served.starts_with("HTTP/1.1 200"), "{host}: {served}");
        assert!(served.contains("\"host\":\"program\""), "{host}: {served}");
    }
    // The refused write wrote nothing.
    assert_eq!(
        hosts(&server, "cpu"),
        vec![("program".to_string(), vec![(2, 2.0)])]
    );
    let (_, metrics) = get(&server.url("/metrics"));
    assert!(
        metrics.contains("chronicle_http_responses_total{route=\"/write\",code=\"403\"} 1\n"),
        "{metrics}"
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
    assert_eq!(said.matches("refused: a web page").count(), 1, "{said}");

    // Listening on every address, the server is asked for by its
    // addresses and by the names it is given; other names are refused
    // there too (a page can rebind a name to any address of the machine).
    let server = Server::start_on(
        &dir.path().join("db"),
        "0.0.0.0:0",
        &["--allow-host", "Metrics.Internal"],
    );
    let port = server.addr().rsplit(':').next().expect("port");
    let named = get_as_host(&server, "/health", &format!("metrics.internal:{port}"));
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    let rebound = get_as_host(&server, "/api/v1/export", &format!("evil.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let unspecified = get_as_host(&server, "/api/v1/export", &format!("0.0.0.0:{port}"));
    assert!(unspecified.starts_with("HTTP/1.1 403"), "{unspecified}");
    let (code, body) = answer(
        ureq::post(&server.url("/write"))
            .set("Origin", "null")
            .send_bytes(b"cpu,host=page value=1 1\n"),
    );
    assert_eq!(code, 403, "{body}");
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

/// Connections beyond --max-connections wait to be accepted (in the
/// kernel's listen queue, not in the server's descriptors, which the
/// database needs) and are served once one closes.
#[test]
fn connections_beyond_the_limit_wait_to_be_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("db"), &["--max-connections", "2"]);
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr()).expect("connect"))
        .collect();
    let (done, answered) = std::sync::mpsc::channel();
    let url = server.url("/write");
    let writer = std::thread::spawn(move || {
        let code = post(&url, b"cpu,host=a value=1 1\n").0;
        let _ = done.send(code);
    });
    assert!(
        answered.recv_timeout(Duration::from_secs(2)).is_err(),
        "a third connection was served beside two held ones"
    );
    drop(holders);
    let code = answered
        .recv_timeout(Duration::from_secs(20))
        .expect("the waiting writer was served once the holders went");
    assert_eq!(code, 204);
    writer.join().expect("writer");
    // Counted: the connection asking, once the others have gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(&server.url("/metrics"));
        assert!(
            metrics.contains("chronicle_http_connection_limit 2\n"),
            "{metrics}"
        );
        if metrics.contains("chronicle_http_connections_open 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        hosts(&server, "cpu"),
        vec![("a".to_string(), vec![(1, 1.0)])]
    );
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}

#[test]
fn a_connection_limit_that_leaves_no_descriptors_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["engine", "serve", "--data-dir"])
        .arg(dir.path().join("db"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "18446744073709551615",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--max-connections 18446744073709551615 leaves too few"),
        "{said}"
    );
}

/// A client that stops reading its answer loses its connection after 60 s
/// of no progress, so that it cannot hold a place for good.
#[test]
fn a_client_that_reads_nothing_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("db"), &["--max-connections", "1"]);
    // An export far larger than the sockets' buffers.
    let lines: String = (0..300_000)
        .map(|i| format!("cpu,host=h{} value={i} {i}\n", i % 7))
        .collect();
    assert_eq!(post(&server.url("/write"), lines.as_bytes()).0, 204);
    let mut stalled = TcpStream::connect(server.addr()).expect("connect");
    let request = format!(
        "GET /api/v1/export HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.addr()
    );
    stalled.write_all(request.as_bytes()).expect("send");
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    // Without the stall limit this would wait for ever: fail instead.
    let health = ureq::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .get(&server.url("/health"))
        .call();
    let waited = started.elapsed();
    assert_eq!(answer(health).0, 200, "after {waited:?}");
    assert!(
        waited >= Duration::from_secs(50),
        "served beside a stalled export after {waited:?}"
    );
    drop(stalled);
    let (status, said) = server.stop();
    assert!(status.success(), "{said}");
}
