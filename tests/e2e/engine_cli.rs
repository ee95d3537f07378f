//! The engine's commands as CONTRACT.md gives them, on a plain directory and
//! on a mounted volume, and the demo.

use crate::util::*;

const LINES: &str = "\
cpu_usage,host=a value=1.5 1700000000000000000
cpu_usage,host=b value=2.5 1700000010000000000
cpu_usage,host=a value=3.5 1700003600000000000
disk,host=a used=10i,free=90 1700000000000000000
";

fn engine(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["engine", args[0], "--data-dir", path_str(dir)];
    all.extend_from_slice(&args[1..]);
    run(&all, None)
}

fn write_stdin(dir: &std::path::Path, text: &str) -> std::process::Output {
    run_with_stdin(
        &["engine", "write", "--data-dir", path_str(dir)],
        text.as_bytes(),
    )
}

fn exercise(db: &std::path::Path, scratch: &std::path::Path) {
    let file = scratch.join("points.lp");
    std::fs::write(&file, LINES).expect("write lp");
    let out = engine(db, &["write", path_str(&file)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = write_stdin(db, "mem_used,host=a value=7 1700000000000000000\n");
    assert!(out.status.success(), "{}", stderr(&out));

    // Export: JSON Lines, one point per line, every point.
    let out = engine(db, &["export", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 6);
    assert!(lines.contains(&serde_json::json!({"metric":"cpu_usage","tags":{"host":"a"},"timestamp":1700000000000000000i64,"value":1.5})));
    assert!(lines
        .iter()
        .any(|l| l["metric"] == "disk_used" && l["value"] == 10.0));

    // Aggregates as JSON.
    let out = engine(
        db,
        &[
            "query",
            "--metric",
            "cpu_usage",
            "--window",
            "1h",
            "--agg",
            "mean",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let windows = &doc["groups"][0]["windows"];
    assert_eq!(windows[0]["value"], 2.0);
    assert_eq!(windows[0]["count"], 2);
    assert_eq!(windows[1]["value"], 3.5);

    // Filters, group-by, time range, CSV and table.
    let out = engine(
        db,
        &[
            "query",
            "--metric",
            "cpu_usage",
            "--tag",
            "host=a",
            "--start",
            "2023-11-14T22:13:20Z",
            "--end",
            "1700000001000000000",
            "--format",
            "csv",
        ],
    );
    assert_eq!(
        stdout(&out),
        "time,series,value\n2023-11-14T22:13:20Z,\"cpu_usage,host=a\",1.5\n"
    );
    let out = engine(
        db,
        &[
            "query",
            "--metric",
            "cpu_usage",
            "--tag-regex",
            "host=[ab]",
            "--window",
            "1h",
            "--agg",
            "count",
            "--group-by",
            "host",
            "--format",
            "json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["groups"][0]["group"], "a");
    assert_eq!(doc["groups"][1]["windows"][0]["value"], 1.0);
    let out = engine(db, &["query", "--metric", "cpu_usage"]);
    assert!(stdout(&out).lines().count() == 4, "{}", stdout(&out));

    // Compact, snapshot (opens as a database), import of an export.
    let out = engine(db, &["compact"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let snap = db.with_file_name("snap");
    let out = engine(db, &["snapshot", path_str(&snap)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = scratch.join("export.jsonl");
    let out = engine(&snap, &["export", "--output", path_str(&exported)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = db.with_file_name("copy");
    let out = engine(&copy, &["import", path_str(&exported)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = stdout(&engine(db, &["export"]));
    let b = stdout(&engine(&copy, &["export"]));
    assert_eq!(a, b, "import of an export gives the same points");

    // Malformed input names its line; nothing partial is written.
    let out = write_stdin(db, "cpu_usage,host=z value=1 1\nthis line is wrong\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    let out = engine(db, &["query", "--metric", "cpu_usage", "--tag", "host=z"]);
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "only the header: {}",
        stdout(&out)
    );
}

// Protects: every engine command of the contract on a plain directory.
#[test]
fn engine_commands_on_a_plain_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    exercise(&dir.path().join("db"), dir.path());
    let out = engine(&dir.path().join("db"), &["info"]);
    assert!(
        stdout(&out).contains("Encrypted: false"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("Points: 6"), "{}", stdout(&out));
}

// Protects: the same commands on a mounted volume, with `info` reporting
// the encryption, and only ciphertext in the backing directory.
#[test]
fn engine_commands_on_the_mount() {
    let Some(m) = mount_or_skip(&[]) else { return };
    exercise(&m.path("db"), m.fixture.dir.path());
    let out = engine(&m.path("db"), &["info"]);
    let text = stdout(&out);
    assert!(
        text.contains("Encrypted: true") && text.contains("Algorithm: AES-256-GCM"),
        "{text}"
    );
    let out = engine(&m.path("db"), &["info", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["encrypted"], true);
    let plain = doc["bytes_on_disk"].as_u64().expect("plaintext bytes");
    let cipher = doc["ciphertext_bytes"].as_u64().expect("ciphertext bytes");
    assert!(
        cipher > plain,
        "ciphertext {cipher} carries headers and tags over {plain}"
    );
    for (path, bytes) in snapshot(&m.fixture.backing) {
        assert!(
            !bytes.windows(9).any(|w| w == b"cpu_usage"),
            "plaintext in {}",
            path.display()
        );
    }
}

// Protects: the main job runs end to end and says so.
#[test]
fn demo_runs() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The demo drops the kernel's caches itself.
    let dropping = exclusive_cache_drop();
    let out = run(
        &[
            "demo",
            "--workdir",
            path_str(dir.path()),
            "--points",
            "20000",
        ],
        None,
    );
    drop(dropping);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("not found anywhere"), "{text}");
    assert!(text.contains("EIO"), "{text}");
    assert!(text.contains("encryption key mismatch"), "{text}");
    assert!(text.contains("Demo complete"), "{text}");
    assert!(!is_mounted(&dir.path().join("data")));
}

// Protects: reading commands on a directory that holds no database fail
// clearly instead of creating an empty one.
#[test]
fn reading_a_missing_database_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("typo");
    for args in [
        vec!["query", "--metric", "x"],
        vec!["export"],
        vec!["info"],
        vec!["compact"],
    ] {
        let out = engine(&missing, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("no database in"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!missing.exists(), "{args:?} created the directory");
    }
}

// Protects: `engine bench` runs the workload on a plain directory and on a
// fresh mount, round after round, and prints the guide's table from what it
// measured (the medians, and each round's overhead); it refuses a workload
// too small to hold one sample, and no rounds.
#[test]
fn engine_bench_prints_the_overhead_table() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(
        &[
            "engine",
            "bench",
            "--points",
            "30000",
            "--rounds",
            "2",
            "--workdir",
            path_str(dir.path()),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for row in ["| Write ", "| Read ", "| Compaction "] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row in {text}"));
        assert!(line.ends_with(" % |"), "{line}");
        assert_eq!(
            line.matches(" % |").count(),
            2,
            "overhead and rounds: {line}"
        );
    }
    for (round, first) in [
        ("round 1: write ", "(plain first)"),
        ("round 2: write ", "(encrypted first)"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(round) && l.ends_with(first)),
            "{text}"
        );
    }
    assert!(text.contains("30000 points"), "{text}");
    assert!(!is_mounted(&dir.path().join("mnt")), "the bench unmounts");
    assert!(
        !dir.path().join("plain").exists(),
        "each round's database is removed"
    );
    let left: Vec<String> = std::fs::read_dir(dir.path().join("backing"))
        .expect("backing")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("chronicle."))
        .collect();
    assert!(
        left.is_empty(),
        "each round's database on the mount is removed: {left:?}"
    );
    let out = run(&["engine", "bench", "--points", "10"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("at least 300"), "{}", stderr(&out));
    let out = run(&["engine", "bench", "--rounds", "0"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("at least 1"), "{}", stderr(&out));
}
