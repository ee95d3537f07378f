//! Extended attributes in the `user.` namespace, with their values sealed
//! (AES-256-GCM under a key derived from the master key). The associated
//! data is the attribute name and, on a regular file, the file id from its
//! header, so a value copied onto another file or under another name fails
//! authentication. Directories have no header: their values are bound to
//! the name only (docs/SECURITY.md). Other namespaces are refused:
//! `security.` and `system.` attributes would be interpreted by the
//! backing kernel.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::Errno;
use rustix::fs::{FileType as RawType, XattrFlags};

use super::errno::sys;
use super::nodes::Node;
use crate::cipher::{self, Aead, FRAME_OVERHEAD};
use crate::content::ContentCrypto;
use crate::layout::FILE_ID_LEN;

const USER_PREFIX: &[u8] = b"user.";

/// What a value is bound to besides its name.
#[derive(Clone, Copy)]
pub enum Owner {
    /// A regular file, by the file id in its header.
    File([u8; FILE_ID_LEN]),
    /// A directory (or other node without a header).
    Other,
}

pub struct XattrCipher {
    aead: Box<dyn Aead>,
}

fn user_name(name: &OsStr) -> Result<&OsStr, Errno> {
    if name.as_bytes().starts_with(USER_PREFIX) {
        Ok(name)
    } else {
        Err(Errno::EOPNOTSUPP)
    }
}

/// The associated data of a value: owner kind ‖ file id ‖ name.
fn aad(owner: Owner, name: &OsStr) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + FILE_ID_LEN + name.len());
    match owner {
        Owner::File(id) => {
            aad.push(1);
            aad.extend_from_slice(&id);
        }
        Owner::Other => aad.push(0),
    }
    aad.extend_from_slice(name.as_bytes());
    aad
}

impl XattrCipher {
    pub fn new(crypto: &ContentCrypto) -> Self {
        XattrCipher {
            aead: crypto.derive_aead(b"chronicle xattr v2"),
        }
    }

    /// Symlinks cannot carry `user.` attributes on Linux.
    fn target(node: &Node) -> Result<String, Errno> {
        if node.kind == RawType::Symlink {
            return Err(Errno::EPERM);
        }
        Ok(node.proc_path())
    }

    pub fn set(
        &self,
        node: &Node,
        owner: Owner,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        let name = user_name(name)?;
        let mut sealed = Vec::with_capacity(value.len() + FRAME_OVERHEAD);
        cipher::seal_framed(&*self.aead, &aad(owner, name), value, &mut sealed);
        let flags = XattrFlags::from_bits(flags as _).ok_or(Errno::EINVAL)?;
        rustix::fs::setxattr(Self::target(node)?, name, &sealed, flags).map_err(sys)
    }

    pub fn get(&self, node: &Node, owner: Owner, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let name = user_name(name).map_err(|_| Errno::NO_XATTR)?;
        let path = Self::target(node).map_err(|_| Errno::NO_XATTR)?;
        let len = rustix::fs::getxattr_query(&path, name).map_err(sys)?;
        let mut sealed = vec![0u8; len];
        let got = rustix::fs::getxattr(&path, name, &mut sealed[..]).map_err(sys)?;
        sealed.truncate(got);
        match cipher::open_framed(&*self.aead, &aad(owner, name), &mut sealed) {
            Ok(value) => Ok(value.to_vec()),
            Err(_) => {
                log::error!("authentication failed: extended attribute {name:?} of {path}");
                Err(Errno::EIO)
            }
        }
    }

    /// The `user.` names, NUL-terminated, as `listxattr` returns them.
    pub fn list(&self, node: &Node) -> Result<Vec<u8>, Errno> {
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

    pub fn remove(&self, node: &Node, name: &OsStr) -> Result<(), Errno> {
        let name = user_name(name)?;
        rustix::fs::removexattr(Self::target(node)?, name).map_err(sys)
    }
}
