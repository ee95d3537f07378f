//! Extended attributes through the mount: the `user.` namespace only, each
//! value sealed by the volume's `XattrSealer` (see `crate::xattrs`).

use std::ffi::OsStr;

use fuser::Errno;
use rustix::fs::{FileType as RawType, XattrFlags};

use super::errno::sys;
use super::nodes::Pinned;
use crate::content::ContentCrypto;
use crate::xattrs::{is_user, Owner, XattrSealer, USER_PREFIX};

/// Why a value was not read.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrError {
    /// Its sealed value failed authentication (logged): EIO.
    Forged,
    Other(Errno),
}

impl XattrError {
    pub fn errno(self) -> Errno {
        match self {
            XattrError::Forged => Errno::EIO,
            XattrError::Other(e) => e,
        }
    }
}

impl From<Errno> for XattrError {
    fn from(e: Errno) -> Self {
        XattrError::Other(e)
    }
}

pub struct XattrCipher {
    sealer: XattrSealer,
}

fn user_name(name: &OsStr) -> Result<&OsStr, Errno> {
    if is_user(name) {
        Ok(name)
    } else {
        Err(Errno::EOPNOTSUPP)
    }
}

impl XattrCipher {
    pub fn new(crypto: &ContentCrypto) -> Self {
        XattrCipher {
            sealer: XattrSealer::new(crypto),
        }
    }

    /// Symlinks cannot carry `user.` attributes on Linux.
    fn target(node: &Pinned) -> Result<String, Errno> {
        if node.kind == RawType::Symlink {
            return Err(Errno::EPERM);
        }
        Ok(node.proc_path())
    }

    pub fn set(
        &self,
        node: &Pinned,
        owner: Owner,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let name = user_name(name)?;
        let sealed = self.sealer.seal(owner, name, value);
        let flags = XattrFlags::from_bits(flags as _).ok_or(Errno::EINVAL)?;
        rustix::fs::setxattr(Self::target(node)?, name, &sealed, flags).map_err(sys)
    }

    pub fn get(&self, node: &Pinned, owner: Owner, name: &OsStr) -> Result<Vec<u8>, XattrError> {
        let name = user_name(name).map_err(|_| Errno::NO_XATTR)?;
        let path = Self::target(node).map_err(|_| Errno::NO_XATTR)?;
        let len = rustix::fs::getxattr_query(&path, name).map_err(sys)?;
        let mut sealed = vec![0u8; len];
        let got = rustix::fs::getxattr(&path, name, &mut sealed[..]).map_err(sys)?;
        sealed.truncate(got);
        self.sealer.open(owner, name, sealed).map_err(|_| {
            log::error!("authentication failed: extended attribute {name:?} of {path}");
            XattrError::Forged
        })
    }

    /// The `user.` names, NUL-terminated, as `listxattr` returns them.
    pub fn list(&self, node: &Pinned) -> Result<Vec<u8>, Errno> {
        let Ok(path) = Self::target(node) else {
            return Ok(Vec::new());
        };
        let len = rustix::fs::listxattr_query(&path).map_err(sys)?;
        let mut all = vec![0u8; len];
        let got = rustix::fs::listxattr(&path, &mut all[..]).map_err(sys)?;
        all.truncate(got);
        Ok(all
            .split(|&b| b == 0)
            .filter(|n| n.starts_with(USER_PREFIX))
            .flat_map(|n| n.iter().copied().chain([0]))
            .collect())
    }

    pub fn remove(&self, node: &Pinned, name: &OsStr) -> Result<(), Errno> {
        let name = user_name(name)?;
        rustix::fs::removexattr(Self::target(node)?, name).map_err(sys)
    }
}
