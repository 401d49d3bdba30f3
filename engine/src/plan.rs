//! The gap planner: what the peers hold minus what we hold, clipped to our
//! retention, as a list of source segments to fetch.
//!
//! Pure: it takes coverage already read (from local stores, or from peers
//! over the network) and returns a plan. Where two peers hold the same
//! segment (same camera, start, length and BLAKE3) one is chosen, spreading
//! bytes across peers, and the others are kept as fallbacks.
//!
//! Two ways to find a gap, after the recorder ([`crate::store::traits::Matching`]):
//! - **identical** (the native store): two servers cut the same segments
//!   and hold the same bytes; a gap is a peer's segment we lack.
//! - **by time** (real recorders): each cuts its own segments and their
//!   bytes differ. A gap is time a peer recorded and we did not, less the
//!   seams shorter than a tolerance; it is filled with the fewest peer
//!   segments that cover it ([`Planner::add_camera_by_time`]), each fetched
//!   whole and installed at its own start.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::camera::CameraId;
use crate::config::Config;
use crate::interval::IntervalSet;
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::store::{Store, StoreError};
use crate::units::Timestamp;

/// One camera's segments as one server holds them.
pub type Holdings = BTreeMap<CameraId, Vec<SegmentMeta>>;

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub now: Timestamp,
    /// Local retention: nothing that starts before `now - retention` is planned.
    pub retention_us: u64,
    /// Only plan within `[from, to)` where given.
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

impl PlanOptions {
    /// The window that may be planned: retention and the requested bounds.
    pub fn window(&self) -> (Timestamp, Timestamp) {
        let cutoff = self
            .now
            .add_micros(-(self.retention_us.min(i64::MAX as u64) as i64));
        let from = self.from.map_or(cutoff, |f| f.max(cutoff));
        let to = self.to.unwrap_or(crate::units::MAX_TIME);
        (from, to)
    }
}

/// A source segment to fetch, from `peer`, or any of `fallback` if that fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSegment {
    pub source: SegmentMeta,
    pub peer: String,
    pub fallback: Vec<String>,
}

/// A run of missing time on one camera and the segments that fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub camera: CameraId,
    pub from: Timestamp,
    pub to: Timestamp,
    pub segments: Vec<PlannedSegment>,
}

impl Gap {
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.source.len).sum()
    }
}

/// Two peers hold different bytes for the same segment path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub camera: CameraId,
    pub start: String,
    pub chosen: String,
    pub other: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Newest gaps first: when not everything fits, they are filled first.
    pub gaps: Vec<Gap>,
    pub conflicts: Vec<Conflict>,
}

