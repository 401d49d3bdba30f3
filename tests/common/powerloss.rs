//! A disk that loses power: an ext4 filesystem on a loop device whose
//! backing file is served by this test process over FUSE. Every write the
//! kernel sends stays in memory until the next flush (`fsync` of the
//! backing file, which is what the loop device does for each cache flush
//! and FUA write ext4 issues: a journal commit, an `fsync`, a `syncfs`);
//! only flushed writes reach the image on disk. A power cut after the Nth
//! flush keeps exactly what the disk had acknowledged as durable by then
//! and drops everything after, as a disk with a volatile write cache does.
//! The next "boot" mounts the image itself, and ext4 replays its journal.
//!
//! Needs root, `/dev/fuse`, loop devices and `mkfs.ext4`; [`PowerDisk::why_not`]
//! says what is missing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request,
};

const PAGE: u64 = 4096;
const ROOT: u64 = 1;
const DISK: u64 = 2;

/// What the disk holds: the image (durable) and the writes since the last
/// flush (volatile).
struct Media {
    durable: File,
    size: u64,
    volatile: BTreeMap<u64, Vec<u8>>,
    flushes: u64,
    /// Power fails right after this flush.
    cut_after: Option<u64>,
    cut: bool,
    /// At the cut, a disk's volatile cache may have written any subset of
    /// what it held, in any order: a random one (from this seed) lands.
    seed: u64,
}

impl Media {
    fn page(&self, index: u64) -> Vec<u8> {
        if let Some(p) = self.volatile.get(&index) {
            return p.clone();
        }
        let mut buf = vec![0u8; PAGE as usize];
        let _ = self.durable.read_at(&mut buf, index * PAGE);
        buf
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.cut {
            return; // no power: nothing lands
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (index, within) = (at / PAGE, (at % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - done);
            let mut page = self.page(index);
            page[within..within + n].copy_from_slice(&data[done..done + n]);
            self.volatile.insert(index, page);
            done += n;
        }
    }

    fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = (offset + size as u64).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let (index, within) = (at / PAGE, (at % PAGE) as usize);
            let n = ((PAGE as usize - within) as u64).min(end - at) as usize;
            out.extend_from_slice(&self.page(index)[within..within + n]);
            at += n as u64;
        }
        out
    }

    fn flush(&mut self) {
        if self.cut {
            return;
        }
        for (index, page) in std::mem::take(&mut self.volatile) {
            self.durable.write_all_at(&page, index * PAGE).unwrap();
        }
        self.flushes += 1;
        if self.cut_after.is_some_and(|n| self.flushes >= n) {
            self.cut = true;
        }
    }

    /// The power fails: some of the unflushed pages reached the medium
    /// (chosen by the seed), the rest are lost.
    fn fail(&mut self) {
        if !self.cut {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
            for (index, page) in std::mem::take(&mut self.volatile) {
                if rng.gen_bool(0.5) {
                    self.durable.write_all_at(&page, index * PAGE).unwrap();
                }
            }
        }
        self.cut = true;
        self.volatile.clear();
    }
}

struct Disk(Arc<Mutex<Media>>);

