//! The volume configuration parser: never panics; what it accepts is
//! canonical (re-encodes to the same bytes) and a raw key is checked
//! against it without stretching anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzzed.volume");
    if let Ok(config) = chronicle_mount::VolumeConfig::decode(data, path) {
        assert_eq!(
            &config.encode()[..],
            data,
            "accepted a non-canonical configuration"
        );
        let key = chronicle_mount::UserKey::Raw(chronicle_mount::SecretKey::from_bytes([1; 32]));
        let _ = config.unwrap(&key, path);
    }
});
