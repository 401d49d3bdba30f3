//! Messages and their bodies. Every decoder checks every length against the
//! bytes present and the protocol's limits; none can panic on any input.

use crate::frame::{decode_frame, encode_frame, FrameError};
use crate::{MAX_BLOCKS, MAX_BLOCK_SIZE, MAX_COVERAGE_RAW, MAX_RANGES, MIN_BLOCK_SIZE};

/// Error codes of the `Error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request did not decode or broke a limit.
    BadRequest,
    /// The peer speaks another protocol version.
    Version,
    /// The camera is not paired with the asking server.
    NotPaired,
    /// The source does not hold that segment (any more).
    NotFound,
    /// The source's file does not match its own index (damaged or altered).
    SourceDamaged,
    /// The source is at its limit of concurrent requests; retry later.
    Busy,
    /// Something failed on the source; the message says what.
    Internal,
    /// A code this build does not know.
    Unknown(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 1,
            Self::Version => 2,
            Self::NotPaired => 3,
            Self::NotFound => 4,
            Self::SourceDamaged => 5,
            Self::Busy => 6,
            Self::Internal => 7,
            Self::Unknown(c) => c,
        }
    }
    pub fn from_code(c: u16) -> Self {
        match c {
            1 => Self::BadRequest,
            2 => Self::Version,
            3 => Self::NotPaired,
            4 => Self::NotFound,
            5 => Self::SourceDamaged,
            6 => Self::Busy,
            7 => Self::Internal,
            c => Self::Unknown(c),
        }
    }
}

/// Block compression asked for in a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    On,
    Auto,
}

/// How one block's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Zstd,
}

/// One complete segment a source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageEntry {
    pub camera: String,
    pub start_us: i64,
    pub duration_us: u64,
    pub len: u64,
    pub blake3: [u8; 32],
    /// What the recorder says of the segment besides its bytes, for a
    /// receiver of the same kind to keep with its copy (Frigate: motion,
    /// objects, dBFS, regions, size), as a JSON object of at most 255
    /// bytes; empty when there is nothing to say. Untrusted: the receiver
    /// parses and checks it.
    pub notes: String,
}

/// What a source holds of one camera in one bucket of time (an hour, a
/// day): its complete segments that start in the bucket, counted, their
/// bytes summed, and a digest of the list. Two answers with the same
/// summary list the same segments, so a receiver that saw this summary
/// before, and found nothing to fetch then, need not ask for the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: u64,
    pub bytes: u64,
    /// The wrapping sum of [`segment_digest`] over the bucket's segments:
    /// buckets add up (an hour's summaries sum to its day's), whatever the
    /// order the segments are read in.
    pub digest: u128,
}

impl Summary {
    /// The summary of one segment.
    pub fn of_segment(start_us: i64, duration_us: u64, len: u64, blake3: &[u8; 32]) -> Summary {
        Summary {
            count: 1,
            bytes: len,
            digest: segment_digest(start_us, duration_us, len, blake3),
        }
    }

    pub fn add(&mut self, other: &Summary) {
        self.count = self.count.wrapping_add(other.count);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.digest = self.digest.wrapping_add(other.digest);
    }
}

/// A segment's part of a bucket's digest: the first 16 bytes of the BLAKE3
/// of its start, duration, length (each u64/i64 LE) and BLAKE3.
pub fn segment_digest(start_us: i64, duration_us: u64, len: u64, blake3: &[u8; 32]) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&start_us.to_le_bytes())
        .update(&duration_us.to_le_bytes())
        .update(&len.to_le_bytes())
        .update(blake3);
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// One bucket's summary in a summary response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryEntry {
    pub camera: String,
    /// The bucket's start: a multiple of the bucket's length since the epoch.
    pub bucket_us: i64,
    pub summary: Summary,
}

