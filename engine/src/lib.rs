//! hafill engine: everything between the command line and the disk or the wire.
//!
//! Data flows one way through the modules: the recorder adapter
//! (`store::traits::Recorder`: what we hold) and the peers' coverage feed
//! `plan` (what is missing), whose segments the transfer fetches into the
//! adapter's sinks. `state` is hafill's own state beside a recorder. `sim`
//! writes synthetic recordings into the native store.

// Nothing from outside the process may panic us: errors are typed instead.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backfill;
pub mod buffers;
pub mod camera;
pub mod config;
pub mod daemon;
pub mod gate;
pub mod gc;
pub mod health;
pub mod http;
pub mod identity;
pub mod interval;
pub mod io;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod pair;
pub mod placeholder;
pub mod plan;
pub mod scrub;
pub mod segment;
pub mod sim;
pub mod state;
pub mod store;
pub mod summary;
pub mod throttle;
pub mod timeline;
pub mod transfer;
pub mod units;

/// Ends the process on the spot (no unwinding, no cleanup: as a crash
/// would) if the environment variable `HAFILL_FAILPOINT` names this
/// point: how the tests stop a real process at one exact step.
pub fn failpoint(name: &str) {
    if std::env::var_os("HAFILL_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

pub use camera::CameraId;
pub use interval::IntervalSet;
pub use segment::{Origin, SegmentMeta, SegmentState};
pub use store::Store;
pub use units::Timestamp;
