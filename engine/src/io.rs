//! Positional writes into segment files: io_uring through tokio-uring, or
//! plain `pwrite` where io_uring cannot be set up (old kernel, container
//! seccomp). The choice is made once, at start, and reported.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    Uring,
    Pwrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoChoice {
    Uring,
    Pwrite,
    Auto,
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoBackend::Uring => "io_uring",
            IoBackend::Pwrite => "pwrite",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoSetupError {
    #[error("io_uring is not available here ({0}); use --io pwrite or --io auto")]
    UringUnavailable(io::Error),
}

/// Whether an io_uring instance can be created here (EPERM under seccomp,
/// ENOSYS on old kernels).
pub fn probe_uring() -> io::Result<()> {
    tokio_uring::uring_builder().build(8).map(drop)
}

enum Op {
    Write {
        file: Arc<File>,
        offset: u64,
        data: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Sync {
        file: Arc<File>,
        done: oneshot::Sender<io::Result<()>>,
    },
}

/// Sends writes to the chosen backend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskWriter {
    backend: IoBackend,
    tx: Option<mpsc::Sender<Op>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Write { offset, data, .. } => write!(f, "Write({offset}, {})", data.len()),
            Op::Sync { .. } => f.write_str("Sync"),
        }
    }
}

impl DiskWriter {
    pub fn start(choice: IoChoice) -> Result<Self, IoSetupError> {
        let backend = match choice {
            IoChoice::Pwrite => IoBackend::Pwrite,
            IoChoice::Uring => {
                probe_uring().map_err(IoSetupError::UringUnavailable)?;
                IoBackend::Uring
            }
            IoChoice::Auto => match probe_uring() {
                Ok(()) => IoBackend::Uring,
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); writing with pwrite");
                    IoBackend::Pwrite
                }
            },
        };
        let tx = match backend {
            IoBackend::Pwrite => None,
            IoBackend::Uring => {
                let (tx, rx) = mpsc::channel::<Op>(256);
                std::thread::Builder::new()
                    .name("hafill-uring".into())
                    .spawn(move || uring_thread(rx))
                    .map_err(IoSetupError::UringUnavailable)?;
                Some(tx)
            }
        };
        Ok(DiskWriter { backend, tx })
    }

    pub fn backend(&self) -> IoBackend {
        self.backend
    }

    /// Writes all of `data` at `offset`, then gives the buffer back (see
    /// `buffers`).
    pub async fn write_at(&self, file: Arc<File>, offset: u64, data: Vec<u8>) -> io::Result<()> {
        match &self.tx {
            None => tokio::task::spawn_blocking(move || {
                crate::throttle::disk::lower_io_priority();
                let r = file.write_all_at(&data, offset);
                crate::buffers::give_back(data);
                r
            })
            .await
            .map_err(io::Error::other)?,
            Some(tx) => {
                let (done, wait) = oneshot::channel();
                tx.send(Op::Write {
                    file,
                    offset,
                    data,
                    done,
                })
                .await
                .map_err(|_| io::Error::other("io_uring writer stopped"))?;
                wait.await
                    .map_err(|_| io::Error::other("io_uring writer stopped"))?
            }
        }
    }

    /// Makes the file's data durable.
    pub async fn sync_data(&self, file: Arc<File>) -> io::Result<()> {
        match &self.tx {
            None => tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .map_err(io::Error::other)?,
            Some(tx) => {
                let (done, wait) = oneshot::channel();
                tx.send(Op::Sync { file, done })
                    .await
                    .map_err(|_| io::Error::other("io_uring writer stopped"))?;
                wait.await
                    .map_err(|_| io::Error::other("io_uring writer stopped"))?
            }
        }
    }
}

/// The most one read asks of the kernel at once. Kernels built or booted
/// without in-kernel preemption (`preempt=none`, as on the development
/// machine) let a task inside a system call keep its CPU until the call
/// returns, whatever its priority: one `pread` of a whole 60 MB segment
/// kept a live camera thread off its CPU for up to 19 ms (traced, see
/// docs/benchmarks.md). Between pieces the kernel switches to live
/// recording.
pub const READ_PIECE: usize = 1 << 20;

