//! Watching the store's device: its busy time from `/proc/diskstats`
//! (field 10, milliseconds with I/O in flight), found through the store
//! directory's `st_dev`. A device hafill cannot find (a network filesystem,
//! an overlay) is reported once and the controller runs on write latency
//! alone.

use std::path::Path;
use std::time::{Duration, Instant};

/// The block device (whole disk or partition) holding `path`, by its
/// `/proc/diskstats` name.
pub fn device_of(path: &Path) -> Option<String> {
    let st = rustix::fs::stat(path).ok()?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_string)
}

/// Milliseconds the device has had I/O in flight since boot.
pub fn io_ticks_ms(diskstats: &str, device: &str) -> Option<u64> {
    diskstats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&device))
            .then(|| f.get(12)?.parse().ok())
            .flatten()
    })
}

/// Busy fraction of a device between two reads.
#[derive(Debug)]
pub struct BusyMeter {
    device: String,
    last: Option<(Instant, u64)>,
}

impl BusyMeter {
    pub fn for_path(path: &Path) -> Option<BusyMeter> {
        let device = device_of(path)?;
        let mut m = BusyMeter { device, last: None };
        m.sample()?;
        Some(m)
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// The busy fraction since the previous sample (None on the first).
    pub fn sample(&mut self) -> Option<f64> {
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        let ticks = io_ticks_ms(&text, &self.device)?;
        let now = Instant::now();
        let busy = self.last.map(|(t, prev)| {
            let dt = now.duration_since(t).max(Duration::from_millis(1));
            (ticks.saturating_sub(prev) as f64 / (dt.as_secs_f64() * 1000.0)).min(1.0)
        });
        self.last = Some((now, ticks));
        Some(busy.unwrap_or(0.0))
    }
}

/// `ioprio_set`/`ioprio_get`: `who` names one thread.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
/// An I/O priority is its class shifted left by this, plus a level.
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;

/// Puts the calling thread's I/O in the idle class: the I/O scheduler
/// serves it only when no other I/O is waiting, so live recording's
/// segment closes and file creates go first. `mq-deadline` (the default
/// for virtio and SATA disks) and `bfq` honour the class, and both still
/// serve idle I/O that has waited long (`mq-deadline`: `prio_aging_expire`,
/// 10 s), so a busy device slows the backfill but never stops it. `none`
/// (the NVMe default) ignores priorities. Threads started later inherit it.
/// Returns whether the kernel took it.
pub fn lower_io_priority() -> bool {
    set_idle_io(0)
}

/// [`lower_io_priority`] for thread `tid` of this process (0: the calling
/// thread).
#[allow(unsafe_code)]
pub fn set_idle_io(tid: i32) -> bool {
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    let prio = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            prio,
        ) == 0
    }
}

/// The calling thread's I/O priority class (0 none, 1 real-time,
/// 2 best-effort, 3 idle), or `None` where the kernel does not say.
#[allow(unsafe_code)]
pub fn io_class() -> Option<u8> {
    // SAFETY: ioprio_get takes two integers and touches no memory of ours.
    let p = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long) };
    (p >= 0).then_some((p >> IOPRIO_CLASS_SHIFT) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowered_threads_and_their_children_do_idle_class_io() {
        // On a thread of its own: the class sticks to the thread.
        let (own, child) = std::thread::spawn(|| {
            assert!(lower_io_priority(), "ioprio_set refused");
            let child = std::thread::spawn(io_class).join().unwrap();
            (io_class(), child)
        })
        .join()
        .unwrap();
        assert_eq!(own, Some(3));
        assert_eq!(child, Some(3));
        assert_ne!(io_class(), Some(3), "the test's own thread is untouched");
    }

    #[test]
    fn io_ticks_are_read_from_the_named_device() {
        let text = "   8       0 sda 100 0 800 50 200 0 1600 70 0 1234 120 0 0 0 0\n \
                    253       0 vda 1 2 3 4 5 6 7 8 9 4321 11 12 13 14 15\n";
        assert_eq!(io_ticks_ms(text, "sda"), Some(1234));
        assert_eq!(io_ticks_ms(text, "vda"), Some(4321));
        assert_eq!(io_ticks_ms(text, "sdb"), None);
    }

    #[test]
    fn the_store_device_is_found_here() {
        // Whatever holds the temp dir on this machine has a diskstats line
        // (on a real block device); a tmpfs has none, and that is fine.
        let dir = tempfile::tempdir().unwrap();
        if let Some(dev) = device_of(dir.path()) {
            let text = std::fs::read_to_string("/proc/diskstats").unwrap();
            assert!(
                io_ticks_ms(&text, &dev).is_some(),
                "{dev} not in /proc/diskstats"
            );
        }
    }
}
