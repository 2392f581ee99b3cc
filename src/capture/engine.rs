//! The capture state machine of one database in one process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::status::Status;
use super::{CaptureError, CaptureIo, CaptureOptions, Moment};
use crate::record::pb::{self, wal_reset::Kind};
use crate::sign::Signer;
use crate::spool::{SnapshotMeta, Spool, SpoolError, SpoolLock, Tail};
use crate::target::TargetSpec;
use crate::wal::{
    frame_offset, FrameHeader, ReadAhead, ReadAt, ShmHeader, WalCursor, WalError, WalHeader,
    FRAME_HEADER_BYTES,
};

/// How the WAL as it is now relates to the stream's tail.
enum Continuation {
    /// Frames after this position are new; capture them.
    From(WalCursor),
    /// The WAL holds nothing to capture.
    Nothing,
    /// The stream cannot be continued; start a new generation for this reason.
    Diverged(String),
    /// Decided by the database file's content: if its state root equals the stream's, continue
    /// from `then` (`None`: nothing to capture), else start a new generation for `otherwise`.
    /// For a WAL that is empty or gone with no reset marker saying why (SQLite checkpointed
    /// everything and reset it unseen, or a power loss took frames walstream had captured), and
    /// for a database file whose size or modification time differ from what a reset marker
    /// recorded (a change behind walstream's back, or only a touch: a copy, a restored backup,
    /// a checkpoint cut by a power loss and redone).
    IfFileIsTail {
        then: Option<WalCursor>,
        otherwise: String,
    },
}

/// Capture of one database, shared by the connections of a process.
pub struct Capture {
    db_path: PathBuf,
    target: TargetSpec,
    spool: Spool,
    /// Salts of the WAL whose every commit the spool held when this process took the write
    /// lock; only meaningful while the lock is held. A WAL reset under that lock discards
    /// nothing uncaptured.
    synced_at_lock: Option<(u32, u32)>,
    status: Status,
    /// A WAL position this process saw the WAL hold: it read the frame there, or captured
    /// through it. SQLite never rewrites a committed frame while the WAL keeps its salts (only
    /// a restart reuses the file, with new salts), so while the stream ends at this position and
    /// the wal-index shows its salts, the WAL need not be read again to prove that it still
    /// continues the stream.
    seen: Option<WalCursor>,
    frame_buf: Vec<u8>,
    /// The window of `ReadAhead` over the WAL (at most `wal::READ_AHEAD_BYTES_MAX`).
    read_ahead: Vec<u8>,
    /// Shipping to a remote target (S3): the spool is `<db>-walstream/` and a background
    /// shipper uploads it (see `crate::ship`).
    ship: Option<ShipLink>,
}

/// The shipper of a capture whose target is remote.
struct ShipLink {
    spool_dir: PathBuf,
    spec: TargetSpec,
    config: crate::ship::ShipConfig,
    shipper: Option<crate::ship::Shipper>,
}

impl ShipLink {
    /// Starts the shipper if needed, and again in a `fork()` child (whose copy of the parent's
    /// shipper has no thread).
    fn ensure(&mut self, status: &mut Status) {
        if self.shipper.as_ref().is_some_and(|s| s.is_inherited()) {
            if let Some(old) = self.shipper.take() {
                old.abandon();
            }
        }
        if self.shipper.is_none() {
            match crate::ship::Shipper::start(
                self.spool_dir.clone(),
                self.spec.clone(),
                self.config.clone(),
            ) {
                Ok(s) => {
                    status.ship = Some(s.shared().clone());
                    self.shipper = Some(s);
                }
                Err(e) => status.last_error = Some(format!("cannot start the shipper thread: {e}")),
            }
        }
    }
}

impl Capture {
    pub fn open(db_path: PathBuf, target: TargetSpec) -> Result<Self, CaptureError> {
        Self::open_with(db_path, target, &CaptureOptions::default())
    }

