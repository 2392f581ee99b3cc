//! Goal: for every WAL history SQLite can produce, the capture engine writes a stream that holds
//! exactly the committed transactions, in commit order, each restoring to the database's image
//! after that commit; and it starts a new generation only where the history has a gap it cannot
//! see through (the database file changed without walstream, or the WAL lost committed frames).
//!
//! Method: a deterministic simulator of SQLite's WAL machinery (no SQLite, no extension) drives
//! `walstream::capture::Capture` directly with the `Moment`s the extension reports. It writes
//! real WAL bytes (header, frames, cumulative checksums) into an in-memory file, keeps the
//! database file on disk (the engine `stat`s it to check continuity across a close), and
//! publishes the wal-index header in the byte layout `ShmHeader::parse` reads. It follows
//! wal.c: the write lock taken and released around commits; rollbacks that leave spilled frames
//! past mxFrame; a WAL restart (mxFrame 0, salt-1 + 1, random salt-2) by a writer that finds the
//! WAL fully backfilled and no reader in the way; PASSIVE (possibly partial), FULL and TRUNCATE
//! checkpoints (TRUNCATE restarts the header even with an empty WAL); the last close
//! (checkpoint, delete the WAL and the -shm); random salts for a new WAL written by a connection
//! that never restarted one (the per-connection nCkpt); recovery under the write lock (mxFrame
//! rebuilt from the checksum chain, nBackfill 0, nCkpt taken from the WAL header); writers that
//! die between publishing mxFrame and releasing the lock; sector-padding repeats of the commit
//! frame; shrinking commits; up to two processes with two connections each; and
//! locking_mode=EXCLUSIVE with a shared wal-index (`CommitExclusive` with the -shm) and with a
//! heap wal-index (no -shm at all). Gaps are injected on purpose: the database file modified
//! while closed, and power loss that drops unsynced WAL frames.
//!
//! The oracle keeps the logical database image after every commit (the simulator also checks
//! it against the database file overlaid with the committed WAL frames after every step). At
//! the end the stream must pass `walstream::verify`; each generation is replayed and its
//! snapshot and per-transaction images are matched in order against the oracle's history: a
//! generation may begin only at a gap (or at the commit right after one, when the gap shows
//! only once a new WAL is written), its transactions are exactly the following commits up to
//! the next gap, and a history without gaps has exactly one generation. Two places are
//! accepted as optional boundaries, where a new generation is safe though not needed: a
//! crashed writer's commit copied into the database file by a checkpoint before any capture
//! saw it (see `Sim::backfill`), and, before the stream exists (an empty database file), a
//! crashed first commit folded into the first snapshot. A restore of the newest state must
//! equal the final image. Property tests (64 cases each, `PROPTEST_CASES` for more; failing
//! cases are kept by proptest's failure persistence) cover random histories; the named tests
//! each pin one fact. `CAPTURE_SIM_TRACE=1` prints the simulator's steps of every history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use walstream::capture::{Capture, CaptureIo, Moment};
use walstream::reader::{self, ReadError, ReplayLimit, Visitor};
use walstream::record::pb;
use walstream::restore::{self, Point, RestoreOptions};
use walstream::target::{LocalTarget, TargetSpec};
use walstream::wal::{
    frame_offset, ReadAt, WalCursor, WalHeader, FRAME_HEADER_BYTES, SHM_PREFIX_BYTES,
    WAL_HEADER_BYTES,
};

// ---- deterministic randomness ------------------------------------------------------------

/// SplitMix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---- files ---------------------------------------------------------------------------------

/// An in-memory file: the WAL.
#[derive(Default)]
struct MemFile(Vec<u8>);

impl MemFile {
    fn write_at(&mut self, data: &[u8], offset: u64) {
        let end = offset as usize + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[offset as usize..end].copy_from_slice(data);
    }
}

impl ReadAt for MemFile {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            Some(end) if end <= self.0.len() => {
                buf.copy_from_slice(&self.0[start..end]);
                Ok(())
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the WAL",
            )),
        }
    }
    fn size(&mut self) -> std::io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

// ---- the wal-index -------------------------------------------------------------------------

/// What region 0 of the wal-index holds (the header as published, and nBackfill).
#[derive(Debug, Clone, Copy, Default)]
struct Shm {
    is_init: bool,
    mx_frame: u32,
    n_page: u32,
    /// 0 until recovery or a commit has seen a frame.
    page_size: u32,
    big_endian: bool,
    salt1: u32,
    salt2: u32,
    frame_cksum: (u32, u32),
    n_backfill: u32,
}

impl Shm {
    /// The first `SHM_PREFIX_BYTES` of region 0, as wal.c lays them out: two identical 48-byte
    /// header copies (native-endian integers, salts copied byte for byte from the WAL header),
    /// then the checkpoint info with nBackfill at 96. A fresh or reset -shm is all zeros.
    fn region0(&self) -> [u8; SHM_PREFIX_BYTES] {
        let mut r = [0u8; SHM_PREFIX_BYTES];
        if !self.is_init {
            return r;
        }
        let mut c = [0u8; 48];
        c[0..4].copy_from_slice(&3_007_000u32.to_ne_bytes()); // iVersion
        c[12] = 1; // isInit
        c[13] = u8::from(self.big_endian);
        let raw = ((self.page_size & 0xff00) | (self.page_size >> 16)) as u16;
        c[14..16].copy_from_slice(&raw.to_ne_bytes());
        c[16..20].copy_from_slice(&self.mx_frame.to_ne_bytes());
        c[20..24].copy_from_slice(&self.n_page.to_ne_bytes());
        c[24..28].copy_from_slice(&self.frame_cksum.0.to_ne_bytes());
        c[28..32].copy_from_slice(&self.frame_cksum.1.to_ne_bytes());
        c[32..36].copy_from_slice(&self.salt1.to_be_bytes());
        c[36..40].copy_from_slice(&self.salt2.to_be_bytes());
        let sum = walstream::wal::checksum(cfg!(target_endian = "big"), (0, 0), &c[..40]);
        c[40..44].copy_from_slice(&sum.0.to_ne_bytes());
        c[44..48].copy_from_slice(&sum.1.to_ne_bytes());
        r[0..48].copy_from_slice(&c);
        r[48..96].copy_from_slice(&c);
        r[96..100].copy_from_slice(&self.n_backfill.to_ne_bytes());
        r
    }

    fn describe(&self) -> String {
        if !self.is_init {
            return "shm=uninit".into();
        }
        format!(
            "shm mx={} nPage={} nBackfill={} salts={:08x}/{:08x}",
            self.mx_frame, self.n_page, self.n_backfill, self.salt1, self.salt2
        )
    }
}

