//! The site's timelines: for each camera and each of its servers, what is
//! recorded, backfilled (and from which peer), reserved, missing and in
//! flight over a window, as the operator's page draws them.
//!
//! `this store's segments + the peers' coverage -> spans per server ->
//! missing by health's rule (`health::lacks`) -> Timeline`
//!
//! A peer's coverage does not say where its segments came from: what a
//! peer backfilled shows there as recorded. Only this server knows its own
//! reservations and what is in flight.

use serde::Serialize;

use crate::camera::CameraId;
use crate::config::Config;
use crate::health::{self, LocalWork, ServerView, SiteStatus, Slot};
use crate::interval::IntervalSet;
use crate::metrics::Progress;
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::units::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpanKind {
    /// Recorded by that server's recorder (or, for a peer, held there).
    Recorded,
    /// Brought by hafill from `peer`.
    Backfilled,
    /// Reserved by hafill, not yet filled.
    Reserved,
    /// Another of the camera's servers holds it; this one does not.
    Missing,
    /// Being fetched now from `peer`; lies over a reserved span.
    InFlight,
}

/// A stretch of one kind, `[start, end)` in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub kind: SpanKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Spans in time order, neighbours of one kind (and peer) merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans(Vec<Span>);

impl Spans {
    /// Adds a stretch; it joins the last one when of the same kind and
    /// peer, and no more than `seam` microseconds after it.
    pub fn push(&mut self, start: i64, end: i64, kind: SpanKind, peer: Option<&str>, seam: i64) {
        if end <= start {
            return;
        }
        if let Some(last) = self.0.last_mut() {
            if last.kind == kind
                && last.peer.as_deref() == peer
                && start >= last.start
                && start <= last.end + seam
            {
                last.end = last.end.max(end);
                return;
            }
        }
        self.0.push(Span {
            start,
            end,
            kind,
            peer: peer.map(str::to_string),
        });
    }

    /// Adds a segment of this server's store.
    pub fn push_segment(&mut self, m: &SegmentMeta, seam: i64) {
        let (kind, peer) = match (&m.state, &m.origin) {
            (SegmentState::Complete, Origin::Local) => (SpanKind::Recorded, None),
            (SegmentState::Complete, Origin::Peer(p)) => (SpanKind::Backfilled, Some(p.as_str())),
            (SegmentState::Placeholder | SegmentState::Partial, _) => (SpanKind::Reserved, None),
        };
        let (s, e) = m.interval();
        self.push(s, e, kind, peer, seam);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn of(&self, kinds: &[SpanKind]) -> IntervalSet {
        IntervalSet::from_intervals(
            self.0
                .iter()
                .filter(|s| kinds.contains(&s.kind))
                .map(|s| (s.start, s.end)),
        )
    }
}

/// One server's bar for a camera.
#[derive(Debug, Clone, Serialize)]
pub struct ServerTimeline {
    pub server: String,
    pub reachable: bool,
    /// Whether this is the server that drew the timeline (the only one
    /// whose reservations and fetches it knows).
    pub here: bool,
    pub spans: Vec<Span>,
    /// Microseconds of the window this server does not hold whole:
    /// missing plus reserved. None when it could not be asked.
    pub gap_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraTimeline {
    pub camera: CameraId,
    pub name: Option<String>,
    pub servers: Vec<ServerTimeline>,
}

/// Every camera this server sees, each of its servers a bar.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub server: String,
    pub at: String,
    pub from_us: i64,
    pub to_us: i64,
    pub cameras: Vec<CameraTimeline>,
    /// The daemon's backfill now; None where no daemon runs (`status
    /// --html`).
    pub progress: Option<Progress>,
}

fn gap_of(spans: &[Span]) -> u64 {
    IntervalSet::from_intervals(
        spans
            .iter()
            .filter(|s| matches!(s.kind, SpanKind::Missing | SpanKind::Reserved))
            .map(|s| (s.start, s.end)),
    )
    .measure()
}

impl Timeline {
    /// The same timeline with the daemon's backfill as it is now: its
    /// progress, and its fetches in flight laid over this server's bars.
    pub fn with_progress(&self, config: &Config, progress: Progress) -> Timeline {
        let mut t = self.clone();
        for c in &mut t.cameras {
            for s in c.servers.iter_mut().filter(|s| s.here) {
                s.spans.retain(|x| x.kind != SpanKind::InFlight);
                s.spans.extend(
                    progress
                        .in_flight
                        .iter()
                        .filter(|f| config.id_of_local(&f.camera) == c.camera)
                        .filter(|f| f.end > t.from_us && f.start < t.to_us)
                        .map(|f| Span {
                            start: f.start.max(t.from_us),
                            end: f.end.min(t.to_us),
                            kind: SpanKind::InFlight,
                            peer: Some(f.peer.clone()),
                        }),
                );
            }
        }
        t.progress = Some(progress);
        t
    }

