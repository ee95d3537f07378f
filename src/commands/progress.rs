//! Progress bars for long work, on standard error (hidden when it is not a
//! terminal).

fn bar(total: u64, what: &str, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A progress bar over `total` bytes.
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    bar(
        total,
        what,
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
}

/// A progress bar over `total` items (points, files).
pub fn progress_count(total: u64, what: &str) -> indicatif::ProgressBar {
    bar(
        total,
        what,
        "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta})",
    )
}
