//! Backfill's CPU yields to live recording's. Measured on the
//! live-protection benchmark: frames came late because the camera threads
//! woke tens of milliseconds late, with write latency low, while backfill
//! and serving threads (at nice 10 and 19) held the two cores. Under
//! `SCHED_IDLE` they run only when nothing else wants a core; their I/O
//! goes in the idle class (see [`super::disk::lower_io_priority`]).

/// Moves every thread of this process to `SCHED_IDLE` and the idle I/O
/// class; threads started later inherit both. Returns how many threads the
/// kernel took `SCHED_IDLE` for.
///
/// Call it after any child process that must run normally (the recording
/// service the gate starts) has been started: children inherit it too.
///
/// It also keeps a floor: a process starved of CPU for long runs at
/// `SCHED_BATCH`, nice 19, until the machine calms (see
/// [`super::starve`]).
pub fn yield_to_live() -> usize {
    let n = set_policy(Policy::Idle);
    super::starve::keep_floor();
    n
}

/// A CPU policy for every thread of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_IDLE` and the idle I/O class.
    Idle,
    /// `SCHED_BATCH` at nice 19 (the I/O class stays idle).
    Floor,
}

/// Moves every thread of this process to `policy`; returns how many the
/// kernel took it for.
pub fn set_policy(policy: Policy) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return usize::from(set_thread(0, policy));
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|tid| set_thread(*tid, policy))
        .count()
}

/// One thread to `policy`; whether the kernel took it.
fn set_thread(tid: i32, policy: Policy) -> bool {
    super::disk::set_idle_io(tid);
    match policy {
        Policy::Idle => set_scheduler(tid, libc::SCHED_IDLE),
        // Nice first: a thread at nice 19 may be moved to SCHED_BATCH
        // where RLIMIT_NICE allows nice 19.
        Policy::Floor => set_nice(tid, 19) && set_scheduler(tid, libc::SCHED_BATCH),
    }
}

#[allow(unsafe_code)]
fn set_scheduler(tid: i32, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param we pass by
    // reference for the duration of the call; `tid` names one of our own
    // threads (or 0, the calling one).
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

#[allow(unsafe_code)]
fn set_nice(tid: i32, nice: libc::c_int) -> bool {
    // SAFETY: setpriority takes plain integers and touches no memory; on
    // Linux PRIO_PROCESS with a thread id sets that thread's nice value.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0 }
}

/// Whether the calling thread runs under `SCHED_IDLE`.
#[allow(unsafe_code)]
pub fn is_idle() -> bool {
    scheduler() == libc::SCHED_IDLE
}

#[allow(unsafe_code)]
fn scheduler() -> libc::c_int {
    // SAFETY: sched_getscheduler takes a thread id and touches no memory.
    unsafe { libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_and_its_later_children_go_idle() {
        // In a child process, so the test runner's threads keep their
        // policy: `cargo test` runs this test's body again, alone.
        if std::env::var_os("HAFILL_CPU_TEST_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "throttle::cpu::tests::every_thread_and_its_later_children_go_idle",
                    "--nocapture",
                ])
                .env("HAFILL_CPU_TEST_CHILD", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            return;
        }
        let before =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        assert!(yield_to_live() >= 2);
        assert!(is_idle());
        assert_eq!(super::super::disk::io_class(), Some(3), "idle I/O class");
        let later = std::thread::spawn(|| (is_idle(), super::super::disk::io_class()))
            .join()
            .unwrap();
        assert_eq!(
            later,
            (true, Some(3)),
            "a thread started afterwards inherits SCHED_IDLE and the idle I/O class"
        );
        before.join().unwrap();

        // The floor, and back.
        assert!(set_policy(Policy::Floor) >= 1);
        assert_eq!(scheduler(), libc::SCHED_BATCH);
        // SAFETY: getpriority takes plain integers.
        #[allow(unsafe_code)]
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, 19);
        assert!(set_policy(Policy::Idle) >= 1);
        assert!(is_idle());
    }
}