    /// The same timeline over `[from, to)` only.
    pub fn cut(&self, from: i64, to: i64) -> Timeline {
        let from = from.max(self.from_us);
        let to = to.min(self.to_us).max(from);
        let cameras = self
            .cameras
            .iter()
            .map(|c| CameraTimeline {
                camera: c.camera.clone(),
                name: c.name.clone(),
                servers: c
                    .servers
                    .iter()
                    .map(|s| {
                        let spans: Vec<Span> = s
                            .spans
                            .iter()
                            .filter(|x| x.end > from && x.start < to)
                            .map(|x| Span {
                                start: x.start.max(from),
                                end: x.end.min(to),
                                ..x.clone()
                            })
                            .collect();
                        ServerTimeline {
                            server: s.server.clone(),
                            reachable: s.reachable,
                            here: s.here,
                            gap_us: s.reachable.then(|| gap_of(&spans)),
                            spans,
                        }
                    })
                    .collect(),
            })
            .collect();
        Timeline {
            server: self.server.clone(),
            at: self.at.clone(),
            from_us: from,
            to_us: to,
            cameras,
            progress: self.progress.clone(),
        }
    }
}

/// Draws the timeline of what `status` judged, from the same views, over
/// the status window up to its moment.
pub fn build(
    config: &Config,
    now: Timestamp,
    window: (Timestamp, Timestamp),
    status: &SiteStatus,
    views: &[ServerView],
    local: &LocalWork,
) -> Timeline {
    let seam = config.recorder.seam_us();
    let (from, at) = (window.0 .0, now.0);
    let empty = Vec::new();
    let slots_of = |server: &str, camera: &CameraId| -> &Vec<Slot> {
        views
            .iter()
            .find(|v| v.server == server && v.error.is_none())
            .and_then(|v| v.cameras.get(camera))
            .unwrap_or(&empty)
    };
    let mut cameras = Vec::new();
    for c in &status.cameras {
        let mut servers = Vec::new();
        for on in &c.servers {
            let here = on.server == config.name;
            let mut spans = if here {
                local.spans.get(&c.camera).cloned().unwrap_or_default()
            } else {
                let mut s = Spans::default();
                for x in slots_of(&on.server, &c.camera) {
                    s.push(x.start, x.end, SpanKind::Recorded, None, seam as i64);
                }
                s
            };
            if on.reachable {
                let held = spans.of(&[SpanKind::Recorded, SpanKind::Backfilled]);
                // The segment it is writing now is no gap.
                let last_end = held.runs().last().map(|r| r.end);
                let held = held.union(&health::recording_tail(on.recording, last_end, at));
                let reserved = spans.of(&[SpanKind::Reserved]);
                let lacking = IntervalSet::from_intervals(
                    c.servers
                        .iter()
                        .filter(|o| o.server != on.server)
                        .flat_map(|o| slots_of(&o.server, &c.camera))
                        .filter(|x| health::lacks(&held, x, seam))
                        .map(|x| (x.start, x.end)),
                );
                let missing = lacking.difference(&held.union(&reserved));
                for r in missing.runs() {
                    // Slivers at the seams of two recorders' cuts are no gap.
                    if (r.end - r.start) as u64 > seam {
                        spans.0.push(Span {
                            start: r.start,
                            end: r.end,
                            kind: SpanKind::Missing,
                            peer: None,
                        });
                    }
                }
            }
            let mut spans = spans.0;
            spans.sort_by_key(|s| (s.start, s.end));
            servers.push(ServerTimeline {
                server: on.server.clone(),
                reachable: on.reachable,
                here,
                gap_us: None,
                spans,
            });
        }
        cameras.push(CameraTimeline {
            camera: c.camera.clone(),
            name: c.name.clone(),
            servers,
        });
    }
    Timeline {
        server: status.server.clone(),
        at: status.at.clone(),
        from_us: from,
        to_us: at,
        cameras,
        progress: None,
    }
    .cut(from, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(v: &[(i64, i64, SpanKind, Option<&str>)], seam: i64) -> Spans {
        let mut s = Spans::default();
        for &(a, b, k, p) in v {
            s.push(a, b, k, p, seam);
        }
        s
    }

    #[test]
    fn neighbours_of_one_kind_and_peer_merge_across_a_seam_only() {
        use SpanKind::*;
        let s = spans(
            &[
                (0, 10, Recorded, None),
                (11, 20, Recorded, None),
                (20, 30, Backfilled, Some("rs01")),
                (30, 40, Backfilled, Some("rs03")),
                (40, 50, Backfilled, Some("rs03")),
                (60, 70, Backfilled, Some("rs03")),
            ],
            1,
        );
        let got: Vec<_> = s.0.iter().map(|x| (x.start, x.end, x.kind)).collect();
        assert_eq!(
            got,
            vec![
                (0, 20, Recorded),
                (20, 30, Backfilled),
                (30, 50, Backfilled),
                (60, 70, Backfilled)
            ]
        );
    }

    #[test]
    fn a_cut_clips_spans_and_counts_the_gap_within_it() {
        let t = Timeline {
            server: "rs02".into(),
            at: "x".into(),
            from_us: 0,
            to_us: 100,
            cameras: vec![CameraTimeline {
                camera: CameraId::new("cam-1").unwrap(),
                name: None,
                servers: vec![ServerTimeline {
                    server: "rs02".into(),
                    reachable: true,
                    here: true,
                    spans: vec![
                        Span {
                            start: 0,
                            end: 40,
                            kind: SpanKind::Recorded,
                            peer: None,
                        },
                        Span {
                            start: 40,
                            end: 60,
                            kind: SpanKind::Reserved,
                            peer: None,
                        },
                        Span {
                            start: 45,
                            end: 50,
                            kind: SpanKind::InFlight,
                            peer: Some("rs01".into()),
                        },
                        Span {
                            start: 60,
                            end: 100,
                            kind: SpanKind::Missing,
                            peer: None,
                        },
                    ],
                    gap_us: None,
                }],
            }],
            progress: None,
        };
        let c = t.cut(50, 80);
        let s = &c.cameras[0].servers[0];
        assert_eq!(s.gap_us, Some(30), "10 reserved and 20 missing");
        assert_eq!(s.spans.len(), 2, "{:?}", s.spans);
        assert_eq!((s.spans[0].start, s.spans[0].end), (50, 60));
        assert_eq!((s.spans[1].start, s.spans[1].end), (60, 80));
        assert_eq!(t.cut(0, 100).cameras[0].servers[0].gap_us, Some(60));
    }
}
