//! The daemon's scrub round: what changed at each peer since the last
//! round, found from summaries (per camera-day, then per camera-hour of
//! the days that changed), and the segment lists of the hours that changed
//! only; then planned, placed and queued like any backfill. The first
//! round, and one every `full_every`, asks for the whole window instead, so
//! segments lost on this side are found too.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafill_protocol::CoverageEntry;

use crate::backfill::{BackfillError, Prepared, Session};
use crate::camera::CameraId;
use crate::plan::PlanOptions;
use crate::store::traits::Matching;
use crate::summary::{
    bucket_bounds, Bucket, PeerMemory, PlannedStarts, Summary, SummaryEntry, DAY_US, HOUR_US,
};
use crate::transfer::client;
use crate::transfer::TransferError;
use crate::units::Timestamp;

/// What the scrub keeps between rounds.
#[derive(Debug, Default)]
pub struct ScrubMemory {
    peers: HashMap<String, PeerMemory>,
    last_full: Option<Instant>,
}

impl ScrubMemory {
    /// Whether this round must ask for the whole window.
    fn full_due(&self, every: Duration) -> bool {
        self.last_full.is_none_or(|t| t.elapsed() >= every)
    }
}

/// What one peer was asked this round, in figures for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Look {
    /// The whole window's segment list was asked for.
    pub full: bool,
    pub day_summaries: usize,
    pub changed_days: usize,
    pub hour_summaries: usize,
    pub changed_hours: usize,
    /// Coverage entries received.
    pub entries: usize,
    /// Bytes on the wire both ways, connecting included.
    pub wire_bytes: u64,
}

/// What a peer answered beyond its coverage: every summary seen, and the
/// windows asked at each level (so buckets no longer answered are
/// forgotten).
#[derive(Debug, Default)]
struct Seen {
    look: Look,
    summaries: Vec<(Bucket, Summary)>,
    asked: Vec<(u64, Vec<String>, i64, i64)>,
    /// Camera-days whose summary had not changed.
    quiet_days: Vec<(String, i64)>,
    /// How long the peer took to answer.
    took: Duration,
}

