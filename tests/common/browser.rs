//! Debian's `chromium`, headless: the DOM a page builds, its console, and
//! a screenshot.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The browser, or why the test cannot run here.
pub fn chromium() -> Result<PathBuf, String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return Ok(PathBuf::from(p));
            }
        }
    }
    Err("no chromium on this machine (apt-get install chromium)".into())
}

/// What a load gave: the DOM once the page's scripts ran, and what the
/// browser logged (the page's console among it).
pub struct Load {
    pub dom: String,
    pub log: String,
}

impl Load {
    /// The page's console messages and uncaught errors.
    pub fn console(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
            .collect()
    }
}

fn run(browser: &Path, profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

/// Loads `url` and returns its DOM after the scripts ran.
pub fn load(browser: &Path, profile: &Path, url: &str) -> Load {
    let out = run(browser, profile, &["--dump-dom"], url);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed on {url}: {log}");
    Load {
        dom: String::from_utf8_lossy(&out.stdout).into_owned(),
        log,
    }
}

/// Writes a PNG of `url` at 1400 x 900 to `to`.
pub fn screenshot(browser: &Path, profile: &Path, url: &str, to: &Path) {
    let arg = format!("--screenshot={}", to.display());
    let out = run(
        browser,
        profile,
        &[&arg, "--window-size=1400,900", "--hide-scrollbars"],
        url,
    );
    assert!(
        out.status.success() && to.exists(),
        "chromium wrote no screenshot of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The attributes of every element with `class="<class>"` in a DOM dump,
/// in document order.
pub fn elements(dom: &str, class: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let needle = format!("class=\"{class}\"");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&needle) {
        let start = rest[..i].rfind('<').unwrap_or(0);
        let end = i + rest[i..].find('>').unwrap_or(rest.len() - i);
        out.push(attributes(&rest[start..end]));
        rest = &rest[end..];
    }
    out
}

fn attributes(tag: &str) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(' ').next().unwrap_or("").to_string();
        let after = &rest[eq + 2..];
        let close = after.find('"').unwrap_or(after.len());
        m.insert(name, after[..close].replace("&amp;", "&"));
        rest = &after[(close + 1).min(after.len())..];
    }
    m
}
