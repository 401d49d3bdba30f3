//! A coverage or summary chunk from a peer (declared raw length, zstd
//! bytes): bounded decompression, entries or a typed error, never a panic
//! or an allocation past the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let _ = hafill_protocol::decode_coverage_chunk(raw_len, &data[4..]);
    let _ = hafill_protocol::decode_summary_chunk(raw_len, &data[4..]);
});
