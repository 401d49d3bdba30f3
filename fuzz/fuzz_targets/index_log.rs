//! An index log or a segment record from disk (a damaged file, a torn
//! append): records or a described damage, never a panic; a decoded record
//! re-encodes to the same bytes' meaning (round trip).
#![no_main]
use hafill_engine::segment::Record;
use hafill_engine::store::log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = log::decode_log(data);
    if let Ok(r) = Record::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(Record::decode(&out).as_ref(), Ok(&r));
    }
});
