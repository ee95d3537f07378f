//! `chronicle engine ...`: the bundled time-series engine's commands.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chronicle_engine::timefmt::format_time;
use chronicle_engine::{Engine, Options, SyncPolicy};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use crate::engine_args::{self, LimitArgs, QueryArgs, SyncArg};
use crate::query_output::{self, Format};

#[derive(Clone, Copy, ValueEnum)]
pub enum DataFormat {
    Json,
}

#[derive(Subcommand)]
pub enum EngineCommand {
    /// Write points in InfluxDB line protocol from FILE (standard input when absent or -)
    Write {
        /// The database's directory, created if missing (on a chronicle
        /// mount, its files are encrypted at rest)
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Line protocol, one point or more a line (standard input when
        /// absent or -)
        file: Option<PathBuf>,
        /// When the write-ahead log is fsynced
        #[arg(long, value_enum, default_value_t = SyncArg::Interval)]
        sync: SyncArg,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Query raw points or windowed aggregates
    Query {
        /// The database's directory
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        query: QueryArgs,
        /// How to print the answer
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write every point as JSON Lines
    Export {
        /// The database's directory
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// JSON Lines: one point a line, with its metric and tags
        #[arg(long, value_enum, default_value_t = DataFormat::Json)]
        format: DataFormat,
        /// Write to FILE instead of standard output
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read JSON Lines (as export writes them) from FILE or standard input
    Import {
        /// The database's directory, created if missing (on a chronicle
        /// mount, its files are encrypted at rest)
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// JSON Lines: one point a line, with its metric and tags
        #[arg(long, value_enum, default_value_t = DataFormat::Json)]
        format: DataFormat,
        /// What `engine export` wrote (standard input when absent or -)
        file: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Merge each hour's segments into one (and apply --retention)
    Compact {
        /// The database's directory
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Also drop hours older than DUR (e.g. 30d), and forget the series
        /// left without points
        #[arg(long, value_name = "DUR", value_parser = engine_args::duration)]
        retention: Option<i64>,
    },
    /// Write a consistent copy to DEST that opens as a database
    Snapshot {
        /// The database's directory
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Where the copy goes: a new or empty directory
        dest: PathBuf,
    },
    /// Series, points, bytes on disk, bytes per point (and encryption, on a chronicle mount)
    Info {
        /// The database's directory
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// The same workload on a plain directory and on a fresh encrypted mount: what encryption costs
    Bench {
        /// Points to write (300 series, 10-second samples)
        #[arg(long, value_name = "N", default_value_t = 1_000_000)]
        points: u64,
        /// Times to run both sides, taking turns at going first; the table
        /// gives the medians and each round's overhead (a busy or virtual
        /// machine varies by tens of per cent from run to run)
        #[arg(long, value_name = "N", default_value_t = 3)]
        rounds: u32,
        /// Where to put the two databases and the volume (a new temporary directory by default)
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
    },
    /// Serve the database over HTTP: InfluxDB line-protocol writes, queries, export, metrics
    #[command(long_about = crate::server::LONG_ABOUT)]
    Serve(crate::server::ServeArgs),
}

/// Opens the database for writing, creating it if it does not exist.
fn open(dir: &Path, sync: SyncPolicy, limits: LimitArgs) -> Result<Engine> {
    Engine::open(
        dir,
        limits.apply(Options {
            sync,
            ..Options::default()
        }),
    )
    .with_context(|| format!("cannot open the database in {}", dir.display()))
}

/// Opens an existing database: a mistyped directory is an error, not a new
/// empty database.
fn open_existing(dir: &Path) -> Result<Engine> {
    if !chronicle_engine::manifest::is_database(dir) {
        bail!(
            "no database in {} (it has no {}); `chronicle engine write` creates one",
            dir.display(),
            chronicle_engine::manifest::MANIFEST
        );
    }
    let opened = Engine::open(
        dir,
        Options {
            sync: SyncPolicy::Never,
            ..Options::default()
        },
    );
    opened.with_context(|| format!("cannot open the database in {}", dir.display()))
}

fn input(file: Option<&Path>) -> Result<Box<dyn BufRead>> {
    Ok(match file {
        None => Box::new(BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufReader::new(std::io::stdin())),
        Some(p) => Box::new(BufReader::new(
            File::open(p).with_context(|| format!("cannot read {}", p.display()))?,
        )),
    })
}

pub fn run(command: EngineCommand) -> Result<()> {
    match command {
        EngineCommand::Write {
            data_dir,
            file,
            sync,
            limits,
        } => {
            let engine = open(&data_dir, sync.policy(), limits)?;
            let points = write_lines(&engine, input(file.as_deref())?)?;
            engine.close()?;
            eprintln!("wrote {points} points to {}", data_dir.display());
            Ok(())
        }
        EngineCommand::Query {
            data_dir,
            query,
            format,
        } => {
            let q = query.to_query()?;
            let engine = open_existing(&data_dir)?;
            let result = engine.query(&q)?;
            query_output::print(&query, &q, &result, format)
        }
        EngineCommand::Export {
            data_dir, output, ..
        } => {
            let engine = open_existing(&data_dir)?;
            let n = match output {
                Some(path) => {
                    let mut out = std::io::BufWriter::new(
                        File::create(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?,
                    );
                    let n = engine.export_json(&mut out)?;
                    out.into_inner()
                        .map_err(|e| e.into_error())
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    n
                }
                None => {
                    engine.export_json(&mut std::io::BufWriter::new(std::io::stdout().lock()))?
                }
            };
            eprintln!("exported {n} points");
            Ok(())
        }
        EngineCommand::Import {
            data_dir,
            file,
            limits,
            ..
        } => {
            let engine = open(&data_dir, SyncPolicy::default(), limits)?;
            let n = engine.import_json(&mut input(file.as_deref())?)?;
            engine.close()?;
            eprintln!("imported {n} points into {}", data_dir.display());
            Ok(())
        }
        EngineCommand::Compact {
            data_dir,
            retention,
        } => {
            let engine = open_existing(&data_dir)?;
            if let Some(keep) = retention {
                let dropped = engine.apply_retention(keep)?;
                println!(
                    "retention: dropped {} hour partition(s); forgot {} series left without points",
                    dropped.partitions, dropped.series
                );
            }
            let stats = engine.compact()?;
            engine.close()?;
            println!(
                "compacted {} partition(s), merging {} segment(s)",
                stats.partitions, stats.segments_merged
            );
            Ok(())
        }
        EngineCommand::Snapshot { data_dir, dest } => {
            let engine = open_existing(&data_dir)?;
            engine.snapshot(&dest)?;
            println!(
                "snapshot of {} written to {}",
                data_dir.display(),
                dest.display()
            );
            Ok(())
        }
        EngineCommand::Info { data_dir, json } => info(&data_dir, json),
        EngineCommand::Serve(args) => crate::server::run(args),
        EngineCommand::Bench {
            points,
            rounds,
            workdir,
        } => crate::engine_bench::run(points, rounds, workdir),
    }
}

/// Feeds line protocol to the engine in chunks of whole lines (about 4 MiB).
pub fn write_lines(engine: &Engine, mut input: Box<dyn BufRead>) -> Result<u64> {
    let mut chunk = Vec::with_capacity(4 << 20);
    let mut first_line = 1u64;
    let mut total = 0;
    loop {
        chunk.clear();
        let mut lines = 0u64;
        while chunk.len() < 4 << 20 {
            let n = input
                .read_until(b'\n', &mut chunk)
                .context("reading line protocol")?;
            if n == 0 {
                break;
            }
            lines += 1;
        }
        if lines == 0 {
            return Ok(total);
        }
        total += engine.write_lines(&chunk, first_line)?;
        first_line += lines;
    }
}

/// Bytes the database's files take in the backing directory (ciphertext),
/// when `dir` is on a chronicle mount: the encrypted size of each file
/// follows from its plaintext size, so the backing directory (whose names
/// may be encrypted) need not be read.
fn ciphertext_bytes(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| chronicle_mount::layout::ciphertext_size(m.len()))
            .sum(),
    )
}

fn info(dir: &Path, as_json: bool) -> Result<()> {
    let engine = open_existing(dir)?;
    let stats = engine.stats()?;
    let mount = chronicle_mount::mountinfo::chronicle_volume_of(dir);
    let ciphertext = mount.as_ref().and_then(|_| ciphertext_bytes(dir));
    if as_json {
        let mut doc = serde_json::to_value(&stats)?;
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("encrypted".into(), json!(mount.is_some()));
            if let Some((point, backing)) = &mount {
                obj.insert("algorithm".into(), json!("AES-256-GCM"));
                obj.insert("mount_point".into(), json!(point));
                obj.insert("backing".into(), json!(backing));
                obj.insert("ciphertext_bytes".into(), json!(ciphertext));
            }
        }
        println!("{doc}");
        return Ok(());
    }
    println!("Data directory: {}", dir.display());
    match &mount {
        Some((point, backing)) => {
            println!("Encrypted: true");
            println!("Algorithm: AES-256-GCM");
            println!("Mounted at: {}", point.display());
            println!("Backing directory: {}", backing.display());
        }
        None => println!("Encrypted: false"),
    }
    println!("Series: {}", stats.series);
    println!("Metrics: {}", stats.metrics);
    println!("Points: {}", stats.points);
    println!(
        "Segments: {} in {} hour partition(s)",
        stats.segments, stats.partitions
    );
    println!("Bytes on disk: {}", stats.bytes_on_disk);
    if let Some(bytes) = ciphertext {
        println!("Bytes on disk, encrypted: {bytes}");
    }
    println!("Bytes per point: {:.3}", stats.bytes_per_point);
    if let (Some(a), Some(b)) = (stats.min_time, stats.max_time) {
        println!("Time range: {} .. {}", format_time(a), format_time(b));
    }
    Ok(())
}
