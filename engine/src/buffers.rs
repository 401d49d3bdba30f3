//! Block buffers, reused. A receiver fills a buffer of a block's size
//! (1 MiB by default) for every block that arrives; a new one each time
//! was a fresh mapping from the allocator, whose pages the kernel faulted
//! in and zeroed on first touch, then unmapped once the block was written:
//! about 8% of the receiving side's CPU (perf, 2026-12-03). A buffer whose
//! block is on disk is given back here and handed out again, its pages
//! still mapped. At most [`KEEP_BYTES`] are kept idle.

use std::sync::Mutex;

/// The most bytes of idle buffers kept: what the blocks in flight of a
/// busy receiver (its streams times its pipeline) need again at once.
pub const KEEP_BYTES: usize = 64 << 20;

/// A buffer smaller than this is not worth keeping: the allocator reuses
/// small ones itself.
const SMALLEST_KEPT: usize = 64 << 10;

struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

static IDLE: Mutex<Idle> = Mutex::new(Idle {
    buffers: Vec::new(),
    bytes: 0,
});

fn idle() -> std::sync::MutexGuard<'static, Idle> {
    IDLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for at least `n` bytes: an idle one if one
/// is large enough, else a new one.
pub fn take(n: usize) -> Vec<u8> {
    if n >= SMALLEST_KEPT {
        let mut idle = idle();
        if let Some(i) = idle.buffers.iter().rposition(|b| b.capacity() >= n) {
            let b = idle.buffers.swap_remove(i);
            idle.bytes -= b.capacity();
            return b;
        }
    }
    Vec::with_capacity(n)
}

/// Gives back a buffer no longer needed (its block written), to be handed
/// out again; dropped if small, or if [`KEEP_BYTES`] are idle already.
pub fn give_back(mut b: Vec<u8>) {
    let cap = b.capacity();
    if cap < SMALLEST_KEPT {
        return;
    }
    let mut idle = idle();
    if idle.bytes + cap > KEEP_BYTES {
        return;
    }
    b.clear();
    idle.bytes += cap;
    idle.buffers.push(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the idle list is process-wide.
    #[test]
    fn a_buffer_given_back_is_handed_out_again_and_idle_ones_are_bounded() {
        let mut b = take(1 << 20);
        b.extend_from_slice(&[7; 1 << 20]);
        let at = b.as_ptr();
        give_back(b);
        let again = take(1 << 20);
        assert_eq!(again.as_ptr(), at, "the same buffer");
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        // Too small to want it: a new one.
        let bigger = take(2 << 20);
        assert_ne!(bigger.as_ptr(), at);
        give_back(again);
        give_back(bigger);
        // Small ones are not kept.
        give_back(Vec::with_capacity(1024));
        // No more than KEEP_BYTES idle.
        for _ in 0..(KEEP_BYTES >> 20) + 8 {
            give_back(Vec::with_capacity(1 << 20));
        }
        assert!(idle().bytes <= KEEP_BYTES);
        let all: usize = idle().buffers.iter().map(Vec::capacity).sum();
        assert_eq!(all, idle().bytes);
    }
}