    /// `open` with a connection's settings (signing key, segment size).
    pub fn open_with(
        db_path: PathBuf,
        target: TargetSpec,
        opts: &CaptureOptions,
    ) -> Result<Self, CaptureError> {
        let mut status = Status {
            database: db_path.display().to_string(),
            target: target.describe(),
            signing_key: opts.signer.as_ref().map(|s| s.public_key().clone()),
            ..Default::default()
        };
        let (dir, mut ship) = match &target {
            TargetSpec::Local(dir) => (dir.clone(), None::<ShipLink>),
            #[cfg(not(feature = "s3"))]
            TargetSpec::S3 { .. } => {
                return Err(crate::target::TargetError::Unsupported(target.describe()).into())
            }
            #[cfg(feature = "s3")]
            TargetSpec::S3 { .. } => {
                let TargetSpec::Local(spool_dir) = TargetSpec::default_for(&db_path) else {
                    unreachable!()
                };
                let mut config = crate::ship::ShipConfig::from_env().map_err(CaptureError::Ship)?;
                // The shipper seals segments too: it signs them with the same key.
                config.signer = opts.signer.clone();
                status.spool = Some(spool_dir.display().to_string());
                status.spool_limit = config.spool_limit;
                let link = ShipLink {
                    spool_dir: spool_dir.clone(),
                    spec: target.clone(),
                    config,
                    shipper: None,
                };
                (spool_dir, Some(link))
            }
        };
        let mut spool = Spool::open(&dir)?;
        if let Some(link) = ship.as_mut() {
            spool.segment_bytes_max = link.config.seal_bytes;
            // Started with the first connection, so that a restarted process ships what the
            // spool holds even before it writes.
            link.ensure(&mut status);
        }
        spool.signer = opts.signer.clone();
        if let Some(bytes) = opts.segment_bytes {
            spool.segment_bytes_max = bytes;
        }
        Ok(Self {
            db_path,
            target,
            spool,
            synced_at_lock: None,
            status,
            seen: None,
            frame_buf: Vec::new(),
            read_ahead: Vec::new(),
            ship,
        })
    }

    pub fn target(&self) -> &TargetSpec {
        &self.target
    }