// ---- the simulator -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No connection has the database open: no wal-index (the next open runs recovery).
    Down,
    /// Normal locking: every write transaction takes and releases the WAL write lock.
    Shared,
    /// locking_mode=EXCLUSIVE set while the -shm was mapped: no xShmLock calls, but mxFrame is
    /// still published in the -shm. Only its owner (process, connection) can use the database.
    ExclusiveShm(usize, usize),
    /// locking_mode=EXCLUSIVE before the WAL was opened: the wal-index is in heap memory.
    Heap(usize, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateKind {
    /// The starting state, or a state the stream cannot see through (a gap).
    Gap,
    Commit,
}

#[derive(Debug, Clone, Copy)]
struct FrameMeta {
    pgno: u32,
    /// Database size after the commit, for a commit frame; 0 otherwise.
    commit: u32,
    /// A sector-padding repeat of the previous commit frame.
    padding: bool,
}

#[derive(Default)]
struct Conn {
    open: bool,
    /// wal.c's per-connection `nCkpt`: 0 until this connection restarts a WAL (or recovers one).
    nckpt: u32,
}

struct Proc {
    capture: Option<Capture>,
    conns: [Conn; 2],
}

/// One write transaction: pages in frame order (the last is the commit frame) and the database
/// size after it.
#[derive(Debug, Clone)]
struct Txn {
    pages: Vec<(u32, Vec<u8>)>,
    db_size: u32,
    /// Copies of the commit frame appended as sector padding.
    padding: u32,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    page_size: u32,
    big_endian: bool,
    seed: u64,
    /// Pages in the database file before capture starts (0: an empty file).
    initial_pages: u32,
    procs: usize,
}

impl Config {
    fn new(page_size: u32, seed: u64) -> Self {
        Config {
            page_size,
            big_endian: seed % 2 == 1,
            seed,
            initial_pages: 3,
            procs: 2,
        }
    }
}

/// What a generation of the stream turned out to be, matched against the history.
#[derive(Debug, Clone)]
struct GenMatch {
    reason: String,
    /// History index of the state its snapshot holds.
    start: usize,
    txns: usize,
}

struct Sim {
    _dir: tempfile::TempDir,
    db_path: PathBuf,
    target_dir: PathBuf,
    cfg: Config,
    ps: usize,
    rng: Rng,
    db: File,
    wal: MemFile,
    shm: Shm,
    /// Position after frame mxFrame (None when mxFrame is 0).
    published: Option<WalCursor>,
    /// Frames 1..=mxFrame of the current WAL.
    frames: Vec<FrameMeta>,
    /// Frames of the current WAL made durable: a checkpoint syncs the WAL before it backfills
    /// (recovery resets nBackfill, not this). Power loss cannot take them.
    wal_synced: u32,
    procs: Vec<Proc>,
    mode: Mode,
    /// A reader holds a read mark > 0: writers append instead of restarting, and TRUNCATE and
    /// RESTART checkpoints cannot reset the WAL.
    reader_pins_wal: bool,
    /// The logical committed image (the oracle).
    image: Vec<u8>,
    history: Vec<Vec<u8>>,
    kinds: Vec<StateKind>,
    /// States where the stream may (but need not) start a new generation although the history
    /// has no gap: see `backfill`.
    soft: Vec<bool>,
    /// The first commit (history index) of a crashed writer that no catch-up moment has seen.
    uncaptured: Option<usize>,
    /// A catch-up moment has seen a non-empty database: the stream exists. Before that (an
    /// empty database file), commits nobody captured are folded into the first snapshot.
    stream_started: bool,
    restarts: u32,
    trace: Vec<String>,
}

impl Sim {
    fn new(cfg: Config) -> Self {
        assert!(walstream::wal::is_valid_page_size(cfg.page_size));
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("app.db");
        let target_dir = dir.path().join("stream");
        let db = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&db_path)
            .unwrap();
        let procs = (0..cfg.procs.clamp(1, 2))
            .map(|_| Proc {
                capture: None,
                conns: [Conn::default(), Conn::default()],
            })
            .collect();
        let mut sim = Sim {
            _dir: dir,
            db_path,
            target_dir,
            cfg,
            ps: cfg.page_size as usize,
            rng: Rng(cfg.seed),
            db,
            wal: MemFile::default(),
            shm: Shm::default(),
            published: None,
            frames: Vec::new(),
            wal_synced: 0,
            procs,
            mode: Mode::Down,
            reader_pins_wal: false,
            image: Vec::new(),
            history: Vec::new(),
            kinds: Vec::new(),
            soft: Vec::new(),
            uncaptured: None,
            stream_started: false,
            restarts: 0,
            trace: Vec::new(),
        };
        let mut image = Vec::new();
        for pgno in 1..=cfg.initial_pages {
            image.extend(sim.page(pgno));
        }
        sim.db.write_all_at(&image, 0).unwrap();
        sim.image = image.clone();
        sim.push_state(StateKind::Gap);
        sim.log(format!(
            "config: page size {}, {} checksums, {} initial pages, {} processes, seed {:#x}",
            cfg.page_size,
            if cfg.big_endian {
                "big-endian"
            } else {
                "little-endian"
            },
            cfg.initial_pages,
            sim.procs.len(),
            cfg.seed
        ));
        sim
    }

    // -- bookkeeping --

    fn log(&mut self, line: String) {
        self.trace.push(line);
    }

    #[track_caller]
    fn fail(&self, msg: &str) -> ! {
        let tail: Vec<&str> = self
            .trace
            .iter()
            .rev()
            .take(60)
            .rev()
            .map(String::as_str)
            .collect();
        panic!("{msg}\n--- last simulator steps ---\n{}", tail.join("\n"));
    }

    fn push_state(&mut self, kind: StateKind) {
        self.history.push(self.image.clone());
        self.kinds.push(kind);
        self.soft.push(false);
    }

    fn pages(&self) -> u32 {
        (self.image.len() / self.ps) as u32
    }

    /// A random page image; page 1 carries a database header with the page size (the engine
    /// reads it to snapshot a database file that has no WAL).
    fn page(&mut self, pgno: u32) -> Vec<u8> {
        let mut p = vec![0u8; self.ps];
        self.rng.fill(&mut p);
        if pgno == 1 {
            p[..16].copy_from_slice(b"SQLite format 3\0");
            let raw = if self.cfg.page_size == 65536 {
                1u16
            } else {
                self.cfg.page_size as u16
            };
            p[16..18].copy_from_slice(&raw.to_be_bytes());
            p[18] = 2; // WAL mode
            p[19] = 2;
        }
        p
    }

    fn actor(&self, who: (usize, usize)) -> (usize, usize) {
        match self.mode {
            Mode::ExclusiveShm(p, c) | Mode::Heap(p, c) => (p, c),
            _ => (who.0 % self.procs.len(), who.1 % 2),
        }
    }

    fn open_conns(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for (p, proc_) in self.procs.iter().enumerate() {
            for (c, conn) in proc_.conns.iter().enumerate() {
                if conn.open {
                    v.push((p, c));
                }
            }
        }
        v
    }

    // -- moments --

    /// Reports `moment` to process `p`'s capture, with the wal-index as it is now (none in heap
    /// mode). Any capture error fails the test.
    fn fire(&mut self, p: usize, moment: Moment) {
        let shm = match self.mode {
            Mode::Heap(..) => None,
            _ => Some(self.shm.region0()),
        };
        let catches_up = match moment {
            Moment::WalReset => shm.is_none(),
            _ => shm.is_none() || self.shm.is_init,
        };
        let Sim { procs, wal, db, .. } = self;
        let capture = procs[p].capture.as_mut().expect("the process is attached");
        let errors = capture.status().errors;
        capture.event(
            moment,
            CaptureIo {
                shm: shm.as_ref(),
                wal,
                db,
            },
        );
        let status = capture.status();
        let error = (status.errors != errors).then(|| status.last_error.clone());
        let gen_note = format!("gen {:?} seq {:?}", status.generation, status.last_seq);
        let shm_note = if shm.is_some() {
            self.shm.describe()
        } else {
            "heap wal-index".into()
        };
        self.log(format!("    p{p} {moment:?} [{shm_note}] -> {gen_note}"));
        if let Some(e) = error {
            self.fail(&format!("capture reported an error at {moment:?}: {e:?}"));
        }
        if catches_up {
            self.uncaptured = None;
            self.stream_started |= !self.image.is_empty();
        }
    }

    fn ensure_capture(&mut self, p: usize) {
        if self.procs[p].capture.is_none() {
            let capture = Capture::open(
                self.db_path.clone(),
                TargetSpec::Local(self.target_dir.clone()),
            )
            .unwrap_or_else(|e| self.fail(&format!("Capture::open: {e}")));
            self.procs[p].capture = Some(capture);
        }
    }

    /// Opens connection `c` of process `p` if needed. The first connection to a database that
    /// no one has open runs recovery under the write lock (in heap mode, without any lock).
    fn open_conn(&mut self, p: usize, c: usize, heap: bool) {
        self.ensure_capture(p);
        if self.procs[p].conns[c].open {
            return;
        }
        self.procs[p].conns[c] = Conn {
            open: true,
            nckpt: 0,
        };
        if self.mode == Mode::Down {
            if heap {
                self.mode = Mode::Heap(p, c);
                self.log(format!("  p{p}c{c} opens in heap mode"));
                self.recover(p, c);
            } else {
                self.mode = Mode::Shared;
                self.log(format!("  p{p}c{c} opens, runs recovery"));
                self.shm = Shm::default();
                self.fire(p, Moment::WriteLockAcquired);
                self.recover(p, c);
                self.fire(p, Moment::WriteLockReleasing);
            }
        }
    }

    /// walIndexRecover: the wal-index rebuilt from the WAL file.
    fn recover(&mut self, p: usize, c: usize) {
        let old = std::mem::take(&mut self.frames);
        let mut shm = Shm {
            is_init: true,
            big_endian: self.cfg.big_endian,
            ..Shm::default()
        };
        self.published = None;
        let len = self.wal.0.len();
        if len > WAL_HEADER_BYTES {
            let bytes: [u8; WAL_HEADER_BYTES] = self.wal.0[..WAL_HEADER_BYTES].try_into().unwrap();
            if let Ok(h) = WalHeader::parse(&bytes) {
                self.procs[p].conns[c].nckpt = h.checkpoint_seq;
                shm.salt1 = h.salt1;
                shm.salt2 = h.salt2;
                shm.big_endian = h.big_endian_checksum;
                shm.frame_cksum = h.checksum;
                let mut cursor = WalCursor::at_start(&h);
                let mut pending = Vec::new();
                let mut buf = Vec::new();
                while let Some(f) = cursor
                    .next_frame(&mut self.wal, len as u64, &mut buf)
                    .unwrap()
                {
                    let i = cursor.frame as usize - 1;
                    let padding = old.get(i).is_some_and(|m| m.padding && m.pgno == f.pgno);
                    pending.push(FrameMeta {
                        pgno: f.pgno,
                        commit: f.db_size_after_commit,
                        padding,
                    });
                    if f.is_commit() {
                        self.frames.append(&mut pending);
                        shm.mx_frame = cursor.frame;
                        shm.n_page = f.db_size_after_commit;
                        shm.page_size = h.page_size;
                        shm.frame_cksum = cursor.checksum;
                        self.published = Some(cursor);
                    }
                }
            }
        }
        self.shm = shm;
        self.log(format!("    recovered: {}", self.shm.describe()));
    }

    /// The start of `sqlite3WalFrames`: restart the WAL if it is fully backfilled, and write a
    /// new header if mxFrame is 0. Returns the position to append frames at.
    fn begin_frames(&mut self, p: usize, c: usize) -> WalCursor {
        let locks_free = !matches!(self.mode, Mode::Shared) || !self.reader_pins_wal;
        if self.shm.mx_frame > 0 && self.shm.n_backfill == self.shm.mx_frame && locks_free {
            self.restart_header(p, c);
            self.log("    WAL restart".into());
        }
        if self.shm.mx_frame > 0 {
            return self.published.expect("mxFrame > 0 has a position");
        }
        let nckpt = self.procs[p].conns[c].nckpt;
        let (salt1, salt2) = if nckpt == 0 {
            (self.rng.u32(), self.rng.u32())
        } else {
            (self.shm.salt1, self.shm.salt2)
        };
        let bytes = WalHeader {
            big_endian_checksum: self.cfg.big_endian,
            page_size: self.cfg.page_size,
            checkpoint_seq: nckpt,
            salt1,
            salt2,
            checksum: (0, 0),
        }
        .encode();
        let header = WalHeader::parse(&bytes).unwrap();
        self.log(format!(
            "    new WAL header salts={salt1:08x}/{salt2:08x} nCkpt={nckpt}"
        ));
        self.fire(p, Moment::WalReset); // the extension reports any write at offset 0
        self.wal.write_at(&bytes, 0);
        self.wal_synced = 0;
        WalCursor::at_start(&header)
    }

    /// walRestartHdr: mxFrame 0, salt-1 + 1, a random salt-2, published in the wal-index.
    fn restart_header(&mut self, p: usize, c: usize) {
        self.procs[p].conns[c].nckpt += 1;
        self.shm.salt1 = self.shm.salt1.wrapping_add(1);
        self.shm.salt2 = self.rng.u32();
        self.shm.mx_frame = 0;
        self.shm.n_backfill = 0;
        self.published = None;
        self.frames.clear();
        self.restarts += 1;
    }

    fn append_frame(&mut self, cursor: &mut WalCursor, pgno: u32, commit: u32, page: &[u8]) {
        let frame = cursor.encode_frame(pgno, commit, page);
        self.wal
            .write_at(&frame, frame_offset(cursor.frame, self.cfg.page_size));
    }

    // -- operations --

    /// A random transaction on the current image. `shape` picks shrinking, growth, duplicates.
    fn random_txn(&mut self, shape: u8, padding: u8) -> Txn {
        let n = self.pages();
        let shrink = n > 1 && shape & 7 == 0;
        let new = if shrink {
            n - 1 - self.rng.below((n - 1).min(3))
        } else {
            (n + u32::from(shape / 8 % 4)).max(1)
        };
        let mut pgnos: Vec<u32> = (n + 1..=new).collect();
        let old_kept = n.min(new);
        if old_kept > 0 {
            for _ in 0..self.rng.below(4) {
                let pgno = 1 + self.rng.below(old_kept);
                if !pgnos.contains(&pgno) {
                    pgnos.push(pgno);
                }
            }
        }
        if pgnos.is_empty() {
            pgnos.push(1 + self.rng.below(new));
        }
        for i in (1..pgnos.len()).rev() {
            let j = self.rng.below(i as u32 + 1) as usize;
            pgnos.swap(i, j);
        }
        if shape & 0x80 != 0 && pgnos.len() >= 2 {
            pgnos.push(pgnos[0]); // a page written again later in the same transaction
        }
        let pages = pgnos
            .into_iter()
            .map(|pgno| (pgno, self.page(pgno)))
            .collect();
        Txn {
            pages,
            db_size: new,
            padding: u32::from(padding),
        }
    }

    /// A write transaction that commits. With `crash`, the writer's process dies after
    /// publishing mxFrame and before the write lock is released (so before it is captured).
    fn commit_txn(&mut self, who: (usize, usize), txn: Txn, crash: bool) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        self.log(format!(
            "  p{p}c{c} commit{} pages {:?} size {} padding {}",
            if crash { " then crash" } else { "" },
            txn.pages.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            txn.db_size,
            txn.padding
        ));
        assert!(txn
            .pages
            .iter()
            .all(|(pgno, _)| *pgno >= 1 && *pgno <= txn.db_size));
        let locked = self.mode == Mode::Shared;
        if locked {
            self.fire(p, Moment::WriteLockAcquired);
        }
        let mut cursor = self.begin_frames(p, c);
        assert_eq!(self.frames.len(), cursor.frame as usize);
        let last = txn.pages.len() - 1;
        for (i, (pgno, data)) in txn.pages.iter().enumerate() {
            let commit = if i == last { txn.db_size } else { 0 };
            self.append_frame(&mut cursor, *pgno, commit, data);
            self.frames.push(FrameMeta {
                pgno: *pgno,
                commit,
                padding: false,
            });
        }
        let (pgno, data) = &txn.pages[last];
        for _ in 0..txn.padding {
            self.append_frame(&mut cursor, *pgno, txn.db_size, data);
            self.frames.push(FrameMeta {
                pgno: *pgno,
                commit: txn.db_size,
                padding: true,
            });
        }
        self.shm.mx_frame = cursor.frame;
        self.shm.n_page = txn.db_size;
        self.shm.page_size = self.cfg.page_size;
        self.shm.salt1 = cursor.salt1;
        self.shm.salt2 = cursor.salt2;
        self.shm.frame_cksum = cursor.checksum;
        self.published = Some(cursor);
        self.image.resize(txn.db_size as usize * self.ps, 0);
        for (pgno, data) in &txn.pages {
            let at = (*pgno as usize - 1) * self.ps;
            self.image[at..at + self.ps].copy_from_slice(data);
        }
        self.push_state(StateKind::Commit);
        if crash {
            self.uncaptured = self.uncaptured.or(Some(self.history.len() - 1));
            if !self.stream_started {
                *self.soft.last_mut().unwrap() = true;
            }
            self.crash_process(p);
        } else if locked {
            self.fire(p, Moment::WriteLockReleasing);
        } else {
            self.fire(p, Moment::CommitExclusive);
        }
        self.self_check();
    }

    fn commit(&mut self, who: (usize, usize), shape: u8, padding: u8) {
        let txn = self.random_txn(shape, padding);
        self.commit_txn(who, txn, false);
    }

    /// A write transaction that spills `frames` frames into the WAL (after mxFrame, never
    /// published) and then rolls back, or whose process dies (`crash`).
    fn rollback(&mut self, who: (usize, usize), frames: u32, crash: bool) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        self.log(format!(
            "  p{p}c{c} spills {frames} frames then {}",
            if crash { "crashes" } else { "rolls back" }
        ));
        let locked = self.mode == Mode::Shared;
        if locked {
            self.fire(p, Moment::WriteLockAcquired);
        }
        if frames > 0 {
            let mut cursor = self.begin_frames(p, c);
            for _ in 0..frames {
                let pgno = 1 + self.rng.below(self.pages() + 2);
                let data = self.page(pgno);
                self.append_frame(&mut cursor, pgno, 0, &data);
            }
        }
        if crash {
            self.crash_process(p);
        } else if locked {
            self.fire(p, Moment::WriteLockReleasing);
        }
        self.self_check();
    }

    /// A write transaction that changes nothing (or a failed one): lock and unlock only.
    fn empty_txn(&mut self, who: (usize, usize)) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        self.log(format!("  p{p}c{c} empty write transaction"));
        if self.mode == Mode::Shared {
            self.fire(p, Moment::WriteLockAcquired);
            self.fire(p, Moment::WriteLockReleasing);
        } else {
            self.fire(p, Moment::CommitExclusive);
        }
    }

    /// Copies committed frames up to `upto` into the database file (walCheckpoint's backfill).
    ///
    /// A known limit of the engine, accepted here: when a crashed writer's commit is copied into
    /// the database file before any catch-up saw it, and its WAL follows a close or a reset
    /// whose next salts the engine could not know (a new WAL with random salts), the engine
    /// cannot tell this checkpoint from a change made without walstream (the file's size or
    /// mtime moved) and starts a new generation from a snapshot. That is safe, so the crashed
    /// commit is marked as a place where a new generation may begin.
    fn backfill(&mut self, upto: u32) {
        if upto <= self.shm.n_backfill {
            return;
        }
        if let Some(i) = self.uncaptured {
            self.soft[i] = true;
        }
        self.wal_synced = self.wal_synced.max(self.shm.mx_frame);
        let mut newest: BTreeMap<u32, u32> = BTreeMap::new();
        for i in self.shm.n_backfill + 1..=upto {
            newest.insert(self.frames[i as usize - 1].pgno, i);
        }
        let mut page = vec![0u8; self.ps];
        for (pgno, frame) in newest {
            if pgno > self.shm.n_page {
                continue;
            }
            let at = frame_offset(frame, self.cfg.page_size) + FRAME_HEADER_BYTES as u64;
            self.wal.read_exact_at(&mut page, at).unwrap();
            self.db
                .write_all_at(&page, u64::from(pgno - 1) * self.ps as u64)
                .unwrap();
        }
        if upto == self.shm.mx_frame {
            self.db
                .set_len(u64::from(self.shm.n_page) * self.ps as u64)
                .unwrap();
        }
        self.shm.n_backfill = upto;
    }

    /// A PASSIVE checkpoint (no write lock): backfills up to a reader's snapshot when one is
    /// pinning the WAL and `partial` asks for it, otherwise everything.
    fn checkpoint_passive(&mut self, who: (usize, usize), partial: bool) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        let mut upto = self.shm.mx_frame;
        if partial && self.mode == Mode::Shared {
            let boundaries: Vec<u32> = (self.shm.n_backfill + 1..=self.shm.mx_frame)
                .filter(|i| self.frames[*i as usize - 1].commit != 0)
                .collect();
            if !boundaries.is_empty() {
                upto = boundaries[self.rng.below(boundaries.len() as u32) as usize];
            }
        }
        self.log(format!("  p{p}c{c} PASSIVE checkpoint up to frame {upto}"));
        self.backfill(upto);
        self.self_check();
    }

    /// A FULL or RESTART checkpoint: under the write lock, backfill everything.
    fn checkpoint_full(&mut self, who: (usize, usize)) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        self.log(format!("  p{p}c{c} FULL checkpoint"));
        let locked = self.mode == Mode::Shared;
        if locked {
            self.fire(p, Moment::WriteLockAcquired);
        }
        self.backfill(self.shm.mx_frame);
        if locked {
            self.fire(p, Moment::WriteLockReleasing);
        }
        self.self_check();
    }

    /// A TRUNCATE checkpoint: under the write lock, backfill everything, then (unless a reader
    /// pins the WAL) walRestartHdr and truncate the WAL to zero bytes, even if it was empty.
    fn checkpoint_truncate(&mut self, who: (usize, usize)) {
        let (p, c) = self.actor(who);
        self.open_conn(p, c, false);
        let locked = self.mode == Mode::Shared;
        if locked {
            self.fire(p, Moment::WriteLockAcquired);
        }
        self.backfill(self.shm.mx_frame);
        if locked && self.reader_pins_wal {
            self.log(format!(
                "  p{p}c{c} TRUNCATE checkpoint: busy (a reader pins the WAL)"
            ));
        } else {
            self.log(format!("  p{p}c{c} TRUNCATE checkpoint"));
            self.restart_header(p, c);
            self.fire(p, Moment::WalReset); // xTruncate(wal, 0)
            self.wal.0.clear();
            self.wal_synced = 0;
        }
        if locked {
            self.fire(p, Moment::WriteLockReleasing);
        }
        self.self_check();
    }

    /// Closes one connection. The last one checkpoints everything, reports `Closing` (with the
    /// -shm, or without one in heap mode) and deletes the WAL and the wal-index.
    fn close_conn(&mut self, p: usize, c: usize) {
        if !self.procs[p].conns[c].open {
            return;
        }
        if self.open_conns().len() > 1 {
            self.log(format!("  p{p}c{c} closes"));
            self.procs[p].conns[c] = Conn::default();
            return;
        }
        self.log(format!(
            "  p{p}c{c} closes last: checkpoint, delete WAL and -shm"
        ));
        self.backfill(self.shm.mx_frame);
        self.fire(p, Moment::Closing);
        self.procs[p].conns[c] = Conn::default();
        self.wal.0.clear();
        self.wal_synced = 0;
        self.frames.clear();
        self.published = None;
        self.shm = Shm::default();
        self.mode = Mode::Down;
        self.self_check();
    }

    /// Closes every connection, `who` last (when it is open).
    fn close_all(&mut self, who: (usize, usize)) {
        let last = self.actor(who);
        let mut conns = self.open_conns();
        conns.sort_by_key(|x| *x == last);
        for (p, c) in conns {
            self.close_conn(p, c);
        }
    }

    /// Process `p` dies: its connections vanish without closing. If it was the last process
    /// with the database open, the next opener resets the -shm and runs recovery.
    fn crash_process(&mut self, p: usize) {
        self.log(format!("  p{p} dies"));
        self.procs[p].capture = None;
        self.procs[p].conns = [Conn::default(), Conn::default()];
        if self.open_conns().is_empty() && self.mode != Mode::Down {
            self.mode = Mode::Down;
            self.shm.is_init = false;
        }
    }

    /// `PRAGMA locking_mode=EXCLUSIVE` on a connection while the -shm is mapped.
    fn enter_exclusive(&mut self, who: (usize, usize)) {
        let (p, c) = self.actor(who);
        match self.mode {
            Mode::Heap(..) | Mode::ExclusiveShm(..) => return,
            Mode::Down => self.open_conn(p, c, false),
            Mode::Shared => {
                for (op, oc) in self.open_conns() {
                    if (op, oc) != (p, c) {
                        self.close_conn(op, oc);
                    }
                }
                self.open_conn(p, c, false);
            }
        }
        self.log(format!(
            "  p{p}c{c} enters locking_mode=EXCLUSIVE (shared -shm)"
        ));
        self.mode = Mode::ExclusiveShm(p, c);
    }

    fn leave_exclusive(&mut self) {
        if let Mode::ExclusiveShm(p, c) = self.mode {
            self.log(format!("  p{p}c{c} returns to locking_mode=NORMAL"));
            self.mode = Mode::Shared;
        }
    }

    /// Closes the database everywhere, then opens it with locking_mode=EXCLUSIVE from the
    /// start: a heap-memory wal-index.
    fn open_heap(&mut self, who: (usize, usize)) {
        if matches!(self.mode, Mode::Heap(..)) {
            return;
        }
        self.close_all(who);
        let (p, c) = (who.0 % self.procs.len(), who.1 % 2);
        self.open_conn(p, c, true);
        self.self_check();
    }

    /// Another program (no walstream) rewrites the database file while no one has it open.
    /// `grow` appends a page (the size changes); otherwise the size stays and the modification
    /// time moves forward. Returns false when the database is open or has a WAL left over.
    fn modify_while_closed(&mut self, grow: bool) -> bool {
        if self.mode != Mode::Down || !self.wal.0.is_empty() {
            return false;
        }
        let n = self.pages();
        let target = if n == 0 { 1 } else { 1 + self.rng.below(n) };
        let data = self.page(target);
        self.image
            .resize(self.image.len().max(target as usize * self.ps), 0);
        let at = (target as usize - 1) * self.ps;
        self.image[at..at + self.ps].copy_from_slice(&data);
        if grow && n > 0 {
            let extra = self.page(n + 1);
            self.image.extend(extra);
        }
        let before = self.db.metadata().unwrap().modified().unwrap();
        self.db.write_all_at(&self.image, 0).unwrap();
        self.db.set_len(self.image.len() as u64).unwrap();
        if !grow {
            self.db
                .set_modified(before + Duration::from_millis(1500))
                .unwrap();
        }
        self.log(format!(
            "  the database file is modified while closed (page {target}, grow {grow})"
        ));
        self.push_state(StateKind::Gap);
        self.self_check();
        true
    }

    /// Changes the database file's modification time (and rewrites its bytes unchanged) while
    /// no connection has it open: a copy or a restored backup of the same content.
    fn touch_while_closed(&mut self) -> bool {
        if self.mode != Mode::Down || !self.wal.0.is_empty() {
            return false;
        }
        let before = self.db.metadata().unwrap().modified().unwrap();
        self.db.write_all_at(&self.image, 0).unwrap();
        self.db
            .set_modified(before + Duration::from_millis(2500))
            .unwrap();
        self.log("  the database file is touched while closed (same content)".into());
        true
    }

    /// Power loss: every process dies and the WAL loses its unsynced tail, back to a commit
    /// boundary at or after the last frame a checkpoint synced, dropping at least one
    /// real commit; `garbage` leaves torn bytes behind. Returns whether committed state was
    /// lost (a gap). With a crashed writer's commit not yet captured, or nothing to lose, it
    /// is only a crash of every process.
    fn power_loss(&mut self, keep: u8, garbage: bool) -> bool {
        let last_real = self
            .frames
            .iter()
            .rposition(|m| m.commit != 0 && !m.padding)
            .map(|i| i as u32 + 1);
        let mut candidates = Vec::new();
        if let (Some(last_real), None, false) =
            (last_real, self.uncaptured, self.mode == Mode::Down)
        {
            let nb = self.wal_synced;
            if nb == 0 {
                candidates.push(0);
            }
            for i in nb.max(1)..last_real {
                if self.frames[i as usize - 1].commit != 0 {
                    candidates.push(i);
                }
            }
        }
        for p in 0..self.procs.len() {
            if self.procs[p].capture.is_some() || self.procs[p].conns.iter().any(|c| c.open) {
                self.crash_process(p);
            }
        }
        self.mode = Mode::Down;
        self.shm.is_init = false;
        if candidates.is_empty() {
            self.log("  power loss: nothing unsynced to lose".into());
            return false;
        }
        let b = candidates[keep as usize % candidates.len()];
        let keep_len = if b == 0 {
            WAL_HEADER_BYTES as u64
        } else {
            frame_offset(b + 1, self.cfg.page_size)
        };
        self.wal.0.truncate(keep_len as usize);
        if garbage {
            let n = 1 + self.rng.below(2 * (FRAME_HEADER_BYTES + self.ps) as u32) as usize;
            let mut junk = vec![0u8; n];
            self.rng.fill(&mut junk);
            self.wal.0.extend(junk);
        }
        self.frames.truncate(b as usize);
        let n_page = if b == 0 {
            0
        } else {
            self.frames[b as usize - 1].commit
        };
        self.image = self.derive(b, n_page);
        self.log(format!(
            "  power loss: the WAL keeps {b} frames (garbage {garbage})"
        ));
        self.push_state(StateKind::Gap);
        true
    }

    // -- the oracle --

    /// The database file overlaid with the newest of frames 1..=mx, at `n_page` pages; the
    /// database file itself when `mx` is 0.
    fn derive(&mut self, mx: u32, n_page: u32) -> Vec<u8> {
        let len = self.db.metadata().unwrap().len() as usize;
        let mut image = vec![0u8; len];
        self.db.read_exact_at(&mut image, 0).unwrap();
        if mx == 0 {
            return image;
        }
        image.resize(n_page as usize * self.ps, 0);
        let mut newest: BTreeMap<u32, u32> = BTreeMap::new();
        for i in 1..=mx {
            newest.insert(self.frames[i as usize - 1].pgno, i);
        }
        for (pgno, frame) in newest {
            if pgno > n_page {
                continue;
            }
            let at = (pgno as usize - 1) * self.ps;
            let off = frame_offset(frame, self.cfg.page_size) + FRAME_HEADER_BYTES as u64;
            self.wal
                .read_exact_at(&mut image[at..at + self.ps], off)
                .unwrap();
        }
        image
    }

    /// The simulator's own consistency: the committed image SQLite would read equals the
    /// oracle's.
    fn self_check(&mut self) {
        let derived = match self.mode {
            Mode::Down if !self.wal.0.is_empty() => return,
            Mode::Down => self.derive(0, 0),
            _ => self.derive(self.shm.mx_frame, self.shm.n_page),
        };
        if derived != self.image {
            self.fail("simulator bug: the database + WAL image differs from the oracle's image");
        }
    }

    // -- checking the stream --

    fn target(&self) -> LocalTarget {
        LocalTarget::new(self.target_dir.clone())
    }

    /// Transactions in the newest generation of the stream (0 if there is none yet).
    fn newest_seq(&self) -> u64 {
        let target = self.target();
        match reader::latest_generation(&target) {
            Ok(g) => reader::last_committed_seq(&target, &g).unwrap(),
            Err(_) => 0,
        }
    }

    /// Ends the history with a commit and a close (so that every gap and every crashed
    /// writer's commit has been seen), then checks the whole stream against the history.
    fn finish(&mut self) -> Vec<GenMatch> {
        self.log("epilogue".into());
        let who = match self.mode {
            Mode::ExclusiveShm(p, c) | Mode::Heap(p, c) => (p, c),
            _ => (0, 0),
        };
        self.commit(who, 1, 0);
        self.close_all(who);
        if std::env::var_os("CAPTURE_SIM_TRACE").is_some() {
            eprintln!("{}", self.trace.join("\n"));
        }
        self.check()
    }

    fn check(&self) -> Vec<GenMatch> {
        let target = self.target();
        if let Err(e) = walstream::verify::verify(&target, &mut |_| {}) {
            self.fail(&format!("verify failed: {e}"));
        }
        let hashes: Vec<blake3::Hash> = self.history.iter().map(|i| blake3::hash(i)).collect();
        let inventory = reader::inventory(&target).unwrap();
        let mut out = Vec::new();
        let mut next = 0usize; // first history state not yet accounted for
        for (gi, objects) in inventory.iter().enumerate() {
            let mut replayed = Replayed::default();
            if let Err(e) = reader::replay(&target, objects, ReplayLimit::All, &mut replayed) {
                self.fail(&format!(
                    "replay of generation {} failed: {e}",
                    objects.generation
                ));
            }
            let snapshot = replayed
                .snapshot
                .clone()
                .unwrap_or_else(|| replayed.image.clone());
            let last_gen = gi + 1 == inventory.len();
            let start = self.match_generation(next, &snapshot, &replayed.txns, last_gen);
            let Some(start) = start else {
                let mut msg = format!(
                    "generation {} (reason {:?}) does not match the history from state {next}\n\
                     history kinds: {}\n",
                    objects.generation,
                    replayed.reason,
                    self.kinds_string()
                );
                let like = |img: &[u8]| -> Vec<usize> {
                    let h = blake3::hash(img);
                    hashes
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| **x == h)
                        .map(|(i, _)| i)
                        .collect()
                };
                let _ = writeln!(msg, "  snapshot equals states {:?}", like(&snapshot));
                for (i, t) in replayed.txns.iter().enumerate() {
                    let _ = writeln!(msg, "  txn {} equals states {:?}", i + 1, like(t));
                }
                let _ = writeln!(msg, "  generations in the stream: {}", inventory.len());
                self.fail(&msg);
            };
            next = start + replayed.txns.len() + 1;
            out.push(GenMatch {
                reason: replayed.reason.clone(),
                start,
                txns: replayed.txns.len(),
            });
        }
        if next != self.history.len() {
            self.fail(&format!(
                "the stream ends at state {} but the history has {} states ({})",
                next as i64 - 1,
                self.history.len(),
                self.kinds_string()
            ));
        }
        // A restore of the newest state equals the final image (truncated after a shrink).
        let out_path = self._dir.path().join("restored.db");
        let opts = RestoreOptions {
            point: Point::Latest,
            generation: None,
            force: true,
        };
        if let Err(e) = restore::restore(&target, &out_path, &opts, &mut |_| {}) {
            self.fail(&format!("restore failed: {e}"));
        }
        let restored = restore::read_image(&out_path).unwrap();
        if &restored != self.history.last().unwrap() {
            self.fail(&format!(
                "the restored database ({} bytes) differs from the final image ({} bytes)",
                restored.len(),
                self.history.last().unwrap().len()
            ));
        }
        out
    }

    /// Where a generation with this snapshot and these transaction images starts in the
    /// history, if it can: the states before its start (from `next`) are gaps, it starts at a
    /// gap or right after one, its transactions are the following commits one for one, and it
    /// ends just before the next gap (the last generation: at the end of the history).
    fn match_generation(
        &self,
        next: usize,
        snapshot: &[u8],
        txns: &[Vec<u8>],
        last_gen: bool,
    ) -> Option<usize> {
        let boundary = |i: usize| self.kinds[i] == StateKind::Gap || self.soft[i];
        let len = self.history.len();
        for s in next..len {
            if s > next && !boundary(s - 1) {
                return None;
            }
            let starts_at_gap = boundary(s) || (s > next && boundary(s - 1));
            let end = s + txns.len();
            let fits = starts_at_gap
                && end < len
                && self.history[s] == snapshot
                && txns.iter().enumerate().all(|(i, t)| {
                    self.kinds[s + 1 + i] == StateKind::Commit && self.history[s + 1 + i] == *t
                })
                && if last_gen {
                    end == len - 1
                } else {
                    end + 1 < len && boundary(end + 1)
                };
            if fits {
                return Some(s);
            }
        }
        None
    }

    /// The history as letters: G a gap, c a commit, s a commit where a generation may start.
    fn kinds_string(&self) -> String {
        (0..self.kinds.len())
            .map(|i| match (self.kinds[i], self.soft[i]) {
                (StateKind::Gap, _) => 'G',
                (StateKind::Commit, true) => 's',
                (StateKind::Commit, false) => 'c',
            })
            .collect()
    }

    // -- random operations --

    fn apply(&mut self, op: &Op) {
        let who = |w: u8| (usize::from(w & 1), usize::from((w >> 1) & 1));
        match *op {
            Op::Commit {
                who: w,
                shape,
                padding,
            } => self.commit(who(w), shape, padding),
            Op::Rollback { who: w, frames } => self.rollback(who(w), u32::from(frames), false),
            Op::EmptyTxn { who: w } => self.empty_txn(who(w)),
            Op::CheckpointPassive { who: w, partial } => self.checkpoint_passive(who(w), partial),
            Op::CheckpointFull { who: w } => self.checkpoint_full(who(w)),
            Op::CheckpointTruncate { who: w } => self.checkpoint_truncate(who(w)),
            Op::ToggleReader => {
                self.reader_pins_wal = !self.reader_pins_wal;
                self.log(format!(
                    "  a reader {} the WAL",
                    if self.reader_pins_wal {
                        "pins"
                    } else {
                        "unpins"
                    }
                ));
            }
            Op::Close { who: w } => {
                let (p, c) = self.actor(who(w));
                self.close_conn(p, c);
            }
            Op::CloseAll { who: w } => self.close_all(who(w)),
            Op::CrashAfterCommit { who: w, shape } => {
                let txn = self.random_txn(shape, 0);
                self.commit_txn(who(w), txn, true);
            }
            Op::CrashMidTxn { who: w, frames } => self.rollback(who(w), u32::from(frames), true),
            Op::CrashProcess { who: w } => {
                let p = usize::from(w & 1) % self.procs.len();
                self.crash_process(p);
            }
            Op::OpenHeap { who: w } => self.open_heap(who(w)),
            Op::EnterExclusive { who: w } => self.enter_exclusive(who(w)),
            Op::LeaveExclusive => self.leave_exclusive(),
            Op::ModifyWhileClosed { grow, who: w } => {
                self.close_all(who(w));
                self.modify_while_closed(grow);
            }
            Op::PowerLoss { keep, garbage } => {
                self.power_loss(keep, garbage);
            }
        }
    }
}

