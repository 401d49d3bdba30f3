//! The configuration file (TOML). Every error names the file, and where
//! the TOML parser can, the line; relative paths resolve against the
//! config file's folder.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::camera::CameraId;
use crate::identity::valid_id;
use crate::store::pattern::SegmentPattern;
use crate::throttle::schedule::{self, Limits, Schedule, Window};
use crate::units;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    server: ServerSection,
    #[serde(default)]
    peer: Vec<PeerSection>,
    #[serde(default)]
    camera: Vec<CameraSection>,
    #[serde(default)]
    throttle: ThrottleSection,
    recorder: Option<RecorderSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecorderSection {
    #[serde(default = "default_kind")]
    kind: String,
    path: Option<PathBuf>,
    pattern: Option<String>,
    seam: Option<String>,
    settle: Option<String>,
    db: Option<PathBuf>,
    db_recordings: Option<PathBuf>,
    retain_days: Option<f64>,
    busy_timeout: Option<String>,
}

fn default_kind() -> String {
    "native".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleSection {
    max_rate: Option<String>,
    max_disk_rate: Option<String>,
    adaptive_disk: Option<bool>,
    utc_offset: Option<String>,
    #[serde(default)]
    window: Vec<WindowSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    hours: String,
    max_rate: Option<String>,
    max_disk_rate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    name: String,
    listen: SocketAddr,
    store: Option<PathBuf>,
    state: Option<PathBuf>,
    key: PathBuf,
    cert: PathBuf,
    #[serde(default = "default_retention")]
    retention: String,
    #[serde(default = "default_reserve")]
    reserve: String,
    #[serde(default)]
    congestion: Congestion,
    #[serde(default = "default_status")]
    status: String,
    /// A file holding the token the HTTP side asks of every request.
    status_token_file: Option<PathBuf>,
}

fn default_status() -> String {
    DEFAULT_STATUS_ADDR.into()
}

/// Where the daemon serves `/metrics` and `/status` unless `[server]
/// status` says otherwise: this machine only.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:9402";

fn default_retention() -> String {
    "30d".into()
}
fn default_reserve() -> String {
    "10GiB".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    name: String,
    addr: SocketAddr,
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraSection {
    id: String,
    servers: Vec<String>,
    #[serde(default)]
    ha: HaMode,
    name: Option<String>,
    ip: Option<IpAddr>,
    #[serde(default)]
    names: BTreeMap<String, String>,
}

/// The congestion controller of the sending side (the serving peer sends
/// the bulk of the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Less than best effort: yields to live streams ([`crate::transfer::ledbat`]).
    #[default]
    Ledbat,
    /// quinn's CUBIC: competes as TCP does.
    Cubic,
    /// quinn's BBR (experimental in quinn).
    Bbr,
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Congestion::Ledbat => "ledbat",
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        })
    }
}

/// How a camera's recording is shared among its servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HaMode {
    /// One server records it; a second recording is an unintended extra
    /// stream (a warning).
    #[default]
    None,
    /// Every listed server records it; any that does not is an alert.
    ActiveActive,
    /// The first records it, the others take over; an alert only when no
    /// server records it.
    ActivePassive,
}

impl std::fmt::Display for HaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HaMode::None => "none",
            HaMode::ActiveActive => "active-active",
            HaMode::ActivePassive => "active-passive",
        })
    }
}

impl std::str::FromStr for HaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(HaMode::None),
            "active-active" => Ok(HaMode::ActiveActive),
            "active-passive" => Ok(HaMode::ActivePassive),
            other => Err(format!(
                "HA mode {other:?}: expected none, active-active or active-passive"
            )),
        }
    }
}

/// A loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub name: String,
    pub listen: SocketAddr,
    /// The native store's folder; with another recorder, the recorder's
    /// folder (whose device the disk throttle watches).
    pub store: PathBuf,
    /// hafill's own state beside the recorder (`[server] state`).
    pub state: PathBuf,
    pub recorder: RecorderConfig,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub retention_us: u64,
    pub reserve_bytes: u64,
    pub peers: Vec<Peer>,
    pub cameras: Vec<CameraRule>,
    /// The congestion controller this server sends with.
    pub congestion: Congestion,
    pub throttle: Throttle,
    /// The HTTP side (`/`, `/metrics`, `/status`, ...); None: off.
    pub status: Option<SocketAddr>,
    /// What every request to the HTTP side must carry, once set (`[server]
    /// status_token_file`); required when `status` is not a loopback
    /// address.
    pub status_token: Option<Token>,
}

