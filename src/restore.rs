//! Rebuilding a database file from a stream, at its newest transaction or an earlier one.
//!
//! The output is written to a temporary file beside it and renamed into place only once it is
//! complete and synced, so an interrupted restore never leaves a half-written database. Replay
//! validates every hash on the way (see `reader`), so a restore is also a verification of the
//! part of the stream it read.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::reader::{self, GenerationObjects, ReadError, ReplayLimit, ReplaySummary, Visitor};
use crate::record::pb::{self, record::Body};
use crate::record::{FileKind, RecordReader};
use crate::target::Target;

/// Which state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Latest,
    /// Transaction number within the chosen generation (0: the generation's snapshot).
    Txn(u64),
    /// The newest transaction committed at or before this time (ms since the Unix epoch).
    Time(i64),
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub point: Point,
    /// Generation to restore from (default: the newest; with `Point::Time`, the newest that
    /// existed at that time).
    pub generation: Option<u64>,
    /// Replace an existing output file.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0} exists; pass --force to replace it")]
    OutputExists(PathBuf),
    #[error("{path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no generation existed at that time (the oldest starts at {oldest_ms} ms)")]
    TooEarly { oldest_ms: i64 },
}

/// What a restore produced.
#[derive(Debug, Clone)]
pub struct Restored {
    pub summary: ReplaySummary,
    pub bytes: u64,
}

/// Bytes of consecutive pages gathered into one write.
const WRITE_RUN_BYTES: usize = 1 << 20;
/// Bytes of pages a restore holds before it writes them. A history rewrites the same pages over
/// and over (the order-book benchmark's 300 transactions store 37,800 versions of a database of
/// about 1,300 pages): written as they came, every version cost a system call and was
/// overwritten later. Held, only a page's newest version is written, once, in page order, in
/// runs. Bounded, so that a restore's memory does not grow with the database (guarantee 5).
const HELD_BYTES_MAX: usize = 16 << 20;

/// Writes the pages replay produces into the output file: holds the newest version of each page
/// (up to `held_bytes_max`), then writes them in page order, gathering consecutive pages into
/// one write.
struct PageWriter<'a> {
    file: &'a File,
    path: &'a Path,
    page_size: u64,
    /// Pages the output holds so far; a shrinking commit truncates, so that pages past the end
    /// read as zeros if the database grows again, as they would in SQLite's file.
    pages: u64,
    /// Held pages: page number -> slot in `slots` (slots of `page_size` bytes).
    held: HashMap<u32, usize>,
    slots: Vec<u8>,
    held_bytes_max: usize,
    /// Consecutive pages being gathered into one write, from page `run_first` on.
    run: Vec<u8>,
    run_first: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<'a> PageWriter<'a> {
    fn new(file: &'a File, path: &'a Path, progress: &'a mut dyn FnMut(u64)) -> Self {
        Self {
            file,
            path,
            page_size: 0,
            pages: 0,
            held: HashMap::new(),
            slots: Vec::new(),
            held_bytes_max: HELD_BYTES_MAX,
            run: Vec::new(),
            run_first: 0,
            progress,
        }
    }

    fn write(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        let size = self.page_size as usize;
        let at = u64::from(pgno);
        if data.len() != size || size == 0 {
            // Not this generation's page size (replay refuses that before it gets here): never
            // held, written on its own.
            self.flush()?;
            self.pages = self.pages.max(at);
            let size = if size == 0 { data.len() } else { size };
            return self.write_at((at - 1) * size as u64, data);
        }
        let gathered = (self.run.len() / size) as u64;
        if (self.run_first..self.run_first + gathered).contains(&at) {
            // A newer version of a page of the growing run, not written yet.
            let i = ((at - self.run_first) as usize) * size;
            self.run[i..i + size].copy_from_slice(data);
            return Ok(());
        }
        if at > self.pages {
            // The database grows: pages past every page so far are gathered into runs and
            // written as they come (a growing database would otherwise pass through `slots`).
            self.gather(at, data)?;
            self.pages = at;
            return Ok(());
        }
        if let Some(&slot) = self.held.get(&pgno) {
            self.slots[slot * size..(slot + 1) * size].copy_from_slice(data);
            return Ok(());
        }
        if self.slots.len() + size > self.held_bytes_max {
            self.flush()?;
        }
        self.held.insert(pgno, self.slots.len() / size);
        self.slots.extend_from_slice(data);
        Ok(())
    }

    /// Writes every held page, in page order, and forgets them.
    fn flush(&mut self) -> Result<(), ReadError> {
        self.write_run()?;
        let size = self.page_size as usize;
        let slots = std::mem::take(&mut self.slots);
        let mut order: Vec<(u32, usize)> = self.held.drain().collect();
        order.sort_unstable();
        for (pgno, slot) in order {
            self.gather(u64::from(pgno), &slots[slot * size..(slot + 1) * size])?;
        }
        self.write_run()?;
        self.slots = slots;
        self.slots.clear();
        Ok(())
    }

    /// Adds page `pgno` to the run being gathered, writing the run first if the page does not
    /// extend it or would take it past `WRITE_RUN_BYTES`.
    fn gather(&mut self, pgno: u64, data: &[u8]) -> Result<(), ReadError> {
        let gathered = (self.run.len() / data.len()) as u64;
        if !self.run.is_empty()
            && (pgno != self.run_first + gathered || self.run.len() + data.len() > WRITE_RUN_BYTES)
        {
            self.write_run()?;
        }
        if self.run.is_empty() {
            self.run_first = pgno;
        }
        self.run.extend_from_slice(data);
        Ok(())
    }

    fn write_run(&mut self) -> Result<(), ReadError> {
        if self.run.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.run);
        let result = self.write_at((self.run_first - 1) * self.page_size, &run);
        self.run = run;
        self.run.clear();
        result
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ReadError> {
        self.file.write_all_at(data, offset).map_err(|e| {
            ReadError::Output(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", self.path.display()),
            ))
        })
    }
}

