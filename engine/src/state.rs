//! hafill's own state beside a recorder (`[server] state`), never inside
//! the recorder's folder:
//!
//! ```text
//! STATE/
//!   HAFILL-STATE       marker and format version, made by `hafill store init`
//!   lock               held by the one hafill that fills (backfill, gate, scrub)
//!   segments.jsonl     what each recorder file was found to be, by path, length and mtime:
//!                      its duration, its BLAKE3 once hashed, or why it is not a segment
//!   origins.jsonl      each backfilled segment: where it was installed, from which peer
//!   staging/<camera>/<start_us>.part
//!                      reservations for gaps, filled in place, renamed into the
//!                      recorder's folder once verified
//!   installing/<id>.json
//!                      Frigate: an install between its rename and its row, so
//!                      that a crash's file gets its row on the next run
//! ```
//!
//! The two logs are append-only JSON lines; a torn last line (a crash mid
//! append) is skipped when read. `segments.jsonl` is only a cache: losing it
//! costs one more hash of each file. `origins.jsonl` is fsynced after each
//! append. Nothing here is a lock the recorder needs.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a recorder file was found to be, valid while its length and
/// modification time stay the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    #[serde(rename = "p")]
    pub path: PathBuf,
    pub len: u64,
    pub mtime_ns: i64,
    /// Read from the container; None where the container is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Why the file is not a segment, though its name says it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_a_segment: Option<String>,
}

/// A backfilled segment: where it went and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRecord {
    #[serde(rename = "p")]
    pub path: PathBuf,
    pub camera: String,
    pub start_us: i64,
    pub len: u64,
    pub blake3: String,
    pub peer: String,
}

#[derive(Debug)]
pub struct State {
    dir: PathBuf,
    facts: Mutex<HashMap<PathBuf, FileFacts>>,
    origins: Mutex<HashMap<PathBuf, String>>,
}

pub(crate) fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, StoreError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(path)(e)),
    };
    let mut out = Vec::new();
    for line in io::BufReader::new(f).split(b'\n') {
        let line = line.map_err(io_at(path))?;
        // A torn or foreign line is skipped: the logs only ever add.
        if let Ok(v) = serde_json::from_slice(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

fn append_line<T: Serialize>(path: &Path, v: &T, sync: bool) -> Result<(), StoreError> {
    append_lines(path, std::slice::from_ref(v), sync)
}

/// Appends `vs` as JSON lines in one write (O_APPEND keeps the lines of
/// two writers whole). A torn last line (a crash mid-append) is ended
/// first, so it is skipped when read rather than swallowing the first new
/// line. With `sync`, the lines (and a new log's name) are durable.
pub(crate) fn append_lines<T: Serialize>(
    path: &Path,
    vs: &[T],
    sync: bool,
) -> Result<(), StoreError> {
    if vs.is_empty() {
        return Ok(());
    }
    let new = !path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io_at(path))?;
    let len = f.metadata().map_err(io_at(path))?.len();
    let mut last = [b'\n'];
    if len > 0 {
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).map_err(io_at(path))?;
    }
    let mut lines = if last[0] == b'\n' {
        Vec::new()
    } else {
        vec![b'\n']
    };
    for v in vs {
        serde_json::to_writer(&mut lines, v).map_err(|e| io_at(path)(io::Error::other(e)))?;
        lines.push(b'\n');
    }
    f.write_all(&lines).map_err(io_at(path))?;
    if sync {
        f.sync_data().map_err(io_at(path))?;
        if new {
            // The log's name is durable too.
            if let Some(dir) = path.parent() {
                crate::store::sync_dir(dir)?;
            }
        }
    }
    Ok(())
}

/// The state folder's marker: hafill writes into a folder only once it
/// carries this (see [`State::init`]).
pub const MARKER: &str = "HAFILL-STATE";
pub const MARKER_CONTENT: &str = "hafill-state 1\n";

