//! Chronicle's encrypted volume.
//!
//! The content layer (`layout`, `content`, `keys`, `config`, `volume`) is a
//! plain library: tests drive it without a mount. Only `fuse` talks to FUSE.

pub mod check;
pub mod cipher;
pub mod config;
pub mod content;
pub mod control;
pub mod create;
pub mod error;
mod faults;
pub mod fuse;
pub mod journal;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod mountinfo;
pub mod name_cipher;
pub mod names;
pub mod random;
pub mod reencrypt;
pub mod remove;
pub mod replay;
pub mod symlink_file;
pub mod transfer;
pub mod tree;
pub mod untimed;
pub mod volume;
pub mod xattrs;

pub use config::{KeySource, VolumeConfig, CONFIG_NAME};
pub use content::EncryptedFile;
pub use error::{Result, VolumeError};
pub use keys::{KdfParams, SecretKey, UserKey};
pub use volume::Volume;