/// Whether `bucket_us` is a bucket length the protocol allows: a whole
/// number of hours that divides a day.
pub fn valid_bucket(bucket_us: u64) -> bool {
    const HOUR: u64 = 3_600_000_000;
    bucket_us >= HOUR && bucket_us.is_multiple_of(HOUR) && (24 * HOUR).is_multiple_of(bucket_us)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello {
        version: u16,
        name: String,
    },
    HelloAck {
        version: u16,
        name: String,
    },
    CoverageRequest {
        from_us: i64,
        to_us: i64,
        cameras: Vec<String>,
    },
    /// Raw length and the zstd frame; see [`encode_coverage_chunk`].
    CoverageChunk {
        raw_len: u32,
        zstd: Vec<u8>,
    },
    CoverageEnd {
        entries: u64,
    },
    /// Summaries of every camera asked (none: every camera paired with
    /// the asker) over the buckets of `bucket_us` that `[from_us, to_us)`
    /// touches; only buckets holding a complete segment are answered.
    SummaryRequest {
        from_us: i64,
        to_us: i64,
        bucket_us: u64,
        cameras: Vec<String>,
    },
    /// Raw length and the zstd frame; see [`encode_summary_chunks`].
    SummaryChunk {
        raw_len: u32,
        zstd: Vec<u8>,
    },
    SummaryEnd {
        entries: u64,
    },
    FetchRequest {
        camera: String,
        start_us: i64,
        block_size: u32,
        compression: Compression,
        /// (first block, count) ranges to send; empty means every block.
        ranges: Vec<(u32, u32)>,
    },
    FetchHeader {
        len: u64,
        blake3: [u8; 32],
        block_size: u32,
        cvs: Vec<[u8; 32]>,
    },
    Block {
        index: u32,
        encoding: Encoding,
        raw_len: u32,
        data: Vec<u8>,
    },
    FetchEnd,
    /// The receiver's word that block `index` of the fetch on this stream
    /// did not verify against the list the source sent (added in version
    /// 4). The source reads that block again and ends the fetch with an
    /// `Error`: `SourceDamaged` if its own file no longer matches the list
    /// (it changed since it was hashed), any other code if it does.
    BlockDamaged {
        index: u32,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("message 0x{ty:02x} is cut short")]
    Short { ty: u8 },
    #[error("message 0x{ty:02x} has {extra} bytes after its end")]
    Trailing { ty: u8, extra: usize },
    #[error("message 0x{ty:02x}: {what}")]
    Invalid { ty: u8, what: &'static str },
}

pub mod types {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_ACK: u8 = 0x02;
    pub const COVERAGE_REQUEST: u8 = 0x10;
    pub const COVERAGE_CHUNK: u8 = 0x11;
    pub const COVERAGE_END: u8 = 0x12;
    pub const SUMMARY_REQUEST: u8 = 0x13;
    pub const SUMMARY_CHUNK: u8 = 0x14;
    pub const SUMMARY_END: u8 = 0x15;
    pub const FETCH_REQUEST: u8 = 0x20;
    pub const FETCH_HEADER: u8 = 0x21;
    pub const BLOCK: u8 = 0x22;
    pub const FETCH_END: u8 = 0x23;
    pub const BLOCK_DAMAGED: u8 = 0x24;
    pub const ERROR: u8 = 0x7f;
}
use types::*;

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// Strings longer than the field allows are cut at a char boundary:
    /// encoders never produce undecodable frames.
    fn str8(&mut self, s: &str) -> &mut Self {
        let s = truncate(s, u8::MAX as usize);
        self.u8(s.len() as u8).bytes(s.as_bytes())
    }
    fn str16(&mut self, s: &str) -> &mut Self {
        let s = truncate(s, u16::MAX as usize);
        self.u16(s.len() as u16).bytes(s.as_bytes())
    }
    /// u16 n, n x str8 (at most u16::MAX are written).
    fn cameras(&mut self, cameras: &[String]) -> &mut Self {
        let n = cameras.len().min(u16::MAX as usize);
        self.u16(n as u16);
        for c in &cameras[..n] {
            self.str8(c);
        }
        self
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    ty: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Short { ty: self.ty });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self, n: usize) -> Result<String, DecodeError> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| self.invalid("string is not UTF-8"))
    }
    fn str8(&mut self) -> Result<String, DecodeError> {
        let n = self.u8()? as usize;
        self.string(n)
    }
    fn str16(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        self.string(n)
    }
    fn cameras(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u16()?;
        let mut cameras = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            cameras.push(self.str8()?);
        }
        Ok(cameras)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn invalid(&self, what: &'static str) -> DecodeError {
        DecodeError::Invalid { ty: self.ty, what }
    }
    fn end(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                ty: self.ty,
                extra: self.buf.len(),
            })
        }
    }
}

