//! What is mounted where, from /proc/self/mountinfo.

use std::path::{Path, PathBuf};

pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub device: String,
    pub point: PathBuf,
    /// The file system type (`fuse.chronicle` for a chronicle volume).
    pub fstype: String,
    /// What was mounted: for a chronicle volume, its backing directory.
    pub source: String,
}

/// The type a chronicle mount shows in /proc/mounts, and the type to give
/// it in /etc/fstab.
pub const CHRONICLE_FSTYPE: &str = "fuse.chronicle";

impl MountEntry {
    /// The backing directory, when this is a chronicle volume.
    pub fn chronicle_backing(&self) -> Option<&Path> {
        (self.fstype == CHRONICLE_FSTYPE).then(|| Path::new(&self.source))
    }
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
            let fstype = fields.get(sep + 1)?;
            let source = fields.get(sep + 2)?;
            Some(MountEntry {
                device: device.to_string(),
                point: PathBuf::from(unescape(point)),
                fstype: unescape(fstype),
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
    let backing = entry.chronicle_backing()?.to_path_buf();
    Some((entry.point, backing))
}

/// Where the chronicle volume in `backing` is mounted, if it is.
pub fn mount_of_backing(backing: &Path) -> Option<PathBuf> {
    let backing = backing.canonicalize().ok()?;
    mounts()
        .into_iter()
        .find(|m| m.chronicle_backing() == Some(backing.as_path()))
        .map(|m| m.point)
}
