//! Sets of half-open time intervals `[start, end)` in microseconds: the
//! arithmetic of coverage and gaps.

use serde::Serialize;

/// Sorted, disjoint, non-adjacent, non-empty half-open intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalSet {
    runs: Vec<(i64, i64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    pub start: i64,
    pub end: i64,
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from any intervals, in any order, overlapping or not;
    /// empty and inverted intervals are dropped.
    pub fn from_intervals(iter: impl IntoIterator<Item = (i64, i64)>) -> Self {
        let mut v: Vec<(i64, i64)> = iter.into_iter().filter(|(s, e)| s < e).collect();
        v.sort_unstable();
        let mut runs: Vec<(i64, i64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match runs.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => runs.push((s, e)),
            }
        }
        Self { runs }
    }

    pub fn single(start: i64, end: i64) -> Self {
        Self::from_intervals([(start, end)])
    }

    pub fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.runs.iter().map(|&(start, end)| Run { start, end })
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Total length covered.
    pub fn measure(&self) -> u64 {
        self.runs.iter().map(|(s, e)| (e - s) as u64).sum()
    }

    pub fn contains(&self, t: i64) -> bool {
        let i = self.runs.partition_point(|&(_, e)| e <= t);
        self.runs.get(i).is_some_and(|&(s, _)| s <= t)
    }

    pub fn union(&self, other: &Self) -> Self {
        Self::from_intervals(self.runs.iter().chain(other.runs.iter()).copied())
    }

    pub fn difference(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        let mut j = 0;
        for &(s, e) in &self.runs {
            let mut cur = s;
            while j < other.runs.len() && other.runs[j].1 <= cur {
                j += 1;
            }
            let mut k = j;
            while cur < e && k < other.runs.len() && other.runs[k].0 < e {
                let (os, oe) = other.runs[k];
                if os > cur {
                    out.push((cur, os));
                }
                cur = cur.max(oe);
                k += 1;
            }
            if cur < e {
                out.push((cur, e));
            }
        }
        Self { runs: out }
    }

    pub fn intersection(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.runs.len() && j < other.runs.len() {
            let (a0, a1) = self.runs[i];
            let (b0, b1) = other.runs[j];
            let (s, e) = (a0.max(b0), a1.min(b1));
            if s < e {
                out.push((s, e));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Self { runs: out }
    }

    /// Keeps only what lies within `[from, to)`.
    pub fn clip(&self, from: i64, to: i64) -> Self {
        self.intersection(&Self::single(from, to))
    }

    /// Length of `[start, end)` that this set covers.
    pub fn covered_len(&self, start: i64, end: i64) -> u64 {
        self.clip(start, end).measure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference model: a bitmap of unit cells over a small domain.
    const DOMAIN: i64 = 64;

    fn bits(set: &IntervalSet) -> Vec<bool> {
        (0..DOMAIN).map(|t| set.contains(t)).collect()
    }

    fn model(iv: &[(i64, i64)]) -> Vec<bool> {
        (0..DOMAIN)
            .map(|t| iv.iter().any(|&(s, e)| s <= t && t < e))
            .collect()
    }

    fn intervals() -> impl Strategy<Value = Vec<(i64, i64)>> {
        prop::collection::vec((0..DOMAIN, 0..DOMAIN), 0..8)
    }

    fn canonical(set: &IntervalSet) -> bool {
        set.runs.iter().all(|(s, e)| s < e) && set.runs.windows(2).all(|w| w[0].1 < w[1].0)
    }

    proptest! {
        #[test]
        fn from_intervals_matches_model(a in intervals()) {
            let s = IntervalSet::from_intervals(a.clone());
            prop_assert!(canonical(&s));
            prop_assert_eq!(bits(&s), model(&a));
        }

        #[test]
        fn union_is_or(a in intervals(), b in intervals()) {
            let u = IntervalSet::from_intervals(a.clone()).union(&IntervalSet::from_intervals(b.clone()));
            prop_assert!(canonical(&u));
            let (ma, mb) = (model(&a), model(&b));
            let expect: Vec<bool> = ma.iter().zip(&mb).map(|(x, y)| *x || *y).collect();
            prop_assert_eq!(bits(&u), expect);
        }

        #[test]
        fn difference_is_and_not(a in intervals(), b in intervals()) {
            let d = IntervalSet::from_intervals(a.clone()).difference(&IntervalSet::from_intervals(b.clone()));
            prop_assert!(canonical(&d));
            let (ma, mb) = (model(&a), model(&b));
            let expect: Vec<bool> = ma.iter().zip(&mb).map(|(x, y)| *x && !*y).collect();
            prop_assert_eq!(bits(&d), expect);
        }

        #[test]
        fn clip_keeps_only_the_window(a in intervals(), from in 0..DOMAIN, to in 0..DOMAIN) {
            let c = IntervalSet::from_intervals(a.clone()).clip(from, to);
            prop_assert!(canonical(&c));
            let expect: Vec<bool> = model(&a).iter().enumerate()
                .map(|(t, x)| *x && from <= t as i64 && (t as i64) < to).collect();
            prop_assert_eq!(bits(&c), expect);
        }

        #[test]
        fn measure_counts_cells(a in intervals()) {
            let s = IntervalSet::from_intervals(a.clone());
            prop_assert_eq!(s.measure() as usize, model(&a).iter().filter(|x| **x).count());
        }
    }
}