/// Bytes of a `Block` frame before its data: length, type, index, encoding,
/// raw length.
pub const BLOCK_FRAME_HEADER_LEN: usize = 4 + 1 + 4 + 1 + 4;

/// The fields of a `Block` frame before its data, so a sender can send the
/// data without copying it into a frame and a receiver can read it straight
/// into its own buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub index: u32,
    pub encoding: Encoding,
    pub raw_len: u32,
    pub data_len: u32,
}

impl BlockHeader {
    /// The frame prefix of a block carrying `data_len` bytes.
    pub fn encode(&self) -> [u8; BLOCK_FRAME_HEADER_LEN] {
        let mut h = [0u8; BLOCK_FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&(self.data_len + 10).to_le_bytes());
        h[4] = BLOCK;
        h[5..9].copy_from_slice(&self.index.to_le_bytes());
        h[9] = match self.encoding {
            Encoding::Raw => 0,
            Encoding::Zstd => 1,
        };
        h[10..14].copy_from_slice(&self.raw_len.to_le_bytes());
        h
    }

    /// Decodes the 9 body bytes after the type byte of a `Block` frame of
    /// `frame_len` (type and body), checking them as [`Message::decode`] does.
    pub fn decode(frame_len: usize, b: &[u8; 9]) -> Result<Self, DecodeError> {
        let invalid = |what| DecodeError::Invalid { ty: BLOCK, what };
        let data_len = frame_len
            .checked_sub(10)
            .ok_or(DecodeError::Short { ty: BLOCK })?;
        let index = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let encoding = match b[4] {
            0 => Encoding::Raw,
            1 => Encoding::Zstd,
            _ => return Err(invalid("unknown block encoding")),
        };
        let raw_len = u32::from_le_bytes([b[5], b[6], b[7], b[8]]);
        if raw_len > MAX_BLOCK_SIZE {
            return Err(invalid("block larger than the largest block size"));
        }
        if encoding == Encoding::Raw && data_len != raw_len as usize {
            return Err(invalid("raw block length differs from its data"));
        }
        Ok(BlockHeader {
            index,
            encoding,
            raw_len,
            data_len: data_len as u32,
        })
    }
}

/// Whether `size` is a block size the protocol allows.
pub fn valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size)
}

/// Number of blocks of `block_size` in `len` bytes (at least one: an empty
/// segment is one empty block).
pub fn block_count(len: u64, block_size: u32) -> u64 {
    len.div_ceil(block_size as u64).max(1)
}

