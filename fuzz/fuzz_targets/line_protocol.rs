//! InfluxDB line protocol, as any client could send it: parsing never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let _ = chronicle_engine::lineproto::parse_line(line, i as u64 + 1, 0, |_| {});
    }
});
