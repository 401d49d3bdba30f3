//! The few file operations the index log needs, behind a trait so tests can
//! put a crash-simulating file under it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub trait LogFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Appends at the current end of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
}

impl LogFile for File {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.seek(SeekFrom::Start(0))?;
        self.read_to_end(&mut v)?;
        Ok(v)
    }
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.seek(SeekFrom::End(0))?;
        self.write_all(buf)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}
