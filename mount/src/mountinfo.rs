//! What is mounted where, from /proc/self/mountinfo.

use std::path::{Path, PathBuf};

pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub device: String,
    pub point: PathBuf,
    pub source: String,
}

/// The kernel escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

pub fn mounts() -> Vec<MountEntry> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let device = fields.get(2)?;
            let point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let source = fields.get(sep + 2)?;
            Some(MountEntry {
                device: device.to_string(),
                point: PathBuf::from(unescape(point)),
                source: unescape(source),
            })
        })
        .collect()
}

/// The mount that `dir` lives on (the deepest mount point above it).
pub fn containing(dir: &Path) -> Option<MountEntry> {
    let dir = dir.canonicalize().ok()?;
    mounts()
        .into_iter()
        .filter(|m| dir.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
}

pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    mounts().iter().any(|m| m.point == dir)
}

/// The chronicle volume `dir` lives on: (mount point, backing directory).
pub fn chronicle_volume_of(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let entry = containing(dir)?;
    let backing = entry.source.strip_prefix("chronicle:")?;
    Some((entry.point, PathBuf::from(backing)))
}

/// Where the chronicle volume in `backing` is mounted, if it is.
pub fn mount_of_backing(backing: &Path) -> Option<PathBuf> {
    let backing = backing.canonicalize().ok()?;
    mounts()
        .into_iter()
        .find(|m| m.source.strip_prefix("chronicle:").map(Path::new) == Some(backing.as_path()))
        .map(|m| m.point)
}
