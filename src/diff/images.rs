//! The two database images a diff compares, built in one replay: the state before the
//! transaction in a temporary file (the snapshot plus txns 1..N-1, written exactly as a
//! restore writes them), and the pages of txn N in a second temporary file, read over it.
//! Memory holds only the page numbers of txn N.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reader::{self, GenerationObjects, ReadError, ReplayLimit, Visitor};
use crate::record::pb;
use crate::target::Target;

use super::page::{corrupt, Corrupt, Side};
use super::DiffError;

/// A file removed from its directory as soon as it is created: it disappears with the
/// process, whatever happens.
fn anonymous_file(dir: &Path, what: &str) -> Result<File, DiffError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        ".walstream-diff-{}-{}-{what}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let path: PathBuf = dir.join(name);
    let file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| DiffError::Temp(format!("{}: {e}", path.display())))?;
    std::fs::remove_file(&path).map_err(|e| DiffError::Temp(format!("{}: {e}", path.display())))?;
    Ok(file)
}

/// What the diffed transaction is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    pub generation: u64,
    pub txn: u64,
    pub commit_time_ms: i64,
    pub page_size: u32,
    /// Database size in pages before and after the transaction.
    pub pages_before: u32,
    pub pages_after: u32,
    /// Distinct pages the transaction wrote.
    pub pages_written: usize,
}

pub struct Images {
    pub info: TxnInfo,
    old: File,
    spill: File,
    /// Page number -> offset in `spill` of its last image in txn N.
    spill_index: HashMap<u32, u64>,
}

struct Builder<'a> {
    txn: u64,
    page_size: u64,
    old: &'a File,
    spill: &'a File,
    spill_index: HashMap<u32, u64>,
    spill_len: u64,
    pages_before: u32,
    pages_after: u32,
    commit_time_ms: i64,
    progress: &'a mut dyn FnMut(u64),
}

fn io_err(e: std::io::Error) -> ReadError {
    ReadError::Output(std::io::Error::new(
        e.kind(),
        format!("temporary file: {e}"),
    ))
}

impl Builder<'_> {
    fn put_old(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.page_size = data.len() as u64;
        self.old
            .write_all_at(data, u64::from(pgno - 1) * self.page_size)
            .map_err(io_err)
    }
}

impl Visitor for Builder<'_> {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.page_size = u64::from(h.page_size);
        self.pages_before = h.page_count;
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.put_old(pgno, data)
    }
    fn txn_page(&mut self, seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        if seq < self.txn {
            return self.put_old(pgno, data);
        }
        self.page_size = data.len() as u64;
        let at = match self.spill_index.get(&pgno) {
            Some(&at) => at,
            None => {
                let at = self.spill_len;
                self.spill_len += data.len() as u64;
                self.spill_index.insert(pgno, at);
                at
            }
        };
        self.spill.write_all_at(data, at).map_err(io_err)
    }
    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        if c.seq + 1 == self.txn {
            self.pages_before = c.db_size_pages;
        }
        if c.seq == self.txn {
            self.pages_after = c.db_size_pages;
            self.commit_time_ms = c.commit_time_ms;
        }
        Ok(())
    }
    fn progress(&mut self, bytes: u64) {
        (self.progress)(bytes)
    }
}

impl Images {
    /// Replays `objects` up to txn `txn` (1 or more), validating every hash on the way.
    pub fn build(
        target: &dyn Target,
        objects: &GenerationObjects,
        txn: u64,
        tmp_dir: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Images, DiffError> {
        let old = anonymous_file(tmp_dir, "before")?;
        let spill = anonymous_file(tmp_dir, "txn")?;
        let mut b = Builder {
            txn,
            page_size: 0,
            old: &old,
            spill: &spill,
            spill_index: HashMap::new(),
            spill_len: 0,
            pages_before: 0,
            pages_after: 0,
            commit_time_ms: 0,
            progress,
        };
        let summary = reader::replay(target, objects, ReplayLimit::Txn(txn), &mut b)?;
        let info = TxnInfo {
            generation: summary.generation,
            txn,
            commit_time_ms: b.commit_time_ms,
            page_size: b.page_size as u32,
            pages_before: b.pages_before,
            pages_after: b.pages_after,
            pages_written: b.spill_index.len(),
        };
        let spill_index = b.spill_index;
        Ok(Images {
            info,
            old,
            spill,
            spill_index,
        })
    }

    pub fn page_size(&self) -> usize {
        self.info.page_size as usize
    }

    pub fn pages(&self, side: Side) -> u32 {
        match side {
            Side::Old => self.info.pages_before,
            Side::New => self.info.pages_after,
        }
    }

    /// Whether page `pgno` of the new image may differ from the old one: txn N wrote it, or
    /// the database grew to include it.
    pub fn changed(&self, pgno: u32) -> bool {
        self.spill_index.contains_key(&pgno) || pgno > self.info.pages_before
    }

    /// Pages txn N wrote that are part of the new image, in order.
    pub fn written_pages(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .spill_index
            .keys()
            .copied()
            .filter(|&p| p <= self.info.pages_after)
            .collect();
        v.sort_unstable();
        v
    }

    /// Reads page `pgno` of one image. Bytes past the end of a file read as zeros, as in a
    /// restored file extended by truncation.
    pub fn read(&self, side: Side, pgno: u32) -> Result<Rc<[u8]>, DiffError> {
        let ps = self.page_size();
        if pgno == 0 || pgno > self.pages(side) {
            return Err(DiffError::Corrupt(page_range(side, pgno, self.pages(side))));
        }
        let (file, at) = match (side, self.spill_index.get(&pgno)) {
            (Side::New, Some(&at)) => (&self.spill, at),
            _ => (&self.old, u64::from(pgno - 1) * ps as u64),
        };
        let mut buf = vec![0u8; ps];
        let mut done = 0;
        while done < ps {
            match file.read_at(&mut buf[done..], at + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DiffError::Temp(format!("reading page {pgno}: {e}"))),
            }
        }
        Ok(buf.into())
    }
}

fn page_range(side: Side, pgno: u32, pages: u32) -> Corrupt {
    corrupt(
        side,
        pgno,
        0,
        format!("page {pgno} is not in the database ({pages} pages)"),
    )
}
