//! Block buffers, reused. A receiver fills a buffer of a block's size
//! (1 MiB by default) for every block that arrives, and a server reads
//! into one every block it sends. A new one each time was a fresh mapping
//! from the allocator, whose pages the kernel faulted in and zeroed on
//! first touch, and unmapped once the block was written or sent: about 8%
//! of the receiving side's CPU and 5% of the serving side's (perf,
//! 2026-12-03). A buffer done with is given back here and handed out
//! again, its pages still mapped. At most [`KEEP_BYTES`] are kept idle.

use std::sync::Mutex;

/// The most bytes of idle buffers kept, for the process (a receiver's
/// blocks in flight and a server's together): resident for as long as it
/// runs, on top of what is in flight.
pub const KEEP_BYTES: usize = 32 << 20;

/// A buffer smaller than this is not worth keeping: the allocator reuses
/// small ones itself.
const SMALLEST_KEPT: usize = 64 << 10;

struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// Idle buffers, at most [`KEEP_BYTES`] of them.
struct Pool(Mutex<Idle>);

static POOL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Pool(Mutex::new(Idle {
            buffers: Vec::new(),
            bytes: 0,
        }))
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, n: usize) -> Vec<u8> {
        let class = room_for(n);
        if class >= SMALLEST_KEPT {
            let mut idle = self.idle();
            if let Some(i) = idle.buffers.iter().rposition(|b| b.capacity() == class) {
                let b = idle.buffers.swap_remove(i);
                idle.bytes -= b.capacity();
                return b;
            }
        }
        Vec::with_capacity(class)
    }

    fn give_back(&self, mut b: Vec<u8>) {
        let cap = b.capacity();
        // (One of no class would never be handed out again.)
        if cap < SMALLEST_KEPT || cap != room_for(cap) {
            return;
        }
        let mut idle = self.idle();
        if idle.bytes + cap > KEEP_BYTES {
            return;
        }
        b.clear();
        idle.bytes += cap;
        idle.buffers.push(b);
    }
}

/// The room a buffer for `n` bytes gets (its class): `n` rounded up to a
/// quarter of the power of two at or below it (1, 1.25, 1.5 or 1.75
/// times it), from [`SMALLEST_KEPT`]; never a quarter more than `n`. A
/// 1 MiB block is a class of its own. A segment's last block is shorter
/// than the others: handed out buffers of exactly its size, it was a new
/// mapping every time, faulted in and zeroed (4% of each side's samples
/// with 10-second segments, whose every fifth block is a last one; perf
/// 2026-12-03); by class, it reuses one.
pub fn room_for(n: usize) -> usize {
    if n < SMALLEST_KEPT {
        return n;
    }
    let quarter = (1usize << (usize::BITS - 1 - n.leading_zeros())) / 4;
    n.checked_next_multiple_of(quarter).unwrap_or(n)
}

/// An empty buffer with room for at least `n` bytes (see [`room_for`]):
/// an idle one of that room if there is one, else a new one. Fill no more
/// than `n` of it: a read into all of its room would read past what its
/// read budget counted.
pub fn take(n: usize) -> Vec<u8> {
    POOL.take(n)
}

/// Gives back a buffer no longer needed (its block written or sent), to
/// be handed out again; dropped if small, or if [`KEEP_BYTES`] are idle
/// already.
pub fn give_back(b: Vec<u8>) {
    POOL.give_back(b)
}

/// `b` as [`bytes::Bytes`] whose buffer is given back once the last of
/// its clones is dropped (QUIC holds a block sent until it is
/// acknowledged): a block read to be served.
pub fn into_bytes(b: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from_owner(GivenBack(b))
}

/// A buffer given back when dropped.
struct GivenBack(Vec<u8>);

impl AsRef<[u8]> for GivenBack {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for GivenBack {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_handed_out_again_and_idle_ones_are_bounded() {
        let pool = Pool::new();
        let mut b = pool.take(1 << 20);
        b.extend_from_slice(&[7; 1 << 20]);
        let at = b.as_ptr();
        pool.give_back(b);
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), at, "the same buffer");
        assert!(again.is_empty() && again.capacity() == 1 << 20);
        pool.give_back(again);
        // A segment's shorter last block within a quarter of it gets the
        // same buffer.
        let last = pool.take(1_000_000);
        assert_eq!(last.as_ptr(), at, "the same buffer for a shorter block");
        pool.give_back(last);
        // Of another class: a new one.
        let bigger = pool.take(2 << 20);
        let smaller = pool.take(512 << 10);
        assert_ne!(bigger.as_ptr(), at);
        assert_ne!(smaller.as_ptr(), at);
        assert_eq!(smaller.capacity(), 512 << 10);
        let again = pool.take(1 << 20);
        assert_eq!(again.as_ptr(), at);
        pool.give_back(again);
        pool.give_back(bigger);
        pool.give_back(smaller);
        // Small ones are not kept.
        pool.give_back(Vec::with_capacity(1024));
        assert_eq!(pool.idle().buffers.len(), 3);
        // No more than KEEP_BYTES idle.
        for _ in 0..(KEEP_BYTES >> 20) + 8 {
            pool.give_back(Vec::with_capacity(1 << 20));
        }
        let idle = pool.idle();
        assert!(idle.bytes <= KEEP_BYTES);
        let all: usize = idle.buffers.iter().map(Vec::capacity).sum();
        assert_eq!(all, idle.bytes);
    }

    #[test]
    fn a_class_is_never_a_quarter_more_than_asked_and_a_class_is_its_own() {
        assert_eq!(room_for(1 << 20), 1 << 20);
        assert_eq!(room_for(1000), 1000);
        assert_eq!(room_for(700_000), 786_432);
        assert_eq!(room_for(524_289), 655_360);
        for n in (SMALLEST_KEPT..64 << 20).step_by(9_973) {
            let class = room_for(n);
            assert!(class >= n && class - n <= n / 4, "{n} -> {class}");
            assert_eq!(room_for(class), class, "{n} -> {class}");
        }
        // A buffer of no class is not kept.
        let pool = Pool::new();
        pool.give_back(Vec::with_capacity(700_000));
        assert!(pool.idle().buffers.is_empty());
    }

    #[test]
    fn bytes_made_of_a_buffer_hold_its_bytes() {
        let mut b = take(100_000);
        b.extend_from_slice(&[3; 100_000]);
        let bytes = into_bytes(b);
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(clone.len(), 100_000);
        assert!(clone.iter().all(|&x| x == 3));
    }
}