/// As much as [`drop_cached`] drops in one call, for the same reason.
pub const DROP_PIECE: u64 = 4 << 20;

/// Fills `buf` from `offset`, one [`READ_PIECE`] per system call.
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in buf.chunks_mut(READ_PIECE) {
        file.read_exact_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// `n` bytes of `file` at `offset`, read into a buffer that is not
/// zeroed first (the kernel fills it), one used before where one is idle
/// (see `buffers`; give it back when done): a block read to be sent.
#[allow(unsafe_code)]
pub fn read_new_at(file: &File, n: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf = crate::buffers::take(n);
    while buf.len() < n {
        let at = offset + buf.len() as u64;
        // Only up to `n`: the buffer may have more room than that.
        let room = n - buf.len();
        let got = loop {
            match rustix::io::pread(file, &mut buf.spare_capacity_mut()[..room], at) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r?.0.len(),
            }
        };
        if got == 0 {
            let had = buf.len();
            crate::buffers::give_back(buf);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{had} of {n} bytes at {offset}: the file ends"),
            ));
        }
        // SAFETY: `pread` initialised these `got` bytes, the first of the
        // spare room (rustix returned them as initialised).
        unsafe { buf.set_len(buf.len() + got) };
    }
    Ok(buf)
}

/// The BLAKE3 of a file's bytes as its device holds them (`hafill
/// backfill --verify-readback`): read with `O_DIRECT`, past the page cache,
/// through a second open of the same file (`/proc/self/fd`). Where that is
/// refused (tmpfs, some FUSE, no `/proc`), the file is read through the
/// page cache once its clean pages are dropped, which on a disk reads the
/// device too, as far as the kernel honours the hint.
pub fn hash_from_device(file: &File) -> io::Result<blake3::Hash> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let len = file.metadata()?.len();
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if let Ok(direct) = direct {
        match hash_direct(&direct, len) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            r => return r,
        }
    }
    drop_cached(file);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < len {
        let n = (buf.len() as u64).min(len - at) as usize;
        read_exact_at(file, &mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

/// Hashes `len` bytes of `direct` (opened with `O_DIRECT`): aligned
/// buffer, offsets and lengths.
fn hash_direct(direct: &File, len: u64) -> io::Result<blake3::Hash> {
    const ALIGN: usize = 4096;
    const PIECE: usize = 4 << 20;
    let mut h = blake3::Hasher::new();
    let mut raw = vec![0u8; PIECE + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[skip..skip + PIECE];
    let mut at = 0u64;
    while at < len {
        // Whole aligned pieces; the last read comes back short at the end.
        let want = (PIECE as u64).min((len - at).next_multiple_of(ALIGN as u64)) as usize;
        let n = retry_interrupted(|| direct.read_at(&mut buf[..want], at))? as u64;
        // Short before the end: keep only whole aligned blocks of it.
        let n = if at + n >= len {
            len - at
        } else {
            n - n % ALIGN as u64
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read back {at} of {len} bytes"),
            ));
        }
        h.update(&buf[..n as usize]);
        at += n;
    }
    Ok(h.finalize())
}

fn retry_interrupted(mut f: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Tells the kernel the file's cached pages are not needed: durable
/// backfilled (or served) segments are not what anyone views now, and a
/// page cache full of them is drained by reclaim work that competes with
/// live recording for the CPU. [`DROP_PIECE`] per call. A hint; errors
/// change nothing.
pub fn drop_cached(file: &File) {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = 0;
    while at < len {
        let n = DROP_PIECE.min(len - at);
        let _ = rustix::fs::fadvise(
            file,
            at,
            std::num::NonZeroU64::new(n),
            rustix::fs::Advice::DontNeed,
        );
        at += n;
    }
}

fn uring_thread(mut rx: mpsc::Receiver<Op>) {
    // Backfill writes go after live recording's where the I/O scheduler
    // honours priorities; io_uring's workers inherit this thread's.
    crate::throttle::disk::lower_io_priority();
    // probe_uring succeeded just before, so setting up the runtime works.
    tokio_uring::start(async move {
        while let Some(op) = rx.recv().await {
            tokio_uring::spawn(async move {
                match op {
                    Op::Write {
                        file,
                        offset,
                        data,
                        done,
                    } => {
                        let r = async {
                            let f = tokio_uring::fs::File::from_std(file.try_clone()?);
                            let (res, data) = f.write_all_at(data, offset).await;
                            crate::buffers::give_back(data);
                            let closed = f.close().await;
                            res.and(closed)
                        }
                        .await;
                        let _ = done.send(r);
                    }
                    Op::Sync { file, done } => {
                        let r = async {
                            let f = tokio_uring::fs::File::from_std(file.try_clone()?);
                            let res = f.sync_data().await;
                            let closed = f.close().await;
                            res.and(closed)
                        }
                        .await;
                        let _ = done.send(r);
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_buffer_read_holds_the_bytes_and_a_read_past_the_end_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            read_new_at(&f, 70_000, 20_000).unwrap(),
            &data[20_000..90_000]
        );
        assert_eq!(read_new_at(&f, 0, 5).unwrap(), b"");
        let e = read_new_at(&f, 20_000, 90_000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_file_read_back_from_its_device_hashes_to_its_bytes() {
        // An odd length: the last direct read comes back short.
        let data: Vec<u8> = (0..(5 << 20) + 123u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let dirs = [
            Some(tempfile::tempdir().unwrap()),
            tempfile::tempdir_in("/dev/shm").ok(),
        ];
        for dir in dirs.iter().flatten() {
            let p = dir.path().join("f");
            std::fs::write(&p, &data).unwrap();
            let f = File::open(&p).unwrap();
            assert_eq!(hash_from_device(&f).unwrap(), blake3::hash(&data), "{p:?}");
            std::fs::write(&p, b"").unwrap();
            assert_eq!(
                hash_from_device(&f).unwrap(),
                blake3::hash(b""),
                "{p:?} empty"
            );
        }
    }

    async fn round_trip(choice: IoChoice) -> IoBackend {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap(),
        );
        let w = DiskWriter::start(choice).unwrap();
        w.write_at(f.clone(), 4096, vec![7u8; 100]).await.unwrap();
        w.write_at(f.clone(), 0, vec![1u8; 10]).await.unwrap();
        w.sync_data(f).await.unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 4196);
        assert_eq!(&b[..10], &[1u8; 10]);
        assert!(b[10..4096].iter().all(|x| *x == 0));
        assert_eq!(&b[4096..], &[7u8; 100][..]);
        w.backend()
    }

    #[test]
    fn reads_in_pieces_fill_the_whole_buffer_from_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..(READ_PIECE * 5 / 2 + 77))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = vec![0u8; READ_PIECE * 2 + 5];
        read_exact_at(&f, &mut buf, 70).unwrap();
        assert_eq!(buf, bytes[70..70 + buf.len()]);
        // Past the end is an error, not a short buffer.
        let mut past = vec![0u8; READ_PIECE * 2];
        let e = read_exact_at(&f, &mut past, READ_PIECE as u64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        drop_cached(&f);
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
    }

    #[tokio::test]
    async fn pwrite_backend_writes_where_asked() {
        assert_eq!(round_trip(IoChoice::Pwrite).await, IoBackend::Pwrite);
    }

    #[tokio::test]
    async fn uring_backend_writes_where_asked_when_available() {
        if probe_uring().is_err() {
            eprintln!("skipped: io_uring unavailable here");
            return;
        }
        assert_eq!(round_trip(IoChoice::Uring).await, IoBackend::Uring);
        assert_eq!(round_trip(IoChoice::Auto).await, IoBackend::Uring);
    }
}
