//! Summaries: what a recorder holds of a camera in a bucket of time, in a
//! few bytes (see the protocol's "Summaries"), and what the scrub
//! remembers of its peers' summaries between rounds, so that a round where
//! nothing changed asks for no segment list at all.

use std::collections::{BTreeMap, HashMap};

pub use hafill_protocol::{Summary, SummaryEntry};

use crate::camera::CameraId;
use crate::segment::{SegmentMeta, SegmentState};
use crate::units::Timestamp;

pub const HOUR_US: u64 = 3_600_000_000;
pub const DAY_US: u64 = 24 * HOUR_US;

/// The buckets of `bucket_us` that `[from, to)` touches, as `[first, end)`
/// bucket starts.
pub fn bucket_bounds(from: Timestamp, to: Timestamp, bucket_us: u64) -> (i64, i64) {
    let b = bucket_us as i64;
    let first = from.0.div_euclid(b).saturating_mul(b);
    let end = if to.0 <= from.0 {
        first
    } else {
        (to.0 - 1).div_euclid(b).saturating_mul(b).saturating_add(b)
    };
    (first, end)
}

/// The start of the bucket of `bucket_us` that holds `t_us`.
pub fn bucket_of(t_us: i64, bucket_us: u64) -> i64 {
    let b = bucket_us as i64;
    t_us.div_euclid(b).saturating_mul(b)
}

/// Summaries of the complete segments among `segs` that start in
/// `[first, end)`, by bucket of `bucket_us`; only buckets holding one.
pub fn summarize<'a>(
    segs: impl IntoIterator<Item = &'a SegmentMeta>,
    bucket_us: u64,
    (first, end): (i64, i64),
) -> Vec<(i64, Summary)> {
    let mut out: BTreeMap<i64, Summary> = BTreeMap::new();
    for s in segs {
        if s.state != SegmentState::Complete || s.start.0 < first || s.start.0 >= end {
            continue;
        }
        out.entry(bucket_of(s.start.0, bucket_us))
            .or_default()
            .add(&Summary::of_segment(
                s.start.0,
                s.duration_us,
                s.len,
                s.blake3.as_bytes(),
            ));
    }
    out.into_iter().collect()
}

/// Adds finer summaries (hours) into buckets of `bucket_us` (a multiple
/// of theirs), keeping those that start in `[first, end)`.
pub fn regroup(
    fine: impl IntoIterator<Item = (i64, Summary)>,
    bucket_us: u64,
    (first, end): (i64, i64),
) -> Vec<(i64, Summary)> {
    let mut out: BTreeMap<i64, Summary> = BTreeMap::new();
    for (t, s) in fine {
        if t >= first && t < end {
            out.entry(bucket_of(t, bucket_us)).or_default().add(&s);
        }
    }
    out.into_iter().collect()
}

/// A bucket of one camera (its id on the wire) at one level.
pub type Bucket = (String, i64, u64);

/// What the scrub remembers of one peer: the summary of every bucket in
/// which a round found nothing to fetch. A bucket whose summary is the
/// same next round holds the same segments, and the local side is taken to
/// hold what it held then, so it is not asked for again. The local side
/// can lose segments too (a disk, an operator): a round that asks for the
/// whole window (the first, then one every `full_every`) finds those.
#[derive(Debug, Default)]
pub struct PeerMemory {
    settled: HashMap<Bucket, Summary>,
}

impl PeerMemory {
    pub fn is_empty(&self) -> bool {
        self.settled.is_empty()
    }

    pub fn len(&self) -> usize {
        self.settled.len()
    }

    /// Whether `bucket` was settled with this very summary.
    pub fn unchanged(&self, bucket: &Bucket, now: &Summary) -> bool {
        self.settled.get(bucket) == Some(now)
    }

    /// After a round that was answered `seen` (every bucket the peer
    /// summarised, at each level asked), remembers those in which nothing
    /// was planned, and forgets the rest and every bucket the peer no
    /// longer summarises at a level it was asked at over the window
    /// `asked` (per level: `[first, end)` bucket starts).
    pub fn settle(
        &mut self,
        seen: &[(Bucket, Summary)],
        asked: &[(u64, Vec<String>, i64, i64)],
        planned: &dyn Fn(&str, i64, i64) -> bool,
    ) {
        // A bucket asked again and not answered is empty at the peer now.
        self.settled.retain(|(cam, t, level), _| {
            !asked.iter().any(|(l, cams, a, b)| {
                l == level && *t >= *a && *t < *b && (cams.is_empty() || cams.contains(cam))
            })
        });
        for ((cam, t, level), s) in seen {
            if planned(cam, *t, *t + *level as i64) {
                continue;
            }
            self.settled.insert((cam.clone(), *t, *level), *s);
        }
    }

