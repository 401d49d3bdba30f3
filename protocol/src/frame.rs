//! Length-prefixed frames.

use crate::MAX_FRAME_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    Length(usize),
}

/// Appends a frame of `ty` and `body` to `out`.
pub fn encode_frame(ty: u8, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(ty);
    out.extend_from_slice(body);
}

/// Reads the frame length from a 4-byte prefix, checking the limit, so a
/// reader knows how much to read before it reads it.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n == 0 || n > MAX_FRAME_LEN {
        return Err(FrameError::Length(n));
    }
    Ok(n)
}

/// A frame split off a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub ty: u8,
    pub body: &'a [u8],
    /// Bytes the frame took, prefix included.
    pub len: usize,
}

/// Splits the first frame off `buf`: `Ok(None)` when more bytes are needed.
pub fn decode_frame(buf: &[u8]) -> Result<Option<RawFrame<'_>>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let n = frame_len([prefix[0], prefix[1], prefix[2], prefix[3]])?;
    let Some(frame) = buf.get(4..4 + n) else {
        return Ok(None);
    };
    Ok(Some(RawFrame {
        ty: frame[0],
        body: &frame[1..],
        len: 4 + n,
    }))
}
