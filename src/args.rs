//! Value parsers for the command line. Each error says what form was
//! expected; clap adds the argument's name, and `main` prints it on one line
//! and exits with status 2 before anything is written.

use std::path::PathBuf;

use hafill_engine::store::layout::MARKER;
use hafill_engine::units::{self, Timestamp};
use hafill_engine::CameraId;

pub fn time(s: &str) -> Result<Timestamp, String> {
    Timestamp::parse(s, Timestamp::now()).map_err(|e| format!("expected {}", e.expected))
}

pub fn duration_us(s: &str) -> Result<u64, String> {
    units::parse_duration_micros(s).map_err(|e| format!("expected {}", e.expected))
}

pub fn bitrate(s: &str) -> Result<u64, String> {
    units::parse_bitrate(s).map_err(|e| format!("expected {}", e.expected))
}

pub fn range(s: &str) -> Result<(Timestamp, Timestamp), String> {
    units::parse_range(s, Timestamp::now()).map_err(|e| format!("expected {}", e.expected))
}

pub fn camera(s: &str) -> Result<CameraId, String> {
    CameraId::new(s).map_err(|e| e.to_string())
}

fn store_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("expected a directory path".into());
    }
    Ok(PathBuf::from(s))
}

/// An existing hafill store.
pub fn existing_store(s: &str) -> Result<PathBuf, String> {
    let p = store_path(s)?;
    if !p.join(MARKER).is_file() {
        return Err(format!(
            "expected a hafill store directory (one holding a {MARKER} file); {} is not one",
            p.display()
        ));
    }
    Ok(p)
}

/// A hafill store, or a directory that may become one: missing or empty.
pub fn new_or_existing_store(s: &str) -> Result<PathBuf, String> {
    let p = store_path(s)?;
    if p.exists() {
        if !p.is_dir() {
            return Err(format!("expected a directory; {} is a file", p.display()));
        }
        let empty = std::fs::read_dir(&p)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !p.join(MARKER).is_file() {
            return Err(format!(
                "expected a hafill store or an empty or new directory; {} holds other files",
                p.display()
            ));
        }
    }
    Ok(p)
}

/// A peer's name: what `origin` records and logs show.
pub fn peer_name(s: &str) -> Result<String, String> {
    if hafill_engine::config::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("expected a peer name of 1 to 64 ASCII letters, digits, '-', '_' or '.'".into())
    }
}

/// `NAME=DIR`: a peer's store read directly from disk.
pub fn peer_store(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s
        .split_once('=')
        .ok_or("expected NAME=DIR, for example rs01=/srv/rs01/store")?;
    Ok((peer_name(name)?, existing_store(dir)?))
}

pub fn size(s: &str) -> Result<u64, String> {
    units::parse_size(s).map_err(|e| format!("expected {}", e.expected))
}

pub fn block_size(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    u32::try_from(n)
        .ok()
        .filter(|n| hafill_protocol::valid_block_size(*n))
        .ok_or_else(|| "expected a power of two from 1KiB to 16MiB, such as 256KiB or 1MiB".into())
}

/// An existing config file.
pub fn config_file(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_file() {
        return Err(format!("expected a config file (TOML); {s} is not a file"));
    }
    Ok(p)
}

/// `SERVER=FILE`: a server's camera inventory (CSV or JSON).
pub fn inventory(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s
        .split_once('=')
        .ok_or("expected SERVER=FILE, for example rs01=rs01-cameras.csv")?;
    let p = PathBuf::from(file);
    if !p.is_file() {
        return Err(format!(
            "expected an inventory file (CSV or JSON); {file} is not a file"
        ));
    }
    Ok((peer_name(name)?, p))
}