    /// The key that signs this stream's heads, if any.
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.spool.signer.as_ref()
    }

    /// Segments are sealed once they hold this many bytes.
    pub fn set_segment_bytes(&mut self, bytes: u64) {
        self.spool.segment_bytes_max = bytes;
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// True while committed transactions in the WAL are missing from the stream: the extension
    /// then refuses the locks SQLite needs to discard WAL content (restart, truncate, last-close
    /// checkpoint), so the WAL keeps them until capture succeeds.
    pub fn refuse_wal_reset(&self) -> bool {
        self.status.behind
    }

    /// Handles one moment. Never fails: an error is recorded in the status, the capture is
    /// marked as behind, and the next moment tries again from where the stream ends.
    pub fn event(&mut self, moment: Moment, io: CaptureIo<'_>) {
        if let Some(link) = self.ship.as_mut() {
            link.ensure(&mut self.status);
        }
        let result = match moment {
            Moment::WriteLockAcquired => self.on_lock_acquired(io),
            Moment::WriteLockReleasing => {
                let r = self.catch_up(CaptureIo {
                    shm: io.shm,
                    wal: io.wal,
                    db: io.db,
                });
                self.synced_at_lock = None;
                r.and_then(|()| self.scheduled_generation(io))
            }
            // With the wal-index still mapped (exclusive mode set after the WAL was opened) no
            // lock moments come: each commit is also where the stream is known caught up.
            Moment::CommitExclusive if io.shm.is_some() => self.on_lock_acquired(io),
            Moment::CommitExclusive => self.catch_up(io),
            Moment::WalReset => self.before_reset(io),
            Moment::Closing => self.before_close(io),
        };
        match result {
            Ok(()) => self.status.behind = false,
            Err(e) => {
                self.seen = None;
                self.status.behind = true;
                self.status.errors += 1;
                self.status.last_error = Some(e.to_string());
            }
        }
        if let Some(t) = self.spool.cached_tail() {
            self.status.generation = Some(t.generation);
            self.status.last_seq = Some(t.last_seq);
            self.status.head_hash = Some(t.head_hash);
        }
        if let Some(shipper) = self.ship.as_ref().and_then(|l| l.shipper.as_ref()) {
            let captured = self.spool.cached_tail().map(|t| (t.generation, t.last_seq));
            shipper.shared().notify(captured);
        }
    }

    /// Starts a new generation when the shipper asked for one (the newest generation grew
    /// long or old), right after a commit was captured, while the write lock is still held.
    fn scheduled_generation(&mut self, io: CaptureIo<'_>) -> Result<(), CaptureError> {
        let Some(shipper) = self.ship.as_ref().and_then(|l| l.shipper.as_ref()) else {
            return Ok(());
        };
        let Some(shm) = io.shm.and_then(ShmHeader::parse) else {
            return Ok(());
        };
        if shm.mx_frame == 0 {
            return Ok(()); // the state is the database file alone: wait for a commit in the WAL
        }
        let Some(reason) = shipper.shared().take_generation_request() else {
            return Ok(());
        };
        self.new_generation(io, Some(shm.mx_frame), &reason)
    }

    fn on_lock_acquired(&mut self, io: CaptureIo<'_>) -> Result<(), CaptureError> {
        self.synced_at_lock = None;
        let shm = io.shm.and_then(ShmHeader::parse);
        if let Some(shm) = shm.filter(|h| self.holds_all_of(h)) {
            self.check_ship_limit()?;
            self.synced_at_lock = Some((shm.salt1, shm.salt2));
            return Ok(());
        }
        let wal = io.wal;
        self.catch_up(CaptureIo {
            shm: io.shm,
            wal: &mut *wal,
            db: io.db,
        })?;
        let (Some(shm), Some(tail)) = (shm, self.spool.cached_tail().cloned()) else {
            return Ok(());
        };
        let salts = (shm.salt1, shm.salt2);
        let caught_up = tail.wal.is_some_and(|w| {
            (w.salt1, w.salt2) == salts
                && w.frame <= shm.mx_frame
                && only_padding_after(wal, w, shm.mx_frame, &tail, &mut self.frame_buf)
        });
        let empty_after_restart = shm.mx_frame == 0
            && tail.reset.as_ref().is_some_and(|r| {
                r.kind() == Kind::Restart
                    && (r.next_salt1, r.next_salt2) == salts
                    && !r.salt2_unknown
            });
        if caught_up || empty_after_restart {
            self.synced_at_lock = Some(salts);
        }
        Ok(())
    }

    /// Whether the stream holds every commit the wal-index `shm` shows, known without any I/O:
    /// the tail this process last saw ends at the wal-index's last commit frame, at a position
    /// seen in the WAL of the wal-index's salts. Another process cannot have captured anything
    /// since, as that would have needed a commit, moving mxFrame or the salts; what it may have
    /// appended otherwise (a new generation, a sealed segment) the next append sees, as it
    /// refreshes the tail under the spool lock.
    fn holds_all_of(&self, shm: &ShmHeader) -> bool {
        let Some(tail) = self
            .spool
            .cached_tail()
            .filter(|t| !t.ended && !self.status.behind)
        else {
            return false;
        };
        tail.wal.is_some_and(|w| {
            self.seen == Some(w)
                && (w.salt1, w.salt2) == (shm.salt1, shm.salt2)
                && w.frame == shm.mx_frame
        })
    }

    /// Refuses to capture while the spool of a remote target is at its size limit.
    fn check_ship_limit(&self) -> Result<(), CaptureError> {
        match self
            .ship
            .as_ref()
            .and_then(|l| l.shipper.as_ref())
            .and_then(|s| s.limit_error())
        {
            Some(msg) => Err(CaptureError::Ship(msg)),
            None => Ok(()),
        }
    }

    /// Captures every committed transaction in the WAL that the stream does not hold yet.
    fn catch_up(&mut self, io: CaptureIo<'_>) -> Result<(), CaptureError> {
        self.check_ship_limit()?;
        let shm = match io.shm {
            Some(region) => match ShmHeader::parse(region) {
                Some(h) => Some(h),
                // Not initialised: recovery has not run, so nothing is visible yet.
                None => return Ok(()),
            },
            None => None,
        };
        let limit = shm.map(|h| h.mx_frame);
        let shm_salts = shm.map(|h| (h.salt1, h.salt2));
        let mut lock = self.spool.lock()?;
        let tail = match lock.tail() {
            Some(t) if !t.ended => t,
            Some(_) => {
                drop(lock);
                return self.new_generation(io, limit, "the previous generation was ended");
            }
            None => {
                drop(lock);
                return self.new_generation(io, limit, "new stream");
            }
        };
        let (tail_wal, tail_page_size) = (tail.wal, tail.page_size);
        let last_commit = tail.last_commit_page;
        let seen = self
            .seen
            .filter(|w| tail_wal == Some(*w) && shm_salts == Some((w.salt1, w.salt2)));
        let next = match seen {
            // The WAL still holds the stream's position: its frames with these salts were seen.
            Some(w) => match limit {
                Some(mx) if mx < w.frame => lost(mx, w.frame),
                _ => Continuation::From(w),
            },
            None => {
                // With an empty wal-index the WAL file may still hold an old, stale header.
                let wal_header = if limit == Some(0) {
                    None
                } else {
                    WalHeader::read(io.wal)?
                };
                let (buf, db_path) = (&mut self.frame_buf, &self.db_path);
                continuation(
                    tail,
                    wal_header.as_ref(),
                    limit,
                    shm_salts,
                    io.wal,
                    db_path,
                    buf,
                )
            }
        };
        let from = match next {
            Continuation::Nothing => return Ok(()),
            Continuation::From(cursor) => cursor,
            Continuation::IfFileIsTail { then, otherwise } => {
                // Reads and hashes the whole file: only in the rare cases described above. A
                // stream whose state cannot be read back (its spool directory was removed, say)
                // cannot be shown to hold the file: a new generation.
                let same = match lock.tail_state_root() {
                    Ok(stream_root) => {
                        let tree = lock.new_tree(tail_page_size);
                        file_state_root(io.db, tree)? == Some(stream_root)
                    }
                    Err(_) => false,
                };
                match (same, then) {
                    (true, Some(cursor)) => cursor,
                    (true, None) => return Ok(()),
                    (false, _) => {
                        drop(lock);
                        return self.new_generation(io, limit, &otherwise);
                    }
                }
            }
            Continuation::Diverged(reason) => {
                drop(lock);
                return self.new_generation(io, limit, &reason);
            }
        };
        if Some(from) == tail_wal {
            // `continuation` checked that the WAL holds it, or it was seen before.
            self.seen = Some(from);
        }
        if tail_page_size != 0 && from.page_size != tail_page_size {
            let (wal, stream) = (from.page_size, tail_page_size);
            return Err(CaptureError::PageSizeChanged { wal, stream });
        }
        let bufs = (&mut self.frame_buf, &mut self.read_ahead);
        let outcome = capture_frames(&mut lock, last_commit, from, limit, io.wal, bufs)?;
        let captured_to = lock.tail().and_then(|t| t.wal);
        drop(lock);
        match outcome {
            FramesOutcome::Captured(n) => {
                if n > 0 {
                    self.seen = captured_to;
                }
                self.status.captured_txns += n;
                Ok(())
            }
            FramesOutcome::Broken { frame } => {
                let reason = format!(
                    "WAL frame {frame} does not continue the captured history (the database \
                     lost or rewrote committed frames)"
                );
                self.new_generation(io, limit, &reason)
            }
        }
    }

    /// Before SQLite discards the current WAL: if every transaction of it is captured, record
    /// which WAL continues the history, and make the spool durable.
    fn before_reset(&mut self, io: CaptureIo<'_>) -> Result<(), CaptureError> {
        let next = match io.shm {
            Some(region) => {
                // SQLite has already published the next WAL's salts in the wal-index.
                let now = ShmHeader::parse(region).map(|h| (h.salt1, h.salt2));
                let mut synced = self.synced_at_lock;
                if synced.is_none() {
                    // No lock moment came (exclusive locking mode): the old WAL is still on
                    // disk, and its valid frames are bounded by the checksum chain.
                    let current = WalHeader::read(io.wal).ok().flatten();
                    self.catch_up(CaptureIo {
                        shm: None,
                        wal: &mut *io.wal,
                        db: &mut *io.db,
                    })?;
                    let fresh = self.spool.cached_tail().and_then(|t| t.wal);
                    if let (Some(h), Some(w)) = (current, fresh) {
                        if w.same_wal(&h) && holds_position(io.wal, &w, &mut self.frame_buf) {
                            synced = Some((w.salt1, w.salt2));
                        }
                    }
                }
                match (synced, now) {
                    (Some(synced), Some(now)) if synced != now => Some((now.0, now.1, false)),
                    _ => None,
                }
            }
            None => {
                // Exclusive locking mode without a shared wal-index: the old WAL is still intact
                // on disk and its valid frames are bounded by the checksum chain.
                self.catch_up(CaptureIo {
                    shm: None,
                    wal: io.wal,
                    db: io.db,
                })?;
                let current = WalHeader::read(io.wal).ok().flatten();
                let tail = self.spool.cached_tail();
                match (current, tail.and_then(|t| t.wal)) {
                    (Some(h), Some(w)) if w.same_wal(&h) => {
                        Some((h.salt1.wrapping_add(1), 0, true))
                    }
                    _ => None,
                }
            }
        };
        // The checkpoint that precedes a reset has already written the database file.
        let (db_file_bytes, db_file_mtime_ns) =
            db_file_stat(&self.db_path).map_err(CaptureError::Db)?;
        let mut lock = self.spool.lock()?;
        let Some(tail) = lock.tail().cloned() else {
            return Ok(());
        };
        if let Some((next_salt1, next_salt2, salt2_unknown)) = next.filter(|_| !tail.ended) {
            lock.mark_reset(pb::WalReset {
                kind: Kind::Restart as i32,
                after_seq: tail.last_seq,
                next_salt1,
                next_salt2,
                salt2_unknown,
                db_file_bytes,
                db_file_mtime_ns,
            })?;
        }
        lock.sync()?;
        Ok(())
    }

    /// The last connection is closing after checkpointing everything into the database file.
    fn before_close(&mut self, io: CaptureIo<'_>) -> Result<(), CaptureError> {
        self.catch_up(CaptureIo {
            shm: io.shm,
            wal: io.wal,
            db: io.db,
        })?;
        let (bytes, mtime_ns) = db_file_stat(&self.db_path).map_err(CaptureError::Db)?;
        let mut lock = self.spool.lock()?;
        if let Some(tail) = lock.tail().cloned().filter(|t| !t.ended) {
            lock.mark_reset(pb::WalReset {
                kind: Kind::Close as i32,
                after_seq: tail.last_seq,
                db_file_bytes: bytes,
                db_file_mtime_ns: mtime_ns,
                ..Default::default()
            })?;
            lock.sign_head()?;
        }
        lock.sync()?;
        Ok(())
    }

    /// Starts a new generation from a snapshot of the database as of the last commit in the WAL.
    fn new_generation(
        &mut self,
        io: CaptureIo<'_>,
        limit: Option<u32>,
        reason: &str,
    ) -> Result<(), CaptureError> {
        let image = DatabaseImage::scan(io.wal, io.db, limit, &mut self.frame_buf)?;
        if image.page_count == 0 && image.wal.is_none() && image.page_size == 0 {
            // An empty database: nothing to snapshot until the first transaction arrives.
            if self.spool.lock()?.tail().is_none() {
                return Ok(());
            }
        }
        let meta = SnapshotMeta {
            page_size: image.page_size,
            page_count: image.page_count,
            reason: reason.to_string(),
            wal: image.wal,
        };
        let db_path = self.db_path.clone();
        let stat = db_file_stat(&db_path).map_err(CaptureError::Db)?;
        let mut lock = self.spool.lock()?;
        let mut read_page = |pgno: u32, buf: &mut [u8]| -> Result<(), SpoolError> {
            image
                .read_page(pgno, buf, io.wal, io.db)
                .map_err(|source| SpoolError::Io {
                    path: db_path.clone(),
                    source,
                })
        };
        lock.start_generation(&meta, &mut read_page)?;
        // The snapshot read the WAL through its last commit frame.
        self.seen = image.wal;
        if image.wal.is_none() {
            // The state is the database file itself: the next WAL starts from it.
            lock.mark_reset(pb::WalReset {
                kind: Kind::Close as i32,
                after_seq: 0,
                db_file_bytes: stat.0,
                db_file_mtime_ns: stat.1,
                ..Default::default()
            })?;
            lock.sync()?;
        }
        drop(lock);
        self.status.generations_started += 1;
        self.status.last_generation_reason = Some(reason.to_string());
        Ok(())
    }
}

