//! What the serving side holds at once, whatever its peers ask for.
//!
//! A fetch takes a slot for as long as it lives, up to the peer
//! acknowledging its last byte; past [`FETCHES_PER_PEER`] for one peer, or
//! [`FETCHES_IN_ALL`] for every peer together, a fetch is answered `Busy`
//! and the peer asks again later. Bytes read from disk wait for room in
//! [`READ_BUDGET`] (one peer may take half of it) before they are read,
//! counted as the buffer they are read into (`buffers::room_for`), and
//! keep it until QUIC drops them: once the peer has acknowledged the last
//! of a block's bytes (QUIC keeps a block's buffer whole until then), or
//! the stream is reset. QUIC sends at most [`SEND_WINDOW`] unacknowledged
//! bytes per connection. So the blocks the serving side holds, read, queued
//! or in QUIC, never pass `READ_BUDGET` (64 MiB) whatever the block size
//! (for a moment, a block being compressed has zstd's output beside it),
//! with no whole segment ever read into memory; besides, the process keeps
//! up to `buffers::KEEP_BYTES` (32 MiB) of idle block buffers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Fetches one peer may have in flight at once. A default backfill asks
/// for 8 (`--connections 2 --streams 4`).
pub const FETCHES_PER_PEER: usize = 16;
/// Fetches in flight at once, for all peers together.
pub const FETCHES_IN_ALL: usize = 32;
/// Blocks read from disk and not yet acknowledged by their peer, for all
/// fetches (counted as the buffers they are read into).
pub const READ_BUDGET: u32 = 64 << 20;
/// Unacknowledged bytes QUIC sends per connection of the serving side.
/// 4 MiB is 32 ms at 1 Gbit/s, 3 ms at 10 Gbit/s: more than a LAN's round
/// trip; a WAN peer 50 ms away gets at most 80 MiB/s per connection.
pub const SEND_WINDOW: u64 = 4 << 20;

/// The serving side's fetch slots and read budget; shared by every
/// connection.
#[derive(Debug)]
pub struct ServeLimits {
    per_peer: usize,
    in_all: usize,
    fetches: Mutex<Fetches>,
    read: Arc<Semaphore>,
    read_budget: u32,
    /// Each peer's half of the read budget, so that one peer on a slow
    /// link cannot hold all of it.
    peer_read: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Room taken in the read budget for one read, until QUIC drops its bytes
/// (acknowledged, or the stream reset).
#[derive(Debug)]
pub struct ReadRoom {
    _peer: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
struct Fetches {
    by_peer: HashMap<String, usize>,
    total: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits::new(FETCHES_PER_PEER, FETCHES_IN_ALL, READ_BUDGET)
    }
}

impl ServeLimits {
    pub fn new(per_peer: usize, in_all: usize, read_budget: u32) -> ServeLimits {
        ServeLimits {
            per_peer: per_peer.max(1),
            in_all: in_all.max(1),
            fetches: Mutex::new(Fetches::default()),
            read: Arc::new(Semaphore::new(read_budget.max(1) as usize)),
            read_budget: read_budget.max(1),
            peer_read: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fetches> {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one fetch of `peer`, or why there is none (the `Busy`
    /// answer's message).
    pub fn fetch_slot(self: &Arc<Self>, peer: &str) -> Result<FetchSlot, String> {
        let mut f = self.lock();
        let mine = f.by_peer.get(peer).copied().unwrap_or(0);
        if mine >= self.per_peer {
            return Err(format!(
                "busy: {mine} fetches of yours in flight, the most one peer may have; ask again later"
            ));
        }
        if f.total >= self.in_all {
            return Err(format!(
                "busy: {} fetches in flight for all peers, the most this server serves at once; ask again later",
                f.total
            ));
        }
        *f.by_peer.entry(peer.to_string()).or_default() += 1;
        f.total += 1;
        Ok(FetchSlot {
            limits: self.clone(),
            peer: peer.to_string(),
        })
    }

    /// Waits for room to read `n` bytes for `peer` (at most its half of
    /// the budget).
    pub async fn read_room(&self, peer: &str, n: u64) -> ReadRoom {
        let share = (self.read_budget / 2).max(1);
        let n = n.clamp(1, share as u64) as u32;
        let mine = {
            let mut m = self.peer_read.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(peer.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(share as usize)))
                .clone()
        };
        // Neither semaphore is ever closed.
        let Ok(peer_room) = mine.acquire_many_owned(n).await else {
            unreachable!("a read budget is never closed")
        };
        let Ok(all_room) = self.read.clone().acquire_many_owned(n).await else {
            unreachable!("the read budget is never closed")
        };
        ReadRoom {
            _peer: peer_room,
            _all: all_room,
        }
    }

    /// Fetches in flight now, in all.
    #[cfg(test)]
    fn fetches(&self) -> usize {
        self.lock().total
    }
}

/// One fetch's place among the limits; given back when dropped.
#[derive(Debug)]
pub struct FetchSlot {
    limits: Arc<ServeLimits>,
    peer: String,
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        let mut f = self.limits.lock();
        f.total = f.total.saturating_sub(1);
        if let Some(n) = f.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                f.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_share_and_all_peers_past_the_total_are_busy() {
        let l = Arc::new(ServeLimits::new(2, 3, 1 << 20));
        let a1 = l.fetch_slot("a").unwrap();
        let _a2 = l.fetch_slot("a").unwrap();
        assert!(l.fetch_slot("a").unwrap_err().contains("of yours"));
        let _b1 = l.fetch_slot("b").unwrap();
        assert!(l.fetch_slot("b").unwrap_err().contains("for all peers"));
        drop(a1);
        assert_eq!(l.fetches(), 2);
        let _b2 = l.fetch_slot("b").unwrap();
        assert_eq!(l.fetches(), 3);
    }

    #[tokio::test]
    async fn reads_wait_for_room_and_one_peer_takes_half_the_budget() {
        use futures::FutureExt;
        let l = ServeLimits::new(4, 4, 8 << 20);
        let a1 = l.read_room("a", 3 << 20).await;
        // a's half is 4 MiB: 2 more MiB do not fit, b's do.
        assert!(l.read_room("a", 2 << 20).now_or_never().is_none());
        let b1 = l.read_room("b", 3 << 20).await;
        // 6 of 8 MiB taken: b's next 1 MiB fits, c's 3 MiB wait.
        assert!(l.read_room("b", 1 << 20).now_or_never().is_some());
        assert!(l.read_room("c", 3 << 20).now_or_never().is_none());
        drop((a1, b1));
        // More than a peer's half asks for the half.
        let _all = l.read_room("a", u64::MAX).await;
        assert!(l.read_room("a", 1).now_or_never().is_none());
    }
}
