//! What Frigate leaves on disk, for the tests: a database with its
//! `recordings` table (the DDL its migrations make) and real MP4 segments
//! that Debian's `ffmpeg` encodes and remuxes with `+faststart`, in
//! Frigate's layout `YYYY-MM-DD/HH/<camera>/MM.SS.mp4` (UTC), the rows naming
//! them as Frigate's container sees them.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

use crate::common::files_ending;
use crate::common::media::{self, Container};
pub use crate::common::media::{ffprobe_duration, no_ffmpeg};

/// ffmpeg encodes `n` 10-second MP4 segments, remuxed with `+faststart` as
/// Frigate does.
pub fn encode(dir: &Path, source: &str, n: usize) -> Vec<PathBuf> {
    media::encode(dir, source, n, Container::Mp4)
}

pub const IN_DB: &str = "/media/frigate/recordings";

/// Frigate's `recordings` table as its migrations leave it (0.14 to 0.17:
/// 003, 006, 012, 017, 018, 020, 023), in WAL mode as Frigate opens it.
pub const DDL: &str = r#"
CREATE TABLE "recordings" (
    "id" VARCHAR(30) NOT NULL PRIMARY KEY,
    "camera" VARCHAR(20) NOT NULL,
    "path" VARCHAR(255) NOT NULL,
    "start_time" DATETIME NOT NULL,
    "end_time" DATETIME NOT NULL,
    "duration" REAL NOT NULL,
    "motion" INTEGER,
    "objects" INTEGER,
    "segment_size" REAL NOT NULL,
    "dBFS" INTEGER,
    "regions" INTEGER
);
CREATE INDEX "recordings_camera" ON "recordings" ("camera");
CREATE UNIQUE INDEX "recordings_path" ON "recordings" ("path");
CREATE INDEX "recordings_camera_segment_size" ON "recordings" ("camera", "segment_size");
CREATE INDEX "recordings_camera_start_time_end_time" ON "recordings" ("camera", "start_time" DESC, "end_time" DESC);
CREATE INDEX "recordings_api_recordings_summary" ON "recordings" ("camera", "start_time" DESC, "duration", "motion", "objects");
CREATE INDEX "recordings_start_time" ON "recordings" ("start_time");
"#;

/// Frigate's name for `camera`'s segment starting at `secs`, relative to
/// the recordings folder.
pub fn layout(camera: &str, secs: i64) -> String {
    let stamp = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d/%H %M.%S"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stamp.stdout);
    let (hour, min_sec) = text.trim().split_once(' ').unwrap();
    format!("{hour}/{camera}/{min_sec}.mp4")
}

/// One row of the `recordings` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub camera: String,
    pub path: String,
    pub start: f64,
    pub end: f64,
    pub duration: f64,
    pub motion: Option<i64>,
    pub objects: Option<i64>,
    pub dbfs: Option<i64>,
    pub regions: Option<i64>,
    pub segment_size: f64,
}

pub fn rows(db: &Path) -> Vec<Row> {
    let conn = Connection::open(db).unwrap();
    let mut st = conn
        .prepare(
            "SELECT id, camera, path, start_time, end_time, duration, motion, objects, dBFS, regions, segment_size FROM recordings ORDER BY camera, start_time",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok(Row {
            id: r.get(0)?,
            camera: r.get(1)?,
            path: r.get(2)?,
            start: r.get(3)?,
            end: r.get(4)?,
            duration: r.get(5)?,
            motion: r.get(6)?,
            objects: r.get(7)?,
            dbfs: r.get(8)?,
            regions: r.get(9)?,
            segment_size: r.get(10)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A Frigate server on disk: its recordings folder and database.
pub struct Frigate {
    pub rec: PathBuf,
    pub db: PathBuf,
}

impl Frigate {
    pub fn at(dir: &Path) -> Frigate {
        let rec = dir.join("media/recordings");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::create_dir_all(dir.join("config")).unwrap();
        let db = dir.join("config/frigate.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(DDL).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        Frigate { rec, db }
    }

    /// Records `file` as `camera`'s segment starting at `start`: the file
    /// in place, then its row, as Frigate's recording maintainer does.
    pub fn record(&self, camera: &str, start: i64, file: &Path, k: i64) {
        let rel = layout(camera, start);
        let to = self.rec.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file, &to).unwrap();
        let duration = ffprobe_duration(&to);
        let size = std::fs::metadata(&to).unwrap().len() as f64 / 1_048_576.0;
        let conn = Connection::open(&self.db).unwrap();
        conn.execute(
            "INSERT INTO recordings (id, camera, path, start_time, end_time, duration, motion, objects, segment_size, dBFS, regions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                format!("{start}.0-{:06}", k),
                camera,
                format!("{IN_DB}/{rel}"),
                start as f64,
                start as f64 + duration,
                duration,
                3 * k,
                k % 2,
                (size * 100.0).round() / 100.0,
                -40 - k,
                2,
            ],
        )
        .unwrap();
    }

    /// Every file under the recordings folder: relative path to BLAKE3.
    pub fn files(&self) -> BTreeMap<String, String> {
        files_ending(&self.rec, "mp4")
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(&self.rec).unwrap().display().to_string();
                let h = blake3::hash(&std::fs::read(&f).unwrap())
                    .to_hex()
                    .to_string();
                (rel, h)
            })
            .collect()
    }

    /// No row without its file, no path or start twice, and (if `whole`)
    /// no file without its row: a crash may leave one, which the next run
    /// gives its row.
    pub fn check_consistent(&self, whole: bool) {
        let rows = rows(&self.db);
        let files = self.files();
        let named: BTreeSet<String> = rows
            .iter()
            .map(|r| {
                r.path
                    .strip_prefix(&format!("{IN_DB}/"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(named.len(), rows.len(), "a path twice: {rows:#?}");
        let starts: BTreeSet<(String, i64)> = rows
            .iter()
            .map(|r| (r.camera.clone(), (r.start * 1000.0).round() as i64))
            .collect();
        assert_eq!(starts.len(), rows.len(), "a segment twice: {rows:#?}");
        let on_disk: BTreeSet<String> = files.keys().cloned().collect();
        let all = files_ending(&self.rec, "mp4").len();
        let mut stack = vec![self.rec.clone()];
        let mut every = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    every += 1;
                }
            }
        }
        assert_eq!(
            every, all,
            "a file that is not a segment in Frigate's folder"
        );
        let missing: Vec<&String> = named.difference(&on_disk).collect();
        assert!(missing.is_empty(), "rows without their file: {missing:?}");
        if whole {
            assert_eq!(named, on_disk, "files without their row");
        }
    }
}