/// Builds database images from a replayed generation: the snapshot, then the image after each
/// transaction.
#[derive(Default)]
struct Replayed {
    page_size: usize,
    reason: String,
    image: Vec<u8>,
    snapshot: Option<Vec<u8>>,
    txns: Vec<Vec<u8>>,
}

impl Replayed {
    fn put(&mut self, pgno: u32, data: &[u8]) {
        let at = (pgno as usize - 1) * self.page_size;
        if self.image.len() < at + data.len() {
            self.image.resize(at + data.len(), 0);
        }
        self.image[at..at + data.len()].copy_from_slice(data);
    }
    fn snapshot_done(&mut self) {
        if self.snapshot.is_none() {
            self.snapshot = Some(self.image.clone());
        }
    }
}

impl Visitor for Replayed {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.page_size = h.page_size as usize;
        self.reason = h.reason.clone();
        self.image = vec![0; h.page_count as usize * self.page_size];
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.put(pgno, data);
        Ok(())
    }
    fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.snapshot_done();
        if self.page_size == 0 {
            self.page_size = data.len();
        }
        self.put(pgno, data);
        Ok(())
    }
    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        self.snapshot_done();
        self.image
            .resize(c.db_size_pages as usize * self.page_size, 0);
        self.txns.push(self.image.clone());
        Ok(())
    }
}

