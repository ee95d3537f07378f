//! Sealed extended attribute values. Only the `user.` namespace is carried:
//! `security.` and `system.` attributes would be interpreted by the backing
//! kernel. A value is sealed (AES-256-GCM under a key derived from the
//! master key) with the attribute name and, on a regular file, the file id
//! from its header as associated data, so a value copied onto another file
//! or under another name fails authentication. Directories have no header:
//! their values are bound to the name only (docs/SECURITY.md).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::cipher::{self, Aead, TagMismatch, FRAME_OVERHEAD};
use crate::content::ContentCrypto;
use crate::layout::FILE_ID_LEN;

/// The only namespace whose attributes are stored (sealed).
pub const USER_PREFIX: &[u8] = b"user.";

pub fn is_user(name: &OsStr) -> bool {
    name.as_bytes().starts_with(USER_PREFIX)
}

/// What a value is bound to besides its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A regular file, by the file id in its header.
    File([u8; FILE_ID_LEN]),
    /// A directory (or other node without a header).
    Other,
}

/// Seals and opens attribute values of one volume.
pub struct XattrSealer {
    aead: Box<dyn Aead>,
}

impl XattrSealer {
    pub fn new(crypto: &ContentCrypto) -> Self {
        XattrSealer {
            aead: crypto.derive_aead(b"chronicle xattr v2"),
        }
    }

    /// The stored form of `value`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, owner: Owner, name: &OsStr, value: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::with_capacity(value.len() + FRAME_OVERHEAD);
        cipher::seal_framed(&*self.aead, &aad(owner, name), value, &mut sealed);
        sealed
    }

    /// The value of a stored form, if it authenticates for `owner` and `name`.
    pub fn open(
        &self,
        owner: Owner,
        name: &OsStr,
        mut sealed: Vec<u8>,
    ) -> Result<Vec<u8>, TagMismatch> {
        let value = cipher::open_framed(&*self.aead, &aad(owner, name), &mut sealed)?;
        Ok(value.to_vec())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::keys::SecretKey;

    // Protects: a value opens only for its own owner and name.
    #[test]
    fn values_are_bound_to_owner_and_name() {
        let crypto = ContentCrypto::new(SecretKey::from_bytes([2; 32]), Backend::Ring);
        let sealer = XattrSealer::new(&crypto);
        let a = Owner::File([1; FILE_ID_LEN]);
        let b = Owner::File([2; FILE_ID_LEN]);
        let name = OsStr::new("user.x");
        let sealed = sealer.seal(a, name, b"v");
        assert_eq!(sealer.open(a, name, sealed.clone()), Ok(b"v".to_vec()));
        assert_eq!(sealer.open(b, name, sealed.clone()), Err(TagMismatch));
        assert_eq!(
            sealer.open(Owner::Other, name, sealed.clone()),
            Err(TagMismatch)
        );
        assert_eq!(
            sealer.open(a, OsStr::new("user.y"), sealed),
            Err(TagMismatch)
        );
    }
}
