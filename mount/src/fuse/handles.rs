//! File handles (`name_to_handle_at`, `open_by_handle_at`): a way back to a
//! backing file without a path and without holding a descriptor, so that
//! the inode table can close the descriptors of files it has not used
//! lately and reopen them on demand, renames or not. The only unsafe code
//! of the mount: two system calls with a caller-sized buffer.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The largest handle the kernel hands out (`MAX_HANDLE_SZ`).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// A backing file's handle, valid as long as the file exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    handle_type: i32,
    bytes: Vec<u8>,
}

/// The handle of the file open as `fd` (an `O_PATH` descriptor will do).
pub fn handle_of(fd: BorrowedFd) -> io::Result<FileHandle> {
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a `struct file_handle` whose `handle_bytes` says how
    // much room follows it (MAX_HANDLE_SZ, the kernel's maximum); the path
    // is an empty NUL-terminated string, valid with AT_EMPTY_PATH; both
    // out-pointers are valid for writes for the duration of the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut raw as *mut RawHandle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        handle_type: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    })
}

/// Opens `handle` as an `O_PATH` descriptor; `mount` is any descriptor on
/// the same file system but an `O_PATH` one (the kernel refuses those
/// here). Needs CAP_DAC_READ_SEARCH.
pub fn open_handle(mount: BorrowedFd, handle: &FileHandle) -> io::Result<OwnedFd> {
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let len = handle.bytes.len().min(MAX_HANDLE_SZ);
    raw.f_handle[..len].copy_from_slice(&handle.bytes[..len]);
    // SAFETY: `raw` is a valid `struct file_handle` holding a handle the
    // kernel gave us (its length within the buffer); the kernel only reads
    // it. The returned descriptor, if any, is new and ours to own.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut raw as *mut RawHandle).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    // Protects: a handle taken from an O_PATH descriptor reopens the same
    // file, after a rename too (where this process may open handles: root).
    #[test]
    fn handles_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"x").expect("write");
        let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC;
        let root = rustix::fs::open(
            dir.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("root");
        let file = rustix::fs::openat(&root, "a", flags, rustix::fs::Mode::empty()).expect("a");
        let handle = handle_of(file.as_fd()).expect("handle");
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).expect("rename");
        match open_handle(root.as_fd(), &handle) {
            Ok(again) => {
                let (x, y) = (
                    rustix::fs::fstat(&file).expect("stat"),
                    rustix::fs::fstat(&again).expect("stat"),
                );
                assert_eq!((x.st_dev, x.st_ino), (y.st_dev, y.st_ino));
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => panic!("open_by_handle_at: {e}"),
        }
    }
}
