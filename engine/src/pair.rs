//! Camera pairing: each server's camera inventory, matched by IP address
//! into camera groups, written as the config's `[[camera]]` section.
//!
//! `inventories -> pair (groups + findings) -> TOML`
//!
//! An inventory is CSV (a header row naming the columns `id`, `ip`, and
//! optionally `name` and `ha`) or JSON (an array of objects with those
//! fields, or an object whose `cameras` field is one). The IP address is
//! what identifies a camera across servers: each server names its cameras
//! itself, so one address under different ids is one camera. Its `id` (what
//! the wire calls it) is the primary's (the first inventory's) name, and
//! `names` gives each other server's own name for it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::camera::CameraId;
use crate::config::{valid_name, HaMode};

/// Largest inventory file read.
pub const MAX_INVENTORY_BYTES: u64 = 64 << 20;
/// Most cameras one inventory may list.
pub const MAX_INVENTORY_CAMERAS: usize = 1_000_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("server name {0:?}: use 1 to 64 ASCII letters, digits, '-', '_' or '.'")]
    ServerName(String),
    #[error("server {0:?} has two inventories")]
    ServerTwice(String),
}

/// One camera as one server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: CameraId,
    pub name: Option<String>,
    pub ip: IpAddr,
    pub ha: Option<HaMode>,
}

/// One server's cameras.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub server: String,
    pub entries: Vec<Entry>,
}

/// What an inventory's format is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// By extension; otherwise JSON if the text starts with `[` or `{`.
    pub fn guess(path: &Path, text: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ if text.trim_start().starts_with(['[', '{']) => Format::Json,
            _ => Format::Csv,
        }
    }
}

/// Reads `server`'s inventory from `path`.
pub fn read_inventory(server: &str, path: &Path) -> Result<Inventory, PairError> {
    if !valid_name(server) {
        return Err(PairError::ServerName(server.into()));
    }
    let read = |source| PairError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_INVENTORY_BYTES {
        return Err(PairError::Invalid {
            path: path.to_path_buf(),
            message: format!("{len} bytes; an inventory may have at most {MAX_INVENTORY_BYTES}"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let entries = parse_inventory(&text, Format::guess(path, &text)).map_err(|message| {
        PairError::Invalid {
            path: path.to_path_buf(),
            message,
        }
    })?;
    Ok(Inventory {
        server: server.into(),
        entries,
    })
}

/// Parses an inventory's text; the error names the row and the field.
pub fn parse_inventory(text: &str, format: Format) -> Result<Vec<Entry>, String> {
    let raw = match format {
        Format::Csv => parse_csv(text)?,
        Format::Json => parse_json(text)?,
    };
    if raw.len() > MAX_INVENTORY_CAMERAS {
        return Err(format!(
            "{} cameras; an inventory may list at most {MAX_INVENTORY_CAMERAS}",
            raw.len()
        ));
    }
    raw.into_iter()
        .map(|(at, r)| r.check().map_err(|e| format!("{at}: {e}")))
        .collect()
}

/// A row as written, before it is checked.
#[derive(Debug, Default, Deserialize)]
struct RawEntry {
    #[serde(alias = "camera", alias = "camera_id")]
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(alias = "ip_address", alias = "address")]
    ip: String,
    #[serde(default, alias = "ha_mode")]
    ha: Option<String>,
}

impl RawEntry {
    fn check(self) -> Result<Entry, String> {
        let id = CameraId::new(self.id.trim()).map_err(|e| e.to_string())?;
        let ip = self.ip.trim();
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("camera {id}: IP address {ip:?} is not an IPv4 or IPv6 address")
        })?;
        let ha = match self.ha.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) => Some(h.parse().map_err(|e| format!("camera {id}: {e}"))?),
        };
        let name = self
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        if let Some(n) = &name {
            if n.chars().any(char::is_control) || n.len() > 256 {
                return Err(format!(
                    "camera {id}: name {n:?} has control characters or is over 256 bytes"
                ));
            }
        }
        Ok(Entry { id, name, ip, ha })
    }
}

