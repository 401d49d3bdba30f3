//! The backfill's work queue: one queue per peer, so each peer's workers
//! fetch at that peer's pace and a slow, stalled or hostile peer holds only
//! its own workers. A peer whose queue runs dry takes, oldest first, work
//! queued for another peer that it also holds; a segment that fails at one
//! peer moves to its next holder; a peer cut off hands all its work on.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::segment::SegmentMeta;

/// One segment to fetch and who holds it.
#[derive(Debug, Clone)]
pub struct Job {
    pub meta: SegmentMeta,
    /// Holders, preferred first.
    pub sources: Vec<String>,
    /// Holders already tried, with why each failed.
    pub tried: Vec<(String, String)>,
    /// `Busy` answers this job had from its current holder (see
    /// [`JobQueue::busy`]).
    pub busy: u32,
    /// Not to be asked for again before this (after a `Busy` answer).
    pub not_before: Option<Instant>,
}

/// `Busy` answers one job may have from one holder before it counts as
/// failed there: with the pauses between asks ([`BUSY_PAUSE`] doubling up
/// to [`BUSY_PAUSE_MAX`]), about 8 minutes.
pub const MAX_BUSY_ANSWERS: u32 = 240;
/// A job's pause after its first `Busy` answer; it doubles with each one in
/// a row, up to [`BUSY_PAUSE_MAX`].
pub const BUSY_PAUSE: Duration = Duration::from_millis(100);
pub const BUSY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// The pause after a job's `n`-th `Busy` answer in a row (n >= 1).
fn busy_pause(n: u32) -> Duration {
    BUSY_PAUSE
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(BUSY_PAUSE_MAX)
}

impl Job {
    pub fn new(meta: SegmentMeta, sources: Vec<String>) -> Job {
        Job {
            meta,
            sources,
            tried: Vec::new(),
            busy: 0,
            not_before: None,
        }
    }

    fn next_source(&self, usable: &dyn Fn(&str) -> bool) -> Option<String> {
        self.sources
            .iter()
            .find(|s| usable(s) && !self.tried.iter().any(|(t, _)| t == *s))
            .cloned()
    }