fn attr(ino: u64, size: u64) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if ino == ROOT {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if ino == ROOT { 0o755 } else { 0o600 },
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for Disk {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == "disk" {
            let size = self.0.lock().unwrap().size;
            reply.entry(&TTL, &attr(DISK, size), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT => reply.attr(&TTL, &attr(ROOT, 0)),
            DISK => reply.attr(&TTL, &attr(DISK, self.0.lock().unwrap().size)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == DISK {
            // Every read and write comes here, none from a page cache.
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(libc::EISDIR);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        reply.data(&self.0.lock().unwrap().read(offset as u64, size));
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        self.0.lock().unwrap().write(offset as u64, data);
        reply.written(data.len() as u32);
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        self.0.lock().unwrap().flush();
        reply.ok();
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(libc::ENOTDIR);
            return;
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, "disk"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 filesystem that can lose power, mounted at [`PowerDisk::mnt`].
pub struct PowerDisk {
    _dir: tempfile::TempDir,
    image: PathBuf,
    fuse_dir: PathBuf,
    pub mnt: PathBuf,
    /// Seeds the subset of unflushed writes that lands at each cut.
    pub seed: u64,
    boots: u64,
    /// One disk at a time per test process: loop devices are found and
    /// taken with `losetup --find`, and flush counts stay free of other
    /// tests' load.
    _one: std::sync::MutexGuard<'static, ()>,
    media: Option<Arc<Mutex<Media>>>,
    session: Option<fuser::BackgroundSession>,
    loop_dev: Option<String>,
}

impl PowerDisk {
    /// Why this machine cannot run these tests, if it cannot.
    pub fn why_not() -> Option<String> {
        if rustix::process::geteuid().as_raw() != 0 {
            return Some("needs root (loop devices, mounts)".into());
        }
        if !Path::new("/dev/fuse").exists() || !Path::new("/dev/loop-control").exists() {
            return Some("needs /dev/fuse and loop devices".into());
        }
        for tool in ["mkfs.ext4", "losetup", "mount", "umount"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                return Some(format!("needs {tool}"));
            }
        }
        None
    }

    /// A fresh ext4 filesystem of `mib` MiB, mounted, with power.
    pub fn new(mib: u64) -> PowerDisk {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        let f = File::create(&image).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        sh(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                image.to_str().unwrap(),
            ],
        );
        static ONE: Mutex<()> = Mutex::new(());
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let seed = std::env::var("HAFILL_POWER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("power disk seed {seed} (HAFILL_POWER_SEED to repeat)");
        let mut d = PowerDisk {
            fuse_dir: dir.path().join("fuse"),
            mnt: dir.path().join("mnt"),
            image,
            _dir: dir,
            seed,
            boots: 0,
            _one: one,
            media: None,
            session: None,
            loop_dev: None,
        };
        std::fs::create_dir_all(&d.mnt).unwrap();
        d.power_on();
        d
    }

    /// Serves the image through the volatile cache and mounts it (ext4
    /// commits only when asked: its flushes then come from the program
    /// under test, not from a timer).
    pub fn power_on(&mut self) {
        let durable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .unwrap();
        let size = durable.metadata().unwrap().len();
        self.boots += 1;
        let media = Arc::new(Mutex::new(Media {
            durable,
            size,
            volatile: BTreeMap::new(),
            flushes: 0,
            cut_after: None,
            cut: false,
            seed: self.seed.wrapping_add(self.boots),
        }));
        // A fresh mount point each boot: an old FUSE mount that has not
        // gone yet is never mounted over.
        let fuse_dir = self.fuse_dir.with_file_name(format!("fuse-{}", self.boots));
        std::fs::create_dir_all(&fuse_dir).unwrap();
        self.media = Some(media.clone());
        self.session = Some(
            fuser::spawn_mount2(
                Disk(media),
                &fuse_dir,
                &[fuser::MountOption::FSName("hafill-powerdisk".into())],
            )
            .unwrap(),
        );
        let disk = fuse_dir.join("disk");
        let dev = sh("losetup", &["--find", "--show", disk.to_str().unwrap()]);
        self.loop_dev = Some(dev.clone());
        sh(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "commit=3600",
                &dev,
                self.mnt.to_str().unwrap(),
            ],
        );
    }

    /// Flushes so far (each a cache flush the disk acknowledged).
    pub fn flushes(&self) -> u64 {
        self.media.as_ref().map_or(0, |m| m.lock().unwrap().flushes)
    }

    /// Power fails right after the `n`th flush from now (the pages written
    /// after that flush: a random subset lands, as at any cut).
    pub fn cut_after(&self, n: u64) {
        let mut m = self.media.as_ref().unwrap().lock().unwrap();
        m.cut_after = Some(m.flushes + n);
    }

    pub fn is_cut(&self) -> bool {
        self.media.as_ref().is_some_and(|m| m.lock().unwrap().cut)
    }

    /// Power fails now, if it has not yet; then the machine is taken
    /// apart (mount, loop device, FUSE) without a byte more reaching the
    /// image. The callers kill their processes on it first.
    pub fn cut_and_unplug(&mut self) {
        if let Some(m) = &self.media {
            m.lock().unwrap().fail();
        }
        self.teardown();
    }

    /// Unmounts, detaches the loop device (waiting until it has let go of
    /// its backing file) and ends the FUSE session. Whatever the kernel
    /// still writes back after a cut goes nowhere.
    fn teardown(&mut self) {
        // A killed process's io_uring may hold its files a moment after it
        // ended.
        for _ in 0..100 {
            if !self.mounted() {
                break;
            }
            let _ = Command::new("umount")
                .arg(&self.mnt)
                .stderr(std::process::Stdio::null())
                .status();
            if self.mounted() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.mounted() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(dev) = self.loop_dev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            let backing = format!(
                "/sys/block/{}/loop/backing_file",
                dev.trim_start_matches("/dev/")
            );
            for _ in 0..200 {
                if !Path::new(&backing).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        // Unmounts (lazily) and waits for the session's thread.
        self.session.take();
        self.media.take();
    }

    fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mnt = self.mnt.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*mnt))
    }

    /// Boots again on what the image holds: ext4 replays its journal.
    pub fn reboot(&mut self) {
        self.cut_and_unplug();
        self.power_on();
    }

    /// A copy of the image as it is now (unplugged: power off).
    pub fn save_image(&self, to: &Path) {
        std::fs::copy(&self.image, to).unwrap();
    }

    /// Replaces the image (unplugged) with `from`.
    pub fn load_image(&self, from: &Path) {
        std::fs::copy(from, &self.image).unwrap();
    }
}

impl Drop for PowerDisk {
    fn drop(&mut self) {
        if let Some(m) = &self.media {
            m.lock().unwrap_or_else(|p| p.into_inner()).cut = true;
        }
        self.teardown();
    }
}
