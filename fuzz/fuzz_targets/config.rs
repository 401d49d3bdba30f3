//! A config file as an operator might mistype it: a config or an error
//! naming the file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = hafill_engine::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
            assert!(e.to_string().contains("fuzz.toml"));
        }
    }
});