impl Message {
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Hello { .. } => HELLO,
            Message::HelloAck { .. } => HELLO_ACK,
            Message::CoverageRequest { .. } => COVERAGE_REQUEST,
            Message::CoverageChunk { .. } => COVERAGE_CHUNK,
            Message::CoverageEnd { .. } => COVERAGE_END,
            Message::SummaryRequest { .. } => SUMMARY_REQUEST,
            Message::SummaryChunk { .. } => SUMMARY_CHUNK,
            Message::SummaryEnd { .. } => SUMMARY_END,
            Message::FetchRequest { .. } => FETCH_REQUEST,
            Message::FetchHeader { .. } => FETCH_HEADER,
            Message::Block { .. } => BLOCK,
            Message::FetchEnd => FETCH_END,
            Message::BlockDamaged { .. } => BLOCK_DAMAGED,
            Message::Error { .. } => ERROR,
        }
    }

    /// Appends this message as one frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(Vec::new());
        match self {
            Message::Hello { version, name } | Message::HelloAck { version, name } => {
                w.u16(*version).str8(name);
            }
            Message::CoverageRequest {
                from_us,
                to_us,
                cameras,
            } => {
                w.i64(*from_us).i64(*to_us).cameras(cameras);
            }
            Message::SummaryRequest {
                from_us,
                to_us,
                bucket_us,
                cameras,
            } => {
                w.i64(*from_us).i64(*to_us).u64(*bucket_us).cameras(cameras);
            }
            Message::CoverageChunk { raw_len, zstd } | Message::SummaryChunk { raw_len, zstd } => {
                w.u32(*raw_len).bytes(zstd);
            }
            Message::CoverageEnd { entries } | Message::SummaryEnd { entries } => {
                w.u64(*entries);
            }
            Message::FetchRequest {
                camera,
                start_us,
                block_size,
                compression,
                ranges,
            } => {
                w.str8(camera)
                    .i64(*start_us)
                    .u32(*block_size)
                    .u8(match compression {
                        Compression::Off => 0,
                        Compression::On => 1,
                        Compression::Auto => 2,
                    });
                let n = ranges.len().min(MAX_RANGES as usize);
                w.u16(n as u16);
                for (first, count) in &ranges[..n] {
                    w.u32(*first).u32(*count);
                }
            }
            Message::FetchHeader {
                len,
                blake3,
                block_size,
                cvs,
            } => {
                w.u64(*len)
                    .bytes(blake3)
                    .u32(*block_size)
                    .u32(cvs.len() as u32);
                for cv in cvs {
                    w.bytes(cv);
                }
            }
            Message::Block {
                index,
                encoding,
                raw_len,
                data,
            } => {
                w.u32(*index)
                    .u8(match encoding {
                        Encoding::Raw => 0,
                        Encoding::Zstd => 1,
                    })
                    .u32(*raw_len)
                    .bytes(data);
            }
            Message::FetchEnd => {}
            Message::BlockDamaged { index } => {
                w.u32(*index);
            }
            Message::Error { code, message } => {
                w.u16(code.code()).str16(message);
            }
        }
        encode_frame(self.type_byte(), &w.0, out);
    }

    pub fn to_frame(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes the body of a frame of type `ty`.
    pub fn decode(ty: u8, body: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { ty, buf: body };
        let m = match ty {
            HELLO | HELLO_ACK => {
                let version = r.u16()?;
                let name = r.str8()?;
                if ty == HELLO {
                    Message::Hello { version, name }
                } else {
                    Message::HelloAck { version, name }
                }
            }
            COVERAGE_REQUEST => {
                let from_us = r.i64()?;
                let to_us = r.i64()?;
                let cameras = r.cameras()?;
                if from_us > to_us {
                    return Err(r.invalid("coverage window ends before it starts"));
                }
                Message::CoverageRequest {
                    from_us,
                    to_us,
                    cameras,
                }
            }
            COVERAGE_CHUNK | SUMMARY_CHUNK => {
                let raw_len = r.u32()?;
                if raw_len > MAX_COVERAGE_RAW {
                    return Err(r.invalid("chunk larger than the limit"));
                }
                let zstd = r.rest().to_vec();
                if ty == COVERAGE_CHUNK {
                    Message::CoverageChunk { raw_len, zstd }
                } else {
                    Message::SummaryChunk { raw_len, zstd }
                }
            }
            COVERAGE_END => Message::CoverageEnd { entries: r.u64()? },
            SUMMARY_REQUEST => {
                let from_us = r.i64()?;
                let to_us = r.i64()?;
                let bucket_us = r.u64()?;
                let cameras = r.cameras()?;
                if from_us > to_us {
                    return Err(r.invalid("summary window ends before it starts"));
                }
                if !valid_bucket(bucket_us) {
                    return Err(r.invalid("bucket is not a whole number of hours dividing a day"));
                }
                Message::SummaryRequest {
                    from_us,
                    to_us,
                    bucket_us,
                    cameras,
                }
            }
            SUMMARY_END => Message::SummaryEnd { entries: r.u64()? },
            FETCH_REQUEST => {
                let camera = r.str8()?;
                let start_us = r.i64()?;
                let block_size = r.u32()?;
                if !valid_block_size(block_size) {
                    return Err(r.invalid("block size is not a power of two from 1 KiB to 16 MiB"));
                }
                let compression = match r.u8()? {
                    0 => Compression::Off,
                    1 => Compression::On,
                    2 => Compression::Auto,
                    _ => return Err(r.invalid("unknown compression")),
                };
                let n = r.u16()?;
                if n > MAX_RANGES {
                    return Err(r.invalid("too many block ranges"));
                }
                let mut ranges = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let first = r.u32()?;
                    let count = r.u32()?;
                    if count == 0 || first.checked_add(count).is_none_or(|e| e > MAX_BLOCKS) {
                        return Err(r.invalid("block range is empty or past the limit"));
                    }
                    ranges.push((first, count));
                }
                Message::FetchRequest {
                    camera,
                    start_us,
                    block_size,
                    compression,
                    ranges,
                }
            }
            FETCH_HEADER => {
                let len = r.u64()?;
                let blake3 = r.arr()?;
                let block_size = r.u32()?;
                if !valid_block_size(block_size) {
                    return Err(r.invalid("block size is not a power of two from 1 KiB to 16 MiB"));
                }
                let n = r.u32()?;
                if n as u64 != block_count(len, block_size) || n > MAX_BLOCKS {
                    return Err(r.invalid("block count does not match length and block size"));
                }
                let mut cvs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    cvs.push(r.arr()?);
                }
                Message::FetchHeader {
                    len,
                    blake3,
                    block_size,
                    cvs,
                }
            }
            BLOCK => {
                let index = r.u32()?;
                let encoding = match r.u8()? {
                    0 => Encoding::Raw,
                    1 => Encoding::Zstd,
                    _ => return Err(r.invalid("unknown block encoding")),
                };
                let raw_len = r.u32()?;
                if raw_len > MAX_BLOCK_SIZE {
                    return Err(r.invalid("block larger than the largest block size"));
                }
                let data = r.rest().to_vec();
                if encoding == Encoding::Raw && data.len() != raw_len as usize {
                    return Err(r.invalid("raw block length differs from its data"));
                }
                Message::Block {
                    index,
                    encoding,
                    raw_len,
                    data,
                }
            }
            FETCH_END => Message::FetchEnd,
            BLOCK_DAMAGED => Message::BlockDamaged { index: r.u32()? },
            ERROR => {
                let code = ErrorCode::from_code(r.u16()?);
                let message = r.str16()?;
                Message::Error { code, message }
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.end()?;
        Ok(m)
    }

    /// Decodes the first whole frame in `buf`: `Ok(None)` if more bytes are
    /// needed, else the message and how many bytes it took.
    pub fn decode_from(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        match decode_frame(buf)? {
            None => Ok(None),
            Some(f) => Ok(Some((Message::decode(f.ty, f.body)?, f.len))),
        }
    }
}