/// Camera lists for requests, each small enough for one request frame.
fn batches(cameras: Vec<String>) -> Vec<Vec<String>> {
    const MAX_BYTES: usize = 48 * 1024;
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut size = 0;
    for c in cameras {
        if !batch.is_empty() && (size + 1 + c.len() > MAX_BYTES || batch.len() >= 4096) {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += 1 + c.len();
        batch.push(c);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// The summaries of a peer's answer that can be what was asked: a camera
/// asked for (every camera: one paired with the peer), a bucket of the
/// level asked, within the window. The rest is dropped, so a hostile peer
/// can make the scrub remember nothing it did not ask about.
fn asked_for(
    answer: Vec<SummaryEntry>,
    level: u64,
    (a, b): (i64, i64),
    cameras: &[String],
    paired: &(dyn Fn(&str) -> bool + Sync),
) -> Vec<SummaryEntry> {
    answer
        .into_iter()
        .filter(|e| {
            e.bucket_us >= a
                && e.bucket_us < b
                && e.bucket_us.rem_euclid(level as i64) == 0
                && (if cameras.is_empty() {
                    paired(&e.camera)
                } else {
                    cameras.contains(&e.camera)
                })
        })
        .collect()
}

/// Asks one peer what changed in `[from, to)` (see the module's doc).
/// `paired`: whether a camera id is paired with this peer.
async fn ask_changed(
    conn: quinn::Connection,
    (from, to): (Timestamp, Timestamp),
    cameras: Vec<String>,
    memory: Option<&PeerMemory>,
    stall: Duration,
    paired: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(Vec<CoverageEntry>, Seen), TransferError> {
    let mut seen = Seen::default();
    let (a, b) = bucket_bounds(from, to, DAY_US);
    let days = client::summaries(&conn, (from.0, to.0), DAY_US, cameras.clone(), stall).await?;
    let days = asked_for(days, DAY_US, (a, b), &cameras, paired);
    seen.asked.push((DAY_US, cameras.clone(), a, b));
    seen.look.day_summaries = days.len();
    seen.summaries.extend(
        days.iter()
            .map(|e| ((e.camera.clone(), e.bucket_us, DAY_US), e.summary)),
    );
    let Some(memory) = memory else {
        // The whole window's segment lists: asked a slice at a time by
        // `prepare_round`, never held whole.
        seen.look.full = true;
        return Ok((Vec::new(), seen));
    };

    // Days that changed, with the cameras they changed for.
    let mut changed_days: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for ((cam, t, level), s) in &seen.summaries {
        if memory.unchanged(&(cam.clone(), *t, *level), s) {
            seen.quiet_days.push((cam.clone(), *t));
        } else {
            changed_days.entry(*t).or_default().push(cam.clone());
        }
    }
    seen.look.changed_days = changed_days.values().map(Vec::len).sum();
    // Their hours, and the hours that changed.
    let mut changed_hours: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (day, cams) in changed_days {
        let window = (
            Timestamp(day.max(from.0)),
            Timestamp((day + DAY_US as i64).min(to.0)),
        );
        let (a, b) = bucket_bounds(window.0, window.1, HOUR_US);
        for batch in batches(cams) {
            let hours = client::summaries(
                &conn,
                (window.0 .0, window.1 .0),
                HOUR_US,
                batch.clone(),
                stall,
            )
            .await?;
            let hours = asked_for(hours, HOUR_US, (a, b), &batch, paired);
            seen.look.hour_summaries += hours.len();
            for e in hours {
                let bucket = (e.camera, e.bucket_us, HOUR_US);
                if !memory.unchanged(&bucket, &e.summary) {
                    changed_hours
                        .entry(e.bucket_us)
                        .or_default()
                        .push(bucket.0.clone());
                }
                seen.summaries.push((bucket, e.summary));
            }
            seen.asked.push((HOUR_US, batch, a, b));
        }
    }
    seen.look.changed_hours = changed_hours.values().map(Vec::len).sum();
    // The segment lists of the hours that changed only.
    let mut entries: Vec<CoverageEntry> = Vec::new();
    for (hour, cams) in changed_hours {
        let (a, b) = (hour.max(from.0), (hour + HOUR_US as i64).min(to.0));
        for batch in batches(cams) {
            entries.extend(client::coverage(&conn, a, b, batch, stall).await?);
        }
    }
    // A segment that crosses an hour is listed by both hours.
    entries.sort_by(|x, y| (&x.camera, x.start_us).cmp(&(&y.camera, y.start_us)));
    entries.dedup_by(|x, y| x.camera == y.camera && x.start_us == y.start_us);
    seen.look.entries = entries.len();
    Ok((entries, seen))
}

/// About how many segments one part of a full round asks for, by default:
/// some 160 MiB decoded, planned, on this side.
pub const PART_ENTRIES: u64 = 500_000;

/// How the scrub asks.
#[derive(Debug, Clone)]
pub struct ScrubSettings {
    /// How often a round asks for the whole window.
    pub full_every: Duration,
    /// About how many segments (of every peer together) one part of a
    /// full round asks for.
    pub part_entries: u64,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        ScrubSettings {
            full_every: Duration::from_secs(86_400),
            part_entries: PART_ENTRIES,
        }
    }
}

/// What a peer on a full look is asked in parts: its cameras with their
/// segment counts (from its day summaries), and what is left of its time.
struct Asking {
    cameras: Vec<(String, u64)>,
    left: Duration,
}

/// How a peer answered one part of a full round.
enum PartAnswer {
    /// None of its cameras are in the part.
    NotAsked,
    /// Whole, in this long.
    Took(Duration),
    /// Not within what was left of its time.
    Late,
}

/// The segment lists of `cameras` (with the counts the peer's summaries
/// gave) over `[from, to)`. A peer may send a little more than it said
/// (segments recorded since), not more than twice as much and 100,000:
/// what it said sizes the parts, and so this side's memory.
async fn ask_lists(
    conn: &quinn::Connection,
    (from, to): (Timestamp, Timestamp),
    cameras: Vec<(String, u64)>,
    stall: Duration,
) -> Result<Vec<CoverageEntry>, TransferError> {
    let said: u64 = cameras.iter().map(|(_, n)| *n).fold(0, u64::saturating_add);
    let most = said
        .saturating_mul(2)
        .saturating_add(100_000)
        .min(hafill_protocol::MAX_COVERAGE_ENTRIES);
    let mut entries: Vec<CoverageEntry> = Vec::new();
    for batch in batches(cameras.into_iter().map(|(c, _)| c).collect()) {
        let allowed = most.saturating_sub(entries.len() as u64);
        let answer =
            client::coverage_at_most(conn, from.0, to.0, batch.clone(), allowed, stall).await?;
        // Only the cameras asked: another camera's list belongs to
        // another part, planned there.
        let asked: BTreeSet<&String> = batch.iter().collect();
        entries.extend(answer.into_iter().filter(|e| asked.contains(&e.camera)));
    }
    Ok(entries)
}

/// Each camera of `summaries` (day summaries) with its segment count,
/// by camera.
fn per_camera(summaries: &[(Bucket, Summary)]) -> Vec<(String, u64)> {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for ((cam, _, _), s) in summaries {
        let c = by.entry(cam.as_str()).or_default();
        *c = c.saturating_add(s.count);
    }
    by.into_iter().map(|(c, n)| (c.to_string(), n)).collect()
}

/// `counts` (camera, segments) cut in parts of about `most` segments:
/// whole cameras, at least one a part.
fn parts(counts: &BTreeMap<String, u64>, most: u64) -> Vec<BTreeSet<String>> {
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    let mut part: BTreeSet<String> = BTreeSet::new();
    let mut size = 0u64;
    for (cam, n) in counts {
        if !part.is_empty() && size.saturating_add(*n) > most {
            out.push(std::mem::take(&mut part));
            size = 0;
        }
        size = size.saturating_add(*n);
        part.insert(cam.to_string());
    }
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// Asks every connected peer what changed, plans, places and queues it,
/// and remembers what was found settled.
pub async fn prepare_round(
    session: &mut Session,
    plan_opts: &PlanOptions,
    t0: Instant,
    memory: &mut ScrubMemory,
    settings: &ScrubSettings,
) -> Result<(Prepared, Vec<(String, Look)>), BackfillError> {
    let (from, to) = crate::backfill::place_window(plan_opts);
    if memory.full_due(settings.full_every) {
        memory.peers.clear();
        memory.last_full = Some(Instant::now());
    }
    let stall = session.stall();
    let mem = &*memory;
    let config = Arc::new(session.config().clone());
    let deadline = session.coverage_deadline();
    let (mut changed, mut seen) = session
        .holdings_with(|conn, peer, cams| {
            let config = config.clone();
            async move {
                let asked = tokio::time::Instant::now();
                let paired =
                    |cam: &str| CameraId::new(cam).is_ok_and(|id| config.paired_with(&id, &peer));
                let (entries, mut seen) =
                    ask_changed(conn, (from, to), cams, mem.peers.get(&peer), stall, &paired)
                        .await?;
                seen.took = asked.elapsed();
                Ok((entries, seen))
            }
        })
        .await;
    let mut planning = session.start_planning(plan_opts);
    // The peers asked for the whole window (the first round, a full
    // round, a peer not heard before) give their segment lists a few
    // cameras at a time: the cameras their day summaries name, in parts
    // of about `settings.part_entries` segments of all peers together. Each
    // camera's list is asked of each peer once, and planned with what the
    // other peers said of it; what the peers hold is in memory one part
    // at a time. Each peer has the coverage deadline for all its answers,
    // counted while it is waited on.
    let mut full: BTreeMap<String, Asking> = seen
        .iter()
        .filter(|(_, s)| s.look.full)
        .map(|(p, s)| {
            let asking = Asking {
                cameras: per_camera(&s.summaries),
                left: deadline.saturating_sub(s.took),
            };
            (p.clone(), asking)
        })
        .collect();
    let mut late: Vec<String> = Vec::new();
    if !full.is_empty() {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (cam, n) in full.values().flat_map(|a| a.cameras.iter()) {
            let c = counts.entry(cam.clone()).or_default();
            *c = c.saturating_add(*n);
        }
        for part in parts(&counts, settings.part_entries.max(1)) {
            let asking = &full;
            let part = &part;
            let (mut holdings, answers) = session
                .holdings_with(|conn, peer, _| async move {
                    let Some(a) = asking.get(&peer) else {
                        return Ok((Vec::new(), PartAnswer::NotAsked));
                    };
                    let cams: Vec<(String, u64)> = a
                        .cameras
                        .iter()
                        .filter(|(c, _)| part.contains(c))
                        .cloned()
                        .collect();
                    let asked = tokio::time::Instant::now();
                    match tokio::time::timeout(a.left, ask_lists(&conn, (from, to), cams, stall))
                        .await
                    {
                        Ok(Ok(entries)) => Ok((entries, PartAnswer::Took(asked.elapsed()))),
                        Ok(Err(e)) => Err(e),
                        // Kept connected for what it was asked before.
                        Err(_) => Ok((Vec::new(), PartAnswer::Late)),
                    }
                })
                .await;
            for (peer, answer) in answers {
                match answer {
                    PartAnswer::NotAsked => {}
                    PartAnswer::Took(t) => {
                        if let Some(a) = full.get_mut(&peer) {
                            a.left = a.left.saturating_sub(t);
                        }
                    }
                    PartAnswer::Late => {
                        tracing::warn!(%peer, "scrub: no whole segment lists within the coverage deadline; asked for the whole window again next round");
                        full.remove(&peer);
                        late.push(peer);
                    }
                }
            }
            // The changed hours of the peers the scrub remembers, of the
            // cameras of this part: planned with them.
            let locals: Vec<CameraId> = part
                .iter()
                .filter_map(|c| CameraId::new(c).ok())
                .map(|id| config.local_name(&id))
                .collect();
            for local in locals {
                if let Some(v) = changed.remove(&local) {
                    holdings.entry(local).or_default().extend(v);
                }
            }
            session.plan_part(&mut planning, &holdings)?;
        }
    }
    session.plan_part(&mut planning, &changed)?;
    drop(changed);
    let placement = session.place_planned(planning, t0).await?;
    // A peer cut off or late part way was not heard whole: nothing it
    // said is settled.
    let cut: Vec<String> = session.unreachable();
    seen.retain(|(p, _)| !cut.contains(p) && !late.contains(p));
    for (peer, s) in &mut seen {
        if let Some(n) = session
            .peer_statuses()
            .iter()
            .find(|st| &st.peer == peer)
            .map(|st| st.segments_offered)
        {
            if s.look.full {
                s.look.entries = n;
            }
        }
    }
    let mut starts: Vec<(CameraId, i64)> = placement.planned().collect();
    let prepared = session.queue(placement)?;
    // Planned now, or reserved and not filled yet: asked about again next
    // round, so that its other holders are known while it waits.
    starts.extend(prepared.starts());
    let planned = PlannedStarts::new(starts);
    // A recorder that cuts its own segments holds the time it is still
    // recording, and nothing after now: what a peer offers there was not
    // planned for now, not for good, so it is not settled.
    let by_time = session.recorder().matching() == Matching::ByTime;
    let recorder = session.recorder().clone();
    let held_until: RefCell<HashMap<CameraId, i64>> = RefCell::new(HashMap::new());
    let unsettled = |local: &CameraId, end: i64| {
        by_time && {
            let until = *held_until
                .borrow_mut()
                .entry(local.clone())
                .or_insert_with(|| match recorder.recording_since(local) {
                    Ok(since) => since.map_or(plan_opts.now.0, |t| t.0.min(plan_opts.now.0)),
                    Err(_) => i64::MIN,
                });
            end > until
        }
    };
    let mut looks = Vec::new();
    for (peer, seen) in seen {
        let m = memory.peers.entry(peer.clone()).or_default();
        m.settle(&seen.summaries, &seen.asked, &|cam, a, b| {
            CameraId::new(cam).is_ok_and(|id| {
                let local = config.local_name(&id);
                planned.any_in(&local, a, b) || unsettled(&local, b)
            })
        });
        m.forget_before(crate::summary::bucket_of(from.0, DAY_US));
        for (cam, day) in &seen.quiet_days {
            m.forget_hours(cam, *day);
        }
        let mut look = seen.look;
        look.wire_bytes = session.wire_bytes(&peer);
        looks.push((peer, look));
    }
    Ok((prepared, looks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_not_asked_for_are_dropped() {
        let e = |cam: &str, t: i64| SummaryEntry {
            camera: cam.into(),
            bucket_us: t,
            summary: Summary::default(),
        };
        let d = DAY_US as i64;
        let answer = vec![
            e("cam-1", 0),
            e("cam-1", d),
            e("cam-1", 2 * d),    // past the window
            e("cam-1", -d),       // before it
            e("cam-1", 5),        // not a bucket start
            e("cam-9", 0),        // not paired
            e("cam-1", i64::MAX), // would overflow a bucket's end
        ];
        let paired = |c: &str| c == "cam-1";
        let kept = asked_for(answer.clone(), DAY_US, (0, 2 * d), &[], &paired);
        assert_eq!(kept, vec![e("cam-1", 0), e("cam-1", d)]);
        // Cameras named in the request: only those.
        let kept = asked_for(answer, DAY_US, (0, 2 * d), &["cam-9".into()], &paired);
        assert_eq!(kept, vec![e("cam-9", 0)]);
    }

    #[test]
    fn a_full_round_asks_for_whole_cameras_in_parts_of_about_so_many_segments() {
        let counts: BTreeMap<String, u64> =
            [("a", 300), ("b", 300), ("c", 900), ("d", 10), ("e", 10)]
                .into_iter()
                .map(|(c, n)| (c.to_string(), n))
                .collect();
        let p = parts(&counts, 600);
        let names: Vec<Vec<&str>> = p
            .iter()
            .map(|s| s.iter().map(String::as_str).collect())
            .collect();
        // A camera bigger than a part is a part of its own.
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
        assert!(parts(&BTreeMap::new(), 600).is_empty());
        let day = |cam: &str, d: i64, count: u64| {
            (
                (cam.to_string(), d * DAY_US as i64, DAY_US),
                Summary {
                    count,
                    ..Summary::default()
                },
            )
        };
        let per = per_camera(&[day("b", 0, 5), day("a", 0, 1), day("b", 1, 7)]);
        assert_eq!(per, vec![("a".to_string(), 1), ("b".to_string(), 12)]);
    }

    #[test]
    fn camera_batches_fit_a_request_frame() {
        let cams: Vec<String> = (0..3000).map(|i| format!("{i:0>200}")).collect();
        let b = batches(cams.clone());
        assert!(b.len() > 1);
        for batch in &b {
            let bytes: usize = batch.iter().map(|c| 1 + c.len()).sum();
            assert!(bytes <= 48 * 1024, "{bytes}");
        }
        assert_eq!(b.concat(), cams);
        assert!(batches(Vec::new()).is_empty());
    }
}
