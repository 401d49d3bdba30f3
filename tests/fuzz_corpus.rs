//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same decoders and checks as the cargo-fuzz targets, on the stable
//! toolchain, in seconds: every input that once crashed a decoder stays a
//! regression test here.

use std::path::Path;

use hafill_engine::segment::Record;
use hafill_engine::store::log;
use hafill_protocol::Message;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

#[test]
fn message_corpus_decodes_without_panic_and_round_trips() {
    for (name, data) in corpus("message") {
        if let Ok(Some((m, used))) = Message::decode_from(&data) {
            assert!(used <= data.len(), "{name}");
            let frame = m.to_frame();
            assert_eq!(
                Message::decode_from(&frame).unwrap(),
                Some((m, frame.len())),
                "{name}"
            );
        }
    }
}

#[test]
fn coverage_chunk_corpus_decodes_without_panic() {
    let chunks = corpus("coverage_chunk");
    assert!(
        chunks.iter().any(|(n, _)| n.ends_with("two-entries")),
        "the real-chunk seed is missing"
    );
    for (name, data) in chunks {
        if data.len() >= 4 {
            let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            // The same bytes as a summary chunk: an answer or an error.
            let _ = hafill_protocol::decode_summary_chunk(raw_len, &data[4..]);
            let decoded = hafill_protocol::decode_coverage_chunk(raw_len, &data[4..]);
            // The hand-made seed is a real chunk: the fuzzer starts from
            // valid zstd, not only from bytes it would never get past.
            if name.ends_with("two-entries") {
                let entries = decoded.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(entries.len(), 2);
                assert_eq!(entries[1].camera, "cam-0002");
                assert_eq!(entries[0].notes, "");
                assert!(entries[1].notes.contains("\"motion\":12"), "{name}");
            }
        }
    }
}

#[test]
fn index_log_corpus_decodes_without_panic_and_records_round_trip() {
    for (name, data) in corpus("index_log") {
        let _ = log::decode_log(&data);
        if let Ok(r) = Record::decode(&data) {
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(Record::decode(&out).as_ref(), Ok(&r), "{name}");
        }
    }
}

#[test]
fn config_corpus_parses_or_names_the_file() {
    for (name, data) in corpus("config") {
        if let Ok(text) = std::str::from_utf8(&data) {
            if let Err(e) = hafill_engine::config::Config::parse(text, Path::new("fuzz.toml")) {
                assert!(e.to_string().contains("fuzz.toml"), "{name}: {e}");
            }
        }
    }
}

#[test]
fn inventory_corpus_parses_to_safe_ids_and_pairs_into_loadable_config() {
    use hafill_engine::pair::{self, Format, Inventory};
    let mut parsed = 0;
    for (name, data) in corpus("inventory") {
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        for format in [Format::Csv, Format::Json] {
            let Ok(entries) = pair::parse_inventory(text, format) else {
                continue;
            };
            parsed += 1;
            let p = pair::pair(&[Inventory {
                server: "rs01".into(),
                entries,
            }])
            .unwrap();
            let cfg = format!(
                "[server]\nname = \"rs01\"\nlisten = \"127.0.0.1:1\"\nstore = \"s\"\nkey = \"k\"\ncert = \"c\"\n\n{}",
                p.to_toml()
            );
            hafill_engine::config::Config::parse(&cfg, Path::new("pair.toml"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    assert!(parsed >= 4, "the seeds should parse");
}