fn parse_csv(text: &str) -> Result<Vec<(String, RawEntry)>, String> {
    let mut rd = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let headers = rd
        .headers()
        .map_err(|e| format!("header row: {e}"))?
        .clone();
    let column = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let id_col = column(&["id", "camera", "camera_id"])
        .ok_or("the header row has no `id` column (expected: id,name,ip,ha)")?;
    let ip_col = column(&["ip", "ip_address", "address"])
        .ok_or("the header row has no `ip` column (expected: id,name,ip,ha)")?;
    let name_col = column(&["name"]);
    let ha_col = column(&["ha", "ha_mode"]);
    let mut out = Vec::new();
    for rec in rd.records() {
        let rec = rec.map_err(|e| e.to_string())?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let field = |i: Option<usize>| i.and_then(|i| rec.get(i)).map(str::to_string);
        out.push((
            format!("line {line}"),
            RawEntry {
                id: field(Some(id_col)).unwrap_or_default(),
                name: field(name_col),
                ip: field(Some(ip_col)).unwrap_or_default(),
                ha: field(ha_col),
            },
        ));
        if out.len() > MAX_INVENTORY_CAMERAS {
            break;
        }
    }
    Ok(out)
}

fn parse_json(text: &str) -> Result<Vec<(String, RawEntry)>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<RawEntry>),
        Wrapped { cameras: Vec<RawEntry> },
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| {
        format!(
            "{e} (expected an array of {{\"id\", \"ip\", \"name\", \"ha\"}} objects, or {{\"cameras\": [...]}})"
        )
    })?;
    let list = match doc {
        Doc::List(l) | Doc::Wrapped { cameras: l } => l,
    };
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("camera #{}", i + 1), r))
        .collect())
}

/// A camera group: one camera, the servers that list it, in inventory order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paired {
    pub id: CameraId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ip: IpAddr,
    pub servers: Vec<String>,
    pub ha: HaMode,
    /// The camera's name on each server that calls it other than `id`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, CameraId>,
}

