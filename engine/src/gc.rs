//! `hafill store gc`: gives up the reservations that can no longer be
//! filled, so their space goes back to live recording. A placeholder (or,
//! beside a recorder, a staging reservation) is released when it is older
//! than the retention, or when every configured peer answered and none
//! still holds its source (the same start, length and BLAKE3). While any
//! peer cannot be asked, only the expired are released: a peer that is
//! down may still hold the rest. A partial reservation is never released:
//! its verified blocks may be the last copy anywhere.

use serde::Serialize;

use crate::backfill::{BackfillError, BackfillOptions, Session};
use crate::camera::CameraId;
use crate::config::Config;
use crate::segment::{SegmentMeta, SegmentState};
use crate::store::traits::UNKNOWN_HASH;
use crate::units::{Timestamp, MAX_TIME, MIN_TIME};

/// What a gc found and did.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Reservations found unfilled.
    pub outstanding: usize,
    /// Released (or, with `dry_run`, to be released), with the reason.
    pub released: Vec<Released>,
    pub released_bytes: u64,
    /// Kept: a peer still holds the source, not every peer was asked, or
    /// it is partial (its verified blocks may be the last copy).
    pub kept: usize,
    /// Of those kept, partial ones no peer holds any more.
    pub kept_partial: usize,
    /// Peers that could not be asked (then only expired ones go).
    pub not_asked: Vec<String>,
    pub dry_run: bool,
}

#[derive(Debug, Serialize)]
pub struct Released {
    pub camera: String,
    pub start: String,
    pub bytes: u64,
    pub why: &'static str,
}

/// Finds the reservations of `config`'s recorder that can no longer be
/// filled and, unless `dry_run`, releases them.
pub async fn gc(
    config: &Config,
    opts: &BackfillOptions,
    dry_run: bool,
) -> Result<GcReport, BackfillError> {
    let mut session = Session::connect(config, opts).await?;
    let recorder = session.recorder().clone();
    let outstanding = recorder.outstanding(MIN_TIME, MAX_TIME)?;
    let mut report = GcReport {
        outstanding: outstanding.len(),
        dry_run,
        ..GcReport::default()
    };
    let horizon = Timestamp::now().add_micros(-(config.retention_us.min(i64::MAX as u64) as i64));
    let (expired, live): (Vec<SegmentMeta>, Vec<SegmentMeta>) =
        outstanding.into_iter().partition(|m| m.end() <= horizon);
    let mut release: Vec<(SegmentMeta, &'static str)> = expired
        .into_iter()
        .map(|m| (m, "older than the retention"))
        .collect();
    if !live.is_empty() {
        let from = live.iter().map(|m| m.start).min().unwrap_or(MIN_TIME);
        let to = live.iter().map(|m| m.end()).max().unwrap_or(MAX_TIME);
        let holdings = session.holdings((from, to)).await;
        report.not_asked = session.unreachable();
        if config.peers.is_empty() {
            // Nobody to ask is not "nobody holds it".
            report.kept += live.len();
        } else if report.not_asked.is_empty() {
            for m in live {
                let held = holdings.get(&m.camera).is_some_and(|peers| {
                    peers.iter().any(|(_, segs)| {
                        segs.iter().any(|s| {
                            s.start == m.start
                                && s.len == m.len
                                && (s.blake3 == m.blake3 || m.blake3 == UNKNOWN_HASH)
                        })
                    })
                });
                if held {
                    report.kept += 1;
                } else {
                    release.push((m, "no peer holds its source any more"));
                }
            }
        } else {
            report.kept += live.len();
        }
    }
    // Partial reservations hold verified blocks that may be the last copy
    // anywhere: kept, and counted.
    let (partial, release): (Vec<_>, Vec<_>) = release
        .into_iter()
        .partition(|(m, _)| m.state != SegmentState::Placeholder);
    report.kept += partial.len();
    report.kept_partial = partial.len();
    let chosen: Vec<SegmentMeta> = release.iter().map(|(m, _)| m.clone()).collect();
    let gone: Vec<SegmentMeta> = if dry_run {
        chosen
    } else {
        let r = recorder.clone();
        tokio::task::spawn_blocking(move || r.release(&chosen))
            .await
            .map_err(|e| {
                BackfillError::Store(crate::store::StoreError::Io {
                    path: config.store.clone(),
                    source: std::io::Error::other(e),
                })
            })??
    };
    report.kept += release.len() - gone.len();
    report.released_bytes = gone.iter().map(|m| m.len).sum();
    let gone: std::collections::HashSet<(&CameraId, Timestamp)> =
        gone.iter().map(|m| (&m.camera, m.start)).collect();
    report.released = release
        .iter()
        .filter(|(m, _)| gone.contains(&(&m.camera, m.start)))
        .map(|(m, why)| Released {
            camera: m.camera.to_string(),
            start: m.start.to_string(),
            bytes: m.len,
            why,
        })
        .collect();
    session.close().await;
    Ok(report)
}
