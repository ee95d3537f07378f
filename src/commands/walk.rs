//! Walking a backing directory: every entry but the volume's own files.

use std::path::{Path, PathBuf};

use chronicle_mount::CONFIG_NAME;

/// One entry, relative to the walked root.
pub struct Entry {
    pub relative: PathBuf,
    pub meta: std::fs::Metadata,
}

/// All entries under `root`, parents before children, names sorted.
pub fn walk(root: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_into(root: &Path, relative: &Path, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(relative))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        if relative.as_os_str().is_empty()
            && name.as_encoded_bytes().starts_with(CONFIG_NAME.as_bytes())
        {
            continue;
        }
        let rel = relative.join(&name);
        let meta = std::fs::symlink_metadata(root.join(&rel))?;
        let is_dir = meta.is_dir();
        out.push(Entry {
            relative: rel.clone(),
            meta,
        });
        if is_dir {
            walk_into(root, &rel, out)?;
        }
    }
    Ok(())
}

/// A progress bar over `total` bytes on standard error (hidden when it is
/// not a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}
