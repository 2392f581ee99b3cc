//! The spool: the append-only local copy of the stream that capture writes on the commit path.
//! For a local-directory target the spool *is* the target.
//!
//! Writers in several processes take turns under SQLite's WAL write lock; the spool adds its own
//! advisory lock (`spool.lock`, `flock`) so that a writer can also notice, cheaply, that another
//! process appended since it last looked (the active segment's length changed) and re-read only
//! what was appended. A transaction is appended as it is read from the WAL (bounded memory); if
//! capture fails halfway, the partial transaction is cut off again. A partial transaction left by
//! a writer that died is cut off by the next writer, under the same locks.
//!
//! Relevant docs: docs/DESIGN.md ("The spool"), docs/FORMAT.md.

mod rebuild;
mod scan;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use scan::Tail;
pub use writer::TxnAppender;

use crate::file_size::len_and_links;
use crate::record::page::ChainLimit;
use crate::record::RecordError;
use crate::sign::Signer;
use crate::state::StateTree;
use crate::wal::WalCursor;

/// Name of the lock file in the spool directory.
pub const LOCK_NAME: &str = "spool.lock";
/// A segment is sealed and a new one started once it holds this many bytes. Bounds the work of
/// re-reading the active segment when a process starts.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 16 << 20;
/// A new segment continues the kept page versions of the one before it (format version 4,
/// `KeptContinued`) while the earlier segments of the chain hold at most 16 MiB and the chain
/// has at most 8 segments: a consumer resuming inside a chain (a follower, at every poll that
/// finds new transactions) reads it again from its first segment, one object per segment on S3,
/// so this bounds what it re-reads. Sealing small segments often (the S3 shipper) so keeps most
/// of its deltas: a chain's first segment stores the first version of each page it touches
/// whole.
pub const KEPT_CHAIN: ChainLimit = ChainLimit {
    bytes: 16 << 20,
    segments: 8,
};
/// Bytes of a transaction buffered before they are written to the segment; bounds capture's
/// memory for transactions of any size (a 10 MB transaction takes some 40 writes: their cost
/// is lost in that of encoding 10 MB).
pub const APPEND_BUFFER_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool file {path}: {source}")]
    Record { path: PathBuf, source: RecordError },
    #[error("spool file {path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("rebuilding the state tree from the spool: {0}")]
    Replay(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a new generation's snapshot describes.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub page_size: u32,
    pub page_count: u32,
    pub reason: String,
    /// The WAL position the snapshot's state corresponds to.
    pub wal: Option<WalCursor>,
}

/// The spool of one database, in one directory.
pub struct Spool {
    dir: PathBuf,
    lock_file: File,
    tail: Option<Tail>,
    /// Append handle on the active segment of `tail`.
    segment: Option<File>,
    /// Whether something was written since the last `sync`.
    unsynced: bool,
    /// The state tree of the tail's database image, with the (generation, seq) it describes;
    /// rebuilt from the spool when it does not match the tail.
    tree: Option<(u64, u64, StateTree)>,
    pub segment_bytes_max: u64,
    /// `KEPT_CHAIN` (tests make it small).
    pub kept_chain: ChainLimit,
    /// The state tree keeps at most this many page hashes in memory, the rest in a scratch file
    /// in the spool directory (`state::SPILL_LEAVES`; tests make it small).
    pub tree_spill_leaves: usize,
    /// Signs the chain head before every `SegmentEnd` and at `SpoolLock::sign_head`
    /// (docs/FORMAT.md, "Signed heads").
    pub signer: Option<Arc<Signer>>,
}

impl Spool {
    /// Opens (creating if needed) the spool directory. Fails if it cannot be created or written.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let lock_file = open_lock_file(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lock_file,
            tail: None,
            segment: None,
            unsynced: false,
            tree: None,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            kept_chain: KEPT_CHAIN,
            tree_spill_leaves: crate::state::SPILL_LEAVES,
            signer: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the spool lock and brings the cached tail up to date with what other processes
    /// appended. The lock is held until the returned guard is dropped.
    pub fn lock(&mut self) -> Result<SpoolLock<'_>, SpoolError> {
        self.lock_file
            .lock()
            .map_err(io_err(&self.dir.join(LOCK_NAME)))?;
        let unchanged = self.active_segment_unchanged();
        // Looked at only when the stream changed (no system call on the commit path otherwise).
        if !unchanged && unlinked(&self.lock_file) {
            // The spool directory was removed (or its lock file): a lock on the old file
            // excludes no one. Recreate the directory and lock its new lock file.
            let _ = self.lock_file.unlock();
            self.lock_file = open_lock_file(&self.dir)?;
            self.lock_file
                .lock()
                .map_err(io_err(&self.dir.join(LOCK_NAME)))?;
        }
        let mut guard = SpoolLock { spool: self };
        if !unchanged {
            guard.refresh()?;
        }
        Ok(guard)
    }

    /// Whether the active segment still ends where this process last saw it end, asked of the
    /// append handle this process holds on it (no path to build and look up). Every change to
    /// the stream by another process appends to or cuts the active segment first (a
    /// transaction, a WAL-reset marker, a `SegmentEnd` before a new segment or generation), so
    /// an unchanged length means an unchanged tail.
    fn active_segment_unchanged(&self) -> bool {
        match (&self.segment, &self.tail) {
            // A segment that was unlinked (the spool directory removed) is not where the
            // stream goes any more, whatever its length: appending to it would lose data.
            (Some(file), Some(tail)) if !tail.ended => {
                len_and_links(file).is_ok_and(|(len, links)| len == tail.segment_len && links > 0)
            }
            _ => false,
        }
    }

    /// The tail as last seen (without locking or refreshing), for status reports.
    pub fn cached_tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }
}

/// Creates `dir` if needed and opens its lock file.
fn open_lock_file(dir: &Path) -> Result<File, SpoolError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_path = dir.join(LOCK_NAME);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))
}

/// Whether `file` no longer has a name (its directory or itself was removed).
fn unlinked(file: &File) -> bool {
    len_and_links(file).is_ok_and(|(_, links)| links == 0)
}

/// The spool while its lock is held.
pub struct SpoolLock<'a> {
    spool: &'a mut Spool,
}

impl Drop for SpoolLock<'_> {
    fn drop(&mut self) {
        let _ = self.spool.lock_file.unlock();
    }
}

impl SpoolLock<'_> {
    pub fn tail(&self) -> Option<&Tail> {
        self.spool.tail.as_ref()
    }

    /// Makes everything appended so far durable (segment data and new directory entries).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.spool.unsynced {
            return Ok(());
        }
        match (&self.spool.segment, &self.spool.tail) {
            (Some(f), _) => f.sync_data().map_err(io_err(&self.spool.dir))?,
            // No append handle (a segment just created, or appends by another process): sync
            // the active segment through a handle of its own.
            (None, Some(t)) => {
                let path = self.segment_path(t.generation, t.segment_first_seq);
                File::open(&path)
                    .and_then(|f| f.sync_data())
                    .map_err(io_err(&path))?;
            }
            (None, None) => {}
        }
        // Without a generation the spool holds nothing to make durable.
        if let Some(t) = &self.spool.tail {
            let gen_dir = self
                .spool
                .dir
                .join(crate::layout::generation_dir(t.generation));
            sync_dir(&gen_dir)?;
            sync_dir(&self.spool.dir.join(crate::layout::GENERATIONS_DIR))?;
        }
        self.spool.unsynced = false;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