impl State {
    /// Makes the empty folder `dir` hafill's state: its marker (durable),
    /// then `staging/`.
    pub fn init(dir: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(dir.join("staging")).map_err(io_at(dir))?;
        let marker = dir.join(MARKER);
        let tmp = dir.join(format!("{MARKER}.tmp"));
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(MARKER_CONTENT.as_bytes())
            .map_err(io_at(&tmp))?;
        f.sync_all().map_err(io_at(&tmp))?;
        fs::rename(&tmp, &marker).map_err(io_at(&marker))?;
        crate::store::sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::store::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Opens the state folder `dir`, which must carry its marker.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        match fs::read_to_string(dir.join(MARKER)) {
            Ok(s) if s == MARKER_CONTENT => {}
            Ok(_) => return Err(StoreError::Version(dir.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoState(dir.to_path_buf()))
            }
            Err(e) => return Err(io_at(&dir.join(MARKER))(e)),
        }
        fs::create_dir_all(dir.join("staging")).map_err(io_at(dir))?;
        let mut facts = HashMap::new();
        for f in read_lines::<FileFacts>(&dir.join("segments.jsonl"))? {
            facts.insert(f.path.clone(), f);
        }
        let mut origins = HashMap::new();
        for o in read_lines::<OriginRecord>(&dir.join("origins.jsonl"))? {
            origins.insert(o.path, o.peer);
        }
        Ok(State {
            dir: dir.to_path_buf(),
            facts: Mutex::new(facts),
            origins: Mutex::new(origins),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join("staging")
    }

    /// Takes the state's lock for a writer; fails at once if another holds
    /// it.
    pub fn lock(&self) -> Result<File, StoreError> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_at(&p))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(self.dir.clone())),
            Err(fs::TryLockError::Error(e)) => Err(io_at(&p)(e)),
        }
    }

    /// What is known of the file at `path`, if it has not changed since.
    pub fn facts(&self, path: &Path, len: u64, mtime_ns: i64) -> Option<FileFacts> {
        let facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        facts
            .get(path)
            .filter(|f| f.len == len && f.mtime_ns == mtime_ns)
            .cloned()
    }

    /// What the file at `path` (`len` bytes, modified at `mtime_ns`) is:
    /// from the cache, else read from its container and remembered. The
    /// flag says it was read now (so a problem is reported once).
    pub fn facts_or_read(&self, path: &Path, len: u64, mtime_ns: i64) -> (FileFacts, bool) {
        if let Some(k) = self.facts(path, len, mtime_ns) {
            return (k, false);
        }
        let (duration_us, not_a_segment) = match crate::store::media::duration_us(path) {
            Ok(d) => (d, None),
            Err(why) => (None, Some(why)),
        };
        let k = FileFacts {
            path: path.to_path_buf(),
            len,
            mtime_ns,
            duration_us,
            blake3: None,
            not_a_segment,
        };
        if let Err(e) = self.remember(k.clone()) {
            tracing::warn!("{e}");
        }
        (k, true)
    }

    /// Notes the BLAKE3 of a file just read whole, so it is hashed once.
    pub fn remember_hash(&self, mut k: FileFacts, hash: blake3::Hash) {
        k.blake3 = Some(hash.to_hex().to_string());
        if let Err(e) = self.remember(k) {
            tracing::warn!("{e}");
        }
    }

    /// Remembers what a file was found to be.
    pub fn remember(&self, f: FileFacts) -> Result<(), StoreError> {
        {
            let mut facts = self.facts.lock().unwrap_or_else(|p| p.into_inner());
            if facts.get(&f.path) == Some(&f) {
                return Ok(());
            }
            facts.insert(f.path.clone(), f.clone());
        }
        append_line(&self.dir.join("segments.jsonl"), &f, false)
    }

    /// The peer a file was backfilled from, if it was.
    pub fn origin_of(&self, path: &Path) -> Option<String> {
        let origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.get(path).cloned()
    }

    /// Records, durably, that `o.path` was backfilled.
    pub fn record_origin(&self, o: OriginRecord) -> Result<(), StoreError> {
        append_line(&self.dir.join("origins.jsonl"), &o, true)?;
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        origins.insert(o.path, o.peer);
        Ok(())
    }
}

/// A file's modification time in nanoseconds since the epoch.
pub fn mtime_ns(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_and_origins_survive_a_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        State::init(dir.path()).unwrap();
        let s = State::open(dir.path()).unwrap();
        let f = FileFacts {
            path: "/r/a.ts".into(),
            len: 10,
            mtime_ns: 5,
            duration_us: Some(2_000_000),
            blake3: None,
            not_a_segment: None,
        };
        s.remember(f.clone()).unwrap();
        s.record_origin(OriginRecord {
            path: "/r/a.ts".into(),
            camera: "a".into(),
            start_us: 1,
            len: 10,
            blake3: "00".into(),
            peer: "rs01".into(),
        })
        .unwrap();
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join("segments.jsonl"))
            .unwrap();
        log.write_all(b"{\"p\":\"/r/b.ts\",\"len\"").unwrap();
        let s = State::open(dir.path()).unwrap();
        assert_eq!(s.facts(Path::new("/r/a.ts"), 10, 5), Some(f));
        assert_eq!(s.facts(Path::new("/r/a.ts"), 11, 5), None);
        assert_eq!(s.origin_of(Path::new("/r/a.ts")).as_deref(), Some("rs01"));
        let _lock = s.lock().unwrap();
        assert!(matches!(s.lock(), Err(StoreError::Locked(_))));
    }

    #[test]
    fn a_folder_without_the_marker_is_refused_and_nothing_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        assert!(matches!(State::open(&state), Err(StoreError::NoState(_))));
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    }
}
