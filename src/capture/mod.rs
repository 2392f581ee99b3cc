//! Capture: turns what SQLite does to its WAL into transactions in the spool.
//!
//! The extension reports [`Moment`]s (write lock taken or about to be released, a commit in
//! exclusive locking mode, a WAL about to be reset, the last connection closing) together with
//! read access to the WAL, the database and the wal-index header ([`CaptureIo`]). At each moment
//! [`Capture::event`] catches the spool up with every transaction committed in the WAL, so a
//! transaction is in the spool before SQLite releases the write lock that made it visible.
//! See docs/DESIGN.md ("Where a transaction becomes visible") and CAPTURE.md's findings.

mod engine;
mod registry;
mod status;

use std::path::PathBuf;

pub use engine::Capture;
pub use registry::{
    attach, attach_uri, status_json, SharedCapture, SEGMENT_BYTES_ENV, SEGMENT_BYTES_URI_PARAM,
};

use crate::spool::SpoolError;
use crate::target::TargetError;
use crate::wal::{ReadAt, WalError, SHM_PREFIX_BYTES};

/// Settings of a capture beyond its target.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Signs the chain head at every sealed segment and when the last connection closes.
    pub signer: Option<std::sync::Arc<crate::sign::Signer>>,
    /// Seal segments once they hold this many bytes (default `spool::SEGMENT_BYTES_MAX_DEFAULT`).
    pub segment_bytes: Option<u64>,
}

/// The points at which SQLite's WAL may have changed, as seen by the extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// This connection just took the WAL write lock. Anything committed but not captured (by a
    /// crashed writer, or a process without walstream) is caught up now, before this writer can
    /// reset the WAL.
    WriteLockAcquired,
    /// This connection is about to release the WAL write lock: its commit (if any) is published
    /// in the wal-index and must be captured before the unlock is passed on.
    WriteLockReleasing,
    /// A commit finished while this connection holds an EXCLUSIVE lock on the database file
    /// (`locking_mode=EXCLUSIVE`), where no wal-index locks are taken.
    CommitExclusive,
    /// SQLite is about to rewrite the WAL header or truncate the WAL to zero: frames of the
    /// current WAL are about to become unreadable.
    WalReset,
    /// The last connection is closing: the WAL has been checkpointed into the database file and
    /// the wal-index and WAL are about to be deleted.
    Closing,
}

/// Read access to the files of one database, through the connection that reports a moment.
pub struct CaptureIo<'a> {
    /// The first bytes of wal-index region 0, or `None` when the connection has no shared
    /// wal-index (exclusive locking mode set before the WAL was opened).
    pub shm: Option<&'a [u8; SHM_PREFIX_BYTES]>,
    /// The WAL file.
    pub wal: &'a mut dyn ReadAt,
    /// The main database file.
    pub db: &'a mut dyn ReadAt,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("reading the WAL: {0}")]
    Wal(#[from] WalError),
    #[error("reading the database file: {0}")]
    Db(std::io::Error),
    #[error("the WAL's page size {wal} differs from the stream's {stream}")]
    PageSizeChanged { wal: u32, stream: u32 },
    #[error("the database {0} is not in a state walstream can snapshot: {1}")]
    Unsnapshotable(PathBuf, String),
    /// Shipping to a remote target: bad settings, or the spool at its size limit.
    #[error("{0}")]
    Ship(String),
    /// The signing key or another setting of the connection is unusable.
    #[error("{0}")]
    Settings(String),
}