/// Shortest token the HTTP side accepts.
pub const MIN_TOKEN_LEN: usize = 16;

/// A secret: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Whether `given` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// How backfill yields to live recording (`[throttle]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// Caps by time of day; outside every window, `max_rate` and
    /// `max_disk_rate`.
    pub schedule: Schedule,
    /// AIMD on the store device's busy time and our write latency.
    pub adaptive_disk: bool,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            schedule: Schedule::default(),
            adaptive_disk: true,
        }
    }
}

/// Which recorder's files hafill works beside (`[recorder]`).
#[derive(Debug, Clone, PartialEq)]
pub enum RecorderConfig {
    /// hafill's own store at `[server] store`.
    Native,
    /// A folder of segment files named by `pattern`.
    Segments {
        path: PathBuf,
        pattern: SegmentPattern,
        /// Holes in the local recording shorter than this are seams, not
        /// gaps.
        seam_us: u64,
        /// A camera's newest file is offered only once it has not changed
        /// for this long (before, the recorder may still be writing it).
        settle_us: u64,
    },
    /// Frigate NVR: its recordings folder and its SQLite database.
    Frigate(FrigateConfig),
}

/// `[recorder] kind = "frigate"`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrigateConfig {
    /// Frigate's recordings folder, as this machine sees it.
    pub path: PathBuf,
    /// Frigate's database (`database.path`; `/config/frigate.db` in its
    /// container).
    pub db: PathBuf,
    /// The recordings folder as Frigate names it in the `path` column
    /// (`/media/frigate/recordings` in its container).
    pub db_recordings: PathBuf,
    /// Holes in the local recording shorter than this are seams.
    pub seam_us: u64,
    /// A camera whose newest segment ended within this is still recording:
    /// Frigate moves a segment out of its cache some seconds after it ends.
    pub settle_us: u64,
    /// How long an install waits for Frigate's write lock, in all.
    pub busy_timeout_us: u64,
}

/// Default of `[recorder] seam`.
pub const DEFAULT_SEAM: &str = "2s";
/// Default of `[recorder] settle`.
pub const DEFAULT_SETTLE: &str = "30s";
/// Default of `[recorder] settle` for Frigate.
pub const DEFAULT_FRIGATE_SETTLE: &str = "3m";
/// Default of `[recorder] busy_timeout`: Frigate's own (60 s at least).
pub const DEFAULT_BUSY_TIMEOUT: &str = "60s";
/// Default of `[recorder] db_recordings`: the folder in Frigate's
/// container.
pub const DEFAULT_DB_RECORDINGS: &str = "/media/frigate/recordings";

impl RecorderConfig {
    /// Holes in the local recording shorter than this are seams, not gaps.
    pub fn seam_us(&self) -> u64 {
        match self {
            RecorderConfig::Native => 0,
            RecorderConfig::Segments { seam_us, .. } => *seam_us,
            RecorderConfig::Frigate(f) => f.seam_us,
        }
    }

