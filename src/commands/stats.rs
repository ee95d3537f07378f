//! `stats`: what a running mount reports of itself (`chronicle_mount::control`).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chronicle_mount::control::{self, AskError, Report};
use chronicle_mount::mountinfo;

pub fn stats(mountpoint: &Path, raw: bool) -> Result<()> {
    let Some(entry) = mountinfo::mounted_at(mountpoint) else {
        bail!("{} is not a mount point", mountpoint.display());
    };
    let Some(backing) = entry.chronicle_backing().map(Path::to_path_buf) else {
        bail!(
            "{} is not a chronicle mount (it is {})",
            mountpoint.display(),
            entry.fstype
        );
    };
    let owner = entry
        .owner
        .map_or("unknown".to_string(), |uid| uid.to_string());
    let at = mountpoint.display();
    let report = match control::ask(&entry) {
        Ok(report) => report,
        Err(AskError::Open(e)) if e.raw_os_error() == Some(libc::EACCES) => bail!(
            "cannot open {at}: permission denied (a FUSE mount lets in only the user who \
             mounted it, uid {owner}, unless it was mounted with --allow-other)"
        ),
        Err(AskError::Open(e)) => return Err(e).with_context(|| format!("cannot open {at}")),
        Err(AskError::NotFuse) => bail!("{at} is not a chronicle mount"),
        Err(AskError::Moved) => {
            bail!("{at} was unmounted or mounted over while being asked; try again")
        }
        Err(AskError::Refused(e)) if e.raw_os_error() == Some(libc::EPERM) => {
            bail!("only root and the user who mounted {at} (uid {owner}) may read its figures")
        }
        Err(AskError::Refused(e)) if e.raw_os_error() == Some(libc::EINVAL) => bail!(
            "{at} is a directory inside a volume, not its root (a bind mount?): ask where \
             the volume itself is mounted"
        ),
        Err(AskError::Refused(e)) if e.raw_os_error() == Some(libc::ENOTTY) => bail!(
            "the mount at {at} does not report figures: it was made by an earlier \
             chronicle (unmount and mount it again)"
        ),
        Err(AskError::Refused(e)) => {
            return Err(e).with_context(|| format!("asking {at} for its figures"))
        }
        Err(AskError::Malformed(why)) => bail!("the mount at {at} sent a malformed report ({why})"),
    };
    match raw {
        true => print!("{}", String::from_utf8_lossy(&report.encode())),
        false => print!("{}", table(&report, &backing, mountpoint)),
    }
    Ok(())
}

fn table(report: &Report, backing: &Path, mountpoint: &Path) -> String {
    let mut ops = report.operations.clone();
    ops.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.name.cmp(&b.name)));
    let mut out = format!(
        "{} mounted at {}, serving for {}\n\n{:<16} {:>12} {:>12} {:>10}\n",
        printable(backing),
        printable(mountpoint),
        span(report.uptime),
        "request",
        "count",
        "time, s",
        "mean, µs"
    );
    let line = |name: &str, requests: u64, nanos: u64| {
        let mean = nanos as f64 / requests.max(1) as f64 / 1e3;
        format!(
            "{name:<16} {requests:>12} {:>12.3} {mean:>10.1}\n",
            nanos as f64 / 1e9
        )
    };
    for op in &ops {
        out += &line(&op.name, op.requests, op.nanos);
    }
    // A mount's figures are its server's word: added without overflow.
    let requests = ops
        .iter()
        .fold(0u64, |sum, o| sum.saturating_add(o.requests));
    let nanos = ops.iter().fold(0u64, |sum, o| sum.saturating_add(o.nanos));
    out += &line("all", requests, nanos);
    out += &format!(
        "\n(time: the mount's, from taking a request to its reply)\n\
         forged or damaged data met (requests that read or listed it): {}\n",
        report.authentication_failures
    );
    out
}

/// `path` with its control characters escaped: the backing directory's
/// name comes from mountinfo, where another user's mount may have put it.
fn printable(path: &Path) -> String {
    let text = path.to_string_lossy();
    text.chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

/// `3h 02m 05s`, `2m 07s`, `9s`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m {sec:02}s"),
        (h, min, sec) => format!("{h}h {min:02}m {sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_mount::control::OperationCount;

    #[test]
    fn the_table_puts_the_busiest_first_and_sums_them() {
        let op = |name: &str, requests, nanos| OperationCount {
            name: name.into(),
            requests,
            nanos,
        };
        let report = Report {
            uptime: Duration::from_secs(3 * 3600 + 2 * 60 + 5),
            authentication_failures: 2,
            operations: vec![op("LOOKUP", 10, 50_000), op("READ", 30, 3_000_000)],
        };
        let text = table(&report, Path::new("/srv/m.enc"), Path::new("/srv/m"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "/srv/m.enc mounted at /srv/m, serving for 3h 02m 05s"
        );
        assert!(lines[3].starts_with("READ") && lines[3].ends_with("0.003      100.0"));
        assert!(lines[4].starts_with("LOOKUP") && lines[4].ends_with("0.000        5.0"));
        assert!(lines[5].starts_with("all") && lines[5].contains(" 40 "));
        assert_eq!(
            lines.last(),
            Some(&"forged or damaged data met (requests that read or listed it): 2")
        );
        assert_eq!(span(Duration::from_secs(127)), "2m 07s");
        assert_eq!(span(Duration::from_secs(9)), "9s");
        assert_eq!(
            printable(Path::new("/srv/a\u{1b}[2Jb")),
            "/srv/a\\u{1b}[2Jb"
        );
    }
}