impl Visitor for PageWriter<'_> {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.page_size = u64::from(h.page_size);
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.write(pgno, data)
    }
    fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        if self.page_size == 0 {
            self.page_size = data.len() as u64;
        }
        self.write(pgno, data)
    }
    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        let size = u64::from(c.db_size_pages);
        if size < self.pages {
            self.flush()?;
            self.file
                .set_len(size * self.page_size)
                .map_err(ReadError::Output)?;
            self.pages = size;
        }
        Ok(())
    }
    fn progress(&mut self, bytes: u64) {
        (self.progress)(bytes)
    }
}

/// Chooses the generation and transaction a restore replays to.
pub fn resolve(
    target: &dyn Target,
    opts: &RestoreOptions,
) -> Result<(GenerationObjects, u64), RestoreError> {
    let objects = match (opts.generation, opts.point) {
        (Some(g), _) => reader::generation(target, g)?,
        (None, Point::Time(t)) => generation_at_time(target, t)?,
        (None, _) => reader::latest_generation(target)?,
    };
    let seq = match opts.point {
        Point::Latest => reader::last_committed_seq(target, &objects)?,
        Point::Txn(n) => n,
        Point::Time(t) => reader::seq_at_time(target, &objects, t)?,
    };
    Ok((objects, seq))
}

fn snapshot_created_ms(target: &dyn Target, objects: &GenerationObjects) -> Result<i64, ReadError> {
    let key = &objects.snapshot.as_ref().expect("complete generation").key;
    let rec_err = |source| ReadError::Record {
        key: key.clone(),
        source,
    };
    let mut r = RecordReader::new(target.get(key)?)
        .and_then(|r| r.expect_kind(FileKind::Snapshot))
        .map_err(rec_err)?;
    match r.next_record().map_err(rec_err)? {
        Some((
            _,
            pb::Record {
                body: Some(Body::SnapshotHeader(h)),
            },
        )) => Ok(h.created_ms),
        _ => Err(ReadError::Record {
            key: key.clone(),
            source: crate::record::RecordError::TruncatedHeader,
        }),
    }
}

fn generation_at_time(
    target: &dyn Target,
    time_ms: i64,
) -> Result<GenerationObjects, RestoreError> {
    let complete: Vec<_> = reader::inventory(target)?
        .into_iter()
        .filter(|g| g.snapshot.is_some())
        .collect();
    let mut oldest = None;
    for objects in complete.into_iter().rev() {
        let created = snapshot_created_ms(target, &objects)?;
        if created <= time_ms {
            return Ok(objects);
        }
        oldest = Some(created);
    }
    match oldest {
        Some(oldest_ms) => Err(RestoreError::TooEarly { oldest_ms }),
        None => Err(ReadError::Empty(target.describe()).into()),
    }
}