    /// The recorder's own folder (None: the native store's).
    pub fn folder(&self) -> Option<&Path> {
        match self {
            RecorderConfig::Native => None,
            RecorderConfig::Segments { path, .. } => Some(path),
            RecorderConfig::Frigate(f) => Some(&f.path),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub id: String,
}

/// Which servers record the cameras whose id matches `pattern`, and how.
#[derive(Debug, Clone)]
pub struct CameraRule {
    pub pattern: String,
    matcher: GlobMatcher,
    /// The first is the camera's primary server (where viewers look first).
    pub servers: Vec<String>,
    pub ha: HaMode,
    pub name: Option<String>,
    pub ip: Option<IpAddr>,
    /// The camera's name on each server where it is not `pattern`.
    pub names: BTreeMap<String, CameraId>,
}

/// A server name: 1 to 64 ASCII letters, digits, `-`, `_` or `.`, not
/// starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let s = file.server;
        if !valid_name(&s.name) {
            return Err(invalid(format!(
                "[server] name {:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'",
                s.name
            )));
        }
        let retention_us = units::parse_duration_micros(&s.retention)
            .map_err(|e| invalid(format!("[server] retention: {e}")))?;
        let reserve_bytes =
            units::parse_size(&s.reserve).map_err(|e| invalid(format!("[server] reserve: {e}")))?;
        let mut names = vec![s.name.clone()];
        let mut peers = Vec::new();
        for p in file.peer {
            if !valid_name(&p.name) {
                return Err(invalid(format!(
                    "[[peer]] name {:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'",
                    p.name
                )));
            }
            if names.contains(&p.name) {
                return Err(invalid(format!("[[peer]] name {:?} is used twice", p.name)));
            }
            if !valid_id(&p.id) {
                return Err(invalid(format!(
                    "[[peer]] {}: id must be the 64 lowercase hex characters `hafill keygen` printed for it",
                    p.name
                )));
            }
            if let Some(other) = peers.iter().find(|o: &&Peer| o.id == p.id) {
                // One key under two names would get the pairings of one of
                // them only: refuse, and say where.
                let line = text
                    .match_indices(p.id.as_str())
                    .nth(1)
                    .map(|(at, _)| text[..at].lines().count().max(1))
                    .map_or(String::new(), |l| format!(" (line {l})"));
                return Err(invalid(format!(
                    "[[peer]] {}{line}: id is also peer {}'s; each peer has its own key (`hafill keygen` on that server prints it)",
                    p.name, other.name
                )));
            }
            names.push(p.name.clone());
            peers.push(Peer {
                name: p.name,
                addr: p.addr,
                id: p.id,
            });
        }
        let mut cameras = Vec::new();
        for c in file.camera {
            let glob =
                Glob::new(&c.id).map_err(|e| invalid(format!("[[camera]] id {:?}: {e}", c.id)))?;
            for srv in &c.servers {
                if !names.contains(srv) {
                    return Err(invalid(format!(
                        "[[camera]] {}: server {srv:?} is neither [server] nor a [[peer]]",
                        c.id
                    )));
                }
            }
            let mut seen = Vec::new();
            for srv in &c.servers {
                if seen.contains(&srv) {
                    return Err(invalid(format!(
                        "[[camera]] {}: server {srv:?} is listed twice",
                        c.id
                    )));
                }
                seen.push(srv);
            }
            let mut local_names = BTreeMap::new();
            for (srv, local) in &c.names {
                if !names.contains(srv) {
                    return Err(invalid(format!(
                        "[[camera]] {}: names: server {srv:?} is neither [server] nor a [[peer]]",
                        c.id
                    )));
                }
                if c.id.contains(['*', '?', '[', '{']) {
                    return Err(invalid(format!(
                        "[[camera]] {}: names apply to one camera; give its exact id instead of a pattern",
                        c.id
                    )));
                }
                let local = CameraId::new(local.clone())
                    .map_err(|e| invalid(format!("[[camera]] {}: names.{srv}: {e}", c.id)))?;
                local_names.insert(srv.clone(), local);
            }
            for (srv, local) in &local_names {
                let clash = cameras.iter().find(|r: &&CameraRule| {
                    r.names.get(srv) == Some(local)
                        || (r.pattern == local.as_str() && !r.names.contains_key(srv))
                });
                if let Some(other) = clash {
                    return Err(invalid(format!(
                        "[[camera]] {}: names.{srv} = {:?} is also what {srv} calls {}; one name on a server is one camera",
                        c.id, local.as_str(), other.pattern
                    )));
                }
            }
            cameras.push(CameraRule {
                pattern: c.id,
                matcher: glob.compile_matcher(),
                servers: c.servers,
                ha: c.ha,
                name: c.name,
                ip: c.ip,
                names: local_names,
            });
        }
        if let Some(m) = renamed_onto_kept_name(&cameras) {
            return Err(invalid(m));
        }
        let throttle =
            parse_throttle(file.throttle).map_err(|m| invalid(format!("[throttle] {m}")))?;
        let status = match s.status.trim() {
            "off" | "none" | "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "[server] status {a:?}: expected an address such as \"{DEFAULT_STATUS_ADDR}\", or \"off\""
                ))
            })?),
        };
        let status_token = match &s.status_token_file {
            None => None,
            Some(f) => {
                let f = resolve(f);
                let t = std::fs::read_to_string(&f).map_err(|e| {
                    invalid(format!("[server] status_token_file {}: {e}", f.display()))
                })?;
                let t = t.trim();
                if t.len() < MIN_TOKEN_LEN
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
                {
                    return Err(invalid(format!(
                        "[server] status_token_file {}: the token must be at least {MIN_TOKEN_LEN} of A-Z a-z 0-9 - _ . ~ (for example `openssl rand -hex 24`)",
                        f.display()
                    )));
                }
                Some(Token(t.to_string()))
            }
        };
        if let (Some(a), None) = (status, &status_token) {
            if !a.ip().is_loopback() {
                return Err(invalid(format!(
                    "[server] status {a}: serving the HTTP side beyond this machine needs a token: set [server] status_token_file, or keep status on {DEFAULT_STATUS_ADDR}"
                )));
            }
        }
        let state = s.state.as_deref().map(resolve);
        let (recorder, store, retain_us) = match file.recorder {
            None => (RecorderConfig::Native, None, None),
            Some(r) => {
                parse_recorder(r, &resolve).map_err(|m| invalid(format!("[recorder] {m}")))?
            }
        };
        // What the recorder deletes at once is not fetched.
        let retention_us = retain_us.map_or(retention_us, |r| r.min(retention_us));
        let store = match (store, &s.store) {
            (Some(dir), _) => dir,
            (None, Some(st)) => resolve(st),
            (None, None) => {
                return Err(invalid(
                    "[server] store is missing: the native store's folder (or give a [recorder] section with kind and path)".into(),
                ))
            }
        };
        let state = match (&recorder, state) {
            (_, Some(st)) => st,
            (RecorderConfig::Native, None) => store.join("hafill-state"),
            (_, None) => {
                return Err(invalid(
                    "[server] state is missing: the folder for hafill's own state beside the recorder (hashes, reservations, partial fetches), on the recorder's filesystem".into(),
                ))
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            name: s.name,
            listen: s.listen,
            store,
            state,
            recorder,
            key: resolve(&s.key),
            cert: resolve(&s.cert),
            retention_us,
            reserve_bytes,
            peers,
            cameras,
            congestion: s.congestion,
            throttle,
            status,
            status_token,
        })
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The servers recording `camera`: the first `[[camera]]` rule that
    /// matches decides.
    pub fn servers_of(&self, camera: &CameraId) -> Option<&[String]> {
        self.rule_of(camera).map(|r| r.servers.as_slice())
    }

    /// The `[[camera]]` rule that decides for `camera`.
    pub fn rule_of(&self, camera: &CameraId) -> Option<&CameraRule> {
        self.cameras
            .iter()
            .find(|r| r.matcher.is_match(camera.as_str()))
    }

    /// Every server name this config knows: this one, then the peers.
    pub fn server_names(&self) -> Vec<String> {
        std::iter::once(self.name.clone())
            .chain(self.peers.iter().map(|p| p.name.clone()))
            .collect()
    }

    /// The name `server` gives the camera whose id is `id`: its
    /// `[[camera]]` rule's `names`, wherever that rule stands.
    pub fn name_on(&self, id: &CameraId, server: &str) -> CameraId {
        self.cameras
            .iter()
            .find(|r| r.pattern == id.as_str())
            .and_then(|r| r.names.get(server))
            .cloned()
            .unwrap_or_else(|| id.clone())
    }

    /// This server's own name for the camera whose id is `id`.
    pub fn local_name(&self, id: &CameraId) -> CameraId {
        self.name_on(id, &self.name)
    }

    /// The id of the camera this server calls `local`.
    pub fn id_of_local(&self, local: &CameraId) -> CameraId {
        self.cameras
            .iter()
            .find(|r| r.names.get(&self.name) == Some(local))
            .and_then(|r| CameraId::new(r.pattern.clone()).ok())
            .unwrap_or_else(|| local.clone())
    }

    /// Whether `camera` is paired between this server and `peer`. A
    /// camera whose name here another camera takes (`cam-*` paired, and
    /// `cam-9` called `cam-1` here) is not: its recordings and the other's
    /// would be one folder.
    pub fn paired_with(&self, camera: &CameraId, peer: &str) -> bool {
        self.servers_of(camera)
            .is_some_and(|s| s.contains(&self.name) && s.iter().any(|x| x == peer))
            && !self.name_taken(camera)
    }

    /// Whether this server's name for `camera` is another camera's.
    pub fn name_taken(&self, camera: &CameraId) -> bool {
        self.id_of_local(&self.local_name(camera)) != *camera
    }
}

