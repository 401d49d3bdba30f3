//! A camera inventory (CSV or JSON) as a VMS might export it, or as an
//! attacker might write it: entries whose ids are safe path components, or
//! an error; never a panic. Whatever parses also pairs, and its TOML loads
//! back as the config's `[[camera]]` section.
#![no_main]
use hafill_engine::pair::{self, Format, Inventory};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [Format::Csv, Format::Json] {
        let Ok(entries) = pair::parse_inventory(text, format) else { continue };
        for e in &entries {
            assert!(hafill_engine::CameraId::new(e.id.as_str()).is_ok());
        }
        let inv = Inventory { server: "rs01".into(), entries };
        let Ok(p) = pair::pair(&[inv]) else { continue };
        let cfg = format!(
            "[server]\nname = \"rs01\"\nlisten = \"127.0.0.1:1\"\nstore = \"s\"\nkey = \"k\"\ncert = \"c\"\n\n{}",
            p.to_toml()
        );
        if let Err(e) = hafill_engine::config::Config::parse(&cfg, std::path::Path::new("pair.toml")) {
            panic!("pair output does not load: {e}\n{cfg}");
        }
    }
});