impl Plan {
    pub fn segments(&self) -> u64 {
        self.gaps.iter().map(|g| g.segments.len() as u64).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.gaps.iter().map(Gap::bytes).sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = &PlannedSegment> {
        self.gaps.iter().flat_map(|g| g.segments.iter())
    }
}

/// A segment to fetch and every peer that holds exactly its bytes.
type Candidate = (SegmentMeta, Vec<String>);

/// Plans camera by camera, keeping only what it chooses, so memory follows
/// the size of the plan, not the size of the stores.
#[derive(Debug)]
pub struct Planner {
    opts: PlanOptions,
    chosen: Vec<(CameraId, Vec<Candidate>)>,
    conflicts: Vec<Conflict>,
}

impl Planner {
    pub fn new(opts: PlanOptions) -> Self {
        Planner {
            opts,
            chosen: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    /// Plans one camera. `local` counts whatever we hold in any state
    /// (complete, placeholder, partial): a placeholder is already being
    /// filled and is not a gap. Only complete peer segments are sources.
    pub fn add_camera(
        &mut self,
        camera: &CameraId,
        local: &[SegmentMeta],
        peers: &[(&str, &[SegmentMeta])],
    ) {
        let (from, to) = self.opts.window();
        let mut covered = IntervalSet::from_intervals(local.iter().map(SegmentMeta::interval));
        let taken: std::collections::HashSet<i64> = local.iter().map(|s| s.start.0).collect();

        // Candidates by start: the first peer's bytes, and every peer holding
        // exactly those bytes.
        let mut by_start: BTreeMap<i64, Candidate> = BTreeMap::new();
        for (peer, segs) in peers {
            for s in segs.iter() {
                if s.state != SegmentState::Complete
                    || s.start < from
                    || s.start >= to
                    || taken.contains(&s.start.0)
                    || covered.covered_len(s.start.0, s.end().0) == s.duration_us
                {
                    continue;
                }
                match by_start.get_mut(&s.start.0) {
                    None => {
                        by_start.insert(s.start.0, (s.clone(), vec![peer.to_string()]));
                    }
                    Some((m, holders)) if same_bytes(m, s) => {
                        if !holders.iter().any(|h| h == peer) {
                            holders.push(peer.to_string());
                        }
                    }
                    Some((m, holders)) => self.conflicts.push(Conflict {
                        camera: camera.clone(),
                        start: m.start.to_string(),
                        chosen: holders[0].clone(),
                        other: peer.to_string(),
                    }),
                }
            }
        }
        // Greedy cover in time order: keep a segment only if it brings time
        // we do not hold yet (peers with differently cut segments overlap).
        let mut keep = Vec::new();
        for (_, (m, holders)) in by_start {
            let (s, e) = m.interval();
            if covered.covered_len(s, e) < (e - s) as u64 {
                covered = covered.union(&IntervalSet::single(s, e));
                keep.push((m, holders));
            }
        }
        if !keep.is_empty() {
            self.chosen.push((camera.clone(), keep));
        }
    }

    /// Plans one camera by time: `local` is what we hold (any state), each
    /// peer's segments are cut where that peer cut them. Holes in our time
    /// shorter than `seam_us` are not gaps. Each gap is covered greedily:
    /// from its start, the peer segment that reaches furthest, and so on.
    /// A peer segment starting where we hold a segment is never planned
    /// (its name would be taken).
    ///
    /// `recording_since`: the start of the segment the local recorder may
    /// still be writing; everything from there on counts as held. A peer
    /// segment that ends in the future (a clock ahead, or a lie) is never
    /// planned.
    pub fn add_camera_by_time(
        &mut self,
        camera: &CameraId,
        local: &[SegmentMeta],
        peers: &[(&str, &[SegmentMeta])],
        seam_us: u64,
        recording_since: Option<Timestamp>,
    ) {
        let (from, to) = self.opts.window();
        let now = self.opts.now;
        let held = IntervalSet::from_intervals(
            local
                .iter()
                .map(SegmentMeta::interval)
                .chain(recording_since.map(|t| (t.0, crate::units::MAX_TIME.0))),
        );
        let taken: std::collections::HashSet<i64> = local.iter().map(|s| s.start.0).collect();
        let mut candidates: Vec<(&SegmentMeta, &str)> = peers
            .iter()
            .flat_map(|(p, segs)| segs.iter().map(move |s| (s, *p)))
            .filter(|(s, _)| {
                s.state == SegmentState::Complete
                    && s.start >= from
                    && s.start < to
                    && s.duration_us > 0
                    && s.end() <= now
                    && !taken.contains(&s.start.0)
            })
            .collect();
        candidates.sort_by_key(|(s, _)| (s.start, std::cmp::Reverse(s.end())));
        let recorded = IntervalSet::from_intervals(candidates.iter().map(|(s, _)| s.interval()));
        let gaps: Vec<(i64, i64)> = recorded
            .difference(&held)
            .runs()
            .filter(|r| (r.end - r.start) as u64 >= seam_us.max(1))
            .map(|r| (r.start, r.end))
            .collect();
        let mut keep: Vec<Candidate> = Vec::new();
        for (a, b) in gaps {
            let mut point = a;
            while b - point >= seam_us.max(1) as i64 {
                // The segment that covers `point` and reaches furthest; if
                // none does, the next one to start.
                let best = candidates
                    .iter()
                    .filter(|(s, _)| s.start.0 <= point && s.end().0 > point)
                    .max_by_key(|(s, _)| s.end())
                    .or_else(|| {
                        candidates
                            .iter()
                            .find(|(s, _)| s.start.0 > point && s.start.0 < b)
                    });
                let Some((s, peer)) = best else { break };
                if keep.iter().any(|(k, _)| k.start == s.start) {
                    // Chosen for an earlier gap already: it covers this far.
                    point = point.max(s.end().0);
                    continue;
                }
                let holders: Vec<String> = candidates
                    .iter()
                    .filter(|(o, p)| o.start == s.start && (p == peer || same_bytes(o, s)))
                    .map(|(_, p)| p.to_string())
                    .fold(Vec::new(), |mut v, p| {
                        if !v.contains(&p) {
                            v.push(p);
                        }
                        v
                    });
                // The chosen peer first.
                let mut holders = holders;
                if let Some(i) = holders.iter().position(|p| p == peer) {
                    holders.swap(0, i);
                }
                point = s.end().0;
                keep.push(((*s).clone(), holders));
            }
        }
        keep.sort_by_key(|(m, _)| m.start);
        keep.dedup_by_key(|(m, _)| m.start);
        if !keep.is_empty() {
            self.chosen.push((camera.clone(), keep));
        }
    }

    /// Assigns sources and groups the segments into gaps, newest first.
    pub fn finish(self) -> Plan {
        let Planner {
            chosen, conflicts, ..
        } = self;
        // Spread the bytes: newest first, each segment to the holder with the
        // fewest bytes assigned so far; the others become fallbacks in order.
        let mut order: Vec<(usize, usize)> = chosen
            .iter()
            .enumerate()
            .flat_map(|(c, (_, v))| (0..v.len()).map(move |i| (c, i)))
            .collect();
        order.sort_by_key(|&(c, i)| std::cmp::Reverse((chosen[c].1[i].0.start, c)));
        let mut load: HashMap<String, u64> = HashMap::new();
        let mut assigned: Vec<Vec<Option<PlannedSegment>>> =
            chosen.iter().map(|(_, v)| vec![None; v.len()]).collect();
        for (c, i) in order {
            let (m, holders) = &chosen[c].1[i];
            let best = holders
                .iter()
                .enumerate()
                .min_by_key(|(k, p)| (load.get(*p).copied().unwrap_or(0), *k))
                .map(|(k, _)| k)
                .unwrap_or(0);
            let peer = holders[best].clone();
            *load.entry(peer.clone()).or_default() += m.len;
            let fallback = holders
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != best)
                .map(|(_, p)| p.clone())
                .collect();
            assigned[c][i] = Some(PlannedSegment {
                source: m.clone(),
                peer,
                fallback,
            });
        }

        let mut out = Plan {
            gaps: Vec::new(),
            conflicts,
        };
        for ((camera, _), segs) in chosen.iter().zip(assigned) {
            let mut gap: Option<Gap> = None;
            for p in segs.into_iter().flatten() {
                match &mut gap {
                    Some(g) if p.source.start <= g.to => {
                        g.to = g.to.max(p.source.end());
                        g.segments.push(p);
                    }
                    _ => {
                        out.gaps.extend(gap.take());
                        gap = Some(Gap {
                            camera: camera.clone(),
                            from: p.source.start,
                            to: p.source.end(),
                            segments: vec![p],
                        });
                    }
                }
            }
            out.gaps.extend(gap);
        }
        out.gaps
            .sort_by(|a, b| b.to.cmp(&a.to).then_with(|| a.camera.cmp(&b.camera)));
        out
    }
}

/// Plans every camera any peer holds, from coverage already in memory.
pub fn plan(local: &Holdings, peers: &[(String, Holdings)], opts: &PlanOptions) -> Plan {
    let mut cameras: Vec<&CameraId> = peers.iter().flat_map(|(_, h)| h.keys()).collect();
    cameras.sort();
    cameras.dedup();
    let mut planner = Planner::new(opts.clone());
    for camera in cameras {
        let mine = local.get(camera).map(Vec::as_slice).unwrap_or_default();
        let theirs: Vec<(&str, &[SegmentMeta])> = peers
            .iter()
            .filter_map(|(p, h)| h.get(camera).map(|v| (p.as_str(), v.as_slice())))
            .collect();
        planner.add_camera(camera, mine, &theirs);
    }
    planner.finish()
}

/// Plans from stores on this machine, reading one camera at a time.
pub fn plan_stores(
    local: &Store,
    peers: &[(String, Store)],
    cameras: Option<&[CameraId]>,
    opts: &PlanOptions,
) -> Result<Plan, StoreError> {
    let (from, to) = opts.window();
    let list = match cameras {
        Some(c) => c.to_vec(),
        None => {
            let mut all = Vec::new();
            for (_, s) in peers {
                all.extend(s.cameras()?);
            }
            all.sort();
            all.dedup();
            all
        }
    };
    let mut planner = Planner::new(opts.clone());
    for camera in &list {
        let mine = local.segments(camera, from, to)?;
        let mut theirs = Vec::with_capacity(peers.len());
        for (name, s) in peers {
            theirs.push((name.as_str(), s.segments(camera, from, to)?));
        }
        let views: Vec<(&str, &[SegmentMeta])> =
            theirs.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        planner.add_camera(camera, &mine, &views);
    }
    Ok(planner.finish())
}

/// Whether two segments are known to hold the same bytes: a hash not yet
/// known proves nothing.
fn same_bytes(a: &SegmentMeta, b: &SegmentMeta) -> bool {
    a.len == b.len
        && a.blake3 == b.blake3
        && a.blake3 != crate::store::traits::UNKNOWN_HASH
        && a.duration_us == b.duration_us
}

#[derive(Serialize)]
struct PlannedJson<'a> {
    #[serde(flatten)]
    segment: crate::segment::SegmentJson<'a>,
    peer: &'a str,
    fallback: &'a [String],
}

#[derive(Serialize)]
struct GapJson<'a> {
    camera: &'a CameraId,
    from: String,
    to: String,
    segments: Vec<PlannedJson<'a>>,
    bytes: u64,
}

