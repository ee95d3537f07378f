//! How `chronicle engine query` prints results: a table, CSV, or one JSON
//! document in which every number is a JSON number (non-finite values,
//! which JSON lacks, are null).

use std::io::Write;

use anyhow::Result;
use chronicle_engine::query::{GroupWindows, SeriesPoints};
use chronicle_engine::timefmt::format_time;
use chronicle_engine::{Query, QueryResult};

use crate::engine_args::QueryArgs;
use serde_json::json;

/// How results are printed (`--format`).
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

fn number(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

pub fn print(args: &QueryArgs, q: &Query, result: &QueryResult, format: Format) -> Result<()> {
    let out = &mut std::io::stdout().lock();
    let agg = args.agg.as_deref();
    match (result, format) {
        (_, Format::Json) => {
            writeln!(out, "{}", json_document(args, q, result))?;
            Ok(())
        }
        (QueryResult::Raw(series), _) => raw_rows(out, series, format == Format::Csv),
        (QueryResult::Aggregated(groups), _) => {
            windows_rows(out, q, agg, groups, format == Format::Csv)
        }
    }
}

/// The result as one JSON document: what `--format json` prints and what
/// `engine serve` answers on `/api/v1/query`.
pub fn json_document(args: &QueryArgs, q: &Query, result: &QueryResult) -> serde_json::Value {
    match result {
        QueryResult::Raw(series) => raw_json(q, series),
        QueryResult::Aggregated(groups) => {
            windows_json(q, args.window.as_deref(), args.agg.as_deref(), groups)
        }
    }
}

fn raw_json(q: &Query, series: &[SeriesPoints]) -> serde_json::Value {
    json!({
        "metric": q.metric,
        "series": series.iter().map(|s| json!({
            "tags": s.tags,
            "points": s.points.iter().map(|&(t, v)| json!([t, number(v)])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn windows_json(
    q: &Query,
    window: Option<&str>,
    agg: Option<&str>,
    groups: &[GroupWindows],
) -> serde_json::Value {
    json!({
        "metric": q.metric,
        "window": window,
        "aggregate": agg,
        "group_by": q.group_by,
        "groups": groups.iter().map(|g| json!({
            "group": g.group,
            "windows": g.windows.iter().map(|w| json!({
                "start": w.start, "time": format_time(w.start), "value": number(w.value), "count": w.count,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `metric,tag=value,...`, as line protocol writes a series.
fn series_name(s: &SeriesPoints) -> String {
    let mut name = s.metric.clone();
    for (k, v) in &s.tags {
        name.push_str(&format!(",{k}={v}"));
    }
    name
}

fn raw_rows(out: &mut dyn Write, series: &[SeriesPoints], csv: bool) -> Result<()> {
    if csv {
        writeln!(out, "time,series,value")?;
    } else {
        writeln!(out, "{:<32} {:<40} {:>16}", "time", "series", "value")?;
    }
    for s in series {
        let name = series_name(s);
        for &(t, v) in &s.points {
            if csv {
                writeln!(
                    out,
                    "{},\"{}\",{}",
                    format_time(t),
                    name.replace('"', "\"\""),
                    v
                )?;
            } else {
                writeln!(out, "{:<32} {:<40} {:>16}", format_time(t), name, v)?;
            }
        }
    }
    Ok(())
}

fn windows_rows(
    out: &mut dyn Write,
    q: &Query,
    agg: Option<&str>,
    groups: &[GroupWindows],
    csv: bool,
) -> Result<()> {
    let label = q.group_by.clone().unwrap_or_else(|| "group".into());
    if csv {
        writeln!(out, "time,{label},value,count")?;
    } else {
        writeln!(
            out,
            "{:<32} {:<20} {:>16} {:>10}",
            "time",
            label,
            agg.unwrap_or("value"),
            "count"
        )?;
    }
    for g in groups {
        let group = g.group.clone().unwrap_or_else(|| "*".into());
        for w in &g.windows {
            if csv {
                writeln!(
                    out,
                    "{},{},{},{}",
                    format_time(w.start),
                    group,
                    w.value,
                    w.count
                )?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:<20} {:>16.6} {:>10}",
                    format_time(w.start),
                    group,
                    w.value,
                    w.count
                )?;
            }
        }
    }
    Ok(())
}
