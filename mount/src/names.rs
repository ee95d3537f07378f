//! The one place where plaintext names become backing names and back.
//!
//! Every directory operation of the FUSE front end goes through a
//! `NameCodec`, so that encrypting file names and symlink targets means
//! adding a codec, not touching each operation. Today's codec stores names
//! as given and hides the volume's own files.

use std::ffi::{OsStr, OsString};

use crate::config::CONFIG_NAME;

/// Why a name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is reserved for the volume's own files.
    Reserved,
}

/// Translates names between the plaintext view and the backing directory.
pub trait NameCodec: Send + Sync {
    /// The backing name for plaintext `name` in a directory (`in_root` when
    /// the directory is the volume's root).
    fn name_to_backing(&self, name: &OsStr, in_root: bool) -> Result<OsString, NameError>;
    /// The plaintext name for a backing entry, or `None` to hide it.
    fn name_from_backing(&self, name: &OsStr, in_root: bool) -> Option<OsString>;
    /// The backing form of a symlink target.
    fn target_to_backing(&self, target: &OsStr) -> OsString;
    /// The plaintext form of a stored symlink target.
    fn target_from_backing(&self, stored: &OsStr) -> OsString;
}

/// Names stored as given; the configuration and its temporary file are
/// hidden and cannot be created from inside the mount.
pub struct PlainNames;

fn is_reserved(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    bytes.starts_with(CONFIG_NAME.as_bytes())
}

impl NameCodec for PlainNames {
    fn name_to_backing(&self, name: &OsStr, in_root: bool) -> Result<OsString, NameError> {
        if in_root && is_reserved(name) {
            return Err(NameError::Reserved);
        }
        Ok(name.to_os_string())
    }

    fn name_from_backing(&self, name: &OsStr, in_root: bool) -> Option<OsString> {
        if in_root && is_reserved(name) {
            return None;
        }
        Some(name.to_os_string())
    }

    fn target_to_backing(&self, target: &OsStr) -> OsString {
        target.to_os_string()
    }

    fn target_from_backing(&self, stored: &OsStr) -> OsString {
        stored.to_os_string()
    }
}
