//! Extended attributes in the `user.` namespace, with their values encrypted
//! (AES-256-GCM under a key derived from the master key, the attribute name
//! as associated data). Other namespaces are refused: `security.` and
//! `system.` attributes would be interpreted by the backing kernel.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::Errno;
use rand::RngCore;
use rustix::fs::{FileType as RawType, XattrFlags};

use super::nodes::Node;
use super::ops::sys;
use crate::cipher::{Aead, NONCE_LEN, TAG_LEN};
use crate::content::ContentCrypto;

const USER_PREFIX: &[u8] = b"user.";

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

impl XattrCipher {
    pub fn new(crypto: &ContentCrypto) -> Self {
        XattrCipher {
            aead: crypto.derive_aead(b"chronicle xattr v1"),
        }
    }

    /// Symlinks cannot carry `user.` attributes on Linux.
    fn target(node: &Node) -> Result<String, Errno> {
        if node.kind == RawType::Symlink {
            return Err(Errno::EPERM);
        }
        Ok(node.proc_path())
    }

    pub fn set(&self, node: &Node, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        let name = user_name(name)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + value.len() + TAG_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(value);
        let tag = self
            .aead
            .seal(&nonce, name.as_bytes(), &mut sealed[NONCE_LEN..]);
        sealed.extend_from_slice(&tag);
        let flags = XattrFlags::from_bits(flags as _).ok_or(Errno::EINVAL)?;
        rustix::fs::setxattr(Self::target(node)?, name, &sealed, flags).map_err(sys)
    }

    pub fn get(&self, node: &Node, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let name = user_name(name).map_err(|_| Errno::NO_XATTR)?;
        let path = Self::target(node).map_err(|_| Errno::NO_XATTR)?;
        let len = rustix::fs::getxattr_query(&path, name).map_err(sys)?;
        let mut sealed = vec![0u8; len];
        let got = rustix::fs::getxattr(&path, name, &mut sealed[..]).map_err(sys)?;
        sealed.truncate(got);
        if sealed.len() < NONCE_LEN + TAG_LEN {
            log::error!("authentication failed: extended attribute {name:?} of {path}");
            return Err(Errno::EIO);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| Errno::EIO)?;
        let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| Errno::EIO)?;
        if self.aead.open(&nonce, name.as_bytes(), body, &tag).is_err() {
            log::error!("authentication failed: extended attribute {name:?} of {path}");
            return Err(Errno::EIO);
        }
        Ok(body.to_vec())
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