// ---- property tests ------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Commit {
        who: u8,
        shape: u8,
        padding: u8,
    },
    Rollback {
        who: u8,
        frames: u8,
    },
    EmptyTxn {
        who: u8,
    },
    CheckpointPassive {
        who: u8,
        partial: bool,
    },
    CheckpointFull {
        who: u8,
    },
    CheckpointTruncate {
        who: u8,
    },
    ToggleReader,
    Close {
        who: u8,
    },
    CloseAll {
        who: u8,
    },
    CrashAfterCommit {
        who: u8,
        shape: u8,
    },
    CrashMidTxn {
        who: u8,
        frames: u8,
    },
    CrashProcess {
        who: u8,
    },
    OpenHeap {
        who: u8,
    },
    EnterExclusive {
        who: u8,
    },
    LeaveExclusive,
    /// A gap: the database file changes while closed.
    ModifyWhileClosed {
        who: u8,
        grow: bool,
    },
    /// A gap when it drops committed frames.
    PowerLoss {
        keep: u8,
        garbage: bool,
    },
}

fn op(with_gaps: bool) -> BoxedStrategy<Op> {
    let padding = prop_oneof![6 => Just(0u8), 1 => 1u8..4];
    let base = prop_oneof![
        12 => (any::<u8>(), any::<u8>(), padding).prop_map(|(who, shape, padding)| Op::Commit { who, shape, padding }),
        2 => (any::<u8>(), 0u8..4).prop_map(|(who, frames)| Op::Rollback { who, frames }),
        1 => any::<u8>().prop_map(|who| Op::EmptyTxn { who }),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(who, partial)| Op::CheckpointPassive { who, partial }),
        1 => any::<u8>().prop_map(|who| Op::CheckpointFull { who }),
        2 => any::<u8>().prop_map(|who| Op::CheckpointTruncate { who }),
        1 => Just(Op::ToggleReader),
        1 => any::<u8>().prop_map(|who| Op::Close { who }),
        2 => any::<u8>().prop_map(|who| Op::CloseAll { who }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(who, shape)| Op::CrashAfterCommit { who, shape }),
        1 => (any::<u8>(), 0u8..3).prop_map(|(who, frames)| Op::CrashMidTxn { who, frames }),
        1 => any::<u8>().prop_map(|who| Op::CrashProcess { who }),
        1 => any::<u8>().prop_map(|who| Op::OpenHeap { who }),
        1 => any::<u8>().prop_map(|who| Op::EnterExclusive { who }),
        1 => Just(Op::LeaveExclusive),
    ];
    if !with_gaps {
        return base.boxed();
    }
    prop_oneof![
        14 => base,
        1 => (any::<u8>(), any::<bool>()).prop_map(|(who, grow)| Op::ModifyWhileClosed { who, grow }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(keep, garbage)| Op::PowerLoss { keep, garbage }),
    ]
    .boxed()
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop::sample::select(vec![512u32, 4096]),
        any::<bool>(),
        any::<u64>(),
        0u32..4,
        1usize..=2,
    )
        .prop_map(
            |(page_size, big_endian, seed, initial_pages, procs)| Config {
                page_size,
                big_endian,
                seed,
                initial_pages,
                procs,
            },
        )
}

