//! The operator's page: one HTML file, its script and style inline, with
//! the site's status and timeline embedded so it draws at once. The daemon
//! serves it live at `/` (it then polls `/status` and `/timeline`);
//! `hafill status --html` writes it as a snapshot.
//!
//! The page builds its DOM with `textContent` only: nothing from the data
//! is ever parsed as HTML.

use serde::Serialize;

use crate::health::SiteStatus;
use crate::timeline::Timeline;

const TEMPLATE: &str = include_str!("page.html");
const SLOT: &str = "/*HAFILL-DATA*/";

/// How often a live page asks for news.
pub const POLL_MS: u64 = 5_000;

#[derive(Serialize)]
struct Boot<'a> {
    live: bool,
    poll_ms: u64,
    retention_s: u64,
    status: serde_json::Value,
    timeline: &'a Timeline,
}

/// The status without its per-camera table, which the page does not draw
/// (the timeline carries the cameras): `/status?brief=1`.
pub fn brief(status: &SiteStatus) -> Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(status)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("cameras");
    }
    Ok(v)
}

/// The page with `status` and `timeline` inside; `live` pages poll.
pub fn render(
    status: &SiteStatus,
    timeline: &Timeline,
    retention_us: u64,
    live: bool,
) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(&Boot {
        live,
        poll_ms: POLL_MS,
        retention_s: retention_us / 1_000_000,
        status: brief(status)?,
        timeline,
    })?;
    Ok(TEMPLATE.replacen(SLOT, &script_safe(&json), 1))
}

/// JSON that cannot end the `<script>` element holding it: `<`, `>` and
/// `&` only occur inside JSON strings, where their `\u` escapes mean the
/// same.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_one_slot_for_the_data() {
        assert_eq!(TEMPLATE.matches(SLOT).count(), 1);
    }

    #[test]
    fn data_cannot_close_its_script_element() {
        let j = serde_json::to_string(
            &serde_json::json!({"m": "</script><img src=x onerror=alert(1)>&"}),
        )
        .unwrap();
        let safe = script_safe(&j);
        assert!(!safe.contains('<') && !safe.contains('>'), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["m"], "</script><img src=x onerror=alert(1)>&");
    }
}