/// A camera renamed on a server must not take the name another camera
/// keeps there. With `cam-1` and `cam-9` recorded on rs01 and `cam-9`
/// called `cam-1` on rs01, the camera `cam-1` keeps its name on rs01 too,
/// and the two would fill one folder; the rules may stand in either order,
/// and `cam-1` may be paired by a pattern. Returns the error, if any.
fn renamed_onto_kept_name(cameras: &[CameraRule]) -> Option<String> {
    for r in cameras {
        for (srv, local) in &r.names {
            if r.pattern == local.as_str() {
                continue;
            }
            // The rule that pairs the camera whose id is `local`, if a
            // rule names it exactly (a pattern may match an id no camera
            // has: `paired_with` refuses such a camera if it appears).
            let Some(other) = cameras.iter().find(|x| x.matcher.is_match(local.as_str())) else {
                continue;
            };
            let exact = cameras.iter().any(|x| x.pattern == local.as_str());
            if !exact || !other.servers.contains(srv) {
                continue;
            }
            // That camera keeps its id as its name on `srv` unless an
            // exact rule renames it there.
            let renamed = cameras
                .iter()
                .any(|x| x.pattern == local.as_str() && x.names.contains_key(srv));
            if !renamed {
                return Some(format!(
                    "[[camera]] {}: names.{srv} = {:?} is also the name of the camera {} on {srv} ([[camera]] {} records it there); one name on a server is one camera",
                    r.pattern, local.as_str(), local.as_str(), other.pattern
                ));
            }
        }
    }
    None
}