/// 64 cases per property, or `PROPTEST_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// Without gaps, every commit of the history is one transaction of a single generation.
    #[test]
    fn random_histories_without_gaps_are_one_generation_of_every_commit(
        cfg in config(),
        ops in prop::collection::vec(op(false), 1..60),
    ) {
        let mut sim = Sim::new(cfg);
        for op in &ops {
            sim.apply(op);
        }
        let gens = sim.finish();
        if !sim.soft.contains(&true) {
            prop_assert_eq!(gens.len(), 1);
        }
    }

    /// With gaps, each generation starts at a gap and holds every commit up to the next one.
    #[test]
    fn random_histories_with_gaps_start_generations_only_at_gaps(
        cfg in config(),
        ops in prop::collection::vec(op(true), 1..60),
    ) {
        let mut sim = Sim::new(cfg);
        for op in &ops {
            sim.apply(op);
        }
        sim.finish();
    }
}

// ---- named facts ---------------------------------------------------------------------------

const A: (usize, usize) = (0, 0);
const A2: (usize, usize) = (0, 1);
const B: (usize, usize) = (1, 0);

fn sim(page_size: u32, seed: u64) -> Sim {
    Sim::new(Config::new(page_size, seed))
}

#[test]
fn commits_are_captured_one_transaction_each() {
    for ps in [512, 4096, 65536] {
        let mut s = sim(ps, 1);
        for i in 0..5 {
            s.commit(A, i * 8 + 1, 0);
        }
        assert_eq!(s.newest_seq(), 5);
        let gens = s.finish();
        assert_eq!(gens.len(), 1);
        assert_eq!(gens[0].txns, 6);
    }
}

