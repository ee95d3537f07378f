//! Arguments that several `chronicle engine` commands share: the WAL sync
//! policy, the database's limits, and the parameters of a query (given as flags to `engine query`
//! and as URL parameters to `engine serve`'s `/api/v1/query`).

use anyhow::Result;
use chronicle_engine::timefmt::{parse_duration, parse_time};
use chronicle_engine::{
    Aggregate, Options, Query, SyncPolicy, TagFilter, DEFAULT_MAX_PARTITIONS, DEFAULT_MAX_SERIES,
    MAPS_PER_PARTITION,
};
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

/// How much the database may hold: writes past a limit are refused.
#[derive(Args, Clone, Copy, Debug)]
pub struct LimitArgs {
    /// Hour partitions the database may hold; a write that would make more
    /// is refused. Each is a file and needs up to three memory maps, so
    /// above about 20,000 raise vm.max_map_count first
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PARTITIONS,
          value_parser = max_partitions)]
    pub max_partitions: usize,
    /// Series (metric, tags and field) the database may hold; a write that
    /// would make more is refused. Each is held in memory while the
    /// database is open
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SERIES)]
    pub max_series: usize,
    /// Refuse points timestamped more than DUR after now (e.g. 1d); any
    /// time by default. With --retention it bounds the hours a client can
    /// make the database hold
    #[arg(long, value_name = "DUR", value_parser = duration)]
    pub max_future: Option<i64>,
}

impl LimitArgs {
    /// `options` with these limits.
    pub fn apply(self, options: Options) -> Options {
        Options {
            max_partitions: self.max_partitions,
            max_series: self.max_series,
            max_future: self.max_future,
            ..options
        }
    }
}

/// A duration argument (10s, 5m, 1h, 7d), in nanoseconds: every duration
/// option's `value_parser`, so a bad one is refused with the others.
pub fn duration(value: &str) -> Result<i64, String> {
    parse_duration(value).map_err(|e| match e {
        // Not a query: the detail alone.
        chronicle_engine::EngineError::BadQuery(detail) => detail,
        other => other.to_string(),
    })
}

/// Memory maps left for the program itself (libraries, thread stacks,
/// heap) beside the segments'.
const MAPS_FOR_THE_PROGRAM: usize = 4096;

/// `--max-partitions`, checked against this machine's `vm.max_map_count`.
fn max_partitions(value: &str) -> Result<usize, String> {
    let asked = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of partitions"))?;
    let allowed = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    partitions_within_maps(asked, allowed)
}

/// Refuses a partition limit of 0, or one whose segments could need more
/// memory maps than `max_map_count` (when known) allows: mapping a segment
/// would then fail, and with it every flush.
fn partitions_within_maps(asked: usize, max_map_count: Option<usize>) -> Result<usize, String> {
    if asked == 0 {
        return Err("a database needs at least one partition".into());
    }
    let maps = asked
        .saturating_mul(MAPS_PER_PARTITION)
        .saturating_add(MAPS_FOR_THE_PROGRAM);
    match max_map_count {
        Some(allowed) if maps > allowed => Err(format!(
            "{asked} partitions may need {maps} memory maps, more than this machine's \
             vm.max_map_count ({allowed}) allows: raise it (sysctl -w vm.max_map_count={maps}) \
             or ask for fewer partitions"
        )),
        _ => Ok(asked),
    }
}

/// Tag filters a query may have (`--tag` and `--tag-regex` together).
pub const MAX_TAG_FILTERS: usize = 64;

/// What to select and how to aggregate it.
#[derive(Args, Clone, Debug, Default)]
pub struct QueryArgs {
    /// The metric: a line's measurement, or measurement_field for a field
    /// not named `value` (cpu,host=a usage=3 is metric cpu_usage)
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

    /// The query, tag regexes and all.
    pub fn to_query(&self) -> Result<Query> {
        let mut q = self.to_query_but_regexes()?;
        self.add_regexes(&mut q)?;
        Ok(q)
    }

    /// Everything but the tag regexes, whose compiling takes CPU: what a
    /// server can check before it gives the query a slot.
    pub fn to_query_but_regexes(&self) -> Result<Query> {
        let filters = self.tags.len() + self.tag_regexes.len();
        if filters > MAX_TAG_FILTERS {
            anyhow::bail!(
                "{filters} tag filters: at most {MAX_TAG_FILTERS} (each is checked against every \
                 series of the metric)"
            );
        }
        let mut q = Query::new(self.metric.clone());
        for t in &self.tags {
            q.filters.push(TagFilter::parse(t)?);
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

    /// Compiles the tag regexes into `q`'s filters.
    pub fn add_regexes(&self, q: &mut Query) -> Result<()> {
        for t in &self.tag_regexes {
            q.filters.push(TagFilter::parse_regex(t)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: a partition limit whose segments the kernel could not map
    // is refused at start, not at the flush that needs the maps; the
    // default fits Linux's default vm.max_map_count.
    #[test]
    fn a_partition_limit_must_fit_the_memory_maps() {
        let linux_default = Some(65_530);
        assert_eq!(
            partitions_within_maps(DEFAULT_MAX_PARTITIONS, linux_default),
            Ok(DEFAULT_MAX_PARTITIONS)
        );
        let refused = partitions_within_maps(30_000, linux_default).expect_err("too many maps");
        assert!(refused.contains("vm.max_map_count"), "{refused}");
        assert_eq!(partitions_within_maps(30_000, Some(1 << 20)), Ok(30_000));
        assert_eq!(partitions_within_maps(30_000, None), Ok(30_000));
        assert!(partitions_within_maps(0, None).is_err());
        assert!(max_partitions("ten").is_err());
    }

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
        let many: Vec<(&str, &str)> = std::iter::once(("metric", "m"))
            .chain(std::iter::repeat_n(
                ("tag_regex", "k=a+"),
                MAX_TAG_FILTERS + 1,
            ))
            .collect();
        let args = QueryArgs::from_params(many.into_iter()).expect("parameters");
        let refused = args.to_query().expect_err("too many filters").to_string();
        assert!(refused.contains("at most 64"), "{refused}");
    }
}
