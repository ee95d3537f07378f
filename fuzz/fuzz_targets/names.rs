//! Encrypted names, long-name files, symlink targets and directory id
//! records, as found in BACKING: never panic, and a name that decrypts is
//! the one canonical encoding of that plaintext (so two backing names can
//! never stand for one name).
#![no_main]
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::ContentCrypto;
use chronicle_mount::name_cipher::{BackingName, NameCipher};
use chronicle_mount::SecretKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cipher = NameCipher::new(&ContentCrypto::new(
        SecretKey::from_bytes([0x5e; 32]),
        Backend::Ring,
    ));
    let dir = [7u8; 16];
    let stored = OsStr::from_bytes(data);
    if let Ok(name) = cipher.decrypt_name(&dir, stored) {
        assert_eq!(
            cipher.encrypt_name(&dir, &name),
            BackingName::Short(stored.to_os_string())
        );
    }
    let _ = cipher.decrypt_long_name(&dir, OsStr::new("chronicle.long.x"), data);
    let _ = cipher.open_target(stored);
    let _ = cipher.open_dir_id(data);
});