#[derive(Serialize)]
struct PlanJson<'a> {
    segments: u64,
    bytes: u64,
    gaps: Vec<GapJson<'a>>,
    conflicts: &'a [Conflict],
}

impl Plan {
    /// The `--json` form: totals beside the gap list.
    pub fn to_json(&self) -> serde_json::Value {
        let j = PlanJson {
            segments: self.segments(),
            bytes: self.bytes(),
            gaps: self
                .gaps
                .iter()
                .map(|g| GapJson {
                    camera: &g.camera,
                    from: g.from.to_string(),
                    to: g.to.to_string(),
                    bytes: g.bytes(),
                    segments: g
                        .segments
                        .iter()
                        .map(|p| PlannedJson {
                            segment: (&p.source).into(),
                            peer: &p.peer,
                            fallback: &p.fallback,
                        })
                        .collect(),
                })
                .collect(),
            conflicts: &self.conflicts,
        };
        serde_json::to_value(j).unwrap_or_default()
    }
}

/// A peer's coverage as segments per camera, sorted by start. Camera ids
/// from the wire are checked before they go near a path, and only cameras
/// this server pairs with that peer are kept.
pub fn peer_segments(
    config: &Config,
    peer: &str,
    entries: Vec<hafill_protocol::CoverageEntry>,
) -> BTreeMap<CameraId, Vec<SegmentMeta>> {
    let mut by_cam: BTreeMap<CameraId, Vec<SegmentMeta>> = BTreeMap::new();
    // Each camera's name is checked (valid, paired with this peer) once:
    // coverage holds hundreds of thousands of entries for a few hundred
    // cameras.
    let mut kept: HashMap<&str, Option<CameraId>> = HashMap::new();
    let mut implausible = 0u64;
    for e in &entries {
        let camera = kept.entry(e.camera.as_str()).or_insert_with(|| {
            let Ok(camera) = CameraId::new(e.camera.clone()) else {
                tracing::warn!(%peer, "ignored coverage of an invalid camera id {:?}", e.camera);
                return None;
            };
            if config.paired_with(&camera, peer) {
                return Some(camera);
            }
            let by_servers = config
                .servers_of(&camera)
                .is_some_and(|s| s.contains(&config.name) && s.iter().any(|x| x == peer));
            if by_servers && config.name_taken(&camera) {
                let local = config.local_name(&camera);
                tracing::warn!(%peer, "camera {camera} not backfilled: its name here, {local}, is the camera {}'s (see its [[camera]] names)", config.id_of_local(&local));
            }
            None
        });
        let Some(camera) = camera else { continue };
        // No camera writes more than a gigabit a second: a larger length is
        // a lie or a fault, and would crowd out every gap placed after it.
        // Nor does any recorder cut segments shorter than a quarter second,
        // or empty ones: a peer advertising millions of those would have a
        // file made for each.
        if e.duration_us > crate::store::MAX_SEGMENT_DURATION_US
            || e.duration_us < MIN_SEGMENT_US
            || e.len == 0
            || e.len > e.duration_us.saturating_mul(MAX_BYTES_PER_US) + (1 << 20)
        {
            implausible += 1;
            continue;
        }
        let segs = match by_cam.get_mut(camera) {
            Some(v) => v,
            None => by_cam.entry(camera.clone()).or_default(),
        };
        segs.push(SegmentMeta {
            camera: camera.clone(),
            start: Timestamp(e.start_us),
            duration_us: e.duration_us,
            len: e.len,
            blake3: blake3::Hash::from_bytes(e.blake3),
            state: SegmentState::Complete,
            origin: Origin::Peer(peer.to_string()),
            notes: (!e.notes.is_empty()).then(|| std::sync::Arc::from(e.notes.as_str())),
        });
    }
    if implausible > 0 {
        tracing::warn!(%peer, segments = implausible, "ignored coverage entries that are empty, shorter than 250 ms, longer than 6 h or faster than 1 Gbit/s");
    }
    let mut overlapping = 0u64;
    for segs in by_cam.values_mut() {
        segs.sort_by_key(|s| s.start);
        // At most one segment a camera per 250 ms of start times, whatever
        // durations the peer claims: a peer cannot have a file made per
        // microsecond, and one bad duration hides nothing after it.
        let mut next_from = i64::MIN;
        segs.retain(|s| {
            let keep = s.start.0 >= next_from;
            if keep {
                next_from = s.start.0.saturating_add(MIN_SEGMENT_US as i64);
            } else {
                overlapping += 1;
            }
            keep
        });
    }
    if overlapping > 0 {
        tracing::warn!(%peer, segments = overlapping, "ignored coverage entries that start within 250 ms of the camera's previous one");
    }
    by_cam
}