/// Something an operator should look at; the TOML says it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// A camera only one server lists: nothing to pair it with.
    Mismatch {
        camera: CameraId,
        ip: IpAddr,
        server: String,
    },
    /// One IP address under different ids: one camera that the servers
    /// name differently, paired with `names` (not a problem; said so that
    /// a typo in an inventory shows).
    NamedPerServer {
        camera: CameraId,
        ip: IpAddr,
        ids: Vec<(String, CameraId)>,
    },
    /// One id at different IP addresses: left out.
    IdConflict {
        camera: CameraId,
        ips: Vec<(String, IpAddr)>,
    },
    /// A server lists one IP address twice: those entries are left out.
    DuplicateIp {
        server: String,
        ip: IpAddr,
        ids: Vec<CameraId>,
    },
    /// A server lists one id twice: those entries are left out.
    DuplicateId { server: String, camera: CameraId },
    /// The servers state different HA modes; the first stated is used.
    HaConflict {
        camera: CameraId,
        modes: Vec<(String, HaMode)>,
        chosen: HaMode,
    },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pairs = |v: &[(String, CameraId)]| {
            v.iter()
                .map(|(s, c)| format!("{c} on {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Finding::Mismatch { camera, ip, server } => {
                write!(f, "mismatch: {camera} ({ip}) is on {server} only")
            }
            Finding::NamedPerServer { camera, ip, ids } => write!(
                f,
                "named per server: {ip} is {}; paired as {camera} with names",
                pairs(ids)
            ),
            Finding::IdConflict { camera, ips } => write!(
                f,
                "id conflict: {camera} is at {}; left out",
                ips.iter()
                    .map(|(s, i)| format!("{i} on {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Finding::DuplicateIp { server, ip, ids } => write!(
                f,
                "duplicate IP on {server}: {ip} is {}; left out",
                ids.iter()
                    .map(CameraId::to_string)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            Finding::DuplicateId { server, camera } => {
                write!(
                    f,
                    "duplicate id on {server}: {camera} is listed twice; left out"
                )
            }
            Finding::HaConflict {
                camera,
                modes,
                chosen,
            } => write!(
                f,
                "HA conflict: {camera} is {}; using {chosen}",
                modes
                    .iter()
                    .map(|(s, m)| format!("{m} on {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The camera groups and what stood in the way of others.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pairing {
    pub servers: Vec<String>,
    pub cameras: Vec<Paired>,
    pub findings: Vec<Finding>,
}

/// Matches the inventories by IP address. Servers keep the order given:
/// a group's first server is the camera's primary.
pub fn pair(inventories: &[Inventory]) -> Result<Pairing, PairError> {
    let mut out = Pairing::default();
    for inv in inventories {
        if out.servers.contains(&inv.server) {
            return Err(PairError::ServerTwice(inv.server.clone()));
        }
        out.servers.push(inv.server.clone());
    }
    // Per server: entries whose IP and id are each listed once.
    let mut by_ip: BTreeMap<IpAddr, Vec<(&str, &Entry)>> = BTreeMap::new();
    for inv in inventories {
        let mut ips: BTreeMap<IpAddr, Vec<&Entry>> = BTreeMap::new();
        let mut ids: BTreeMap<&CameraId, usize> = BTreeMap::new();
        for e in &inv.entries {
            ips.entry(e.ip).or_default().push(e);
            *ids.entry(&e.id).or_default() += 1;
        }
        for (id, n) in &ids {
            if *n > 1 {
                out.findings.push(Finding::DuplicateId {
                    server: inv.server.clone(),
                    camera: (*id).clone(),
                });
            }
        }
        for (ip, es) in ips {
            if es.len() > 1 {
                let mut ids: Vec<CameraId> = es.iter().map(|e| e.id.clone()).collect();
                ids.dedup();
                out.findings.push(Finding::DuplicateIp {
                    server: inv.server.clone(),
                    ip,
                    ids,
                });
                continue;
            }
            if ids[&es[0].id] > 1 {
                continue;
            }
            by_ip.entry(ip).or_default().push((&inv.server, es[0]));
        }
    }
    // Groups, one per address, named by the first server's id; an id
    // claimed by two groups pairs neither.
    let mut groups = Vec::new();
    for (ip, members) in by_ip {
        let first = &members[0].1.id;
        if members.iter().any(|(_, e)| &e.id != first) {
            out.findings.push(Finding::NamedPerServer {
                camera: first.clone(),
                ip,
                ids: members
                    .iter()
                    .map(|(s, e)| (s.to_string(), e.id.clone()))
                    .collect(),
            });
        }
        groups.push((ip, members));
    }
    let mut id_groups: BTreeMap<&CameraId, Vec<usize>> = BTreeMap::new();
    for (i, (_, members)) in groups.iter().enumerate() {
        id_groups.entry(&members[0].1.id).or_default().push(i);
    }
    for (id, idx) in &id_groups {
        if idx.len() > 1 {
            out.findings.push(Finding::IdConflict {
                camera: (*id).clone(),
                ips: idx
                    .iter()
                    .flat_map(|&i| {
                        let (ip, members) = &groups[i];
                        members.iter().map(move |(s, _)| (s.to_string(), *ip))
                    })
                    .collect(),
            });
            continue;
        }
        let (ip, members) = &groups[idx[0]];
        let stated: Vec<(String, HaMode)> = members
            .iter()
            .filter_map(|(s, e)| e.ha.map(|h| (s.to_string(), h)))
            .collect();
        let ha = stated.first().map(|(_, h)| *h).unwrap_or_default();
        if stated.iter().any(|(_, h)| *h != ha) {
            out.findings.push(Finding::HaConflict {
                camera: (*id).clone(),
                modes: stated,
                chosen: ha,
            });
        }
        if members.len() == 1 {
            out.findings.push(Finding::Mismatch {
                camera: (*id).clone(),
                ip: *ip,
                server: members[0].0.to_string(),
            });
        }
        out.cameras.push(Paired {
            id: (*id).clone(),
            name: members.iter().find_map(|(_, e)| e.name.clone()),
            ip: *ip,
            servers: members.iter().map(|(s, _)| s.to_string()).collect(),
            ha,
            names: members
                .iter()
                .filter(|(_, e)| &e.id != *id)
                .map(|(s, e)| (s.to_string(), e.id.clone()))
                .collect(),
        });
    }
    Ok(out)
}

impl Pairing {
    /// The config's `[[camera]]` section, findings as comments on top.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Section<'a> {
            camera: &'a [Paired],
        }
        let mut text = format!(
            "# Camera pairing by `hafill pair` from the inventories of {}.\n\
             # {} cameras; the first server of each is its primary.\n",
            self.servers.join(", "),
            self.cameras.len()
        );
        if !self.findings.is_empty() {
            text += "#\n# To look at:\n";
            for f in &self.findings {
                text += &format!("# - {f}\n");
            }
        }
        text += "\n";
        if self.cameras.is_empty() {
            // `camera = []` would land in whatever table precedes it.
            text += "# No camera is listed by these inventories.\n";
            return text;
        }
        // Serializing a list of plain structs cannot fail.
        text += &toml::to_string(&Section {
            camera: &self.cameras,
        })
        .unwrap_or_default();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(server: &str, csv: &str) -> Inventory {
        Inventory {
            server: server.into(),
            entries: parse_inventory(csv, Format::Csv).unwrap(),
        }
    }

    #[test]
    fn csv_and_json_read_the_same_cameras() {
        let c = parse_inventory(
            "# exported\nid,name,ip,ha\ncam-1,Lobby,10.0.0.1,active-passive\ncam-2,,10.0.0.2,\n",
            Format::Csv,
        )
        .unwrap();
        let j = parse_inventory(
            r#"{"cameras":[{"id":"cam-1","name":"Lobby","ip":"10.0.0.1","ha":"active-passive"},{"id":"cam-2","ip":"10.0.0.2","vendor":"x"}]}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(c, j);
        assert_eq!(c[0].ha, Some(HaMode::ActivePassive));
        assert_eq!(c[1].name, None);
    }

    #[test]
    fn bad_rows_are_named() {
        let e =
            parse_inventory("id,ip\ncam-1,10.0.0.1\ncam-2,10.0.0.300\n", Format::Csv).unwrap_err();
        assert!(e.contains("line 3") && e.contains("10.0.0.300"), "{e}");
        let e = parse_inventory("id,ip\n../etc,10.0.0.1\n", Format::Csv).unwrap_err();
        assert!(e.contains("line 2") && e.contains("../etc"), "{e}");
        let e = parse_inventory("id,ip,ha\ncam-1,10.0.0.1,hot\n", Format::Csv).unwrap_err();
        assert!(e.contains("active-passive"), "{e}");
        let e = parse_inventory("name,ip\nx,10.0.0.1\n", Format::Csv).unwrap_err();
        assert!(e.contains("no `id` column"), "{e}");
        let e = parse_inventory("[{\"id\":\"cam-1\"}]", Format::Json).unwrap_err();
        assert!(e.contains("expected an array"), "{e}");
    }

    #[test]
    fn matches_by_ip_and_reports_what_does_not_match() {
        let p = pair(&[
            inv(
                "rs01",
                "id,ip,ha\ncam-1,10.0.0.1,active-active\ncam-2,10.0.0.2,\ncam-3,10.0.0.3,\ncam-4,10.0.0.4,\ncam-5,10.0.0.5,\ncam-6,10.0.0.5,\n",
            ),
            inv(
                "rs02",
                "id,ip,ha\ncam-1,10.0.0.1,active-active\ncam-9,10.0.0.3,\ncam-4,10.0.0.44,\ncam-2,10.0.0.2,active-passive\n",
            ),
        ])
        .unwrap();
        let ids: Vec<&str> = p.cameras.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["cam-1", "cam-2", "cam-3"]);
        // 10.0.0.3 is cam-3 on rs01 and cam-9 on rs02: one camera.
        assert_eq!(p.cameras[2].servers, ["rs01", "rs02"]);
        assert_eq!(
            p.cameras[2].names.get("rs02").map(CameraId::as_str),
            Some("cam-9")
        );
        assert!(p.cameras[0].names.is_empty());
        assert_eq!(p.cameras[0].servers, ["rs01", "rs02"]);
        assert_eq!(p.cameras[0].ha, HaMode::ActiveActive);
        assert_eq!(p.cameras[1].ha, HaMode::ActivePassive);
        let kinds: Vec<String> = p
            .findings
            .iter()
            .map(|f| {
                serde_json::to_value(f).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        // cam-5 and cam-6 share an IP on rs01; 10.0.0.3 is cam-3 and cam-9;
        // cam-4 moved address.
        assert!(kinds.contains(&"duplicate-ip".into()), "{kinds:?}");
        assert!(kinds.contains(&"named-per-server".into()), "{kinds:?}");
        assert!(kinds.contains(&"id-conflict".into()), "{kinds:?}");
        assert!(!kinds.contains(&"ha-conflict".into()), "{kinds:?}");
    }

    #[test]
    fn one_server_only_is_a_mismatch_and_still_listed() {
        let p = pair(&[
            inv("rs01", "id,ip\ncam-1,10.0.0.1\n"),
            inv("rs02", "id,ip\n"),
        ])
        .unwrap();
        assert_eq!(p.cameras.len(), 1);
        assert_eq!(p.cameras[0].servers, ["rs01"]);
        assert!(matches!(p.findings[0], Finding::Mismatch { .. }));
    }

    #[test]
    fn a_server_given_twice_is_refused() {
        let a = inv("rs01", "id,ip\n");
        assert!(matches!(
            pair(&[a.clone(), a]),
            Err(PairError::ServerTwice(_))
        ));
    }
}