    /// Forgets the hours of `camera`'s day `day`: a day that did not
    /// change is known by its day summary alone (hours are kept only for
    /// the days that keep changing, today's).
    pub fn forget_hours(&mut self, camera: &str, day: i64) {
        for h in 0..(DAY_US / HOUR_US) as i64 {
            self.settled
                .remove(&(camera.to_string(), day + h * HOUR_US as i64, HOUR_US));
        }
    }

    /// Forgets buckets that start before `from` (out of retention).
    pub fn forget_before(&mut self, from: i64) {
        self.settled.retain(|(_, t, _), _| *t >= from);
    }
}

/// Starts of the planned segments, by camera (local name): what
/// [`PeerMemory::settle`] asks about.
#[derive(Debug, Default)]
pub struct PlannedStarts(HashMap<CameraId, Vec<i64>>);

impl PlannedStarts {
    pub fn new(planned: impl IntoIterator<Item = (CameraId, i64)>) -> Self {
        let mut m: HashMap<CameraId, Vec<i64>> = HashMap::new();
        for (c, t) in planned {
            m.entry(c).or_default().push(t);
        }
        for v in m.values_mut() {
            v.sort_unstable();
        }
        PlannedStarts(m)
    }

    /// Whether a planned segment of `camera` starts in `[from, to)`.
    pub fn any_in(&self, camera: &CameraId, from: i64, to: i64) -> bool {
        self.0.get(camera).is_some_and(|v| {
            let i = v.partition_point(|&t| t < from);
            v.get(i).is_some_and(|&t| t < to)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Origin;

    fn seg(start: i64, state: SegmentState) -> SegmentMeta {
        SegmentMeta {
            camera: CameraId::new("cam-1").unwrap(),
            start: Timestamp(start),
            duration_us: 60_000_000,
            len: 100,
            blake3: blake3::hash(&start.to_le_bytes()),
            state,
            origin: Origin::Local,
            notes: None,
        }
    }

    #[test]
    fn buckets_hold_the_complete_segments_that_start_in_them() {
        let h = HOUR_US as i64;
        let segs = vec![
            seg(h - 60_000_000, SegmentState::Complete),
            seg(h, SegmentState::Complete),
            seg(h + 60_000_000, SegmentState::Placeholder),
            seg(2 * h + 5, SegmentState::Complete),
        ];
        let bounds = bucket_bounds(Timestamp(h + 1), Timestamp(2 * h + 6), HOUR_US);
        assert_eq!(bounds, (h, 3 * h));
        let hours = summarize(&segs, HOUR_US, bounds);
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[0].0, h);
        assert_eq!(hours[0].1.count, 1, "the placeholder is not held");
        assert_eq!(hours[1].0, 2 * h);
        // Hours add up to their day.
        let day = regroup(hours.clone(), DAY_US, (0, DAY_US as i64));
        let direct = summarize(&segs[1..], DAY_US, (h, 3 * h));
        assert_eq!(day, direct);
    }

    #[test]
    fn memory_settles_only_what_was_not_planned_and_forgets_what_left() {
        let cam = "cam-1".to_string();
        let s = Summary::of_segment(0, 1, 2, &[3; 32]);
        let mut m = PeerMemory::default();
        let seen = vec![
            ((cam.clone(), 0, DAY_US), s),
            ((cam.clone(), DAY_US as i64, DAY_US), s),
        ];
        let asked = vec![(DAY_US, vec![], 0, 2 * DAY_US as i64)];
        m.settle(&seen, &asked, &|_, from, _| from == DAY_US as i64);
        assert!(m.unchanged(&(cam.clone(), 0, DAY_US), &s));
        assert!(!m.unchanged(&(cam.clone(), DAY_US as i64, DAY_US), &s));
        // Asked again, the first day is gone at the peer: forgotten.
        m.settle(&[], &asked, &|_, _, _| false);
        assert!(m.is_empty());
        // Hours of a quiet day are forgotten, others kept.
        let hours = vec![
            ((cam.clone(), HOUR_US as i64, HOUR_US), s),
            ((cam.clone(), DAY_US as i64 + HOUR_US as i64, HOUR_US), s),
        ];
        m.settle(&hours, &[], &|_, _, _| false);
        assert_eq!(m.len(), 2);
        m.forget_hours(&cam, 0);
        assert_eq!(m.len(), 1);
        assert!(m.unchanged(&(cam.clone(), DAY_US as i64 + HOUR_US as i64, HOUR_US), &s));
    }

    #[test]
    fn planned_starts_answer_by_range() {
        let c = CameraId::new("cam-1").unwrap();
        let p = PlannedStarts::new([(c.clone(), 10), (c.clone(), 30)]);
        assert!(p.any_in(&c, 0, 11));
        assert!(!p.any_in(&c, 11, 30));
        assert!(p.any_in(&c, 30, 31));
        assert!(!p.any_in(&CameraId::new("cam-2").unwrap(), 0, 100));
    }
}
