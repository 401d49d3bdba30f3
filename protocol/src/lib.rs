//! # The hafill wire protocol, version 4
//!
//! Sans-IO: this crate encodes and decodes byte buffers. It opens no socket
//! and no file, so it can be tested and fuzzed without a network.
//!
//! ## Participants and goals
//!
//! Two recording servers that record some of the same cameras. The
//! *receiver* (the one with holes in its timeline) connects to the *source*
//! and asks what it holds (coverage), then fetches the segments it misses,
//! block by block, verifying every block against the segment's BLAKE3
//! before it counts. Either side may be receiver or source at any time.
//!
//! Non-goals: live streaming, writing to the peer, discovering peers
//! (the configuration lists them).
//!
//! ## Transport
//!
//! QUIC (RFC 9000) with TLS 1.3, ALPN [`ALPN`] (`hafill/1`). Both sides
//! present a self-signed certificate; each checks that the other's ID (the
//! BLAKE3 of its certificate's SubjectPublicKeyInfo, in hex) is the one its
//! configuration lists for that peer. Each request opens a bidirectional
//! stream: the receiver writes one request frame, the source answers with
//! frames and finishes. The receiver finishes its side after the request,
//! except for a fetch: there it finishes once every block it received has
//! verified, or after a `BlockDamaged` (see below).
//!
//! ## Framing
//!
//! ```text
//! frame := u32 LE length n (1..=MAX_FRAME_LEN) | u8 type | n-1 bytes of body
//! ```
//!
//! All integers are little-endian. `str8` is a u8 length then UTF-8 bytes;
//! `str16` a u16 length then UTF-8 bytes. A frame longer than
//! [`MAX_FRAME_LEN`], an unknown type, trailing bytes in a body, or a field
//! past a limit is a decode error: the stream is reset with
//! [`ErrorCode::BadRequest`] and nothing of it is used.
//!
//! ## Requests and responses
//!
//! | type | message | direction | body |
//! |---|---|---|---|
//! | 0x01 | `Hello` | receiver -> source | u16 version, str8 server name |
//! | 0x02 | `HelloAck` | source -> receiver | u16 version, str8 server name |
//! | 0x10 | `CoverageRequest` | receiver -> source | i64 from_us, i64 to_us, u16 n, n x str8 camera (n = 0: every camera paired with the asker) |
//! | 0x11 | `CoverageChunk` | source -> receiver | u32 raw length, zstd frame of raw entries |
//! | 0x12 | `CoverageEnd` | source -> receiver | u64 number of entries sent |
//! | 0x13 | `SummaryRequest` | receiver -> source | i64 from_us, i64 to_us, u64 bucket_us, u16 n, n x str8 camera (n = 0: every camera paired with the asker) |
//! | 0x14 | `SummaryChunk` | source -> receiver | u32 raw length, zstd frame of raw summaries |
//! | 0x15 | `SummaryEnd` | source -> receiver | u64 number of summaries sent |
//! | 0x20 | `FetchRequest` | receiver -> source | str8 camera, i64 start_us, u32 block size, u8 compression, u16 n, n x (u32 first block, u32 count) |
//! | 0x21 | `FetchHeader` | source -> receiver | u64 length, [32] BLAKE3, u32 block size, u32 n blocks, n x [32] block chaining value |
//! | 0x22 | `Block` | source -> receiver | u32 index, u8 encoding (0 raw, 1 zstd), u32 raw length, data |
//! | 0x23 | `FetchEnd` | source -> receiver | (empty) |
//! | 0x24 | `BlockDamaged` | receiver -> source | u32 block index |
//! | 0x7f | `Error` | either | u16 code, str16 message |
//!
//! A coverage entry (raw, before compression) is: str8 camera, i64 start_us,
//! u64 duration_us, u64 length, [32] BLAKE3, str8 notes (what the recorder
//! says of the segment besides its bytes, a JSON object or empty; added in
//! version 2). Only complete segments are listed. Both sides must speak the
//! same version: a `Hello` of another is answered with `Error` `Version`
//! naming both. A chunk holds at most [`MAX_COVERAGE_RAW`] raw bytes; a response
//! at most [`MAX_COVERAGE_ENTRIES`] entries.
//!
//! ## Summaries
//!
//! A summary (added in version 3) says what a source holds of one camera
//! in one bucket of time without listing it: raw, str8 camera, i64 bucket
//! start, u64 count, u64 bytes, u128 LE digest. A bucket is `bucket_us`
//! long (a whole number of hours that divides a day) and starts at a
//! multiple of it since the epoch; it holds the complete segments that
//! start in it. Its digest is the wrapping sum of each segment's first 16
//! bytes of BLAKE3(i64 start_us, u64 duration_us, u64 length, [32] BLAKE3),
//! so summaries add up: an hour's sum to its day's. The source answers
//! every bucket the window `[from_us, to_us)` touches, whole, that holds a
//! segment, in chunks framed like coverage chunks. A receiver compares
//! them with what it saw in an earlier round and asks for the coverage of
//! the buckets that changed only.
//!
//! ## Blocks and verification
//!
//! A block size is a power of two from [`MIN_BLOCK_SIZE`] (1 KiB, one
//! BLAKE3 chunk) to [`MAX_BLOCK_SIZE`]. Block `i` covers bytes
//! `i * size .. min((i+1) * size, length)`: a whole subtree of the BLAKE3
//! tree. `FetchHeader` lists the chaining value of every block's subtree;
//! the receiver merges them in BLAKE3's left-balanced tree and accepts the
//! header only if the root equals the BLAKE3 it planned from coverage. Each
//! `Block` is then accepted only if its own chaining value is the listed
//! one (a segment of one block is checked against the root directly). So
//! every block is verified against the segment's BLAKE3 before it counts.
//!
//! The source sends the list it kept when it first hashed the segment,
//! and reads the blocks from its file without hashing them again (added
//! in version 4). A file whose bytes changed since (rot on the disk, a
//! rewrite that kept its length and time) then sends a block that does not
//! verify. The receiver says which (`BlockDamaged`), still reading what
//! the source sent before it heard, and finishes its side. The source
//! reads that block again: if it no longer matches the list, it forgets
//! the list and answers `Error` `SourceDamaged` (its copy is bad, not the
//! source); otherwise any other `Error`, and the receiver takes the source
//! for a liar. After `FetchEnd` the source keeps its side open until the
//! receiver finishes its own, so that a report about the last blocks can
//! still be answered.
//!
//! Compression ([`Compression`]): `Off` sends raw blocks; `On` compresses
//! every block with zstd; `Auto` compresses a block only when a sample
//! shows it pays. A zstd block's raw length may not exceed the block size.
//!
//! ## Error codes
//!
//! See [`ErrorCode`]. An `Error` frame ends the response; the message is for
//! people, the code for programs.

pub mod frame;
pub mod message;
pub mod tree;

pub use frame::{decode_frame, encode_frame, FrameError};
pub use message::*;

/// ALPN protocol id.
pub const ALPN: &[u8] = b"hafill/1";
/// The protocol version this crate speaks. 2 (2026-12-02): coverage
/// entries carry the recorder's notes. 3 (2026-12-02): summaries.
/// 4 (2026-12-03): `BlockDamaged`; the source no longer checks the
/// blocks of a kept list as it reads them.
pub const VERSION: u16 = 4;
/// Largest frame length (type byte and body).
pub const MAX_FRAME_LEN: usize = MAX_BLOCK_SIZE as usize + 64;
/// Smallest block size: one BLAKE3 chunk.
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Largest raw (decompressed) coverage chunk.
pub const MAX_COVERAGE_RAW: u32 = 1 << 20;
/// Most entries one coverage response may carry.
pub const MAX_COVERAGE_ENTRIES: u64 = 50_000_000;
/// Most blocks a segment may have (with the smallest block size: 4 GiB).
pub const MAX_BLOCKS: u32 = 1 << 22;
/// Most block ranges in one fetch request.
pub const MAX_RANGES: u16 = 4096;