#[test]
fn an_empty_database_file_is_snapshotted_at_its_first_commit() {
    let mut s = Sim::new(Config {
        initial_pages: 0,
        ..Config::new(4096, 2)
    });
    s.commit(A, 9, 0);
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].start, 1, "the snapshot holds the first commit");
}

#[test]
fn writer_crash_after_commit_is_caught_up_by_next_writer() {
    let mut s = sim(4096, 3);
    s.commit(A, 1, 0);
    s.empty_txn(B); // process B has the database open, so the -shm survives A's death
    let txn = s.random_txn(9, 0);
    s.commit_txn(A, txn, true);
    assert_eq!(
        s.newest_seq(),
        1,
        "the crashed commit was not captured by its writer"
    );
    s.fire(1, Moment::WriteLockAcquired);
    assert_eq!(
        s.newest_seq(),
        2,
        "the next writer's lock acquisition catches it up"
    );
    s.fire(1, Moment::WriteLockReleasing);
    s.commit(B, 1, 0);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn writer_crash_of_the_only_process_is_caught_up_by_recovery() {
    let mut s = sim(512, 4);
    s.commit(A, 1, 0);
    let txn = s.random_txn(9, 0);
    s.commit_txn(A, txn, true);
    assert_eq!(s.newest_seq(), 1);
    s.commit(B, 1, 0); // opens: recovery under the write lock, then its own commit
    assert_eq!(s.newest_seq(), 3);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn rolled_back_spill_frames_are_not_captured() {
    let mut s = sim(4096, 5);
    s.commit(A, 1, 0);
    s.rollback(A, 3, false);
    assert_eq!(s.newest_seq(), 1);
    s.commit(A, 1, 0); // overwrites the spilled frames
    s.rollback(B, 2, false);
    s.checkpoint_full(B);
    s.rollback(A, 2, false); // a restart whose transaction rolls back: the header is rewritten
    assert!(s.restarts >= 1);
    s.rollback(A, 1, true); // and a writer that dies mid-transaction
    s.commit(B, 1, 0);
    assert_eq!(s.newest_seq(), 3);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn restart_after_full_checkpoint_continues_the_generation() {
    let mut s = sim(4096, 6);
    s.commit(A, 1, 0);
    s.commit(A, 9, 0);
    s.checkpoint_full(A);
    let salt1 = s.shm.salt1;
    s.commit(A, 1, 0);
    assert_eq!(s.restarts, 1);
    assert_eq!(s.shm.salt1, salt1.wrapping_add(1));
    s.checkpoint_passive(B, false);
    s.commit(B, 1, 0); // B restarts the WAL it did not start
    assert_eq!(s.restarts, 2);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].txns, 5);
}

#[test]
fn a_reader_that_pins_the_wal_delays_the_restart() {
    let mut s = sim(512, 7);
    s.commit(A, 1, 0);
    s.checkpoint_full(A);
    s.reader_pins_wal = true;
    s.commit(A, 1, 0);
    assert_eq!(s.restarts, 0, "appended after the backfilled frames");
    s.checkpoint_full(A);
    s.reader_pins_wal = false;
    s.commit(A, 1, 0);
    assert_eq!(s.restarts, 1);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn truncate_checkpoint_continues_the_generation() {
    let mut s = sim(4096, 8);
    s.commit(A, 1, 0);
    s.commit(A, 9, 0);
    s.checkpoint_truncate(A);
    assert!(s.wal.0.is_empty());
    s.commit(A, 1, 0);
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].txns, 5);
}

