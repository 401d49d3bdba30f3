//! Golden bytes (the spec in the crate docs, pinned) and round trips.

use super::*;
use proptest::prelude::*;

/// Parses an annotated hexdump: hex pairs, `#` starts a comment.
fn hexdump(s: &str) -> Vec<u8> {
    s.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn golden_hello() {
    let m = Message::Hello {
        version: 1,
        name: "rs01".into(),
    };
    let expect = hexdump(
        "08 00 00 00   # frame length 8: type + 7 body bytes
         01            # type Hello
         01 00         # version 1
         04 72 73 30 31 # str8 \"rs01\"",
    );
    assert_eq!(m.to_frame(), expect);
    assert_eq!(
        Message::decode_from(&expect).unwrap(),
        Some((m, expect.len()))
    );
}

#[test]
fn golden_summary_request() {
    let m = Message::SummaryRequest {
        from_us: 1_000_000,
        to_us: 2_000_000,
        bucket_us: 3_600_000_000,
        cameras: vec!["cam-0001".into()],
    };
    let expect = hexdump(
        "24 00 00 00                 # frame length 36
         13                          # type SummaryRequest
         40 42 0f 00 00 00 00 00     # from_us 1,000,000
         80 84 1e 00 00 00 00 00     # to_us 2,000,000
         00 a4 93 d6 00 00 00 00     # bucket_us: an hour
         01 00                       # 1 camera
         08 63 61 6d 2d 30 30 30 31  # str8 \"cam-0001\"",
    );
    assert_eq!(m.to_frame(), expect);
    assert_eq!(
        Message::decode_from(&expect).unwrap(),
        Some((m, expect.len()))
    );
}

#[test]
fn golden_fetch_request() {
    let m = Message::FetchRequest {
        camera: "cam-0001".into(),
        start_us: 1_000_000,
        block_size: 1 << 20,
        compression: Compression::Auto,
        ranges: vec![(2, 3)],
    };
    let expect = hexdump(
        "21 00 00 00                 # frame length 33
         20                          # type FetchRequest
         08 63 61 6d 2d 30 30 30 31  # str8 \"cam-0001\"
         40 42 0f 00 00 00 00 00     # start_us 1,000,000
         00 00 10 00                 # block size 1 MiB
         02                          # compression auto
         01 00                       # 1 range
         02 00 00 00 03 00 00 00     # blocks 2, 3 and 4",
    );
    assert_eq!(m.to_frame(), expect);
    assert_eq!(
        Message::decode_from(&expect).unwrap(),
        Some((m, expect.len()))
    );
}

#[test]
fn golden_block_and_error() {
    let m = Message::Block {
        index: 7,
        encoding: Encoding::Raw,
        raw_len: 2,
        data: vec![0xaa, 0xbb],
    };
    let expect = hexdump(
        "0c 00 00 00   # frame length 12
         22            # type Block
         07 00 00 00   # index 7
         00            # raw
         02 00 00 00   # raw length 2
         aa bb         # data",
    );
    assert_eq!(m.to_frame(), expect);
    let e = Message::Error {
        code: ErrorCode::NotPaired,
        message: "no".into(),
    };
    let expect = hexdump(
        "07 00 00 00   # frame length 7
         7f            # type Error
         03 00         # code 3: not paired
         02 00 6e 6f   # str16 \"no\"",
    );
    assert_eq!(e.to_frame(), expect);
    let d = Message::BlockDamaged { index: 5 };
    let expect = hexdump(
        "05 00 00 00   # frame length 5
         24            # type BlockDamaged
         05 00 00 00   # block 5",
    );
    assert_eq!(d.to_frame(), expect);
}

#[test]
fn block_header_matches_the_block_frame() {
    let m = Message::Block {
        index: 9,
        encoding: Encoding::Zstd,
        raw_len: 4096,
        data: vec![1, 2, 3],
    };
    let f = m.to_frame();
    let h = BlockHeader {
        index: 9,
        encoding: Encoding::Zstd,
        raw_len: 4096,
        data_len: 3,
    };
    assert_eq!(&f[..BLOCK_FRAME_HEADER_LEN], &h.encode());
    let n = u32::from_le_bytes(f[..4].try_into().unwrap()) as usize;
    assert_eq!(BlockHeader::decode(n, f[5..14].try_into().unwrap()), Ok(h));
    let bad = BlockHeader {
        index: 1,
        encoding: Encoding::Raw,
        raw_len: 5,
        data_len: 3,
    }
    .encode();
    assert!(BlockHeader::decode(13, bad[5..14].try_into().unwrap()).is_err());
}

#[test]
fn limits_are_enforced() {
    // A frame longer than the maximum is refused before it is read.
    let mut big = ((crate::MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec();
    big.push(0x22);
    assert!(matches!(
        Message::decode_from(&big),
        Err(DecodeError::Frame(_))
    ));
    // Trailing bytes.
    let mut f = Message::FetchEnd.to_frame();
    f[0] += 1;
    f.push(0);
    assert!(matches!(
        Message::decode_from(&f),
        Err(DecodeError::Trailing { .. })
    ));
    // A block size that is not a power of two.
    let mut fr = Message::FetchRequest {
        camera: "c".into(),
        start_us: 0,
        block_size: 1024,
        compression: Compression::Off,
        ranges: vec![],
    }
    .to_frame();
    fr[4 + 1 + 2 + 8] = 0x01; // 1025
    assert!(matches!(
        Message::decode_from(&fr),
        Err(DecodeError::Invalid { .. })
    ));
    // A zstd bomb: declared small, decompresses large.
    let big_raw = vec![0u8; 2 << 20];
    let z = zstd::bulk::compress(&big_raw, 1).unwrap();
    assert!(decode_coverage_chunk(1000, &z).is_err());
}

#[test]
fn coverage_round_trips_through_chunks() {
    let entries: Vec<CoverageEntry> = (0..20_000)
        .map(|i| CoverageEntry {
            camera: format!("cam-{:04}", i % 100),
            start_us: i as i64 * 60_000_000,
            duration_us: 60_000_000,
            len: 30_000_000 + i,
            blake3: [i as u8; 32],
            notes: if i % 3 == 0 {
                format!("{{\"motion\":{i}}}")
            } else {
                String::new()
            },
        })
        .collect();
    let chunks = encode_coverage_chunks(&entries, 3);
    assert!(chunks.len() > 1, "20,000 entries span several chunks");
    let mut back = Vec::new();
    for c in chunks {
        let frame = c.to_frame();
        assert!(frame.len() <= crate::MAX_FRAME_LEN + 4);
        let Some((Message::CoverageChunk { raw_len, zstd }, _)) =
            Message::decode_from(&frame).unwrap()
        else {
            panic!("not a chunk");
        };
        back.extend(decode_coverage_chunk(raw_len, &zstd).unwrap());
    }
    assert_eq!(back, entries);
}

#[test]
fn summaries_round_trip_through_chunks_and_add_up() {
    let mut day = Summary::default();
    let entries: Vec<SummaryEntry> = (0..40_000i64)
        .map(|i| {
            let s =
                Summary::of_segment(i * 60_000_000, 60_000_000, 1000 + i as u64, &[i as u8; 32]);
            day.add(&s);
            SummaryEntry {
                camera: format!("cam-{:04}", i % 500),
                bucket_us: (i / 500) * 3_600_000_000,
                summary: s,
            }
        })
        .collect();
    let chunks = encode_summary_chunks(&entries, 3);
    assert!(chunks.len() > 1, "40,000 summaries span several chunks");
    let mut back = Vec::new();
    for c in chunks {
        let frame = c.to_frame();
        let Some((Message::SummaryChunk { raw_len, zstd }, _)) =
            Message::decode_from(&frame).unwrap()
        else {
            panic!("not a summary chunk");
        };
        back.extend(decode_summary_chunk(raw_len, &zstd).unwrap());
    }
    assert_eq!(back, entries);
    // Order does not matter, and one changed byte changes the digest.
    let mut reversed = Summary::default();
    for e in entries.iter().rev() {
        reversed.add(&e.summary);
    }
    assert_eq!(reversed, day);
    let a = segment_digest(0, 60_000_000, 1000, &[1; 32]);
    assert_ne!(a, segment_digest(0, 60_000_000, 1000, &[2; 32]));
    assert_ne!(a, segment_digest(0, 60_000_000, 1001, &[1; 32]));
    assert_ne!(a, segment_digest(1, 60_000_000, 1000, &[1; 32]));
}

#[test]
fn summary_requests_take_only_whole_hours_that_divide_a_day() {
    for (bucket, ok) in [
        (3_600_000_000u64, true),
        (6 * 3_600_000_000, true),
        (86_400_000_000, true),
        (0, false),
        (1_000, false),
        (5 * 3_600_000_000, false),
        (2 * 86_400_000_000, false),
    ] {
        let fr = Message::SummaryRequest {
            from_us: 0,
            to_us: 1,
            bucket_us: bucket,
            cameras: vec![],
        }
        .to_frame();
        assert_eq!(Message::decode_from(&fr).is_ok(), ok, "bucket {bucket}");
    }
}

fn message() -> impl Strategy<Value = Message> {
    let s = "[a-z0-9-]{0,40}";
    prop_oneof![
        (any::<u16>(), s).prop_map(|(version, name)| Message::Hello { version, name }),
        (any::<u16>(), s).prop_map(|(version, name)| Message::HelloAck { version, name }),
        (any::<i64>(), any::<i64>(), prop::collection::vec(s, 0..5)).prop_map(|(a, b, cameras)| {
            Message::CoverageRequest {
                from_us: a.min(b),
                to_us: a.max(b),
                cameras,
            }
        }),
        any::<u64>().prop_map(|entries| Message::CoverageEnd { entries }),
        any::<u64>().prop_map(|entries| Message::SummaryEnd { entries }),
        (
            any::<i64>(),
            any::<i64>(),
            1u64..=24,
            prop::collection::vec(s, 0..5)
        )
            .prop_filter("divides a day", |(_, _, h, _)| 24 % h == 0)
            .prop_map(|(a, b, h, cameras)| Message::SummaryRequest {
                from_us: a.min(b),
                to_us: a.max(b),
                bucket_us: h * 3_600_000_000,
                cameras,
            }),
        (
            s,
            any::<i64>(),
            10u32..=24,
            0u8..3,
            prop::collection::vec((0u32..1000, 1u32..1000), 0..4)
        )
            .prop_map(
                |(camera, start_us, shift, c, ranges)| Message::FetchRequest {
                    camera,
                    start_us,
                    block_size: 1 << shift,
                    compression: [Compression::Off, Compression::On, Compression::Auto][c as usize],
                    ranges,
                }
            ),
        (0u64..10_000_000, any::<[u8; 32]>(), 10u32..=24).prop_map(|(len, blake3, shift)| {
            let n = block_count(len, 1 << shift) as usize;
            Message::FetchHeader {
                len,
                blake3,
                block_size: 1 << shift,
                cvs: vec![[7; 32]; n],
            }
        }),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..100)).prop_map(|(index, data)| {
            Message::Block {
                index,
                encoding: Encoding::Raw,
                raw_len: data.len() as u32,
                data,
            }
        }),
        Just(Message::FetchEnd),
        any::<u32>().prop_map(|index| Message::BlockDamaged { index }),
        (1u16..8, "[ -~]{0,100}").prop_map(|(c, message)| Message::Error {
            code: ErrorCode::from_code(c),
            message
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(m in message()) {
        let f = m.to_frame();
        prop_assert_eq!(Message::decode_from(&f).unwrap(), Some((m, f.len())));
    }

    #[test]
    fn a_prefix_asks_for_more_and_never_panics(m in message(), cut in 0usize..64) {
        let f = m.to_frame();
        let cut = cut.min(f.len().saturating_sub(1));
        prop_assert_eq!(Message::decode_from(&f[..cut]).unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode_from(&b);
        let _ = decode_coverage_chunk(b.len() as u32, &b);
    }
}
