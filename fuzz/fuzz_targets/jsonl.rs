//! JSON Lines import, as any file could hold: decoding never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for (i, line) in text.lines().enumerate() {
            let _ = chronicle_engine::jsonl::decode_point(line, i as u64 + 1);
        }
    }
});