impl CoverageEntry {
    fn encode(&self, w: &mut Writer) {
        w.str8(&self.camera)
            .i64(self.start_us)
            .u64(self.duration_us)
            .u64(self.len)
            .bytes(&self.blake3)
            .str8(&self.notes);
    }
}

/// Largest encoded coverage entry.
const MAX_ENTRY_LEN: usize = 1 + 255 + 8 + 8 + 8 + 32 + 1 + 255;

impl SummaryEntry {
    fn encode(&self, w: &mut Writer) {
        w.str8(&self.camera)
            .i64(self.bucket_us)
            .u64(self.summary.count)
            .u64(self.summary.bytes)
            .bytes(&self.summary.digest.to_le_bytes());
    }
}

/// Largest encoded summary entry.
const MAX_SUMMARY_LEN: usize = 1 + 255 + 8 + 8 + 8 + 16;

/// Packs items into chunks of at most [`MAX_COVERAGE_RAW`] raw bytes, each
/// compressed with zstd.
fn encode_chunks<T>(
    items: &[T],
    max_item_len: usize,
    encode: impl Fn(&T, &mut Writer),
    chunk: impl Fn(u32, Vec<u8>) -> Message,
    level: i32,
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut w = Writer(Vec::new());
    let flush = |w: &mut Writer, out: &mut Vec<Message>| {
        if w.0.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut w.0);
        let zstd = zstd::bulk::compress(&raw, level).unwrap_or_default();
        out.push(chunk(raw.len() as u32, zstd));
    };
    for e in items {
        if w.0.len() + max_item_len > MAX_COVERAGE_RAW as usize {
            flush(&mut w, &mut out);
        }
        encode(e, &mut w);
    }
    flush(&mut w, &mut out);
    out
}

