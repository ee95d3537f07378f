//! What is mounted where, from /proc/self/mountinfo.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub device: String,
    pub point: PathBuf,
    /// The file system type (`fuse.chronicle` for a chronicle volume).
    pub fstype: String,
    /// What was mounted: for a chronicle volume, its backing directory.
    pub source: OsString,
    /// Who mounted it, for FUSE (`user_id=` of its options).
    pub owner: Option<u32>,
}

/// The type a chronicle mount shows in /proc/mounts, and the type to give
/// it in /etc/fstab.
pub const CHRONICLE_FSTYPE: &str = "fuse.chronicle";

impl MountEntry {
    /// The backing directory, when this is a chronicle volume mounted by
    /// root, by the user running this program, or by the owner of the
    /// directory it names. Any user can make a FUSE
    /// mount of any type and source (`fusermount3 -o subtype=,fsname=`); such
    /// a mount must not steer what root's commands (umount's flush, the
    /// checks of fsck and rotate-key) do to a directory it names.
    pub fn chronicle_backing(&self) -> Option<&Path> {
        let backing = Path::new(&self.source);
        if self.fstype != CHRONICLE_FSTYPE || !backing.is_absolute() {
            return None;
        }
        let me = rustix::process::geteuid().as_raw();
        let trusted = match self.owner {
            Some(owner) if owner == 0 || owner == me => true,
            // A user's mount (fstab's `user` option) of a directory of
            // theirs: a user can name only a directory they own.
            Some(owner) => rustix::fs::stat(backing).is_ok_and(|st| st.st_uid == owner),
            None => false,
        };
        trusted.then_some(backing)
    }
}

/// The mount at `point` (the last made there: the one programs see),
/// found without a look at `point` itself, which would wait on a stuck
/// FUSE mount and fail on a dead one.
pub fn mounted_at(point: &Path) -> Option<MountEntry> {
    let absolute = std::path::absolute(point).ok()?;
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().ok()?.join(name),
        _ => absolute,
    };
    mounts().into_iter().rev().find(|m| m.point == resolved)
}

/// The kernel escapes spaces, tabs, newlines and backslashes as `\ooo`
/// (octal); names are bytes, not necessarily UTF-8.
fn unescape(field: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field;
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = tail
            .get(..3)
            .filter(|d| first == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                u8::try_from(d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'))).ok()
            });
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = &tail[3..];
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    OsString::from_vec(out)
}

pub fn mounts() -> Vec<MountEntry> {
    std::fs::read("/proc/self/mountinfo")
        .map(|info| parse(&info))
        .unwrap_or_default()
}

/// The lines of a mountinfo file: `ID PARENT MAJ:MIN ROOT POINT OPTIONS
/// [TAGS...] - TYPE SOURCE SUPER_OPTIONS`.
fn parse(info: &[u8]) -> Vec<MountEntry> {
    info.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let device = fields.get(2)?;
            let point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == b"-")?;
            let fstype = fields.get(sep + 1)?;
            let source = fields.get(sep + 2)?;
            let owner = fields.get(sep + 3).and_then(|options| {
                options
                    .split(|&b| b == b',')
                    .find_map(|o| o.strip_prefix(b"user_id="))
                    .and_then(|id| std::str::from_utf8(id).ok()?.parse().ok())
            });
            Some(MountEntry {
                device: String::from_utf8_lossy(device).into_owned(),
                point: PathBuf::from(unescape(point)),
                fstype: unescape(fstype).to_string_lossy().into_owned(),
                source: unescape(source),
                owner,
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

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = b"22 1 252:0 / / rw,relatime - ext4 /dev/vda rw\n\
42 27 0:39 / /srv/my\\040metrics rw,nosuid,nodev - fuse.chronicle /srv/metrics\\040enc rw,user_id=0,group_id=0\n\
43 27 0:40 / /home/eve/m rw,nosuid,nodev - fuse.chronicle /srv/metrics.enc rw,user_id=1000,group_id=1000\n\
44 27 0:41 / /mnt/\xff rw - fuse.chronicle rel/path rw,user_id=0,group_id=0\n";

    #[test]
    fn only_chronicle_mounts_by_root_or_this_user_name_a_backing_directory() {
        let mounts = parse(INFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].chronicle_backing(), None, "not chronicle");
        assert_eq!(mounts[1].point, Path::new("/srv/my metrics"));
        assert_eq!(
            mounts[1].chronicle_backing(),
            Some(Path::new("/srv/metrics enc"))
        );
        assert_eq!(mounts[1].device, "0:39");
        // Another user's FUSE mount claiming the type and a source.
        assert_eq!(mounts[2].owner, Some(1000));
        if rustix::process::geteuid().is_root() {
            assert_eq!(mounts[2].chronicle_backing(), None);
        }
        // A mount point that is not UTF-8 does not hide the others, and a
        // relative source names nothing.
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(mounts[3].point.as_os_str().as_bytes(), b"/mnt/\xff");
        assert_eq!(mounts[3].chronicle_backing(), None);
    }

    #[test]
    fn escapes_are_three_octal_digits_of_one_byte() {
        assert_eq!(
            unescape(b"a\\040b\\134\\777\\04"),
            OsString::from("a b\\\\777\\04")
        );
    }
}
