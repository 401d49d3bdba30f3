//! The daemon's scrub round: what changed at each peer since the last
//! round, found from summaries (per camera-day, then per camera-hour of
//! the days that changed), and the segment lists of the hours that changed
//! only; then planned, placed and queued like any backfill. The first
//! round, and one every `full_every`, asks for the whole window instead, so
//! segments lost on this side are found too.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hafill_protocol::CoverageEntry;

use crate::backfill::{BackfillError, Prepared, Session};
use crate::camera::CameraId;
use crate::plan::PlanOptions;
use crate::summary::{bucket_bounds, Bucket, PeerMemory, PlannedStarts, Summary, DAY_US, HOUR_US};
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

/// Asks one peer what changed in `[from, to)` (see the module's doc).
async fn ask_changed(
    conn: quinn::Connection,
    (from, to): (Timestamp, Timestamp),
    cameras: Vec<String>,
    memory: Option<&PeerMemory>,
    stall: Duration,
) -> Result<(Vec<CoverageEntry>, Seen), TransferError> {
    let mut seen = Seen::default();
    let days = client::summaries(&conn, (from.0, to.0), DAY_US, cameras.clone(), stall).await?;
    let (a, b) = bucket_bounds(from, to, DAY_US);
    seen.asked.push((DAY_US, cameras.clone(), a, b));
    seen.look.day_summaries = days.len();
    seen.summaries.extend(
        days.iter()
            .map(|e| ((e.camera.clone(), e.bucket_us, DAY_US), e.summary)),
    );
    let Some(memory) = memory else {
        seen.look.full = true;
        let entries = client::coverage(&conn, from.0, to.0, cameras, stall).await?;
        seen.look.entries = entries.len();
        return Ok((entries, seen));
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

/// Asks every connected peer what changed, plans, places and queues it,
/// and remembers what was found settled. `full_every`: how often a round
/// asks for the whole window.
pub async fn prepare_round(
    session: &mut Session,
    plan_opts: &PlanOptions,
    t0: Instant,
    memory: &mut ScrubMemory,
    full_every: Duration,
) -> Result<(Prepared, Vec<(String, Look)>), BackfillError> {
    let (from, to) = crate::backfill::place_window(plan_opts);
    if memory.full_due(full_every) {
        memory.peers.clear();
        memory.last_full = Some(Instant::now());
    }
    let stall = session.stall();
    let mem = &*memory;
    let (holdings, seen) = session
        .holdings_with(|conn, peer, cams| async move {
            ask_changed(conn, (from, to), cams, mem.peers.get(&peer), stall).await
        })
        .await;
    let placement = session.place_holdings(plan_opts, t0, holdings).await?;
    let planned = PlannedStarts::new(placement.planned());
    let config = session.config();
    let mut looks = Vec::new();
    for (peer, seen) in seen {
        let m = memory.peers.entry(peer.clone()).or_default();
        m.settle(&seen.summaries, &seen.asked, &|cam, a, b| {
            CameraId::new(cam).is_ok_and(|id| planned.any_in(&config.local_name(&id), a, b))
        });
        m.forget_before(crate::summary::bucket_of(from.0, DAY_US));
        for (cam, day) in &seen.quiet_days {
            m.forget_hours(cam, *day);
        }
        let mut look = seen.look;
        look.wire_bytes = session.wire_bytes(&peer);
        looks.push((peer, look));
    }
    Ok((session.queue(placement)?, looks))
}

#[cfg(test)]
mod tests {
    use super::*;

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