/// The shortest segment believed: 250 ms.
const MIN_SEGMENT_US: u64 = 250_000;

/// Bytes per microsecond of the fastest camera believed: 1 Gbit/s.
const MAX_BYTES_PER_US: u64 = 125;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Origin;

    const MIN: i64 = 60_000_000;

    #[test]
    fn coverage_that_would_make_a_file_per_microsecond_is_ignored() {
        let text = format!(
            "[server]\nname = \"rs02\"\nlisten = \"127.0.0.1:7402\"\nstore = \"store\"\nkey = \"k.pem\"\ncert = \"c.pem\"\n\n\
             [[peer]]\nname = \"rs01\"\naddr = \"127.0.0.1:7401\"\nid = \"{}\"\n\n\
             [[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n",
            "ab".repeat(32)
        );
        let config = Config::parse(&text, std::path::Path::new("/etc/hafill/rs02.toml")).unwrap();
        let entry = |start_us: i64, duration_us: u64, len: u64| hafill_protocol::CoverageEntry {
            camera: "cam-0001".into(),
            start_us,
            duration_us,
            len,
            blake3: [7; 32],
            notes: String::new(),
        };
        let mut entries = Vec::new();
        // A hostile peer: 1-µs segments of 1 byte, 0-byte segments, and
        // 60-second segments starting a microsecond apart.
        for i in 0..1_000 {
            entries.push(entry(i, 1, 1));
            entries.push(entry(MIN + i, 10_000_000, 0));
            entries.push(entry(2 * MIN + i, MIN as u64, 1 << 20));
        }
        // Honest segments, with a cut that overlaps the next by 400 ms.
        entries.push(entry(10 * MIN, MIN as u64 + 400_000, 1 << 20));
        entries.push(entry(11 * MIN, MIN as u64, 1 << 20));
        let kept = peer_segments(&config, "rs01", entries);
        let starts: Vec<i64> = kept[&CameraId::new("cam-0001").unwrap()]
            .iter()
            .map(|s| s.start.0)
            .collect();
        assert_eq!(starts, vec![2 * MIN, 10 * MIN, 11 * MIN]);
    }

    fn seg(cam: &str, start_min: i64, len: u64, tag: u8) -> SegmentMeta {
        SegmentMeta {
            camera: CameraId::new(cam).unwrap(),
            start: Timestamp(start_min * MIN),
            duration_us: MIN as u64,
            len,
            blake3: blake3::hash(&[tag, start_min as u8]),
            state: SegmentState::Complete,
            origin: Origin::Local,
            notes: None,
        }
    }

    fn holdings(segs: Vec<SegmentMeta>) -> Holdings {
        let mut h = Holdings::new();
        for s in segs {
            h.entry(s.camera.clone()).or_default().push(s);
        }
        h
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            now: Timestamp(1000 * MIN),
            retention_us: 1000 * MIN as u64,
            from: None,
            to: None,
        }
    }

    #[test]
    fn plans_exactly_what_is_missing() {
        let peer: Vec<_> = (0..10).map(|m| seg("a", m, 100, 0)).collect();
        let local: Vec<_> = (0..10)
            .filter(|m| !(3..6).contains(m))
            .map(|m| seg("a", m, 100, 0))
            .collect();
        let p = plan(&holdings(local), &[("p1".into(), holdings(peer))], &opts());
        assert_eq!(p.gaps.len(), 1);
        assert_eq!(p.segments(), 3);
        assert_eq!(p.bytes(), 300);
        assert_eq!(p.gaps[0].from, Timestamp(3 * MIN));
        assert_eq!(p.gaps[0].to, Timestamp(6 * MIN));
    }

    #[test]
    fn retention_clips_old_segments() {
        let peer: Vec<_> = (0..10).map(|m| seg("a", m, 100, 0)).collect();
        let mut o = opts();
        o.now = Timestamp(10 * MIN);
        o.retention_us = 4 * MIN as u64;
        let p = plan(&Holdings::new(), &[("p1".into(), holdings(peer))], &o);
        let starts: Vec<_> = p.iter().map(|s| s.source.start.0 / MIN).collect();
        assert_eq!(starts.len(), 4);
        assert!(starts.iter().all(|s| *s >= 6));
    }

    #[test]
    fn placeholders_and_partials_are_not_gaps_but_peer_placeholders_are_not_sources() {
        let peer: Vec<_> = (0..4).map(|m| seg("a", m, 100, 0)).collect();
        let mut ph = seg("a", 1, 100, 0);
        ph.state = SegmentState::Placeholder;
        let mut peer2 = vec![seg("a", 5, 100, 0)];
        peer2[0].state = SegmentState::Placeholder;
        let p = plan(
            &holdings(vec![ph]),
            &[
                ("p1".into(), holdings(peer)),
                ("p2".into(), holdings(peer2)),
            ],
            &opts(),
        );
        let starts: Vec<_> = p.iter().map(|s| s.source.start.0 / MIN).collect();
        assert_eq!(starts.len(), 3);
        assert!(!starts.contains(&1) && !starts.contains(&5));
    }

    #[test]
    fn shared_segments_are_planned_once_with_a_fallback_and_spread() {
        let both: Vec<_> = (0..10).map(|m| seg("a", m, 100, 0)).collect();
        let p = plan(
            &Holdings::new(),
            &[
                ("p1".into(), holdings(both.clone())),
                ("p2".into(), holdings(both)),
            ],
            &opts(),
        );
        assert_eq!(p.segments(), 10);
        let on_p1 = p.iter().filter(|s| s.peer == "p1").count();
        assert_eq!(on_p1, 5);
        for s in p.iter() {
            assert_eq!(s.fallback.len(), 1);
            assert_ne!(s.fallback[0], s.peer);
        }
    }

    #[test]
    fn peers_holding_parts_are_combined() {
        let p1: Vec<_> = (0..5).map(|m| seg("a", m, 100, 0)).collect();
        let p2: Vec<_> = (5..10).map(|m| seg("a", m, 100, 0)).collect();
        let p = plan(
            &Holdings::new(),
            &[("p1".into(), holdings(p1)), ("p2".into(), holdings(p2))],
            &opts(),
        );
        assert_eq!(p.segments(), 10);
        assert_eq!(p.gaps.len(), 1);
        assert!(p.iter().all(|s| s.fallback.is_empty()));
    }

    #[test]
    fn different_bytes_for_one_segment_are_a_conflict() {
        let p = plan(
            &Holdings::new(),
            &[
                ("p1".into(), holdings(vec![seg("a", 0, 100, 1)])),
                ("p2".into(), holdings(vec![seg("a", 0, 100, 2)])),
            ],
            &opts(),
        );
        assert_eq!(p.segments(), 1);
        assert_eq!(p.iter().next().unwrap().peer, "p1");
        assert_eq!(p.conflicts.len(), 1);
    }

    #[test]
    fn newest_gaps_come_first() {
        let peer: Vec<_> = (0..10).map(|m| seg("a", m, 100, 0)).collect();
        let local: Vec<_> = [0, 1, 4, 5, 8, 9]
            .iter()
            .map(|&m| seg("a", m, 100, 0))
            .collect();
        let p = plan(&holdings(local), &[("p1".into(), holdings(peer))], &opts());
        let froms: Vec<_> = p.gaps.iter().map(|g| g.from.0 / MIN).collect();
        assert_eq!(froms, vec![6, 2]);
    }

    const SEC: i64 = 1_000_000;

    /// A recorder's own segment of `cam`: from `a` to `b` seconds, its bytes
    /// not hashed yet.
    fn cut(cam: &str, a: i64, b: i64) -> SegmentMeta {
        SegmentMeta {
            camera: CameraId::new(cam).unwrap(),
            start: Timestamp(a * SEC),
            duration_us: ((b - a) * SEC) as u64,
            len: (b - a) as u64 * 1000,
            blake3: crate::store::traits::UNKNOWN_HASH,
            state: SegmentState::Complete,
            origin: Origin::Local,
            notes: None,
        }
    }

    fn by_time(
        local: &[SegmentMeta],
        peers: &[(&str, Vec<SegmentMeta>)],
        seam_s: i64,
    ) -> Vec<(i64, String)> {
        let mut p = Planner::new(PlanOptions {
            now: Timestamp(100_000 * SEC),
            retention_us: 100_000 * SEC as u64,
            from: None,
            to: None,
        });
        let views: Vec<(&str, &[SegmentMeta])> =
            peers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        p.add_camera_by_time(
            &CameraId::new("a").unwrap(),
            local,
            &views,
            (seam_s * SEC) as u64,
            None,
        );
        let mut out: Vec<(i64, String)> = p
            .finish()
            .iter()
            .map(|s| (s.source.start.0 / SEC, s.peer.clone()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn by_time_seams_under_the_tolerance_are_not_gaps() {
        // We recorded 0-10 and 11-20 and 30-43 (cut at other moments than
        // the peer); the peer 3-43 in 10 s pieces.
        let local = [cut("a", 0, 10), cut("a", 11, 20), cut("a", 30, 43)];
        let peer: Vec<_> = (0..5).map(|k| cut("a", k * 10 - 7, k * 10 + 3)).collect();
        // The 1 s seam at 10 is under 2 s; 20-30 is a gap, covered by the
        // peer's 13-23 and 23-33.
        assert_eq!(
            by_time(&local, &[("p", peer.clone())], 2),
            vec![(13, "p".into()), (23, "p".into())]
        );
        // With no tolerance, the seam at 10 is a gap too (the peer's 3-13).
        assert_eq!(
            by_time(&local, &[("p", peer)], 0),
            vec![(3, "p".into()), (13, "p".into()), (23, "p".into())]
        );
    }

    #[test]
    fn by_time_overlapping_peer_segments_take_the_fewest() {
        // The peer's segments overlap each other (a restart): 0-10, 5-15,
        // 10-20. A gap of 0-20 needs 0-10 and 10-20 only.
        let peer = vec![cut("a", 0, 10), cut("a", 5, 15), cut("a", 10, 20)];
        assert_eq!(
            by_time(&[], &[("p", peer)], 2),
            vec![(0, "p".into()), (10, "p".into())]
        );
        // A long segment that reaches furthest wins over short ones.
        let peer = vec![cut("a", 0, 5), cut("a", 0, 20), cut("a", 5, 10)];
        assert_eq!(by_time(&[], &[("p", peer)], 2), vec![(0, "p".into())]);
    }

    #[test]
    fn by_time_a_segment_straddling_the_gap_edge_is_fetched_whole() {
        // We lack 25-45; the peer cut at 20, 30, 40, 50.
        let local = [cut("a", 0, 25), cut("a", 45, 60)];
        let peer: Vec<_> = (0..6).map(|k| cut("a", k * 10, k * 10 + 10)).collect();
        assert_eq!(
            by_time(&local, &[("p", peer)], 2),
            vec![(20, "p".into()), (30, "p".into()), (40, "p".into())]
        );
    }

    #[test]
    fn by_time_two_peers_each_cover_half_of_a_gap() {
        let local = [cut("a", 0, 10), cut("a", 70, 80)];
        let p1 = vec![cut("a", 8, 28), cut("a", 28, 41)];
        let p2 = vec![cut("a", 39, 59), cut("a", 59, 72)];
        assert_eq!(
            by_time(&local, &[("p1", p1), ("p2", p2)], 2),
            vec![
                (8, "p1".into()),
                (28, "p1".into()),
                (39, "p2".into()),
                (59, "p2".into())
            ]
        );
    }

    #[test]
    fn by_time_never_plans_a_start_we_hold_nor_unknown_hashes_as_the_same_bytes() {
        // The peer's 10-20 starts where our 10-12 does: its name is taken.
        let local = [cut("a", 10, 12)];
        let p1 = vec![cut("a", 10, 20), cut("a", 20, 30)];
        let p2 = vec![cut("a", 20, 30)];
        let mut p = Planner::new(PlanOptions {
            now: Timestamp(100_000 * SEC),
            retention_us: 100_000 * SEC as u64,
            from: None,
            to: None,
        });
        p.add_camera_by_time(
            &CameraId::new("a").unwrap(),
            &local,
            &[("p1", &p1), ("p2", &p2)],
            2 * SEC as u64,
            None,
        );
        let plan = p.finish();
        let got: Vec<_> = plan
            .iter()
            .map(|s| (s.source.start.0 / SEC, s.fallback.clone()))
            .collect();
        // 20-30 from one peer, no fallback: the other's bytes are not known
        // to be the same.
        assert_eq!(got, vec![(20, Vec::<String>::new())]);
    }

    #[test]
    fn by_time_a_segment_chosen_for_one_gap_does_not_end_the_next() {
        // We hold 40-50; the peer's 0-60 covers both gaps' edges, and its
        // 60-120 the rest of the second gap.
        let local = [cut("a", 40, 50)];
        let peer = vec![cut("a", 0, 60), cut("a", 60, 120)];
        assert_eq!(
            by_time(&local, &[("p", peer)], 2),
            vec![(0, "p".into()), (60, "p".into())]
        );
    }

    #[test]
    fn by_time_what_is_being_recorded_and_the_future_are_never_gaps() {
        let mut p = Planner::new(PlanOptions {
            now: Timestamp(1000 * SEC),
            retention_us: 100_000 * SEC as u64,
            from: None,
            to: None,
        });
        // We recorded up to 900 and are writing a segment since 900; the
        // peer cut at 890 and 950, and has one "from the future".
        let local = [cut("a", 800, 900)];
        let peer = vec![cut("a", 890, 950), cut("a", 950, 990), cut("a", 990, 1060)];
        p.add_camera_by_time(
            &CameraId::new("a").unwrap(),
            &local,
            &[("p", &peer)],
            2 * SEC as u64,
            Some(Timestamp(900 * SEC)),
        );
        assert_eq!(p.finish().segments(), 0);
    }
}