/// The recorder, the folder it writes, and how long it keeps recordings
/// (if it says).
type ParsedRecorder = (RecorderConfig, Option<PathBuf>, Option<u64>);

fn parse_recorder(
    r: RecorderSection,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<ParsedRecorder, String> {
    let only = |key: &str, set: bool, kind: &str| {
        if set {
            Err(format!("{key}: only for kind = \"{kind}\""))
        } else {
            Ok(())
        }
    };
    let dur = |key: &str, v: Option<&str>, default: &str| {
        units::parse_duration_micros(v.unwrap_or(default)).map_err(|e| format!("{key}: {e}"))
    };
    if r.kind != "frigate" {
        only("db", r.db.is_some(), "frigate")?;
        only("db_recordings", r.db_recordings.is_some(), "frigate")?;
        only("retain_days", r.retain_days.is_some(), "frigate")?;
        only("busy_timeout", r.busy_timeout.is_some(), "frigate")?;
    }
    match r.kind.as_str() {
        "native" => {
            only("pattern", r.pattern.is_some(), "segments")?;
            Ok((RecorderConfig::Native, r.path.as_deref().map(resolve), None))
        }
        "frigate" => {
            only("pattern", r.pattern.is_some(), "segments")?;
            let path = resolve(r.path.as_deref().ok_or(
                "path is missing: Frigate's recordings folder as this machine sees it (in Frigate's container, /media/frigate/recordings)",
            )?);
            let db = resolve(r.db.as_deref().ok_or(
                "db is missing: Frigate's database file (its database.path; in Frigate's container, /config/frigate.db)",
            )?);
            let db_recordings = r
                .db_recordings
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DB_RECORDINGS));
            if !db_recordings.is_absolute() {
                return Err(format!(
                    "db_recordings {:?}: must be absolute (the recordings folder as Frigate's rows name it)",
                    db_recordings.display()
                ));
            }
            let retain_us = match r.retain_days {
                None => return Err(
                    "retain_days is missing: the larger of Frigate's record.continuous.days and record.motion.days (hafill would otherwise fetch what Frigate deletes every hour)".into(),
                ),
                Some(d) if d.is_finite() && d > 0.0 && d <= 36_500.0 => {
                    Some((d * 86_400_000_000.0) as u64)
                }
                Some(d) => {
                    return Err(format!(
                        "retain_days {d}: expected a number of days above 0 (Frigate's record.continuous.days or record.motion.days, whichever is larger)"
                    ))
                }
            };
            let f = FrigateConfig {
                path: path.clone(),
                db,
                db_recordings,
                seam_us: dur("seam", r.seam.as_deref(), DEFAULT_SEAM)?,
                settle_us: dur("settle", r.settle.as_deref(), DEFAULT_FRIGATE_SETTLE)?,
                busy_timeout_us: dur("busy_timeout", r.busy_timeout.as_deref(), DEFAULT_BUSY_TIMEOUT)?,
            };
            Ok((RecorderConfig::Frigate(f), Some(path), retain_us))
        }
        "segments" => {
            let path = resolve(
                r.path
                    .as_deref()
                    .ok_or("path is missing: the recorder's folder")?,
            );
            let text = r.pattern.as_deref().ok_or(
                "pattern is missing: how the recorder names its files, e.g. \"{camera}/%Y%m%d-%H%M%S.ts\"",
            )?;
            let pattern = SegmentPattern::parse(text).map_err(|e| format!("pattern: {e}"))?;
            let seam_us = dur("seam", r.seam.as_deref(), DEFAULT_SEAM)?;
            let settle_us = dur("settle", r.settle.as_deref(), DEFAULT_SETTLE)?;
            Ok((
                RecorderConfig::Segments {
                    path: path.clone(),
                    pattern,
                    seam_us,
                    settle_us,
                },
                Some(path),
                None,
            ))
        }
        other => Err(format!(
            "kind {other:?}: expected \"native\" (hafill's own store), \"segments\" (a folder of files named by a pattern: ffmpeg, MediaMTX) or \"frigate\" (Frigate NVR: its recordings folder and database)"
        )),
    }
}

