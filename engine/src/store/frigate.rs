//! `[recorder] kind = "frigate"`: Frigate NVR's recordings, read from and
//! installed into its SQLite database (`recordings` table) and its
//! recordings folder (`YYYY-MM-DD/HH/<camera>/MM.SS.mp4`, UTC).
//!
//! Frigate owns both. hafill reads the rows and the files they name;
//! offers a segment only when its row exists and its file is whole; keeps
//! its reservations in its own state folder (no row, no file in Frigate's
//! folders); and installs a verified segment as Frigate would: the file
//! renamed into place (never over a file that is there), then its row
//! inserted, both while holding Frigate's write lock for those few
//! milliseconds, so Frigate never sees a row without its file. A crash in
//! between leaves a file without a row, which the next run finds through
//! its intent in `state/installing/` and gives its row. hafill never
//! removes or changes a file or a row of Frigate's.
//!
//! Two Frigate instances never hold identical bytes (each remuxes its own
//! stream), so gaps are found by time ([`Matching::ByTime`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::native::FileSink;
use super::staging::{io_at, is_file, list_dir, Installer, Skip, StagedSink, Staging};
use super::traits::{Matching, Recorder, SegmentSink, UNKNOWN_HASH};
use super::{read_xattr_record, StoreError};
use crate::camera::CameraId;
use crate::config::FrigateConfig;
use crate::placeholder::{PlaceOptions, Placed};
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::state::{mtime_ns, FileFacts, State};
use crate::units::Timestamp;

/// Columns every Frigate since 0.12 has, and hafill needs.
const REQUIRED: [&str; 6] = ["id", "camera", "path", "start_time", "end_time", "duration"];
/// Columns copied from the peer's row where this database has them.
const NOTED_INTS: [&str; 4] = ["motion", "objects", "dBFS", "regions"];
/// Frigate's longest segment (`MAX_SEGMENT_DURATION`).
const MAX_FRIGATE_SEGMENT_US: u64 = 600_000_000;
/// Where install intents wait, in the state folder.
const INSTALLING: &str = "installing";
const MIB: f64 = 1_048_576.0;

fn db_error(db: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Recorder {
        path: db.to_path_buf(),
        reason: reason.into(),
    }
}

/// Frigate's database, shared by the adapter and its installers.
#[derive(Debug)]
struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The optional columns this database has (`motion`, ..., `segment_size`).
    has: BTreeSet<String>,
    /// How long a write waits for Frigate's lock, in all.
    busy: Duration,
}