/// Size and modification time of the database file, read with `stat` (no file descriptor is
/// opened on it: closing one would drop SQLite's POSIX locks).
fn db_file_stat(path: &std::path::Path) -> std::io::Result<(u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// The state root of the database file as it is on disk (`None` if it is not a whole number of
/// pages). Reads and hashes every page: only for the rare cases of `IfFileIsTail`.
fn file_state_root(
    db: &mut dyn ReadAt,
    mut tree: crate::state::StateTree,
) -> Result<Option<crate::record::Hash>, CaptureError> {
    let page_size = tree.page_size();
    let size = db.size().map_err(CaptureError::Db)?;
    if page_size == 0 || size % u64::from(page_size) != 0 {
        return Ok(None);
    }
    let count = (size / u64::from(page_size)) as u32;
    tree.resize(count);
    let mut page = vec![0u8; page_size as usize];
    for pgno in 1..=count {
        db.read_exact_at(&mut page, u64::from(pgno - 1) * u64::from(page_size))
            .map_err(CaptureError::Db)?;
        tree.set_page(pgno, crate::record::chain::page_hash(&page));
    }
    Ok(Some(tree.root().map_err(CaptureError::Db)?))
}

/// Whether the WAL still holds the frame the stream's position names, with the recorded salts
/// and checksum: false when the frames were lost (power loss) or rewritten since.
fn holds_position(wal: &mut dyn ReadAt, w: &WalCursor, buf: &mut Vec<u8>) -> bool {
    if w.frame == 0 {
        return true;
    }
    // The whole frame must be there: a short read (past the end of the file) fails.
    buf.resize(w.frame_bytes(), 0);
    if wal
        .read_exact_at(buf, frame_offset(w.frame, w.page_size))
        .is_err()
    {
        return false;
    }
    let header = &buf[..FRAME_HEADER_BYTES];
    let field =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    // A frame committed with deferred checksums (see `WalCursor::next_committed_frame`) has
    // zero salts and checksum, and the position then records a zero checksum.
    let salts_match =
        (field(8), field(12)) == (w.salt1, w.salt2) || (field(8), field(12)) == (0, 0);
    salts_match && (field(16), field(20)) == w.checksum
}

/// True when every frame after `w` up to `mx` repeats the tail's last commit frame (sector
/// padding), so the stream holds everything committed in the WAL.
fn only_padding_after(
    wal: &mut dyn ReadAt,
    w: WalCursor,
    mx: u32,
    tail: &Tail,
    buf: &mut Vec<u8>,
) -> bool {
    let mut cursor = w;
    while cursor.frame < mx {
        // Frames up to mxFrame are committed: the end of the file shows as a short read.
        match cursor.next_committed_frame(wal, u64::MAX, buf) {
            Ok(Some(f)) => {
                let page = crate::record::chain::page_hash(&buf[FRAME_HEADER_BYTES..]);
                if tail.last_commit_page != Some((f.pgno, f.db_size_after_commit, page)) {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// `then` if the database file is as a WAL-reset marker recorded it (size and modification
/// time, or else content); diverged otherwise.
fn file_as_marked(
    r: &pb::WalReset,
    db_path: &std::path::Path,
    then: Option<WalCursor>,
) -> Continuation {
    let as_marked = then.map_or(Continuation::Nothing, Continuation::From);
    match db_file_stat(db_path) {
        Ok((bytes, mtime)) if bytes == r.db_file_bytes && mtime == r.db_file_mtime_ns => as_marked,
        Ok(_) => Continuation::IfFileIsTail {
            then,
            otherwise: format!(
                "the database file changed since the WAL was {} without walstream seeing the WAL \
                 that changed it",
                if r.kind() == Kind::Close {
                    "closed"
                } else {
                    "reset"
                }
            ),
        },
        Err(e) => Continuation::Diverged(format!("cannot stat the database file: {e}")),
    }
}

/// The WAL holds `held` frames of the WAL the stream's position names, but `captured` were.
fn lost(held: u32, captured: u32) -> Continuation {
    Continuation::Diverged(format!(
        "the WAL holds {held} frames but {captured} were captured: the database lost committed \
         transactions"
    ))
}

/// How the WAL as it is now (`wal`: its header; `limit`, `shm_salts`: the wal-index's mxFrame and
/// salts, when there is a shared wal-index) relates to the stream's tail.
fn continuation(
    tail: &Tail,
    wal: Option<&WalHeader>,
    limit: Option<u32>,
    shm_salts: Option<(u32, u32)>,
    wal_file: &mut dyn ReadAt,
    db_path: &std::path::Path,
    buf: &mut Vec<u8>,
) -> Continuation {
    // The wal-index still names the captured WAL: it must hold at least the captured frames
    // (recovery after a power loss publishes fewer, possibly none).
    if let Some(w) = tail
        .wal
        .filter(|w| w.frame > 0 && shm_salts == Some((w.salt1, w.salt2)))
    {
        if let Some(mx) = limit.filter(|mx| *mx < w.frame) {
            return lost(mx, w.frame);
        }
    }
    let Some(h) = wal else {
        // Nothing in the WAL. After a reset or close, the database file must still be as the
        // marker recorded it: a change without walstream would otherwise go unseen. Without a
        // marker, frames the stream captured were in this WAL and SQLite never reset it while
        // walstream watched, unless the wal-index publishes a restart of that WAL (salt-1 one
        // more, no frames) whose writer died before it rewrote the header: SQLite restarts a WAL
        // only once every frame is in the database file, and walstream refuses it the locks
        // while capture is behind. Otherwise the database file decides (`IfFileIsTail`).
        let restart_published = shm_salts
            .zip(tail.wal)
            .is_some_and(|((salt1, _), w)| salt1 == w.salt1.wrapping_add(1));
        return match tail.reset.as_ref() {
            Some(r) => file_as_marked(r, db_path, None),
            None if restart_published => Continuation::Nothing,
            None if tail.wal.is_some_and(|w| w.frame > 0) => Continuation::IfFileIsTail {
                then: None,
                otherwise: "the WAL is empty or gone but the stream captured frames from it, and \
                            the database file does not hold them: the database lost committed \
                            transactions"
                    .into(),
            },
            None => Continuation::Nothing,
        };
    };
    if let Some(w) = tail.wal.filter(|w| w.same_wal(h)) {
        if shm_salts.is_some_and(|s| s != (w.salt1, w.salt2)) {
            // A reset is published in the wal-index but the old header is still on disk.
            return Continuation::Nothing;
        }
        if let Some(mx) = limit.filter(|mx| *mx < w.frame) {
            return lost(mx, w.frame);
        }
        if !holds_position(wal_file, &w, buf) {
            return Continuation::Diverged(
                "the WAL no longer holds the captured frames with their checksums: the database \
                 lost or rewrote committed transactions"
                    .into(),
            );
        }
        return Continuation::From(w);
    }
    let Some(r) = tail.reset.as_ref() else {
        return Continuation::Diverged(
            "the WAL was reset or replaced with frames walstream did not capture".into(),
        );
    };
    // A WAL that starts after a reset walstream saw. The salts SQLite announced identify it
    // when the connection that reset the WAL writes it next; a connection that never reset a
    // WAL itself picks random salts, and then the database file must be as the reset left it
    // (a WAL written and reset without walstream in between would have checkpointed into it).
    let announced = r.kind() == Kind::Restart
        && h.salt1 == r.next_salt1
        && (r.salt2_unknown || h.salt2 == r.next_salt2);
    if announced {
        return Continuation::From(WalCursor::at_start(h));
    }
    file_as_marked(r, db_path, Some(WalCursor::at_start(h)))
}

enum FramesOutcome {
    Captured(u64),
    /// A frame below the wal-index's mxFrame does not chain from the stream's position.
    Broken {
        frame: u32,
    },
}

/// Streams the committed transactions in the WAL after `from` into the spool.
/// `last_commit` is the tail's `last_commit_page`; `bufs` are a frame buffer and the window of
/// the reads ahead.
fn capture_frames(
    lock: &mut SpoolLock<'_>,
    mut last_commit: Option<(u32, u32, crate::record::Hash)>,
    from: WalCursor,
    limit: Option<u32>,
    wal: &mut dyn ReadAt,
    bufs: (&mut Vec<u8>, &mut Vec<u8>),
) -> Result<FramesOutcome, CaptureError> {
    let (buf, window) = bufs;
    // Frames up to mxFrame are committed and present: no need to ask for the file's size, and
    // they are read in runs. Without a wal-index (exclusive locking mode) the checksum chain
    // ends the log and the end of the file shows as a short read; frames are read one by one
    // rather than the file's size asked for, an fstat that reads its timestamps and so made
    // every FULL commit write the WAL's inode (crate::file_size).
    let (file_size, end) = match limit {
        Some(mx) if mx > from.frame => (u64::MAX, frame_offset(mx + 1, from.page_size)),
        Some(_) | None => (u64::MAX, 0),
    };
    let mut ahead = ReadAhead::new(wal, window, end);
    let wal: &mut dyn ReadAt = &mut ahead;
    let mut cursor = from;
    let mut captured = 0;
    while limit.is_none_or(|mx| cursor.frame < mx) {
        let txn_start = cursor.frame;
        let mut txn = None;
        let step = next_txn(
            lock,
            &mut txn,
            &mut cursor,
            limit,
            wal,
            file_size,
            buf,
            last_commit,
        );
        match step {
            Ok(true) => {
                if let Some(t) = txn.take() {
                    let commit_frame = read_commit_size(buf);
                    lock.commit_txn(t, commit_frame, crate::now_ms(), &cursor)?;
                    last_commit = lock.tail().and_then(|t| t.last_commit_page);
                    captured += 1;
                }
            }
            Ok(false) => {
                if let Some(t) = txn.take() {
                    lock.abort_txn(t)?;
                }
                if limit.is_some_and(|mx| txn_start < mx) {
                    return Ok(FramesOutcome::Broken {
                        frame: cursor.frame + 1,
                    });
                }
                break;
            }
            Err(e) => {
                if let Some(t) = txn.take() {
                    let _ = lock.abort_txn(t);
                }
                return Err(e);
            }
        }
    }
    Ok(FramesOutcome::Captured(captured))
}

/// The database size field of the frame in `buf` (a commit frame).
fn read_commit_size(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])
}

/// The frame after `cursor`: with a wal-index limit (`mxFrame`) known, the frames below it are
/// committed and read with `next_committed_frame`; without one, `next_frame` validates checksums.
fn next_frame_within(
    cursor: &mut WalCursor,
    limit: Option<u32>,
    wal: &mut dyn ReadAt,
    file_size: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<FrameHeader>, WalError> {
    match limit {
        Some(_) => cursor.next_committed_frame(wal, file_size, buf),
        None => cursor.next_frame(wal, file_size, buf),
    }
}

/// Reads frames up to and including the next commit frame, appending their pages to `txn`
/// (begun lazily). Returns true at a commit frame (the frame stays in `buf`; `txn` is `None` if
/// the frame was sector padding), false at the end of the valid log before any commit frame.
#[allow(clippy::too_many_arguments)]
fn next_txn(
    lock: &mut SpoolLock<'_>,
    txn: &mut Option<crate::spool::TxnAppender>,
    cursor: &mut WalCursor,
    limit: Option<u32>,
    wal: &mut dyn ReadAt,
    file_size: u64,
    buf: &mut Vec<u8>,
    last_commit: Option<(u32, u32, crate::record::Hash)>,
) -> Result<bool, CaptureError> {
    loop {
        if limit.is_some_and(|mx| cursor.frame >= mx) {
            return Ok(false);
        }
        let Some(frame) = next_frame_within(cursor, limit, wal, file_size, buf)? else {
            return Ok(false);
        };
        let page = &buf[FRAME_HEADER_BYTES..];
        // Hashed once: the padding check's hash is the page hash the stream records.
        let hash = crate::record::chain::page_hash(page);
        if frame.is_commit()
            && txn.is_none()
            && last_commit == Some((frame.pgno, frame.db_size_after_commit, hash))
        {
            // A repeat of the previous commit frame, written as sector padding.
            return Ok(true);
        }
        let appender = txn.get_or_insert_with(|| lock.begin_txn());
        lock.txn_page_hashed(appender, frame.pgno, page, hash)?;
        if frame.is_commit() {
            return Ok(true);
        }
    }
}

/// The database's state as of the last commit in the WAL: the database file overlaid with the
/// newest committed WAL frame of each page.
struct DatabaseImage {
    page_size: u32,
    page_count: u32,
    /// Position of the last commit frame included (None: the WAL contributed nothing).
    wal: Option<WalCursor>,
    /// Page number to the WAL frame holding its newest committed version.
    overlay: HashMap<u32, u32>,
}

impl DatabaseImage {
    fn scan(
        wal: &mut dyn ReadAt,
        db: &mut dyn ReadAt,
        limit: Option<u32>,
        buf: &mut Vec<u8>,
    ) -> Result<Self, CaptureError> {
        let mut image = DatabaseImage {
            page_size: 0,
            page_count: 0,
            wal: None,
            overlay: HashMap::new(),
        };
        let header = if limit == Some(0) {
            None
        } else {
            WalHeader::read(wal)?
        };
        if let Some(h) = header {
            let file_size = wal.size().map_err(crate::wal::WalError::Io)?;
            let mut cursor = WalCursor::at_start(&h);
            let mut pending = Vec::new();
            while limit.is_none_or(|mx| cursor.frame < mx) {
                let Some(frame) = next_frame_within(&mut cursor, limit, wal, file_size, buf)?
                else {
                    break;
                };
                pending.push((frame.pgno, cursor.frame));
                if frame.is_commit() {
                    image.overlay.extend(pending.drain(..));
                    image.page_count = frame.db_size_after_commit;
                    image.page_size = h.page_size;
                    image.wal = Some(cursor);
                }
            }
            if limit.is_some_and(|mx| image.wal.map_or(0, |w| w.frame) < mx) {
                return Err(CaptureError::Unsnapshotable(
                    PathBuf::from("WAL"),
                    format!(
                        "frames below mxFrame {} do not validate",
                        limit.unwrap_or(0)
                    ),
                ));
            }
        }
        if image.wal.is_none() {
            let db_size = db.size().map_err(CaptureError::Db)?;
            if db_size > 0 {
                let mut hdr = [0u8; 100];
                db.read_exact_at(&mut hdr, 0).map_err(CaptureError::Db)?;
                let raw = u32::from(u16::from_be_bytes([hdr[16], hdr[17]]));
                image.page_size = if raw == 1 { 65536 } else { raw };
                if !crate::wal::is_valid_page_size(image.page_size) {
                    return Err(CaptureError::Unsnapshotable(
                        PathBuf::from("database"),
                        format!("invalid page size {raw} in the database header"),
                    ));
                }
                image.page_count =
                    u32::try_from(db_size / u64::from(image.page_size)).unwrap_or(u32::MAX);
            }
        }
        Ok(image)
    }

    fn read_page(
        &self,
        pgno: u32,
        buf: &mut [u8],
        wal: &mut dyn ReadAt,
        db: &mut dyn ReadAt,
    ) -> std::io::Result<()> {
        match self.overlay.get(&pgno) {
            Some(&frame) => {
                let offset = frame_offset(frame, self.page_size) + FRAME_HEADER_BYTES as u64;
                wal.read_exact_at(buf, offset)
            }
            None => db.read_exact_at(buf, u64::from(pgno - 1) * u64::from(self.page_size)),
        }
    }
}
