//! Any bytes from a peer: a frame decodes to a message or a typed error,
//! never a panic; a decoded message re-encodes to a frame that decodes to
//! the same message (round trip).
#![no_main]
use hafill_protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((m, used))) = Message::decode_from(data) {
        assert!(used <= data.len());
        let frame = m.to_frame();
        let again = Message::decode_from(&frame).expect("a re-encoded message decodes");
        assert_eq!(again, Some((m, frame.len())));
    }
});
