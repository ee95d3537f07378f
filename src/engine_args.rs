//! Arguments that several `chronicle engine` commands share: the WAL sync
//! policy, and the parameters of a query (given as flags to `engine query`
//! and as URL parameters to `engine serve`'s `/api/v1/query`).

use anyhow::Result;
use chronicle_engine::timefmt::{parse_duration, parse_time};
use chronicle_engine::{Aggregate, Query, SyncPolicy, TagFilter};
use clap::{Args, ValueEnum};

/// When the write-ahead log is fsynced (`--sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// fsync before each write is acknowledged (concurrent writers share one fsync)
    Always,
    /// fsync at most a second after a write
    Interval,
    /// leave it to the operating system
    Never,
}

impl SyncArg {
    pub fn policy(self) -> SyncPolicy {
        match self {
            SyncArg::Always => SyncPolicy::Always,
            SyncArg::Interval => SyncPolicy::default(),
            SyncArg::Never => SyncPolicy::Never,
        }
    }
}

/// What to select and how to aggregate it.
#[derive(Args, Clone, Debug, Default)]
pub struct QueryArgs {
    #[arg(long, value_name = "M")]
    pub metric: String,
    /// Keep series whose tag KEY equals VALUE (KEY!=VALUE: differs); repeatable
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Keep series whose tag KEY matches the regular expression RE (whole value); repeatable
    #[arg(long = "tag-regex", value_name = "KEY=RE")]
    pub tag_regexes: Vec<String>,
    /// Start time, inclusive: RFC 3339 or nanoseconds
    #[arg(long, value_name = "T")]
    pub start: Option<String>,
    /// End time, exclusive: RFC 3339 or nanoseconds
    #[arg(long, value_name = "T")]
    pub end: Option<String>,
    /// Window length (10s, 5m, 1h, 7d), aligned to the epoch; needs --agg
    #[arg(long, value_name = "DUR", requires = "agg")]
    pub window: Option<String>,
    /// count, sum, mean, min, max, first, last or stddev; needs --window
    #[arg(long, value_name = "FN", requires = "window")]
    pub agg: Option<String>,
    /// One result per value of this tag (with --window)
    #[arg(long, value_name = "TAG", requires = "window")]
    pub group_by: Option<String>,
}

impl QueryArgs {
    /// The arguments from URL query parameters, named as the flags are with
    /// `_` for `-` (`metric`, `tag`, `tag_regex`, `start`, `end`, `window`,
    /// `agg`, `group_by`); `tag` and `tag_regex` may repeat.
    pub fn from_params<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> Result<QueryArgs> {
        let mut args = QueryArgs::default();
        let mut metric = None;
        for (name, value) in params {
            let value = value.to_string();
            match name {
                "metric" => metric = Some(value),
                "tag" => args.tags.push(value),
                "tag_regex" => args.tag_regexes.push(value),
                "start" => args.start = Some(value),
                "end" => args.end = Some(value),
                "window" => args.window = Some(value),
                "agg" => args.agg = Some(value),
                "group_by" => args.group_by = Some(value),
                other => anyhow::bail!("unknown query parameter `{other}`"),
            }
        }
        args.metric = metric.ok_or_else(|| anyhow::anyhow!("the `metric` parameter is missing"))?;
        if args.window.is_some() != args.agg.is_some() {
            anyhow::bail!("`window` and `agg` go together: give both or neither");
        }
        if args.group_by.is_some() && args.window.is_none() {
            anyhow::bail!("`group_by` needs `window` and `agg`");
        }
        Ok(args)
    }

    pub fn to_query(&self) -> Result<Query> {
        let mut q = Query::new(self.metric.clone());
        for t in &self.tags {
            q.filters.push(TagFilter::parse(t)?);
        }
        for t in &self.tag_regexes {
            q.filters.push(TagFilter::parse_regex(t)?);
        }
        if let Some(s) = &self.start {
            q.start = parse_time(s)?;
        }
        if let Some(e) = &self.end {
            q.end = parse_time(e)?;
        }
        if let (Some(w), Some(a)) = (&self.window, &self.agg) {
            q.window = Some((parse_duration(w)?, Aggregate::parse(a)?));
        }
        q.group_by = self.group_by.clone();
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: URL parameters build the same query as the flags, and
    // mistakes are refused with a message instead of being ignored.
    #[test]
    fn params_build_the_query() {
        let args = QueryArgs::from_params(
            [
                ("metric", "cpu"),
                ("tag", "host=a"),
                ("tag", "dc!=x"),
                ("tag_regex", "rack=r[0-9]"),
                ("start", "10"),
                ("end", "2026-11-29T10:00:00Z"),
                ("window", "1m"),
                ("agg", "mean"),
                ("group_by", "host"),
            ]
            .into_iter(),
        )
        .expect("valid parameters");
        let q = args.to_query().expect("query");
        assert_eq!(q.metric, "cpu");
        assert_eq!(q.filters.len(), 3);
        assert_eq!((q.start, q.end), (10, 1_795_946_400_000_000_000));
        assert_eq!(q.window.map(|w| w.0), Some(60_000_000_000));
        assert_eq!(q.group_by.as_deref(), Some("host"));
        let refused = |params: &[(&str, &str)]| {
            QueryArgs::from_params(params.iter().copied())
                .expect_err("refused")
                .to_string()
        };
        assert!(refused(&[("tag", "a=b")]).contains("metric"));
        assert!(refused(&[("metric", "m"), ("window", "1m")]).contains("window"));
        assert!(refused(&[("metric", "m"), ("limit", "3")]).contains("limit"));
    }
}
