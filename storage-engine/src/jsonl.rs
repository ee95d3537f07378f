//! JSON Lines export and import, one point per line:
//! `{"metric":"cpu_usage","tags":{"host":"a"},"timestamp":1700000000000000000,"value":0.5}`.
//! Non-finite values, which JSON lacks, are written as the strings "NaN",
//! "Infinity" and "-Infinity" and read back from them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::model::{Point, SeriesKey};

pub fn encode_point(key: &SeriesKey, ts: i64, value: f64, out: &mut Vec<u8>) {
    let tags: BTreeMap<&str, &str> = key
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let value = if value.is_finite() {
        serde_json::json!(value)
    } else if value.is_nan() {
        serde_json::json!("NaN")
    } else if value > 0.0 {
        serde_json::json!("Infinity")
    } else {
        serde_json::json!("-Infinity")
    };
    let doc =
        serde_json::json!({"metric": key.metric, "tags": tags, "timestamp": ts, "value": value});
    out.extend_from_slice(doc.to_string().as_bytes());
    out.push(b'\n');
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Value {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
struct Line {
    metric: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    timestamp: i64,
    value: Value,
}

pub fn decode_point(text: &str, line: u64) -> Result<Point> {
    let parsed: Line = serde_json::from_str(text).map_err(|e| EngineError::BadInput {
        line,
        detail: format!("not a point: {e}"),
    })?;
    let value = match parsed.value {
        Value::Number(v) => v,
        Value::Text(t) => match t.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            other => {
                return Err(EngineError::BadInput {
                    line,
                    detail: format!("value {other:?} is not a number"),
                })
            }
        },
    };
    if let Some(detail) = crate::model::timestamp_refused(parsed.timestamp) {
        return Err(EngineError::BadInput { line, detail });
    }
    let series = SeriesKey::new(parsed.metric, parsed.tags.into_iter().collect());
    if !series.fits_record() {
        return Err(EngineError::BadInput {
            line,
            detail: "a name or tag over 65,535 bytes, or over 65,535 tags".into(),
        });
    }
    Ok(Point {
        series,
        timestamp: parsed.timestamp,
        value,
    })
}