#[test]
fn truncate_checkpoint_twice_without_a_commit_continues_the_generation() {
    // wal.c runs walRestartHdr for every TRUNCATE checkpoint, also when the WAL is already
    // empty: salt-1 moves on by one each time (a periodic TRUNCATE on an idle database).
    let mut s = sim(4096, 9);
    s.commit(A, 1, 0);
    s.checkpoint_truncate(A);
    s.checkpoint_truncate(A);
    s.commit(A, 1, 0);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn truncate_checkpoint_by_another_connection_continues_the_generation() {
    // The connection that writes next never restarted a WAL (nCkpt 0), so its new WAL header
    // has random salts rather than salt-1 + 1: a connection pool where one connection runs
    // wal_checkpoint(TRUNCATE) and another writes.
    let mut s = sim(4096, 10);
    s.commit(A, 1, 0);
    s.checkpoint_truncate(A2);
    s.commit(A, 1, 0);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn close_and_reopen_continues_the_generation() {
    let mut s = sim(4096, 11);
    s.commit(A, 1, 0);
    s.commit(B, 9, 0);
    s.close_all(A);
    assert_eq!(s.mode, Mode::Down);
    s.commit(B, 1, 0); // a new WAL with random salts
    s.close_all(B);
    s.open_conn(0, 0, false); // a session that only reads
    s.close_all(A);
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].txns, 5);
}

#[test]
fn database_changed_while_closed_starts_a_new_generation() {
    for grow in [true, false] {
        let mut s = sim(4096, 12);
        s.commit(A, 1, 0);
        s.commit(A, 9, 0);
        s.close_all(A);
        assert!(s.modify_while_closed(grow));
        let gap = s.history.len() - 1;
        s.commit(A, 1, 0);
        s.commit(A, 1, 0);
        let gens = s.finish();
        assert_eq!(gens.len(), 2, "grow {grow}");
        assert!(
            gens[1].reason.contains("changed"),
            "reason: {}",
            gens[1].reason
        );
        // Generation 2 starts from the modified file (its snapshot holds it, or it with the
        // first commit after it, when the change shows only once a new WAL is written).
        assert!(
            gens[1].start == gap || gens[1].start == gap + 1,
            "grow {grow}"
        );
        let target = s.target();
        let g2 = reader::generation(&target, 2).unwrap();
        let mut r = Replayed::default();
        reader::replay(&target, &g2, ReplayLimit::Txn(0), &mut r).unwrap();
        assert!(
            r.image == s.history[gap] || r.image == s.history[gap + 1],
            "grow {grow}"
        );
    }
}

