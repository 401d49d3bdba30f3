//! The state of one segment's fetch, without I/O (as quinn-proto keeps a
//! connection's state apart from its sockets): which blocks were asked for,
//! which arrived, which are verified and written, which are durable, and
//! when a checkpoint is due. The async code in `client` reads frames,
//! verifies and writes, and tells this type what happened.

use std::collections::HashSet;

use crate::placeholder::Progress;

/// Why an arriving block is refused: the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockRefused {
    #[error("block {0} was not asked for")]
    NotAsked(u32),
    #[error("block {0} came twice")]
    Twice(u32),
    #[error("block {0} came after the fetch ended")]
    AfterEnd(u32),
}

/// One segment's blocks in flight from one peer.
#[derive(Debug, Clone)]
pub struct BlockFetch {
    asked: Vec<(u32, u32)>,
    wanted: HashSet<u32>,
    arrived: HashSet<u32>,
    /// Verified and written in this fetch: what a sync makes durable (a
    /// block seen by an earlier attempt, asked for again and arrived bad,
    /// is not).
    written: HashSet<u32>,
    progress: Progress,
    /// Bytes verified and written since the last checkpoint.
    unsynced: u64,
    /// A checkpoint is due once this many bytes are unsynced.
    window: u64,
    ended: bool,
}

impl BlockFetch {
    /// Asks for every block `progress` does not have durable.
    pub fn new(progress: Progress, window: u64) -> Self {
        let asked = progress.missing_ranges();
        let wanted = asked.iter().flat_map(|&(f, c)| f..f + c).collect();
        BlockFetch {
            asked,
            wanted,
            arrived: HashSet::new(),
            written: HashSet::new(),
            progress,
            unsynced: 0,
            window,
            ended: false,
        }
    }

    /// The ranges `(first, count)` to ask for.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.asked
    }

    /// A block's frame arrived (before it is verified).
    pub fn handle_arrival(&mut self, index: u32) -> Result<(), BlockRefused> {
        if self.ended {
            return Err(BlockRefused::AfterEnd(index));
        }
        if !self.wanted.contains(&index) {
            return Err(BlockRefused::NotAsked(index));
        }
        if !self.arrived.insert(index) {
            return Err(BlockRefused::Twice(index));
        }
        Ok(())
    }

    /// A block of `n` bytes was verified and written (not synced). Returns
    /// whether an earlier attempt had already written it (bytes fetched
    /// twice because a crash came before they were durable).
    pub fn handle_written(&mut self, index: u32, n: u64) -> bool {
        let again = self.progress.was_seen(index);
        self.progress.mark_seen(index);
        self.written.insert(index);
        self.unsynced += n;
        again
    }

    /// Whether enough is unsynced that a checkpoint is due.
    pub fn checkpoint_due(&self) -> bool {
        self.unsynced >= self.window
    }

    /// Every block written so far has been synced: they are durable.
    pub fn handle_synced(&mut self) {
        for &i in &self.written {
            self.progress.mark_durable(i);
        }
        self.unsynced = 0;
    }

    /// The peer said the fetch is over.
    pub fn handle_end(&mut self) {
        self.ended = true;
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// After the end: `(arrived, asked)` when the peer sent less than was
    /// asked for.
    pub fn shortfall(&self) -> Option<(usize, usize)> {
        (self.arrived.len() != self.wanted.len()).then_some((self.arrived.len(), self.wanted.len()))
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn into_progress(self) -> Progress {
        self.progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(blocks: u32) -> BlockFetch {
        BlockFetch::new(Progress::new(1 << 20, blocks), 3 << 20)
    }

    #[test]
    fn a_block_seen_before_that_arrives_bad_is_not_made_durable() {
        let mut p = Progress::new(1 << 20, 4);
        // An earlier attempt wrote block 1 but crashed before syncing.
        p.mark_seen(1);
        let mut f = BlockFetch::new(p, 1 << 30);
        for i in 0..2 {
            f.handle_arrival(i).unwrap();
        }
        // Block 0 verifies and is written; block 1 arrives bad.
        f.handle_written(0, 1 << 20);
        f.handle_synced();
        assert!(f.progress().missing_ranges().contains(&(1, 3)));
        assert!(!f.progress().missing_ranges().iter().any(|&(a, _)| a == 0));
    }

    #[test]
    fn asks_only_for_what_is_not_durable() {
        let mut p = Progress::new(1 << 20, 10);
        for i in [0, 1, 5] {
            p.mark_durable(i);
        }
        let f = BlockFetch::new(p, 1);
        assert_eq!(f.ranges(), &[(2, 3), (6, 4)]);
    }

    #[test]
    fn a_block_not_asked_for_twice_or_late_is_refused() {
        let mut f = BlockFetch::new(
            {
                let mut p = Progress::new(1 << 20, 4);
                p.mark_durable(0);
                p
            },
            1,
        );
        assert_eq!(f.handle_arrival(0), Err(BlockRefused::NotAsked(0)));
        assert_eq!(f.handle_arrival(9), Err(BlockRefused::NotAsked(9)));
        assert_eq!(f.handle_arrival(2), Ok(()));
        assert_eq!(f.handle_arrival(2), Err(BlockRefused::Twice(2)));
        f.handle_end();
        assert_eq!(f.handle_arrival(3), Err(BlockRefused::AfterEnd(3)));
        assert_eq!(f.shortfall(), Some((1, 3)));
    }

    #[test]
    fn a_checkpoint_is_due_per_window_and_makes_only_written_blocks_durable() {
        let mut f = fresh(8);
        for i in 0..4 {
            f.handle_arrival(i).unwrap();
        }
        // Three of the four arrived blocks are written: the window is full.
        for i in 0..2 {
            assert!(!f.handle_written(i, 1 << 20));
            assert!(!f.checkpoint_due());
        }
        f.handle_written(2, 1 << 20);
        assert!(f.checkpoint_due());
        f.handle_synced();
        assert!(!f.checkpoint_due());
        let durable: Vec<u32> = (0..8).filter(|i| f.progress().is_durable(*i)).collect();
        assert_eq!(durable, [0, 1, 2], "block 3 arrived but was not written");
    }

    #[test]
    fn a_block_written_by_an_earlier_attempt_counts_as_fetched_again() {
        let mut p = Progress::new(1 << 20, 2);
        p.mark_seen(1);
        let mut f = BlockFetch::new(p, 1 << 30);
        f.handle_arrival(1).unwrap();
        assert!(f.handle_written(1, 100));
        f.handle_arrival(0).unwrap();
        assert!(!f.handle_written(0, 100));
        f.handle_end();
        assert_eq!(f.shortfall(), None);
    }
}