/// Restores into `out`. `progress` receives the stored bytes consumed so far (the total is
/// `GenerationObjects::bytes` of the resolved generation).
pub fn restore(
    target: &dyn Target,
    out: &Path,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Restored, RestoreError> {
    check_output(out, opts.force)?;
    let (objects, seq) = resolve(target, opts)?;
    let tmp = temp_path(out);
    let result = write_restore(target, &objects, seq, &tmp, progress);
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if opts.force {
        for suffix in ["-wal", "-shm"] {
            let side = sidecar(out, suffix);
            match fs::remove_file(&side) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let _ = fs::remove_file(&tmp);
                    return Err(RestoreError::Output {
                        path: side,
                        source: e,
                    });
                }
                _ => {}
            }
        }
    }
    fs::rename(&tmp, out).map_err(|source| RestoreError::Output {
        path: out.to_path_buf(),
        source,
    })?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(restored)
}

fn write_restore(
    target: &dyn Target,
    objects: &GenerationObjects,
    seq: u64,
    tmp: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<Restored, RestoreError> {
    let out_err = |source| RestoreError::Output {
        path: tmp.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(tmp)
        .map_err(out_err)?;
    let mut writer = PageWriter::new(&file, tmp, progress);
    let summary = reader::replay(target, objects, ReplayLimit::Txn(seq), &mut writer)?;
    writer.flush()?;
    let bytes = u64::from(summary.db_size_pages) * u64::from(summary.page_size);
    file.set_len(bytes).map_err(out_err)?;
    file.sync_all().map_err(out_err)?;
    Ok(Restored { summary, bytes })
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn temp_path(out: &Path) -> PathBuf {
    sidecar(out, &format!(".walstream-restore-{}", std::process::id()))
}

fn check_output(out: &Path, force: bool) -> Result<(), RestoreError> {
    if force {
        return Ok(());
    }
    for candidate in [out.to_path_buf(), sidecar(out, "-wal")] {
        if candidate.exists() {
            return Err(RestoreError::OutputExists(candidate));
        }
    }
    Ok(())
}

/// Reads a whole database image (for tests and `root`): pages in order.
pub fn read_image(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file a `PageWriter` leaves equals the image built page by page, whatever the order
    /// of pages, repeats, gaps and shrinking commits, and however few pages it may hold.
    #[test]
    fn held_and_gathered_writes_leave_the_same_file_as_page_by_page_writes() {
        for held_pages in [1usize, 3, 64, 100_000] {
            writes_match_the_model(held_pages);
        }
    }

    fn writes_match_the_model(held_pages: usize) {
        const PAGE: usize = 512;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.db");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut progress = |_| {};
        let mut w = PageWriter::new(&file, &path, &mut progress);
        w.page_size = PAGE as u64;
        w.held_bytes_max = held_pages * PAGE;
        let mut model: Vec<u8> = Vec::new();
        let mut x = 7u32;
        let mut write = |w: &mut PageWriter, model: &mut Vec<u8>, pgno: u32| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let page = vec![(x >> 16) as u8; PAGE];
            let end = pgno as usize * PAGE;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[end - PAGE..end].copy_from_slice(&page);
            w.write(pgno, &page).unwrap();
        };
        // A run, a repeat inside it, a gap, a run long enough to be cut in two.
        for pgno in [1, 2, 3, 2, 1, 6, 7, 4, 5] {
            write(&mut w, &mut model, pgno);
        }
        for pgno in 8..8 + (WRITE_RUN_BYTES / PAGE) as u32 + 10 {
            write(&mut w, &mut model, pgno);
        }
        // A commit that shrinks the database to 5 pages, then growth past a hole.
        let commit = |size: u32| pb::TxnCommit {
            db_size_pages: size,
            ..Default::default()
        };
        w.txn_commit(&commit(5)).unwrap();
        model.truncate(5 * PAGE);
        for pgno in [5, 9, 3] {
            write(&mut w, &mut model, pgno);
        }
        // Random rewrites of 300 pages, with a shrink now and then.
        let mut y = 99u32;
        for i in 0..3000u32 {
            y = y.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            write(&mut w, &mut model, 1 + (y >> 8) % 300);
            if i % 700 == 699 {
                let size = 1 + (y >> 4) % 250;
                if (size as usize) * PAGE < model.len() {
                    w.txn_commit(&commit(size)).unwrap();
                    model.truncate(size as usize * PAGE);
                }
            }
        }
        w.flush().unwrap();
        let mut on_disk = fs::read(&path).unwrap();
        // Pages 6..8 after the shrink were never written again: zeros in both.
        on_disk.resize(model.len(), 0);
        assert_eq!(on_disk.len(), model.len());
        assert!(
            on_disk == model,
            "the writes differ from the model, holding {held_pages} pages"
        );
    }
}