impl Db {
    fn open(path: &Path, busy: Duration) -> Result<Self, StoreError> {
        // Never created: a missing database is an unmounted volume or a
        // wrong path, not a new Frigate.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| {
            db_error(
                path,
                format!("cannot open Frigate's database ({e}); is its volume mounted, and is [recorder] db its database.path?"),
            )
        })?;
        // Short: writes wait in `write`'s own loop, up to `busy` in all.
        conn.busy_timeout(busy.min(Duration::from_secs(1)))
            .map_err(|e| db_error(path, e.to_string()))?;
        let cols: Vec<String> = {
            let mut st = conn
                .prepare("SELECT name FROM pragma_table_info('recordings')")
                .map_err(|e| Self::why(path, e))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| Self::why(path, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| Self::why(path, e))?
        };
        if cols.is_empty() {
            return Err(db_error(
                path,
                "has no `recordings` table: this is not Frigate's database, or Frigate has never started on it ([recorder] db is Frigate's database.path, by default /config/frigate.db in its container)",
            ));
        }
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| !cols.iter().any(|h| h == c))
            .collect();
        if !missing.is_empty() {
            return Err(db_error(
                path,
                format!(
                    "the `recordings` table lacks {}: a Frigate older than 0.12, or not Frigate's table",
                    missing.join(", ")
                ),
            ));
        }
        let has = cols
            .into_iter()
            .filter(|c| NOTED_INTS.contains(&c.as_str()) || c == "segment_size")
            .collect();
        Ok(Db {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            has,
            busy,
        })
    }

    /// A database error, said so that an operator knows what to do.
    fn why(path: &Path, e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => db_error(
                path,
                "is locked by another process and stayed locked; Frigate holds it only for moments, so something else holds it (a backup, a sqlite3 shell)",
            ),
            Some(ErrorCode::NotADatabase) => db_error(path, "is not an SQLite database"),
            _ => db_error(path, e.to_string()),
        }
    }

    /// Refuses a `db_recordings` that none of the newest rows lies under:
    /// every row would look unusable, and every recording a gap.
    fn check_paths(&self, root: &Path) -> Result<(), StoreError> {
        let conn = self.lock();
        let newest: Vec<Value> = {
            let mut st = conn
                .prepare("SELECT path FROM recordings ORDER BY start_time DESC LIMIT 20")
                .map_err(|e| Self::why(&self.path, e))?;
            let rows = st
                .query_map([], |r| r.get::<_, Value>(0))
                .map_err(|e| Self::why(&self.path, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| Self::why(&self.path, e))?
        };
        let paths: Vec<&str> = newest
            .iter()
            .filter_map(|v| match v {
                Value::Text(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        match paths.first() {
            Some(p) if !paths.iter().any(|p| Path::new(p).starts_with(root)) => Err(db_error(
                &self.path,
                format!(
                    "its rows name their files under another folder than [recorder] db_recordings ({}), e.g. {p}; set db_recordings to the recordings folder as Frigate's rows name it",
                    root.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` inside a write transaction, taking Frigate's write lock
    /// first: waits for it up to `busy` in all, trying again while Frigate
    /// holds it. `f`'s error rolls back.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.lock();
        if !conn.is_autocommit() {
            // Never expected (every path below ends its transaction); if a
            // panic left one open, end it rather than block Frigate.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let deadline = Instant::now() + self.busy;
        self.retry_busy(&conn, "BEGIN IMMEDIATE", deadline)?;
        // Rolls back if `f` errs or panics.
        let open = Open(&conn);
        let v = f(&conn)?;
        self.retry_busy(&conn, "COMMIT", deadline)?;
        std::mem::forget(open);
        Ok(v)
    }

    /// Runs `sql`, trying again while the database is busy, until
    /// `deadline`.
    fn retry_busy(
        &self,
        conn: &Connection,
        sql: &str,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        loop {
            match conn.execute_batch(sql) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(db_error(
                            &self.path,
                            format!(
                                "stayed locked for {} ([recorder] busy_timeout); the segment stays reserved and is installed by the next run",
                                humantime::format_duration(self.busy)
                            ),
                        ));
                    }
                    tracing::debug!("{}: locked; trying again", self.path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(Self::why(&self.path, e)),
            }
        }
    }

    fn has_row(&self, conn: &Connection, path: &str) -> Result<bool, StoreError> {
        conn.prepare_cached("SELECT 1 FROM recordings WHERE path = ?1")
            .and_then(|mut st| st.query_row([path], |_| Ok(())).optional())
            .map(|r| r.is_some())
            .map_err(|e| Self::why(&self.path, e))
    }

    /// Inserts the row of an installed segment, as Frigate's recorder
    /// would: a fresh id in Frigate's form (`<start>-<6 random>`), times in
    /// epoch seconds, the peer's notes where this table has their columns.
    fn insert(&self, conn: &Connection, row: &Intent) -> Result<(), StoreError> {
        let start = row.start_us as f64 / 1e6;
        let duration = row.duration_us as f64 / 1e6;
        let notes = Notes::parse(row.notes.as_deref());
        let mut cols = vec!["id", "camera", "path", "start_time", "end_time", "duration"];
        let mut vals = vec![
            Value::Text(row.id.clone()),
            Value::Text(row.camera.clone()),
            Value::Text(row.db_path.clone()),
            Value::Real(start),
            Value::Real(start + duration),
            Value::Real(duration),
        ];
        for (name, v) in [
            ("motion", notes.motion),
            ("objects", notes.objects),
            ("dBFS", notes.dbfs),
            ("regions", notes.regions),
        ] {
            if self.has.contains(name) {
                cols.push(name);
                vals.push(v.map_or(Value::Null, Value::Integer));
            }
        }
        if self.has.contains("segment_size") {
            // The file is the peer's, byte for byte: its size is known
            // here; the peer's figure stands where it says one.
            let mine = (row.len as f64 / MIB * 100.0).round() / 100.0;
            cols.push("segment_size");
            vals.push(Value::Real(notes.segment_size.unwrap_or(mine)));
        }
        let sql = format!(
            "INSERT INTO recordings (\"{}\") VALUES ({})",
            cols.join("\", \""),
            (1..=cols.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        conn.execute(&sql, rusqlite::params_from_iter(vals))
            .map(|_| ())
            .map_err(|e| Self::why(&self.path, e))
    }
}

/// An open write transaction: rolled back when dropped (an error or a
/// panic before its commit), so Frigate's lock is never kept.
struct Open<'a>(&'a Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

/// What Frigate's row says of a segment besides its time and file: sent to
/// peers as the segment's notes, copied into the row of a backfilled copy.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Notes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    motion: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    objects: Option<i64>,
    #[serde(default, rename = "dBFS", skip_serializing_if = "Option::is_none")]
    dbfs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regions: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    segment_size: Option<f64>,
}

impl Notes {
    /// A peer's notes, checked: anything malformed or out of range is left
    /// out (the row then says NULL, which Frigate's retention never
    /// matches, so the copy is kept rather than lost).
    fn parse(text: Option<&str>) -> Notes {
        let Some(t) = text else {
            return Notes::default();
        };
        let Ok(mut n) = serde_json::from_str::<Notes>(t) else {
            tracing::debug!("ignored a peer's notes that are not Frigate's: {t:?}");
            return Notes::default();
        };
        let bounded = |v: Option<i64>| v.filter(|x| (-1_000_000_000..=1_000_000_000).contains(x));
        n.motion = bounded(n.motion);
        n.objects = bounded(n.objects);
        n.dbfs = bounded(n.dbfs);
        n.regions = bounded(n.regions);
        n.segment_size = n
            .segment_size
            .filter(|s| s.is_finite() && (0.0..=1e7).contains(s));
        n
    }

    fn to_text(&self) -> Option<Arc<str>> {
        (*self != Notes::default())
            .then(|| serde_json::to_string(self).ok())
            .flatten()
            .map(|s| Arc::from(s.as_str()))
    }
}

/// An install in progress, written (and synced) before the file is renamed
/// into Frigate's folder, removed once its row is in: what the next run
/// needs to give a file its row after a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    /// Where the file goes, as this machine sees it.
    path: PathBuf,
    /// The same, as Frigate's rows name it.
    db_path: String,
    id: String,
    camera: String,
    start_us: i64,
    duration_us: u64,
    len: u64,
    blake3: String,
    #[serde(default)]
    notes: Option<String>,
    peer: String,
}

/// A Frigate NVR's recordings behind the adapter trait.
#[derive(Debug)]
pub struct FrigateRecorder {
    cfg: FrigateConfig,
    db: Arc<Db>,
    state: Arc<State>,
    staging: Staging,
    /// Rows already reported as unusable (once each, not every round).
    reported: Mutex<HashSet<String>>,
    /// Held while this process fills (backfill, gate, scrub).
    _lock: Option<File>,
}

/// One usable row: its segment and its file.
struct RowFile {
    meta: SegmentMeta,
    file: PathBuf,
}

/// A camera's rows in a window.
#[derive(Default)]
struct Rows {
    usable: Vec<RowFile>,
    /// The times (µs) of rows that cannot be offered (path outside the
    /// folder, file missing, short or not an MP4).
    unusable: Vec<(i64, i64)>,
}

impl FrigateRecorder {
    /// Opens Frigate's recordings folder and database (both must exist)
    /// with hafill's state in `state`. A `writer` takes the state's lock,
    /// checks that the state is on the recordings' filesystem, and first
    /// finishes the installs a crash interrupted.
    pub fn open(cfg: &FrigateConfig, state: &Path, writer: bool) -> Result<Self, StoreError> {
        super::segments::check_recorder_folder(&cfg.path)?;
        let db = Arc::new(Db::open(
            &cfg.db,
            Duration::from_micros(cfg.busy_timeout_us),
        )?);
        let state = Arc::new(State::open(state)?);
        let lock = if writer {
            let lock = state.lock()?;
            super::segments::SegmentsRecorder::check_same_filesystem(&cfg.path, state.dir())?;
            Some(lock)
        } else {
            None
        };
        db.check_paths(&cfg.db_recordings)?;
        let rec = FrigateRecorder {
            cfg: cfg.clone(),
            db,
            staging: Staging::new(state.clone()),
            state,
            reported: Mutex::new(HashSet::new()),
            _lock: lock,
        };
        if writer {
            rec.finish_interrupted()?;
        }
        Ok(rec)
    }

    /// Logs a problem with a row or a file once.
    fn report(&self, key: &str, msg: impl FnOnce() -> String) {
        let mut seen = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(key.to_string()) {
            tracing::error!("{}", msg());
        }
    }

    /// The file a row's `path` names, as this machine sees it: only inside
    /// the recordings folder.
    fn local_path(&self, db_path: &str) -> Option<PathBuf> {
        let rel = Path::new(db_path)
            .strip_prefix(&self.cfg.db_recordings)
            .ok()?;
        let plain = rel.components().count() > 0
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        plain.then(|| self.cfg.path.join(rel))
    }

    /// Where a segment starting at `start` goes, relative to the
    /// recordings folder: Frigate's layout, in UTC.
    fn layout(camera: &CameraId, start: Timestamp) -> String {
        let t = Timestamp(start.0.div_euclid(1_000_000) * 1_000_000).datetime();
        format!(
            "{:04}-{:02}-{:02}/{:02}/{}/{:02}.{:02}.mp4",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            camera.as_str(),
            t.minute(),
            t.second()
        )
    }

    /// The usable rows of `camera` that overlap `[from, to)` (all if
    /// `newest` is None, else the newest `n`), sorted by start.
    fn rows(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
        newest: Option<u32>,
    ) -> Result<Rows, StoreError> {
        let mut sql = String::from("SELECT id, path, start_time, end_time, duration");
        for c in NOTED_INTS.iter().chain(std::iter::once(&"segment_size")) {
            if self.db.has.contains(*c) {
                sql += &format!(", \"{c}\"");
            } else {
                sql += ", NULL";
            }
        }
        sql += " FROM recordings WHERE camera = ?1 AND end_time > ?2 AND start_time < ?3";
        sql += match newest {
            Some(n) => format!(" ORDER BY start_time DESC LIMIT {n}"),
            None => " ORDER BY start_time".to_string(),
        }
        .as_str();
        let raw: Vec<[Value; 10]> = {
            let conn = self.db.lock();
            let mut st = conn
                .prepare_cached(&sql)
                .map_err(|e| Db::why(&self.db.path, e))?;
            let rows = st
                .query_map(
                    rusqlite::params![camera.as_str(), from.0 as f64 / 1e6, to.0 as f64 / 1e6],
                    |r| {
                        let mut out: [Value; 10] = std::array::from_fn(|_| Value::Null);
                        for (i, v) in out.iter_mut().enumerate() {
                            *v = r.get(i)?;
                        }
                        Ok(out)
                    },
                )
                .map_err(|e| Db::why(&self.db.path, e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| Db::why(&self.db.path, e))?
        };
        let mut out = Rows::default();
        for r in raw {
            match self.usable(camera, &r) {
                Ok(rf) => out.usable.push(rf),
                Err(Some(span)) => out.unusable.push(span),
                Err(None) => {}
            }
        }
        out.usable.sort_by_key(|r| r.meta.start);
        Ok(out)
    }

    /// A row as a segment, if its values are sane and its file is there and
    /// whole; else None (and the reason logged once).
    /// A row as a segment, if its values are sane and its file is there and
    /// whole; else the time it claims, if it says one (the reason logged
    /// once). That time is not offered, and not filled either: a second row
    /// over it would leave Frigate with two.
    fn usable(&self, camera: &CameraId, r: &[Value; 10]) -> Result<RowFile, Option<(i64, i64)>> {
        let text = |v: &Value| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        };
        let num = |v: &Value| match v {
            Value::Real(x) => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        };
        let int = |v: &Value| match v {
            Value::Integer(i) => Some(*i),
            Value::Real(x) if x.fract() == 0.0 => Some(*x as i64),
            _ => None,
        };
        let id = text(&r[0]).unwrap_or_default();
        let db = self.db.path.display();
        let Some(db_path) = text(&r[1]) else {
            self.report(&id, || format!("{db}: row {id:?} has no path; not offered"));
            return Err(None);
        };
        let (Some(start), Some(duration)) = (num(&r[2]), num(&r[4])) else {
            self.report(&id, || {
                format!("{db}: row {id:?} ({db_path}) has no start_time or duration in epoch seconds; not offered")
            });
            return Err(None);
        };
        let duration_us = (duration * 1e6).round();
        if !start.is_finite() || !(1.0..=MAX_FRIGATE_SEGMENT_US as f64).contains(&duration_us) {
            self.report(&id, || {
                format!("{db}: row {id:?} ({db_path}) says start {start}, duration {duration} s; not offered")
            });
            return Err(None);
        }
        let start_us = (start * 1e6).round() as i64;
        let span = (start_us, start_us.saturating_add(duration_us as i64));
        let Some(file) = self.local_path(&db_path) else {
            self.report(&db_path, || {
                format!(
                    "{db}: row {id:?}: its path {db_path} lies outside the recordings folder {} ([recorder] db_recordings); not offered, not touched",
                    self.cfg.db_recordings.display()
                )
            });
            return Err(Some(span));
        };
        // Removed by Frigate's retention meanwhile, or never there.
        let Some(m) = fs::metadata(&file).ok().filter(|m| m.is_file()) else {
            self.report(&db_path, || {
                format!("{}: its row in {db} names it, but it is not there (removed by Frigate's retention meanwhile, or Frigate's database needs its media sync); not offered, and its time not filled", file.display())
            });
            return Err(Some(span));
        };
        let segment_size = num(&r[9]);
        if let Some(mb) = segment_size.filter(|s| *s > 0.0) {
            // Frigate rounds to a hundredth of a MiB.
            let said = mb * MIB;
            if (m.len() as f64 - said).abs() > 0.006 * MIB + said * 0.01 {
                self.report(&db_path, || {
                    format!(
                        "{}: {} bytes, but its row in {db} says {mb} MiB; not offered, not touched",
                        file.display(),
                        m.len()
                    )
                });
                return Err(Some(span));
            }
        }
        let facts = self.facts(&file, &m);
        if let Some(why) = &facts.not_a_segment {
            self.report(&db_path, || {
                format!("{}: {why}; not offered, not touched", file.display())
            });
            return Err(Some(span));
        }
        let notes = Notes {
            motion: int(&r[5]),
            objects: int(&r[6]),
            dbfs: int(&r[7]),
            regions: int(&r[8]),
            segment_size,
        };
        let meta = SegmentMeta {
            camera: camera.clone(),
            start: Timestamp(start_us),
            duration_us: duration_us as u64,
            len: m.len(),
            blake3: facts
                .blake3
                .as_deref()
                .and_then(|h| blake3::Hash::from_hex(h).ok())
                .unwrap_or(UNKNOWN_HASH),
            state: SegmentState::Complete,
            origin: match self.state.origin_of(&file) {
                Some(p) => Origin::Peer(p),
                None => Origin::Local,
            },
            notes: notes.to_text(),
        };
        Ok(RowFile { meta, file })
    }

    /// What the file is: from the state's cache, else read (and cached).
    fn facts(&self, file: &Path, m: &fs::Metadata) -> FileFacts {
        self.state.facts_or_read(file, m.len(), mtime_ns(m)).0
    }

    fn row_at(&self, camera: &CameraId, start: Timestamp) -> Result<Option<RowFile>, StoreError> {
        Ok(self
            .rows(camera, start, start.add_micros(1), None)?
            .usable
            .into_iter()
            .find(|r| r.meta.start == start))
    }

    /// Gives each file a crash left without its row (its intent still in
    /// `state/installing/`) its row, if the file is there and still
    /// carries hafill's record of those bytes; drops every other intent.
    /// Nothing of Frigate's is removed.
    fn finish_interrupted(&self) -> Result<(), StoreError> {
        let dir = self.state.dir().join(INSTALLING);
        for name in list_dir(&dir)? {
            let path = dir.join(&name);
            let Some(intent) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Intent>(&b).ok())
            else {
                let _ = fs::remove_file(&path);
                continue;
            };
            // An intent of another configuration is not acted on.
            let here = intent.path.starts_with(&self.cfg.path)
                && Path::new(&intent.db_path).starts_with(&self.cfg.db_recordings)
                && self.local_path(&intent.db_path).as_deref() == Some(intent.path.as_path());
            if !here {
                tracing::warn!(
                    "{}: an interrupted install of {} under another [recorder] path or db_recordings; dropped (the file, if any, is left alone)",
                    path.display(),
                    intent.path.display()
                );
                fs::remove_file(&path).map_err(io_at(&path))?;
                continue;
            }
            // Frigate never writes hafill's attributes: a file carrying
            // hafill's record of this start and length is the one renamed.
            let ours = read_xattr_record(&intent.path)?
                .is_some_and(|r| r.len == intent.len && r.start.0 == intent.start_us);
            if ours {
                // The rename the crash interrupted may not be durable yet:
                // its folders are, before the row is.
                let mut d = intent.path.parent();
                while let Some(dir) = d.filter(|d| d.starts_with(&self.cfg.path)) {
                    super::sync_dir(dir)?;
                    d = dir.parent();
                }
                let done = self.db.write(|conn| {
                    if !self.db.has_row(conn, &intent.db_path)? {
                        self.db.insert(conn, &intent)?;
                        return Ok(true);
                    }
                    Ok(false)
                })?;
                if done {
                    tracing::warn!(
                        "{}: a crash left it without its row in {}; row inserted",
                        intent.path.display(),
                        self.db.path.display()
                    );
                }
                if let Ok(f) = File::open(&intent.path) {
                    self.staging.forget(&f);
                }
                if let Some(meta) = intent_meta(&intent) {
                    self.staging.record_installed(&intent.path, &meta)?;
                }
            }
            fs::remove_file(&path).map_err(io_at(&path))?;
        }
        Ok(())
    }
}

fn intent_meta(i: &Intent) -> Option<SegmentMeta> {
    Some(SegmentMeta {
        camera: CameraId::new(i.camera.clone()).ok()?,
        start: Timestamp(i.start_us),
        duration_us: i.duration_us,
        len: i.len,
        blake3: blake3::Hash::from_hex(&i.blake3).unwrap_or(UNKNOWN_HASH),
        state: SegmentState::Complete,
        origin: Origin::Peer(i.peer.clone()),
        notes: None,
    })
}

/// A row's id as Frigate makes one: the start as Python prints the float
/// epoch seconds, a dash, six random lowercase letters or digits.
fn row_id(start: Timestamp) -> String {
    let secs = start.0 as f64 / 1e6;
    let mut s = format!("{secs}");
    if !s.contains('.') {
        s += ".0";
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..6)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{s}-{tail}")
}

impl Recorder for FrigateRecorder {
    fn describe(&self) -> String {
        format!(
            "frigate {} (database {})",
            self.cfg.path.display(),
            self.cfg.db.display()
        )
    }

    fn matching(&self) -> Matching {
        Matching::ByTime
    }

    fn data_dir(&self) -> &Path {
        &self.cfg.path
    }

    fn cameras(&self) -> Result<Vec<CameraId>, StoreError> {
        let names: Vec<String> = {
            let conn = self.db.lock();
            let mut st = conn
                .prepare_cached("SELECT DISTINCT camera FROM recordings")
                .map_err(|e| Db::why(&self.db.path, e))?;
            let rows = st
                .query_map([], |r| r.get::<_, Value>(0))
                .map_err(|e| Db::why(&self.db.path, e))?;
            rows.filter_map(|v| match v {
                Ok(Value::Text(s)) => Some(Ok(s)),
                Ok(_) => None,
                Err(e) => Some(Err(Db::why(&self.db.path, e))),
            })
            .collect::<Result<_, _>>()?
        };
        let mut out: Vec<CameraId> = names
            .into_iter()
            .filter_map(|n| match CameraId::new(n.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.report(&format!("camera:{n}"), || {
                        format!("{}: camera {n:?} ignored: {e}", self.db.path.display())
                    });
                    None
                }
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn segments(
        &self,
        camera: &CameraId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<SegmentMeta>, StoreError> {
        let mut out: Vec<SegmentMeta> = self
            .rows(camera, from, to, None)?
            .usable
            .into_iter()
            .map(|r| r.meta)
            .chain(
                self.staging
                    .reservations(Some(camera))?
                    .into_iter()
                    .filter(|m| m.start < to && m.end() > from),
            )
            .collect();
        out.sort_by_key(|m| m.start);
        Ok(out)
    }

    fn last_segment_end(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .rows(
                camera,
                crate::units::MIN_TIME,
                crate::units::MAX_TIME,
                Some(64),
            )?
            .usable
            .iter()
            .map(|r| r.meta.end())
            .max())
    }

    /// Frigate records into its cache and moves each segment into place
    /// (file, then row) some seconds after it ends: while the newest row
    /// ended within `settle`, the time after it is being recorded.
    fn recording_since(&self, camera: &CameraId) -> Result<Option<Timestamp>, StoreError> {
        let now = Timestamp::now();
        Ok(self
            .last_segment_end(camera)?
            .filter(|end| now.0.saturating_sub(end.0) < self.cfg.settle_us as i64))
    }

    fn open(
        &self,
        camera: &CameraId,
        start: Timestamp,
    ) -> Result<Option<(File, SegmentMeta)>, StoreError> {
        let Some(r) = self.row_at(camera, start)? else {
            return Ok(None);
        };
        let file = File::open(&r.file).map_err(io_at(&r.file))?;
        if file.metadata().map_err(io_at(&r.file))?.len() != r.meta.len {
            return Ok(None);
        }
        Ok(Some((file, r.meta)))
    }

    fn note_hash(&self, meta: &SegmentMeta, hash: blake3::Hash) {
        let Ok(Some(r)) = self.row_at(&meta.camera, meta.start) else {
            return;
        };
        let Ok(m) = fs::metadata(&r.file) else {
            return;
        };
        if m.len() == meta.len {
            self.state.remember_hash(self.facts(&r.file, &m), hash);
        }
    }

    /// Reservations for the cameras Frigate's database knows; a source of
    /// another camera is refused (a name mapped wrongly would give rows
    /// to a camera Frigate does not show).
    fn reserve(
        &self,
        sources: &[(&SegmentMeta, &str)],
        opts: PlaceOptions,
    ) -> Result<Placed, StoreError> {
        let known: BTreeSet<CameraId> = self.cameras()?.into_iter().collect();
        let (ok, unknown): (Sources, Sources) = sources
            .iter()
            .copied()
            .partition(|(m, _)| known.contains(&m.camera));
        let mut refused = Vec::new();
        let mut named = BTreeSet::new();
        for (m, peer) in unknown {
            if named.insert(m.camera.clone()) {
                tracing::error!(
                    "{}: Frigate's database knows no camera {:?}; its gaps are not filled. Check the camera's name for this server in [[camera]] names",
                    self.db.path.display(),
                    m.camera.as_str()
                );
            }
            refused.push((m.clone(), peer.to_string()));
        }
        // The times of rows that cannot be offered, per camera: never
        // filled over (Frigate would hold two rows there).
        let mut unusable: BTreeMap<CameraId, Vec<(i64, i64)>> = BTreeMap::new();
        for (m, _) in &ok {
            if unusable.contains_key(&m.camera) {
                continue;
            }
            let (from, to) = ok
                .iter()
                .filter(|(o, _)| o.camera == m.camera)
                .fold((i64::MAX, i64::MIN), |(a, b), (o, _)| {
                    (a.min(o.start.0), b.max(o.end().0))
                });
            let spans = self
                .rows(&m.camera, Timestamp(from), Timestamp(to), None)?
                .unusable;
            unusable.insert(m.camera.clone(), spans);
        }
        let mut placed = self.staging.reserve(&self.cfg.path, &ok, opts, |src| {
            let rel = Self::layout(&src.camera, src.start);
            let target = self.cfg.path.join(&rel);
            if target.exists() {
                return Skip::benign(format!("{} exists", target.display()));
            }
            let (a, b) = src.interval();
            if let Some((x, y)) = unusable
                .get(&src.camera)
                .and_then(|v| v.iter().find(|(x, y)| *x < b && *y > a))
            {
                return Skip::problem(format!(
                    "{} holds a row from {} to {} that is unusable (the log above says why); fix it, or let Frigate's media sync remove it",
                    self.db.path.display(),
                    Timestamp(*x),
                    Timestamp(*y)
                ));
            }
            let db_path = self.cfg.db_recordings.join(&rel);
            let conn = self.db.lock();
            match self.db.has_row(&conn, &db_path.to_string_lossy()) {
                Ok(true) => Skip::problem(format!(
                    "{} already has a row for {} without its file; let Frigate's media sync remove it",
                    self.db.path.display(),
                    db_path.display()
                )),
                _ => None,
            }
        })?;
        placed.refused.extend(refused);
        Ok(placed)
    }

    fn outstanding(&self, from: Timestamp, to: Timestamp) -> Result<Vec<SegmentMeta>, StoreError> {
        self.staging.outstanding(from, to)
    }

    fn release(&self, metas: &[SegmentMeta]) -> Result<Vec<SegmentMeta>, StoreError> {
        self.staging.release(metas)
    }

    fn sink(&self, meta: &SegmentMeta) -> Result<Box<dyn SegmentSink>, StoreError> {
        let rel = Self::layout(&meta.camera, meta.start);
        Ok(Box::new(StagedSink {
            inner: self.staging.sink(meta)?,
            installer: Install {
                target: self.cfg.path.join(&rel),
                db_path: self
                    .cfg
                    .db_recordings
                    .join(&rel)
                    .to_string_lossy()
                    .into_owned(),
                root: self.cfg.path.clone(),
                intents: self.state.dir().join(INSTALLING),
                staging: self.staging.clone(),
                db: self.db.clone(),
            },
        }))
    }
}

type Sources<'a> = Vec<(&'a SegmentMeta, &'a str)>;

/// Installs a verified reservation as Frigate would: file, then row.
#[derive(Debug)]
struct Install {
    target: PathBuf,
    db_path: String,
    root: PathBuf,
    intents: PathBuf,
    staging: Staging,
    db: Arc<Db>,
}

impl Install {
    /// Writes the intent durably before anything enters Frigate's folder.
    fn intend(&self, intent: &Intent) -> Result<PathBuf, StoreError> {
        if !self.intents.exists() {
            fs::create_dir_all(&self.intents).map_err(io_at(&self.intents))?;
            if let Some(state) = self.intents.parent() {
                super::sync_dir(state)?;
            }
        }
        let path = self.intents.join(format!("{}.json", intent.id));
        let tmp = super::tmp_path(&path);
        let bytes =
            serde_json::to_vec(intent).map_err(|e| io_at(&path)(std::io::Error::other(e)))?;
        let f = File::create(&tmp).map_err(io_at(&tmp))?;
        std::io::Write::write_all(&mut &f, &bytes).map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        super::sync_dir(&self.intents)?;
        Ok(path)
    }
}

impl Installer for Install {
    fn install(&self, sink: &FileSink, meta: &SegmentMeta) -> Result<SegmentMeta, StoreError> {
        self.staging.prepare(sink, &self.target, meta)?;
        let intent = Intent {
            path: self.target.clone(),
            db_path: self.db_path.clone(),
            id: row_id(meta.start),
            camera: meta.camera.to_string(),
            start_us: meta.start.0,
            duration_us: meta.duration_us,
            len: meta.len,
            blake3: meta.blake3.to_hex().to_string(),
            notes: meta.notes.as_deref().map(str::to_string),
            peer: match &meta.origin {
                Origin::Peer(p) => p.clone(),
                Origin::Local => String::new(),
            },
        };
        let intent_file = self.intend(&intent)?;
        crate::failpoint("frigate-intended");
        // Frigate's write lock is held from before the rename to the
        // commit: Frigate writes no row meanwhile (its readers may see the
        // file a few milliseconds before its row), and a database that
        // stays locked leaves the reservation where it was.
        let res = self.db.write(|conn| {
            if self.db.has_row(conn, &self.db_path)? {
                // Frigate's row stays; the copy (the peer still holds it)
                // is dropped rather than tried again every round.
                let _ = fs::remove_file(sink.path());
                return Err(StoreError::BadSegment {
                    camera: meta.camera.clone(),
                    start: meta.start,
                    reason: format!(
                        "{} already has a row for {}; the backfilled copy is dropped",
                        self.db.path.display(),
                        self.db_path
                    ),
                });
            }
            self.staging
                .rename_into(sink, &self.target, &self.root, meta)?;
            crate::failpoint("frigate-renamed");
            self.db.insert(conn, &intent)
        });
        if let Err(e) = res {
            if is_file(&self.target, sink.file()) {
                // In Frigate's folder without its row (the insert or the
                // commit failed): back where it was, else left with its
                // intent for the next run to give it its row.
                let back = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &self.target,
                    rustix::fs::CWD,
                    sink.path(),
                    rustix::fs::RenameFlags::NOREPLACE,
                );
                let synced = self.target.parent().map(super::sync_dir);
                if back.is_err() || !matches!(synced, Some(Ok(()))) {
                    return Err(e);
                }
            }
            let _ = fs::remove_file(&intent_file);
            return Err(e);
        }
        crate::failpoint("frigate-committed");
        self.staging.forget(sink.file());
        self.staging.record_installed(&self.target, meta)?;
        fs::remove_file(&intent_file).map_err(io_at(&intent_file))?;
        Ok(SegmentMeta {
            state: SegmentState::Complete,
            ..meta.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_and_paths_are_frigates() {
        let cam = CameraId::new("front_door").unwrap();
        // 2026-12-02 06:05:09 UTC
        let t = Timestamp(1_796_191_509_000_000);
        assert_eq!(
            FrigateRecorder::layout(&cam, t),
            "2026-12-02/06/front_door/05.09.mp4"
        );
        let id = row_id(t);
        assert!(id.starts_with("1796191509.0-"), "{id}");
        assert_eq!(id.len(), "1796191509.0-".len() + 6);
        let id = row_id(Timestamp(1_796_191_509_250_000));
        assert!(id.starts_with("1796191509.25-"), "{id}");
    }

    #[test]
    fn notes_from_a_peer_are_checked() {
        let n = Notes::parse(Some(
            r#"{"motion":12,"objects":1,"dBFS":-40,"regions":3,"segment_size":1.25}"#,
        ));
        assert_eq!(n.motion, Some(12));
        assert_eq!(n.dbfs, Some(-40));
        assert_eq!(n.segment_size, Some(1.25));
        assert!(n.to_text().unwrap().len() < crate::segment::MAX_NOTES_LEN);
        assert_eq!(Notes::parse(Some("not json")), Notes::default());
        let n = Notes::parse(Some(r#"{"motion":1e300,"segment_size":-1}"#));
        assert_eq!(n, Notes::default());
        let n = Notes::parse(Some(r#"{"motion":99999999999999}"#));
        assert_eq!(n.motion, None);
    }
}