#[test]
fn database_touched_while_closed_continues_the_generation() {
    // Size and modification time differ from the close marker's, the content does not: the
    // history continues (the content decides), in one generation.
    let mut s = sim(4096, 21);
    s.commit(A, 1, 0);
    s.commit(A, 3, 0);
    s.close_all(A);
    assert!(s.touch_while_closed());
    s.commit(A, 1, 0);
    s.commit(A, 2, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 1, "{gens:?}");
}

#[test]
fn database_changed_while_closed_is_detected_even_if_the_next_session_only_reads() {
    let mut s = sim(4096, 13);
    s.commit(A, 1, 0);
    s.close_all(A);
    assert!(s.modify_while_closed(true));
    s.open_conn(0, 0, false); // reads, writes nothing, closes: the last close reports Closing
    s.close_all(A);
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 2);
}

#[test]
fn wal_lost_frames_starts_a_new_generation() {
    let mut s = sim(4096, 14);
    s.commit(A, 1, 0);
    let commit1_end = s.frames.len();
    s.commit(A, 9, 0);
    s.commit(A, 1, 0);
    // Power loss keeps commit 1's frames (plus torn garbage) and loses commits 2 and 3;
    // recovery publishes a smaller mxFrame with the same salts.
    assert!(s.power_loss(1, true));
    assert_eq!(s.frames.len(), commit1_end);
    assert_eq!(s.image, s.history[1]);
    s.commit(B, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 2);
    assert!(
        gens[1].reason.contains("lost"),
        "reason: {}",
        gens[1].reason
    );
}

#[test]
fn wal_lost_every_unbackfilled_frame_starts_a_new_generation_even_if_it_is_only_closed() {
    // After power loss the WAL header survives (it is synced) but no frame does: recovery
    // publishes mxFrame 0 with the same salts. The database then lost every transaction of
    // this WAL that the stream holds; a session that only reads and closes must not let the
    // stream continue after them.
    let mut s = sim(4096, 15);
    s.commit(A, 1, 0);
    s.commit(A, 9, 0);
    assert!(s.power_loss(0, true));
    s.open_conn(0, 0, false);
    s.close_all(A);
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 2);
}

#[test]
fn wal_lost_every_unbackfilled_frame_then_rewritten_to_the_same_length_starts_a_new_generation() {
    // The restarted WAL's header (nCkpt 1) survives power loss, its frames do not. Recovery
    // takes salts and nCkpt from that header, so the recovering connection writes its next
    // commit into a WAL with the very same salts, and here with as many frames as the lost
    // commit had: mxFrame equals the captured frame count again, but the frames are others.
    let mut s = sim(4096, 22);
    s.commit(A, 1, 0);
    s.checkpoint_full(A);
    let lost = Txn {
        pages: vec![(2, s.page(2)), (1, s.page(1))],
        db_size: 3,
        padding: 0,
    };
    s.commit_txn(A, lost, false);
    assert_eq!(s.restarts, 1);
    assert!(s.power_loss(0, true)); // torn bytes after the header: recovery reads the header
    let again = Txn {
        pages: vec![(3, s.page(3)), (1, s.page(1))],
        db_size: 3,
        padding: 0,
    };
    s.commit_txn(A, again, false);
    s.checkpoint_full(A);
    s.commit(A, 1, 0); // a restart: the WAL that holds `again` is about to be overwritten
    let gens = s.finish();
    assert_eq!(gens.len(), 2);
}

#[test]
fn wal_lost_frames_then_heap_mode_commits_start_a_new_generation() {
    // Power loss drops committed frames; the database is then opened with
    // locking_mode=EXCLUSIVE (heap wal-index: no recovery moments, no mxFrame to compare).
    // keep 1: the next commit is written where the lost one was, at the same chain position.
    // keep 0: only the WAL header is left; the next commit writes a new header, and the engine
    // must not take the old header for a complete WAL that the new one continues.
    for keep in [1u8, 0] {
        let mut s = sim(512, 23);
        s.commit(A, 1, 0);
        s.commit(A, 1, 0);
        assert!(s.power_loss(keep, false));
        s.open_heap(A);
        s.commit(A, 1, 0);
        let gens = s.finish();
        assert_eq!(gens.len(), 2, "keep {keep}");
    }
}

#[test]
fn sector_padding_repeats_are_not_transactions() {
    let mut s = sim(512, 16);
    s.commit(A, 1, 0);
    s.commit(A, 9, 3);
    assert_eq!(s.shm.mx_frame as usize, s.frames.len());
    assert_eq!(s.newest_seq(), 2, "three padding frames, one transaction");
    s.commit(A, 1, 2);
    s.commit(A, 1, 0);
    assert_eq!(s.newest_seq(), 4);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].txns, 5);
}

#[test]
fn sector_padding_then_wal_restart_continues_the_generation() {
    let mut s = sim(512, 17);
    s.commit(A, 1, 0);
    s.commit(A, 9, 2); // the last commit before the restart ends with padding frames
    s.checkpoint_full(A);
    s.commit(A, 1, 0);
    assert_eq!(s.restarts, 1);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn shrinking_commits_truncate_the_restored_database() {
    let mut s = Sim::new(Config {
        initial_pages: 0,
        ..Config::new(4096, 18)
    });
    s.commit(A, 8 * 3 + 1, 0); // grows to 4 pages
    s.commit(A, 8 * 3 + 1, 0); // 7 pages
    s.commit(A, 0, 0); // shrinks
    assert!(s.pages() < 7);
    s.checkpoint_truncate(A); // the database file shrinks at the checkpoint
    s.commit(A, 0, 0);
    let final_pages = s.pages();
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert!(final_pages < 7);
}

#[test]
fn heap_mode_exclusive_commits_are_captured() {
    let mut s = sim(4096, 19);
    s.commit(A, 1, 0);
    s.open_heap(B);
    assert!(matches!(s.mode, Mode::Heap(..)));
    s.commit(B, 9, 0);
    s.commit(B, 1, 1);
    s.rollback(B, 2, false);
    s.commit(B, 1, 0);
    assert_eq!(s.newest_seq(), 4);
    s.checkpoint_passive(B, false);
    s.commit(B, 1, 0); // a restart in heap mode
    assert_eq!(s.restarts, 1);
    s.checkpoint_truncate(B);
    s.commit(B, 1, 0);
    s.close_all(B); // Closing without a -shm
    s.commit(A, 1, 0);
    let gens = s.finish();
    assert_eq!(gens.len(), 1);
    assert_eq!(gens[0].txns, 8);
}

#[test]
fn exclusive_mode_with_a_shared_wal_index_continues_through_restarts() {
    let mut s = sim(4096, 20);
    s.commit(A, 1, 0);
    s.enter_exclusive(A);
    s.commit(A, 9, 0);
    s.checkpoint_passive(A, false);
    s.commit(A, 1, 0); // restart: WalReset without a write-lock moment before it
    assert_eq!(s.restarts, 1);
    s.checkpoint_truncate(A);
    s.commit(A, 1, 0);
    s.leave_exclusive();
    s.commit(B, 1, 0);
    assert_eq!(s.finish().len(), 1);
}

#[test]
fn crashed_commit_checkpointed_before_capture_is_kept() {
    // After a close, the next WAL's first commit is made by a writer that dies before capture;
    // a PASSIVE checkpoint copies it into the database file (changing its size and mtime)
    // before the next writer catches up. The engine may start a new generation there (see
    // `Sim::backfill`), but the stream must still hold every state.
    let mut s = sim(4096, 21);
    s.commit(A, 1, 0);
    s.close_all(A);
    s.empty_txn(B);
    let txn = s.random_txn(9, 0);
    s.commit_txn(A, txn, true);
    s.checkpoint_passive(B, false);
    s.commit(B, 1, 0);
    assert!(s.finish().len() <= 2);
}