fn parse_throttle(t: ThrottleSection) -> Result<Throttle, String> {
    let net = |v: &Option<String>| {
        v.as_deref()
            .map(schedule::parse_net_cap)
            .transpose()
            .map(Option::flatten)
    };
    let disk = |v: &Option<String>| {
        v.as_deref()
            .map(schedule::parse_disk_cap)
            .transpose()
            .map(Option::flatten)
    };
    let default = Limits {
        net: net(&t.max_rate).map_err(|e| format!("max_rate {e}"))?,
        disk: disk(&t.max_disk_rate).map_err(|e| format!("max_disk_rate {e}"))?,
    };
    let mut windows = Vec::new();
    for w in &t.window {
        let (from_minute, to_minute) = schedule::parse_hours(&w.hours)
            .map_err(|e| format!("[[throttle.window]] hours {e}"))?;
        // A window caps only what it names; the rest is uncapped in it.
        let limits = Limits {
            net: net(&w.max_rate)
                .map_err(|e| format!("[[throttle.window]] {}: max_rate {e}", w.hours))?,
            disk: disk(&w.max_disk_rate)
                .map_err(|e| format!("[[throttle.window]] {}: max_disk_rate {e}", w.hours))?,
        };
        windows.push(Window {
            from_minute,
            to_minute,
            limits,
        });
    }
    let utc_offset_minutes = t
        .utc_offset
        .as_deref()
        .map(schedule::parse_utc_offset)
        .transpose()
        .map_err(|e| format!("utc_offset {e}"))?
        .unwrap_or(0);
    Ok(Throttle {
        schedule: Schedule {
            default,
            windows,
            utc_offset_minutes,
        },
        adaptive_disk: t.adaptive_disk.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn cfg(extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nname = \"rs02\"\nlisten = \"127.0.0.1:7402\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\n\n\
             [[peer]]\nname = \"rs01\"\naddr = \"127.0.0.1:7401\"\nid = \"{ID}\"\n{extra}"
        );
        Config::parse(&text, Path::new("/etc/hafill/rs02.toml"))
    }

    #[test]
    fn loads_and_resolves_paths() {
        let c = cfg("[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n").unwrap();
        assert_eq!(c.store, Path::new("/etc/hafill/store"));
        assert_eq!(c.retention_us, 30 * 86_400_000_000);
        assert!(c.paired_with(&CameraId::new("cam-0001").unwrap(), "rs01"));
        assert!(!c.paired_with(&CameraId::new("lobby").unwrap(), "rs01"));
    }

    #[test]
    fn the_http_side_beyond_loopback_needs_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let server = |status: &str, token: Option<&str>| {
            let mut text = format!(
                "[server]\nname = \"rs02\"\nlisten = \"127.0.0.1:7402\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nstatus = \"{status}\"\n"
            );
            if let Some(t) = token {
                std::fs::write(dir.path().join("status.token"), t).unwrap();
                text += "status_token_file = \"status.token\"\n";
            }
            Config::parse(&text, &dir.path().join("hafill.toml"))
        };
        assert!(server("127.0.0.1:9402", None)
            .unwrap()
            .status_token
            .is_none());
        assert!(server("[::1]:9402", None).is_ok());
        let e = server("0.0.0.0:9402", None).unwrap_err().to_string();
        assert!(e.contains("status_token_file"), "{e}");
        let e = server("10.0.0.2:9402", Some("short\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
        let c = server("0.0.0.0:9402", Some("0123456789abcdef0123\n")).unwrap();
        let t = c.status_token.unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches("0123456789abcdef0124"));
        assert_eq!(format!("{t:?}"), "Token(..)", "never printed");
    }

    #[test]
    fn throttle_windows_and_congestion_load() {
        let c = cfg("[throttle]\nmax_rate = \"200Mbit\"\nutc_offset = \"+01:00\"\n\n[[throttle.window]]\nhours = \"22:00-06:00\"\nmax_rate = \"none\"\n").unwrap();
        assert_eq!(c.congestion, Congestion::Ledbat);
        assert!(c.throttle.adaptive_disk);
        assert_eq!(c.throttle.schedule.default.net, Some(25_000_000));
        assert_eq!(c.throttle.schedule.windows.len(), 1);
        assert_eq!(c.throttle.schedule.windows[0].limits.net, None);
        assert_eq!(c.throttle.schedule.utc_offset_minutes, 60);
        for example in ["hafill.example.toml", "hafill.frigate.toml"] {
            let text = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../dist")
                    .join(example),
            )
            .unwrap();
            Config::parse(&text, Path::new("/etc/hafill/hafill.toml"))
                .unwrap_or_else(|e| panic!("dist/{example}: {e}"));
        }
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_fix() {
        let e = cfg("[[camera]]\nid = \"cam-*\"\nservers = [\"rs09\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rs02.toml") && e.contains("rs09"), "{e}");
        let e = Config::parse("[server]\nname = \"x\"\nlisten = 5\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.toml") && e.contains("line 3"), "{e}");
        let e = cfg("[[peer]]\nname = \"rs03\"\naddr = \"127.0.0.1:1\"\nid = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hafill keygen"), "{e}");
        let e = cfg("[throttle]\nmax_rate = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[throttle] max_rate") && e.contains("none"),
            "{e}"
        );
        let e = cfg("[[throttle.window]]\nhours = \"22-6\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("HH:MM-HH:MM"), "{e}");
        let e = cfg("[[camera]]\nid = \"cam-*\"\nservers = []\nfoo = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn a_peer_id_given_twice_is_refused_with_its_line() {
        let e = cfg(&format!(
            "\n[[peer]]\nname = \"rs03\"\naddr = \"127.0.0.1:7403\"\nid = \"{ID}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rs02.toml")
                && e.contains("rs03")
                && e.contains("line 16")
                && e.contains("rs01"),
            "{e}"
        );
    }

    fn segments_cfg(recorder: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[server]\nname = \"rs02\"\nlisten = \"127.0.0.1:7402\"\nstate = \"state\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\n\n\
             [[peer]]\nname = \"rs01\"\naddr = \"127.0.0.1:7401\"\nid = \"{ID}\"\n\n[recorder]\n{recorder}\n\n\
             [[camera]]\nid = \"c-lobby\"\nservers = [\"rs01\", \"rs02\"]\nnames = {{ rs02 = \"lobby-2\" }}\n"
        );
        Config::parse(&text, Path::new("/etc/hafill/rs02.toml"))
    }

    #[test]
    fn a_segments_recorder_and_names_per_server() {
        let c = segments_cfg(
            "kind = \"segments\"\npath = \"/srv/rec\"\npattern = \"{camera}/%Y%m%d-%H%M%S.ts\"",
        )
        .unwrap();
        assert_eq!(c.state, Path::new("/etc/hafill/state"));
        assert_eq!(c.store, Path::new("/srv/rec"));
        let RecorderConfig::Segments { seam_us, .. } = &c.recorder else {
            panic!("{:?}", c.recorder)
        };
        assert_eq!(*seam_us, 2_000_000);
        let id = CameraId::new("c-lobby").unwrap();
        let local = CameraId::new("lobby-2").unwrap();
        assert_eq!(c.local_name(&id), local);
        assert_eq!(c.name_on(&id, "rs01"), id);
        assert_eq!(c.id_of_local(&local), id);
        assert!(c.paired_with(&id, "rs01"));
    }

    #[test]
    fn a_name_another_camera_keeps_is_refused_in_either_order() {
        let glob = "[[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n";
        let exact = "[[camera]]\nid = \"cam-1\"\nservers = [\"rs01\", \"rs02\"]\n";
        let renamed =
            "[[camera]]\nid = \"cam-9\"\nservers = [\"rs01\", \"rs02\"]\nnames = { rs02 = \"cam-1\" }\n";
        // cam-1 keeps its name on rs02 whether a pattern or its own rule
        // pairs it, before or after the rename.
        for rules in [
            [exact, renamed, glob],
            [renamed, exact, glob],
            [glob, renamed, exact],
        ] {
            let e = cfg(&format!("\n{}\n{}\n{}", rules[0], rules[1], rules[2]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("names.rs02 = \"cam-1\""), "{e}");
            assert!(e.contains("one name on a server is one camera"), "{e}");
        }
        // Not known when the config is read: whether a camera cam-1
        // exists. If one does, it is not paired (its name is cam-9's).
        let c = cfg(&format!("\n{glob}\n{renamed}")).unwrap();
        let one = CameraId::new("cam-1").unwrap();
        let nine = CameraId::new("cam-9").unwrap();
        assert!(c.name_taken(&one) && !c.paired_with(&one, "rs01"));
        assert!(!c.name_taken(&nine) && c.paired_with(&nine, "rs01"));
        // Not a clash: cam-1 is renamed too.
        let moved =
            "[[camera]]\nid = \"cam-1\"\nservers = [\"rs01\", \"rs02\"]\nnames = { rs02 = \"cam-1-old\" }\n";
        let c = cfg(&format!("\n{moved}\n{renamed}\n{glob}")).unwrap();
        assert_eq!(c.local_name(&nine), one);
        assert!(c.paired_with(&one, "rs01") && c.paired_with(&nine, "rs01"));
    }

    #[test]
    fn a_frigate_recorder_keeps_no_more_than_frigate_does() {
        let c = segments_cfg(
            "kind = \"frigate\"\npath = \"/srv/frigate/recordings\"\ndb = \"/srv/frigate/config/frigate.db\"\nretain_days = 7",
        )
        .unwrap();
        let RecorderConfig::Frigate(f) = &c.recorder else {
            panic!("{:?}", c.recorder)
        };
        assert_eq!(f.db_recordings, Path::new(DEFAULT_DB_RECORDINGS));
        assert_eq!(f.busy_timeout_us, 60_000_000);
        assert_eq!(c.store, Path::new("/srv/frigate/recordings"));
        // [server] retention is 30 days; Frigate deletes after 7.
        assert_eq!(c.retention_us, 7 * 86_400_000_000);
    }

    #[test]
    fn a_bad_recorder_section_names_the_key() {
        for (rec, key) in [
            ("kind = \"segments\"\npath = \"/srv\"\npattern = \"%Y%m%d-%H%M%S.ts\"", "{camera}"),
            ("kind = \"segments\"\npath = \"/srv\"\npattern = \"{camera}/%Y.ts\"", "%m, %d, %H, %M, %S"),
            ("kind = \"segments\"\npattern = \"{camera}/%Y%m%d-%H%M%S.ts\"", "path is missing"),
            ("kind = \"milestone\"", "kind \"milestone\""),
            ("kind = \"segments\"\npath = \"/srv\"\npattern = \"{camera}/%Y%m%d-%H%M%S.ts\"\nseam = \"soon\"", "seam"),
            ("kind = \"frigate\"\npath = \"/srv/frigate/recordings\"", "db is missing"),
            ("kind = \"frigate\"\npath = \"/r\"\ndb = \"/f.db\"", "retain_days is missing"),
            ("kind = \"frigate\"\ndb = \"/srv/frigate/frigate.db\"", "path is missing"),
            ("kind = \"frigate\"\npath = \"/r\"\ndb = \"/f.db\"\nretain_days = -1", "retain_days"),
            ("kind = \"frigate\"\npath = \"/r\"\ndb = \"/f.db\"\nretain_days = 3\ndb_recordings = \"media\"", "db_recordings"),
            ("kind = \"frigate\"\npath = \"/r\"\ndb = \"/f.db\"\npattern = \"x\"", "pattern: only for"),
            ("kind = \"segments\"\npath = \"/r\"\npattern = \"{camera}/%Y%m%d-%H%M%S.ts\"\ndb = \"/f.db\"", "db: only for"),
        ] {
            let e = segments_cfg(rec).unwrap_err().to_string();
            assert!(e.contains("rs02.toml") && e.contains("[recorder]") && e.contains(key), "{e}");
        }
    }
}
