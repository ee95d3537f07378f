//! Errors as the program using the mount sees them: one errno each.

use fuser::Errno;

use crate::error::VolumeError;

/// A failed system call as the errno the program sees.
pub fn sys(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

/// An I/O error's own errno, or `EIO` when it has none.
pub fn io(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Maps a volume error to an errno; integrity failures are logged, since
/// the program only sees `EIO`, naming the file's path inside the mount
/// (`plain`) beside its backing path where it is known.
pub fn volume_errno_at(e: VolumeError, plain: Option<&std::path::Path>) -> Errno {
    match &e {
        VolumeError::AuthenticationFailed { .. } | VolumeError::BadFileHeader { .. } => match plain
        {
            Some(plain) => log::error!("{e} (in the mount: {})", plain.display()),
            None => log::error!("{e}"),
        },
        VolumeError::Io { .. } => log::debug!("{e}"),
        _ => log::warn!("{e}"),
    }
    Errno::from_i32(e.errno())
}
