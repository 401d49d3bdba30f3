//! `hafill sim hostile`: a peer that speaks the protocol and lies, to show
//! that a receiver refuses its bytes, cuts it off, and keeps backfilling
//! from the honest peers. Its coverage is honest (what its store holds);
//! every segment it serves carries the chosen [`Lie`], through the serving
//! side's [`FetchHook`]: the real server knows no lie.

use std::sync::Arc;

use crate::backfill::BackfillError;
use crate::config::Config;
use crate::identity;
use crate::transfer::server::{self, FetchHook, FirstBlock, ServerState};

/// Serves `config`'s store with `lie` until `shutdown` resolves.
pub async fn serve(
    config: Arc<Config>,
    lie: Lie,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BackfillError> {
    let me = identity::load(&config.cert, &config.key)?;
    let recorder = crate::store::open_recorder(&config, false)?;
    let (endpoint, peers) = crate::transfer::server_endpoint(&config, &me)?;
    tracing::warn!(name = %config.name, listen = %config.listen, ?lie, "serving as a HOSTILE peer (sim hostile): every segment served is a lie");
    let mut state = ServerState::new(config, recorder, peers);
    state.hook = Some(Arc::new(lie));
    let ep = endpoint.clone();
    tokio::select! {
        _ = server::run(endpoint, Arc::new(state)) => {}
        _ = shutdown => ep.close(0u32.into(), b"shutting down"),
    }
    Ok(())
}

/// How a hostile peer answers a fetch: the coverage is honest, the segment
/// is not. The receiver must refuse every one of these, keep nothing of it,
/// and cut the peer off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// A block list whose tree does not hash to the segment's BLAKE3.
    WrongHash,
    /// A header claiming another length.
    WrongSize,
    /// An honest header, then a block with one bit flipped.
    BadBlock,
    /// A frame announcing more than the largest frame allowed.
    Oversized,
    /// Every block, then one more that was not asked for.
    Extra,
    /// The header, then nothing, with the connection kept alive.
    Stall,
    /// The header, then a block one byte at a time.
    Drip,
    /// Coverage answered with an empty chunk every 10 seconds, never
    /// ending (the coverage is then not honest: there is none).
    DripCoverage,
}

impl std::str::FromStr for Lie {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "wrong-hash" => Lie::WrongHash,
            "wrong-size" => Lie::WrongSize,
            "bad-block" => Lie::BadBlock,
            "oversized" => Lie::Oversized,
            "extra" => Lie::Extra,
            "stall" => Lie::Stall,
            "drip" => Lie::Drip,
            "drip-coverage" => Lie::DripCoverage,
            _ => {
                return Err(
                    "expected wrong-hash, wrong-size, bad-block, oversized, extra, stall, drip or drip-coverage"
                        .into(),
                )
            }
        })
    }
}

impl FetchHook for Lie {
    fn instead_of_header(&self) -> Option<Vec<u8>> {
        (*self == Lie::Oversized).then(|| {
            let mut prefix = ((hafill_protocol::MAX_FRAME_LEN + 1) as u32)
                .to_le_bytes()
                .to_vec();
            prefix.push(hafill_protocol::types::BLOCK);
            prefix
        })
    }

    fn header(&self, len: &mut u64, cvs: &mut [[u8; 32]]) {
        match self {
            Lie::WrongHash => {
                if let Some(cv) = cvs.first_mut() {
                    cv[0] ^= 1;
                }
            }
            Lie::WrongSize => *len += 1,
            _ => {}
        }
    }

    fn hang_after_header(&self) -> bool {
        *self == Lie::Stall
    }

    fn first_block(&self, data: &bytes::Bytes) -> FirstBlock {
        match self {
            Lie::BadBlock => {
                let mut bad = data.to_vec();
                if let Some(b) = bad.first_mut() {
                    *b ^= 1;
                }
                FirstBlock::Replace(bad.into())
            }
            Lie::Drip => FirstBlock::Drip(std::time::Duration::from_millis(200)),
            _ => FirstBlock::AsIs,
        }
    }

    fn repeat_first_block(&self) -> bool {
        *self == Lie::Extra
    }

    fn drip_coverage(&self) -> Option<std::time::Duration> {
        (*self == Lie::DripCoverage).then_some(std::time::Duration::from_secs(10))
    }
}