    /// Whether it may be asked for now (not paused after a `Busy`).
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }

    fn may_serve(&self, peer: &str) -> bool {
        self.sources.iter().any(|s| s == peer) && !self.tried.iter().any(|(t, _)| t == peer)
    }

    /// Why nobody delivered it.
    pub fn reason(&self) -> String {
        if self.tried.is_empty() {
            "no connected peer holds it".into()
        } else {
            self.tried
                .iter()
                .map(|(p, why)| format!("{p}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_peer: BTreeMap<String, VecDeque<Job>>,
    /// Peers that answered `Busy`: none of their workers asks again
    /// before this.
    peer_paused: BTreeMap<String, Instant>,
    in_flight: usize,
    cut: BTreeMap<String, String>,
    /// Segments each peer sent damaged (see `FetchError::Damaged`).
    damaged: BTreeMap<String, usize>,
    /// Jobs no usable peer is left for.
    undeliverable: Vec<Job>,
}

impl Inner {
    /// Whether any queued job is this peer's, or one it also holds.
    fn any_queued_for(&self, peer: &str) -> bool {
        self.by_peer.iter().any(|(p, q)| {
            if p == peer {
                !q.is_empty()
            } else {
                q.iter().any(|j| j.may_serve(peer))
            }
        })
    }

    fn usable(&self, peer: &str) -> bool {
        self.by_peer.contains_key(peer) && !self.cut.contains_key(peer)
    }

    /// Queues `job` at its next usable holder, or gives it up.
    fn place(&mut self, job: Job) {
        let next = {
            let usable = |p: &str| self.usable(p);
            job.next_source(&usable)
        };
        match next.and_then(|p| self.by_peer.get_mut(&p)) {
            Some(q) => q.push_back(job),
            None => self.undeliverable.push(job),
        }
    }

    fn pick(&mut self, peer: &str) -> Option<Job> {
        let now = Instant::now();
        if self.peer_paused.get(peer).is_some_and(|t| *t > now) {
            return None;
        }
        // The first that is not paused (paused ones, after a `Busy`, sit
        // at the front).
        if let Some(q) = self.by_peer.get_mut(peer) {
            if let Some(i) = q.iter().position(|j| j.ready(now)) {
                return q.remove(i);
            }
        }
        // Take from the back (the oldest) of the others' queues.
        for (other, q) in self.by_peer.iter_mut() {
            if other == peer {
                continue;
            }
            let found = q
                .iter()
                .rev()
                .take(256)
                .position(|j| j.may_serve(peer) && j.ready(now));
            if let Some(k) = found {
                let i = q.len() - 1 - k;
                return q.remove(i);
            }
        }
        None
    }
}

/// Work for the peers' workers.
#[derive(Debug)]
pub struct JobQueue {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

impl JobQueue {
    /// Queues `jobs` (in order) at their first holder among `peers` (the
    /// connected ones).
    pub fn new(jobs: Vec<Job>, peers: impl IntoIterator<Item = String>) -> JobQueue {
        let mut inner = Inner {
            by_peer: peers.into_iter().map(|p| (p, VecDeque::new())).collect(),
            ..Inner::default()
        };
        for j in jobs {
            inner.place(j);
        }
        JobQueue {
            inner: Mutex::new(inner),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next job for `peer`; None when nothing is or will be left for
    /// it (or `stop` is set). Call [`JobQueue::finished`] or
    /// [`JobQueue::failed`] for every job returned.
    pub async fn next(&self, peer: &str, stop: &AtomicBool) -> Option<Job> {
        loop {
            let wait = self.wake.notified();
            {
                let mut inner = self.lock();
                if stop.load(Ordering::Relaxed) || inner.cut.contains_key(peer) {
                    return None;
                }
                if let Some(j) = inner.pick(peer) {
                    inner.in_flight += 1;
                    return Some(j);
                }
                // Work in flight elsewhere may fail and come to this peer;
                // work queued that it may take may be paused after a `Busy`.
                if inner.in_flight == 0 && !inner.any_queued_for(peer) {
                    return None;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), wait).await;
        }
    }

    /// A job returned by `next` is done.
    pub fn finished(&self) {
        self.lock().in_flight -= 1;
        self.wake.notify_waiters();
    }

    /// A job failed at `peer`: it moves to its next holder.
    pub fn failed(&self, mut job: Job, peer: &str, why: String) {
        job.tried.push((peer.to_string(), why));
        (job.busy, job.not_before) = (0, None);
        let mut inner = self.lock();
        inner.place(job);
        inner.in_flight -= 1;
        drop(inner);
        self.wake.notify_waiters();
    }

    /// `peer` answered `Busy` for `job` (it serves as many fetches as it
    /// may): the job goes back to the front of that peer's queue, as not
    /// tried, paused (see [`busy_pause`]); another holder with nothing of
    /// its own to do may take it once the pause is over. After
    /// [`MAX_BUSY_ANSWERS`] it fails there instead, and moves to its next
    /// holder.
    pub fn busy(&self, mut job: Job, peer: &str, why: String) {
        job.busy += 1;
        if job.busy > MAX_BUSY_ANSWERS {
            let why = format!(
                "answered Busy {MAX_BUSY_ANSWERS} times in a row, about 8 minutes; the last: {why}"
            );
            return self.failed(job, peer, why);
        }
        let until = Instant::now() + busy_pause(job.busy);
        job.not_before = Some(until);
        let mut inner = self.lock();
        // The peer is paused too, so its workers do not answer each `Busy`
        // with the next request at once.
        let paused = inner.peer_paused.entry(peer.to_string()).or_insert(until);
        *paused = (*paused).max(until);
        if inner.usable(peer) {
            if let Some(q) = inner.by_peer.get_mut(peer) {
                q.push_front(job);
            }
        } else {
            (job.busy, job.not_before) = (0, None);
            inner.place(job);
        }
        inner.in_flight -= 1;
        drop(inner);
        self.wake.notify_waiters();
    }

    /// `peer` misbehaved: its queued work moves on, and it gets no more.
    /// True the first time.
    pub fn cut_off(&self, peer: &str, why: String) -> bool {
        let mut inner = self.lock();
        if inner.cut.contains_key(peer) {
            return false;
        }
        inner.cut.insert(peer.to_string(), why.clone());
        let queued: Vec<Job> = inner
            .by_peer
            .get_mut(peer)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        for mut j in queued {
            j.tried.push((peer.to_string(), format!("cut off ({why})")));
            (j.busy, j.not_before) = (0, None);
            inner.place(j);
        }
        drop(inner);
        self.wake.notify_waiters();
        true
    }

    /// `peer` sent one more segment damaged: how many it has in this run.
    pub fn damaged(&self, peer: &str) -> usize {
        let mut inner = self.lock();
        let n = inner.damaged.entry(peer.to_string()).or_default();
        *n += 1;
        *n
    }

    /// Whether `job`, in flight at `peer`, may leave it early: nothing is
    /// queued any more (the run's end game) and another usable holder is
    /// left for it.
    pub fn end_game_for(&self, job: &Job, peer: &str) -> bool {
        let inner = self.lock();
        inner.by_peer.values().all(VecDeque::is_empty)
            && job
                .sources
                .iter()
                .any(|s| s != peer && inner.usable(s) && job.may_serve(s))
    }

    /// Peers cut off, with why.
    pub fn cut(&self) -> BTreeMap<String, String> {
        self.lock().cut.clone()
    }

    /// Jobs no peer could deliver; with `queued`, also those still queued
    /// (every worker has ended: a job a peer kept answering `Busy` for,
    /// whose other holder's workers had ended before it moved there).
    pub fn undeliverable(&self, queued: bool) -> Vec<Job> {
        let mut inner = self.lock();
        let mut out = std::mem::take(&mut inner.undeliverable);
        if queued {
            for q in inner.by_peer.values_mut() {
                out.extend(q.drain(..));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::CameraId;
    use crate::segment::{Origin, SegmentState};
    use crate::units::Timestamp;

    fn job(i: i64, sources: &[&str]) -> Job {
        Job::new(
            SegmentMeta {
                camera: CameraId::new("cam").unwrap(),
                start: Timestamp(i),
                duration_us: 1,
                len: 1,
                blake3: blake3::hash(b""),
                state: SegmentState::Placeholder,
                origin: Origin::Local,
                notes: None,
            },
            sources.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn peers() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[tokio::test]
    async fn each_peer_takes_its_own_then_the_others_oldest() {
        let stop = AtomicBool::new(false);
        let q = JobQueue::new(
            vec![job(3, &["a", "b"]), job(2, &["a", "b"]), job(1, &["a"])],
            peers(),
        );
        let j = q.next("a", &stop).await.unwrap();
        assert_eq!(j.meta.start.0, 3);
        // b has nothing of its own: it takes a's oldest that it holds.
        let j = q.next("b", &stop).await.unwrap();
        assert_eq!(j.meta.start.0, 2);
        q.finished();
        q.finished();
        // Only a holds 1: b is done.
        assert!(q.next("b", &stop).await.is_none());
    }

    #[tokio::test]
    async fn a_failed_job_moves_to_its_next_holder_and_a_cut_peer_hands_on() {
        let stop = AtomicBool::new(false);
        let q = JobQueue::new(vec![job(2, &["a", "b"]), job(1, &["a"])], peers());
        let j = q.next("a", &stop).await.unwrap();
        q.failed(j, "a", "bad bytes".into());
        assert!(q.cut_off("a", "bad bytes".into()));
        assert!(!q.cut_off("a", "again".into()));
        assert!(q.next("a", &stop).await.is_none());
        let j = q.next("b", &stop).await.unwrap();
        assert_eq!(j.meta.start.0, 2);
        q.finished();
        assert!(q.next("b", &stop).await.is_none());
        let lost = q.undeliverable(false);
        assert_eq!(lost.len(), 1);
        assert!(lost[0].reason().contains("cut off"), "{}", lost[0].reason());
    }

    #[tokio::test]
    async fn a_busy_job_is_asked_again_of_the_same_peer_then_fails_there() {
        let stop = AtomicBool::new(false);
        let q = JobQueue::new(vec![job(2, &["a", "b"]), job(1, &["a", "b"])], peers());
        // (The pauses are the queue's business; skipped here.)
        let unpause = |q: &JobQueue| {
            let mut inner = q.lock();
            inner.peer_paused.clear();
            for j in inner.by_peer.values_mut().flatten() {
                j.not_before = None;
            }
        };
        // The pauses made long, so that no slow moment of this test ends
        // them.
        let hold = |q: &JobQueue| {
            let later = Instant::now() + Duration::from_secs(3600);
            let mut inner = q.lock();
            inner.peer_paused.insert("a".into(), later);
            for j in inner.by_peer.values_mut().flatten() {
                if j.not_before.is_some() {
                    j.not_before = Some(later);
                }
            }
        };
        let j = q.next("a", &stop).await.unwrap();
        assert_eq!(j.meta.start.0, 2);
        q.busy(j, "a", "busy".into());
        hold(&q);
        // a is paused; b, whose queue is empty, waits for what it also holds.
        assert!(q.lock().pick("a").is_none());
        assert!(q.lock().any_queued_for("b"));
        q.lock().peer_paused.clear();
        // Job 2 itself is paused: a's next job is the other one.
        let j1 = q.next("a", &stop).await.unwrap();
        assert_eq!(j1.meta.start.0, 1);
        q.finished();
        unpause(&q);
        let mut j = q.next("a", &stop).await.unwrap();
        assert_eq!((j.meta.start.0, j.tried.len(), j.busy), (2, 0, 1));
        for _ in 0..MAX_BUSY_ANSWERS - 1 {
            q.busy(j, "a", "busy".into());
            unpause(&q);
            j = q.next("a", &stop).await.unwrap();
            assert_eq!(j.meta.start.0, 2);
        }
        // One answer too many: it fails at a and moves to b, its count of
        // busy answers starting over there.
        q.busy(j, "a", "busy".into());
        let j = q.next("b", &stop).await.unwrap();
        assert_eq!((j.meta.start.0, j.busy), (2, 0));
        assert!(j.tried[0].1.contains("Busy 240 times"), "{:?}", j.tried);
    }

    #[test]
    fn jobs_left_queued_are_reported_unless_the_run_was_stopped() {
        let q = JobQueue::new(vec![job(2, &["a"]), job(1, &["b"])], peers());
        assert_eq!(q.undeliverable(false).len(), 0);
        assert_eq!(q.undeliverable(true).len(), 2);
    }

    #[test]
    fn the_pause_after_busy_doubles_up_to_its_cap() {
        assert_eq!(busy_pause(1), BUSY_PAUSE);
        assert_eq!(busy_pause(2), BUSY_PAUSE * 2);
        assert_eq!(busy_pause(5), BUSY_PAUSE * 16);
        assert_eq!(busy_pause(6), BUSY_PAUSE_MAX);
        assert_eq!(busy_pause(u32::MAX), BUSY_PAUSE_MAX);
    }

    #[tokio::test]
    async fn the_end_game_starts_when_nothing_is_queued_and_another_holder_is_left() {
        let stop = AtomicBool::new(false);
        let q = JobQueue::new(vec![job(2, &["a", "b"]), job(1, &["a"])], peers());
        let j2 = q.next("a", &stop).await.unwrap();
        // Job 1 is still queued: no end game yet.
        assert!(!q.end_game_for(&j2, "a"));
        let j1 = q.next("a", &stop).await.unwrap();
        assert!(q.end_game_for(&j2, "a"), "b also holds it");
        assert!(!q.end_game_for(&j1, "a"), "only a holds it");
        q.cut_off("b", "lied".into());
        assert!(!q.end_game_for(&j2, "a"), "b is cut off");
    }
}