/// Unpacks a chunk of type `ty`. The decompressed size is bounded by the
/// declared raw length, itself bounded by [`MAX_COVERAGE_RAW`].
fn decode_chunk<T>(
    ty: u8,
    raw_len: u32,
    zstd_data: &[u8],
    decode: impl Fn(&mut Reader) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let invalid = |what| DecodeError::Invalid { ty, what };
    if raw_len > MAX_COVERAGE_RAW {
        return Err(invalid("chunk larger than the limit"));
    }
    let raw = zstd::bulk::decompress(zstd_data, raw_len as usize)
        .map_err(|_| invalid("chunk does not decompress within its declared length"))?;
    if raw.len() != raw_len as usize {
        return Err(invalid(
            "chunk decompresses to another length than declared",
        ));
    }
    let mut r = Reader { ty, buf: &raw };
    let mut out = Vec::new();
    while !r.buf.is_empty() {
        out.push(decode(&mut r)?);
    }
    Ok(out)
}

/// Packs entries into coverage chunks, each at most [`MAX_COVERAGE_RAW`]
/// raw bytes, compressed with zstd.
pub fn encode_coverage_chunks(entries: &[CoverageEntry], level: i32) -> Vec<Message> {
    encode_chunks(
        entries,
        MAX_ENTRY_LEN,
        CoverageEntry::encode,
        |raw_len, zstd| Message::CoverageChunk { raw_len, zstd },
        level,
    )
}

/// Unpacks a coverage chunk.
pub fn decode_coverage_chunk(
    raw_len: u32,
    zstd_data: &[u8],
) -> Result<Vec<CoverageEntry>, DecodeError> {
    decode_chunk(COVERAGE_CHUNK, raw_len, zstd_data, |r| {
        Ok(CoverageEntry {
            camera: r.str8()?,
            start_us: r.i64()?,
            duration_us: r.u64()?,
            len: r.u64()?,
            blake3: r.arr()?,
            notes: r.str8()?,
        })
    })
}

/// Packs summaries into summary chunks, like [`encode_coverage_chunks`].
pub fn encode_summary_chunks(entries: &[SummaryEntry], level: i32) -> Vec<Message> {
    encode_chunks(
        entries,
        MAX_SUMMARY_LEN,
        SummaryEntry::encode,
        |raw_len, zstd| Message::SummaryChunk { raw_len, zstd },
        level,
    )
}

/// Unpacks a summary chunk.
pub fn decode_summary_chunk(
    raw_len: u32,
    zstd_data: &[u8],
) -> Result<Vec<SummaryEntry>, DecodeError> {
    decode_chunk(SUMMARY_CHUNK, raw_len, zstd_data, |r| {
        Ok(SummaryEntry {
            camera: r.str8()?,
            bucket_us: r.i64()?,
            summary: Summary {
                count: r.u64()?,
                bytes: r.u64()?,
                digest: u128::from_le_bytes(r.arr()?),
            },
        })
    })
}

#[cfg(test)]
mod tests;
