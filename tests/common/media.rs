//! Real video for the tests: Debian's `ffmpeg` encodes H.264 segments of a
//! test pattern, and `ffprobe` reads them back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why tests that need ffmpeg cannot run here, if they cannot.
pub fn no_ffmpeg() -> Option<String> {
    for tool in ["ffmpeg", "ffprobe"] {
        match Command::new(tool).arg("-version").output() {
            Ok(o) if o.status.success() => {}
            _ => return Some(format!("{tool} is not installed (apt-get install ffmpeg)")),
        }
    }
    None
}

/// The containers the tests' recorders write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// MPEG-TS, as the ffmpeg segment muxer and MediaMTX write it.
    Ts,
    /// MP4 remuxed with `+faststart`, as Frigate writes it.
    Mp4,
}

/// ffmpeg encodes `n` 10-second segments of a test pattern (`source`, an
/// lavfi source such as `testsrc`) at 160x120 into `dir`; their paths, in
/// order.
pub fn encode(dir: &Path, source: &str, n: usize, container: Container) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!("{source}=size=160x120:rate=10"))
        .args(["-t", &(10 * n).to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "10"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-f",
            "segment",
            "-segment_time",
            "10",
        ])
        .args(["-reset_timestamps", "1"]);
    let ext = match container {
        Container::Ts => "ts",
        Container::Mp4 => {
            cmd.args(["-segment_format", "mp4", "-segment_format_options"])
                .arg("movflags=+faststart");
            "mp4"
        }
    };
    let out = cmd
        .arg(dir.join(format!("seg%03d.{ext}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = super::files_ending(dir, ext);
    files.sort();
    assert_eq!(files.len(), n, "{files:?}");
    files
}

/// The duration ffprobe reads from `path`, in seconds.
pub fn ffprobe_duration(path: &Path) -> f64 {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of"])
        .args(["csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe cannot read {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no duration for {}", path.display()))
}
