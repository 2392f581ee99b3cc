//! Validators: rebuild a database transaction by transaction and run SQL invariants at every
//! transaction boundary (`walstream verify --check`), and keep a live read replica up to date
//! (`walstream follow`). Both use the CLI's bundled SQLite; neither replays more than the pages
//! each transaction changed.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::{types::ValueRef, Connection, OpenFlags};
use serde_json::json;

use crate::reader::{
    self, GenerationObjects, ReadError, ReadPosition, ReplayLimit, Resume, Visitor,
};
use crate::record::{hex, pb, Hash};
use crate::state::{RootScheme, StateTree};
use crate::target::Target;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    CheckFailed(Box<CheckFailure>),
    #[error("check {check:?} cannot run: {message}")]
    BadCheck { check: String, message: String },
    #[error("{path}: {message}")]
    Replica { path: PathBuf, message: String },
    #[error("working copy {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first failing check: where, when, which, and what it returned.
#[derive(Debug, Clone)]
pub struct CheckFailure {
    pub generation: u64,
    pub seq: u64,
    pub commit_time_ms: i64,
    pub check: String,
    pub returned: String,
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "check failed at generation {}, txn {} (committed at {} ms): {:?} returned {}",
            self.generation, self.seq, self.commit_time_ms, self.check, self.returned
        )
    }
}

impl CheckFailure {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "generation": self.generation, "txn": self.seq, "commit_time_ms": self.commit_time_ms,
            "check": self.check, "returned": self.returned,
        })
    }
}

/// Runs every check on `conn`; `Ok(None)` when all pass, else the first failing check and what
/// it returned. A check passes when it returns exactly one row whose first value is true
/// (a non-zero number, or the text 'true').
pub fn run_checks(
    conn: &Connection,
    checks: &[String],
) -> Result<Option<(String, String)>, ValidateError> {
    for check in checks {
        let bad = |e: rusqlite::Error| ValidateError::BadCheck {
            check: check.clone(),
            message: e.to_string(),
        };
        let mut stmt = conn.prepare(check).map_err(bad)?;
        let mut rows = stmt.query([]).map_err(bad)?;
        let mut first: Option<String> = None;
        let mut pass = false;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(bad)? {
            count += 1;
            if count == 1 {
                let v = row.get_ref(0).map_err(bad)?;
                pass = truthy(v);
                first = Some(describe(v));
            }
        }
        if count != 1 {
            return Ok(Some((check.clone(), format!("{count} rows"))));
        }
        if !pass {
            return Ok(Some((check.clone(), first.unwrap_or_default())));
        }
    }
    Ok(None)
}

fn truthy(v: ValueRef<'_>) -> bool {
    match v {
        ValueRef::Integer(i) => i != 0,
        ValueRef::Real(r) => r != 0.0,
        ValueRef::Text(t) => {
            let t = String::from_utf8_lossy(t);
            t.eq_ignore_ascii_case("true") || t.trim().parse::<f64>().is_ok_and(|n| n != 0.0)
        }
        ValueRef::Null | ValueRef::Blob(_) => false,
    }
}

fn describe(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("X'{}'", hex(b)),
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub checks: Vec<String>,
    /// Generation to check (default: every generation).
    pub generation: Option<u64>,
    /// Run the checks only at transactions in this range (inclusive; 0 is the snapshot).
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// The result of a checked replay.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// (generation, transactions replayed, boundaries checked)
    pub generations: Vec<(u64, u64, u64)>,
}

/// The database image being rebuilt, as a file that SQLite opens read-only after each
/// transaction.
struct WorkingCopy<'a> {
    file: File,
    path: PathBuf,
    page_size: u64,
    pages: u64,
    generation: u64,
    opts: &'a CheckOptions,
    checked: u64,
    replayed: u64,
    failure: Option<CheckFailure>,
    /// A check that could not run (bad SQL), reported as such.
    error: Option<ValidateError>,
    progress: &'a mut dyn FnMut(u64),
    base: u64,
}

impl WorkingCopy<'_> {
    fn write(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        if self.page_size == 0 {
            self.page_size = data.len() as u64;
        }
        self.pages = self.pages.max(u64::from(pgno));
        self.file
            .write_all_at(data, u64::from(pgno - 1) * self.page_size)
            .map_err(ReadError::Output)
    }

    /// Checks run after every transaction in range; the snapshot (0) only when asked for with
    /// `from = 0`, since a generation may start before the checked tables exist.
    fn in_range(&self, seq: u64) -> bool {
        self.opts.from.unwrap_or(1) <= seq && self.opts.to.is_none_or(|t| seq <= t)
    }

    fn check(&mut self, seq: u64, commit_time_ms: i64) -> Result<(), ReadError> {
        if self.failure.is_some() || !self.in_range(seq) || self.opts.checks.is_empty() {
            return Ok(());
        }
        let uri = format!("file:{}?immutable=1", self.path.display());
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&uri, flags)
            .map_err(|e| ReadError::Output(std::io::Error::other(e)))?;
        self.checked += 1;
        match run_checks(&conn, &self.opts.checks) {
            Ok(None) => Ok(()),
            Ok(Some((check, returned))) => {
                self.failure = Some(CheckFailure {
                    generation: self.generation,
                    seq,
                    commit_time_ms,
                    check,
                    returned,
                });
                // Stop the replay here; the caller reports the failure.
                Err(ReadError::Output(std::io::Error::other("check failed")))
            }
            Err(e) => {
                self.error = Some(e);
                Err(ReadError::Output(std::io::Error::other("check cannot run")))
            }
        }
    }
}

impl Visitor for WorkingCopy<'_> {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.page_size = u64::from(h.page_size);
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.write(pgno, data)
    }
    fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.write(pgno, data)
    }
    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        let size = u64::from(c.db_size_pages);
        if size != self.pages {
            self.file
                .set_len(size * self.page_size)
                .map_err(ReadError::Output)?;
            self.pages = size;
        }
        self.replayed = c.seq;
        self.check(c.seq, c.commit_time_ms)
    }
    fn progress(&mut self, bytes: u64) {
        (self.progress)(self.base + bytes)
    }
}

/// Replays the chosen generations and runs the checks at every transaction boundary in range.
/// Stops at the first failing check (`ValidateError::CheckFailed`).
pub fn verify_with_checks(
    target: &dyn Target,
    opts: &CheckOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<CheckReport, ValidateError> {
    let generations: Vec<GenerationObjects> = match opts.generation {
        Some(g) => vec![reader::generation(target, g)?],
        None => reader::inventory(target)?
            .into_iter()
            .filter(|g| g.snapshot.is_some())
            .collect(),
    };
    if generations.is_empty() {
        return Err(ReadError::Empty(target.describe()).into());
    }
    let dir = tempdir_for_checks()?;
    let mut report = CheckReport::default();
    let mut base = 0;
    for objects in &generations {
        let path = dir.join(format!("generation-{}.db", objects.generation));
        let io = |source| ValidateError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let mut copy = WorkingCopy {
            file,
            path: path.clone(),
            page_size: 0,
            pages: 0,
            generation: objects.generation,
            opts,
            checked: 0,
            replayed: 0,
            failure: None,
            error: None,
            progress,
            base,
        };
        let result = reader::replay(
            target,
            objects,
            ReplayLimit::All,
            &mut SnapshotThenTxns(&mut copy),
        );
        if let Some(failure) = copy.failure.take() {
            let _ = fs::remove_dir_all(&dir);
            return Err(ValidateError::CheckFailed(Box::new(failure)));
        }
        if let Some(error) = copy.error.take() {
            let _ = fs::remove_dir_all(&dir);
            return Err(error);
        }
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        report
            .generations
            .push((objects.generation, copy.replayed, copy.checked));
        base += objects.bytes();
        let _ = fs::remove_file(&path);
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(report)
}

/// Runs the checks on the snapshot image too (transaction 0), once its last page is written.
struct SnapshotThenTxns<'a, 'b>(&'a mut WorkingCopy<'b>);

impl Visitor for SnapshotThenTxns<'_, '_> {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.0.snapshot_header(h)?;
        self.0.pages = u64::from(h.page_count);
        self.0
            .file
            .set_len(u64::from(h.page_count) * u64::from(h.page_size))
            .map_err(ReadError::Output)?;
        if h.page_count == 0 {
            return self.0.check(0, h.created_ms);
        }
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.0.snapshot_page(pgno, data)?;
        if u64::from(pgno) == self.0.pages {
            self.0.check(0, 0)?;
        }
        Ok(())
    }
    fn txn_page(&mut self, seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.0.txn_page(seq, pgno, data)
    }
    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        self.0.txn_commit(c)
    }
    fn progress(&mut self, bytes: u64) {
        self.0.progress(bytes)
    }
}

fn tempdir_for_checks() -> Result<PathBuf, ValidateError> {
    let dir = std::env::temp_dir().join(format!("walstream-check-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|source| ValidateError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Where a follower is, saved beside the replica as `<replica>-follow` (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowState {
    pub generation: u64,
    pub seq: u64,
    pub head: Hash,
    /// The state root recorded after `seq`: what the replica's pages hash to. A follower that
    /// starts checks the replica against it (state files written before it was kept have none).
    pub root: Option<Hash>,
    /// SQLite's stamps on the stream's page 1 after `seq` (`Stamps`), which the replica's
    /// page 1 does not keep.
    pub stamps: Option<Stamps>,
}

/// Bytes 24..28 and 92..100 of page 1: the change counter, and the counter and SQLite version
/// the file was last written with. SQLite writes its own there whenever it commits page 1, so
/// a replica kept through SQLite holds the stream's pages except these twelve bytes; the
/// follow file keeps the stream's, to check the replica against the recorded state root.
pub type Stamps = [u8; 12];

/// The stamps of a page 1.
fn stamps_of(page1: &[u8]) -> Option<Stamps> {
    let mut s = [0u8; 12];
    s[..4].copy_from_slice(page1.get(24..28)?);
    s[4..].copy_from_slice(page1.get(92..100)?);
    Some(s)
}

/// Page 1 with `stamps` put in place of its own.
fn stamp(page1: &mut [u8], stamps: &Stamps) {
    if page1.len() >= 100 {
        page1[24..28].copy_from_slice(&stamps[..4]);
        page1[92..100].copy_from_slice(&stamps[4..]);
    }
}

/// `path` with `suffix` appended to its name, as SQLite names a database's `-wal` and `-shm`.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn state_path(replica: &Path) -> PathBuf {
    suffixed(replica, "-follow")
}

/// `N` bytes written as lower-case hex (`record::hex`).
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn load_state(replica: &Path) -> Option<FollowState> {
    let text = fs::read_to_string(state_path(replica)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(FollowState {
        generation: v["generation"].as_u64()?,
        seq: v["seq"].as_u64()?,
        head: parse_hex(v["head"].as_str()?)?,
        root: v["root"].as_str().and_then(parse_hex),
        stamps: v["stamps"].as_str().and_then(parse_hex),
    })
}

fn save_state(replica: &Path, s: &FollowState) -> Result<(), ValidateError> {
    let path = state_path(replica);
    let tmp = path.with_extension("tmp");
    let mut v = json!({"generation": s.generation, "seq": s.seq, "head": hex(&s.head)});
    if let Some(root) = &s.root {
        v["root"] = json!(hex(root));
    }
    if let Some(stamps) = &s.stamps {
        v["stamps"] = json!(hex(stamps));
    }
    let io = |source| ValidateError::Io {
        path: path.clone(),
        source,
    };
    fs::write(&tmp, v.to_string()).map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)
}

/// What one round of following did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowStep {
    /// Nothing new.
    UpToDate(FollowState),
    /// Applied transactions up to this state.
    Advanced { from_seq: u64, to: FollowState },
    /// Started over from a generation's snapshot: the replica was new, the stream began a new
    /// generation, or the replica was not the state its follower file names (`why`).
    Seeded { to: FollowState, why: SeedReason },
}

/// Why a follower seeded its replica anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedReason {
    /// No replica, or no state saved beside it.
    New,
    /// The stream's newest generation is not the replica's.
    NewGeneration,
    /// The replica's pages do not hash to the state root its follower file recorded: it was
    /// changed by something else, or a follower stopped between committing transactions to it
    /// and saving where it was.
    ReplicaChanged,
}

/// Transactions applied to the replica are committed together, up to this long after the
/// first of them: one commit (and sync) for many small transactions lets a follower keep up
/// with a primary committing thousands a second, while readers of the replica still see
/// whole transactions only, and see them this soon.
const BATCH_MS: u64 = 100;
/// ... or once they wrote this many bytes of pages (SQLite keeps the batch's undo in a journal).
const BATCH_BYTES: u64 = 32 << 20;

/// A follower of one stream into one replica file.
pub struct Follower {
    replica: PathBuf,
    checks: Vec<String>,
    /// A second, read-only connection that runs the checks (`Applier::commit_batch_then_check`).
    /// Declared (so dropped) before `conn`: the last connection to close checkpoints the
    /// replica's write-ahead log into it, which a read-only one cannot.
    checker: Option<Connection>,
    conn: Option<Connection>,
    /// The state tree of the replica as it is (built from its pages when the follower starts).
    tree: Option<StateTree>,
    /// Where the last round stopped reading the stream: the next reads on from there.
    position: Option<ReadPosition>,
    /// The generation's objects from the position's segment on, as the last round listed
    /// them: the next lists only what sorts from the newest of them on.
    known: Option<GenerationObjects>,
}

impl Follower {
    pub fn new(replica: PathBuf, checks: Vec<String>) -> Self {
        Self {
            replica,
            checks,
            checker: None,
            conn: None,
            tree: None,
            position: None,
            known: None,
        }
    }

    fn replica_err(&self, message: impl std::fmt::Display) -> ValidateError {
        ValidateError::Replica {
            path: self.replica.clone(),
            message: message.to_string(),
        }
    }

    fn conn(&mut self) -> Result<&Connection, ValidateError> {
        if self.conn.is_none() {
            let conn = Connection::open(&self.replica).map_err(|e| self.replica_err(e))?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|e| self.replica_err(e))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_ref().expect("opened above"))
    }

    /// The replica's state tree, computed from its pages once.
    /// `stamps`: the stream's page 1 stamps, put in the replica's page 1 before it is hashed.
    fn tree(&mut self, stamps: Option<&Stamps>) -> Result<StateTree, ValidateError> {
        if let Some(t) = self.tree.take() {
            return Ok(t);
        }
        let conn = self.conn()?;
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| self.replica_err(e))?;
        // Replaying a segment sets its scheme; the newest is the likely one.
        let scheme = RootScheme::of_version(crate::record::FORMAT_VERSION);
        let mut tree = StateTree::new(page_size, scheme);
        let conn = self.conn.as_ref().expect("opened");
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .map_err(|e| self.replica_err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.replica_err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.replica_err(e))? {
            let pgno: u32 = row.get(0).map_err(|e| self.replica_err(e))?;
            let mut data: Vec<u8> = row.get(1).map_err(|e| self.replica_err(e))?;
            if let (1, Some(stamps)) = (pgno, stamps) {
                stamp(&mut data, stamps);
            }
            tree.set_page(pgno, *blake3::hash(&data).as_bytes());
        }
        Ok(tree)
    }

    /// Whether the replica is the state `s` names: checked once, when this follower first
    /// reads the replica (from then on it is the only writer it trusts), against the state
    /// root `s` recorded. Roots of both schemes are tried: they differ by domain, so only the
    /// right one can match.
    fn replica_is(&mut self, s: &FollowState) -> Result<bool, ValidateError> {
        if self.tree.is_some() {
            return Ok(true);
        }
        let Some(want) = s.root else {
            return Ok(true);
        };
        let mut tree = self.tree(s.stamps.as_ref())?;
        let scheme = tree.scheme();
        let mut matches = tree.root().map_err(|e| self.replica_err(e))? == want;
        if !matches {
            let other = match scheme {
                RootScheme::V1 => RootScheme::V4,
                RootScheme::V4 => RootScheme::V1,
            };
            tree.set_scheme(other);
            matches = tree.root().map_err(|e| self.replica_err(e))? == want;
        }
        if matches {
            self.tree = Some(tree);
        }
        Ok(matches)
    }

    /// One round: brings the replica to the newest transaction of the newest generation.
    /// Transactions are applied in batches of SQLite transactions (`BATCH_MS`), so readers of
    /// the replica see whole transactions only; checks run after each transaction.
    pub fn step(&mut self, target: &dyn Target) -> Result<FollowStep, ValidateError> {
        let known = self.known.take().filter(|_| self.position.is_some());
        let mut objects = reader::latest_generation_since(target, known)?;
        if self
            .position
            .as_ref()
            .is_some_and(|p| !p.still_in(&objects))
        {
            // A new generation, or the position's segment is not what it was: from the start.
            self.position = None;
            objects = reader::latest_generation(target)?;
        }
        let last = match &self.position {
            // Nothing new since the last round: no need to read anything.
            Some(p) if p.at_end_of(&objects) => p.seq(),
            _ => reader::last_committed_seq_after(target, &objects, self.position.as_mut())?,
        };
        let step = self.step_in(target, &objects, last);
        // Kept for the next round's listing, from the position's segment on (a follower
        // without a position lists and reads from the start again).
        if let Some(p) = &self.position {
            let mut objects = objects;
            objects.segments = objects.segments.split_off(&p.segment());
            self.known = Some(objects);
        }
        step
    }

    fn step_in(
        &mut self,
        target: &dyn Target,
        objects: &GenerationObjects,
        last: u64,
    ) -> Result<FollowStep, ValidateError> {
        let state = load_state(&self.replica).filter(|_| self.replica.exists());
        let why = match state {
            Some(s) if s.generation == objects.generation => {
                if self.replica_is(&s)? {
                    if s.seq >= last {
                        return Ok(FollowStep::UpToDate(s));
                    }
                    let to = match self.advance(target, objects, &s, last) {
                        // A follow file from before the root was kept: the replica could not
                        // be checked at start, and one that is not the state the file names
                        // fails here. Seeding verifies the stream from its snapshot on, so a
                        // stream at fault fails there as well.
                        Err(ValidateError::Read(ReadError::Integrity(_))) if s.root.is_none() => {
                            let to = self.seed(target, objects, last)?;
                            return Ok(FollowStep::Seeded {
                                to,
                                why: SeedReason::ReplicaChanged,
                            });
                        }
                        r => r?,
                    };
                    if to.seq == s.seq {
                        return Ok(FollowStep::UpToDate(to));
                    }
                    return Ok(FollowStep::Advanced {
                        from_seq: s.seq,
                        to,
                    });
                }
                SeedReason::ReplicaChanged
            }
            Some(_) => SeedReason::NewGeneration,
            None => SeedReason::New,
        };
        let to = self.seed(target, objects, last)?;
        Ok(FollowStep::Seeded { to, why })
    }

    fn advance(
        &mut self,
        target: &dyn Target,
        objects: &GenerationObjects,
        s: &FollowState,
        last: u64,
    ) -> Result<FollowState, ValidateError> {
        let mut tree = self.tree(s.stamps.as_ref())?;
        let resume = Resume {
            after_seq: s.seq,
            head_hash: s.head,
        };
        let conn = self.conn.take().expect("opened by tree()");
        if self.checker.is_none() && !self.checks.is_empty() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let checker = Connection::open_with_flags(&self.replica, flags)
                .and_then(|c| {
                    c.busy_timeout(std::time::Duration::from_secs(10))
                        .map(|()| c)
                })
                .map_err(|e| self.replica_err(e));
            match checker {
                Ok(c) => self.checker = Some(c),
                Err(e) => {
                    self.conn = Some(conn);
                    self.tree = Some(tree);
                    return Err(e);
                }
            }
        }
        let mut applier = Applier::new(
            &conn,
            self.checker.as_ref(),
            &self.replica,
            &self.checks,
            (objects.generation, s.stamps),
        );
        let result = reader::replay_after_at(
            target,
            objects,
            &resume,
            &mut tree,
            ReplayLimit::Txn(last),
            &mut applier,
            &mut self.position,
        );
        // Whatever ended the replay, the transactions applied whole are committed and saved.
        let saved = applier.finish();
        let failure = applier.failure.take();
        let reached = applier.reached.take();
        let stamps = applier.stamps;
        drop(applier);
        self.conn = Some(conn);
        // Whatever went wrong, the next round starts afresh: the replica's tree from its pages,
        // the stream read from where the saved state is.
        let mut afresh = || {
            self.tree = None;
            self.position = None;
        };
        if let Err(e) = saved {
            afresh();
            return Err(e);
        }
        let summary = match (failure, result) {
            (Some(f), _) => {
                afresh();
                return Err(ValidateError::CheckFailed(Box::new(f)));
            }
            // The stream changed between listing it and reading it (an object store may serve
            // a segment's placeholder and then the whole segment, or the reverse, for a moment):
            // what was applied is whole transactions; the next round continues from there.
            (None, Err(ReadError::NoSuchTxn { .. })) => {
                afresh();
                return Ok(reached.unwrap_or_else(|| s.clone()));
            }
            (None, Err(e)) => {
                afresh();
                return Err(e.into());
            }
            (None, Ok(summary)) => summary,
        };
        self.tree = Some(tree);
        Ok(FollowState {
            generation: objects.generation,
            seq: summary.last_seq,
            head: summary.head_hash,
            root: Some(summary.state_root),
            stamps,
        })
    }

    /// Replaces the replica with the generation's state at `last`: a new file is restored beside
    /// it and renamed over it, so readers see the old or the new database, never a mixture.
    fn seed(
        &mut self,
        target: &dyn Target,
        objects: &GenerationObjects,
        last: u64,
    ) -> Result<FollowState, ValidateError> {
        self.checker = None;
        self.conn = None;
        self.tree = None;
        self.position = None;
        let opts = crate::restore::RestoreOptions {
            point: crate::restore::Point::Txn(last),
            generation: Some(objects.generation),
            force: true,
        };
        let tmp = self.replica.with_extension("walstream-seed");
        let restored = crate::restore::restore(target, &tmp, &opts, &mut |_| {})
            .map_err(|e| self.replica_err(e))?;
        // The restored file is the stream's state byte for byte: its stamps are the stream's.
        let stamps = {
            use std::io::Read;
            let mut head = [0u8; 100];
            File::open(&tmp)
                .and_then(|mut f| f.read_exact(&mut head))
                .ok()
                .and_then(|()| stamps_of(&head))
        };
        // The new file is renamed over the replica: readers that have the old one open go on
        // reading it, whole; new ones open the new one. SQLite pairs a database with the
        // `-wal` and `-shm` beside it by name, so the old ones go first, or SQLite would lay
        // the old file's frames over the new one. Before that, the old log is checkpointed
        // into the old file (completing one a killed follower left half done), so that a
        // reader opening the replica between the two steps finds a whole, earlier state.
        if self.replica.exists() {
            if let Ok(old) = Connection::open(&self.replica) {
                let _ = old.busy_timeout(std::time::Duration::from_secs(10));
                let _ = old.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            }
        }
        for suffix in ["-wal", "-shm"] {
            match fs::remove_file(suffixed(&self.replica, suffix)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(self.replica_err(e))
                }
                _ => {}
            }
        }
        fs::rename(&tmp, &self.replica).map_err(|e| self.replica_err(e))?;
        let state = FollowState {
            generation: objects.generation,
            seq: last,
            head: restored.summary.head_hash,
            root: Some(restored.summary.state_root),
            stamps,
        };
        self.conn()?;
        let conn = self.conn.as_ref().expect("opened above");
        if let Some((check, returned)) = run_checks(conn, &self.checks)? {
            return Err(ValidateError::CheckFailed(Box::new(CheckFailure {
                generation: objects.generation,
                seq: last,
                commit_time_ms: restored.summary.last_commit_ms,
                check,
                returned,
            })));
        }
        save_state(&self.replica, &state)?;
        Ok(state)
    }
}

/// Applies replayed transactions to the replica through `sqlite_dbpage`. Each stream
/// transaction is a savepoint inside a SQLite transaction that holds a batch of them
/// (`BATCH_MS`, `BATCH_BYTES`); the follower state is saved after each batch commits. A stream
/// transaction cut short (a page that fails its hash, a torn tail) is rolled back to its
/// savepoint, so a batch only ever commits whole transactions. A transaction that shrinks the
/// database, and with checks every transaction, ends its batch (`commit_batch_then_check`).
struct Applier<'a> {
    conn: &'a Connection,
    /// A read-only connection to the replica, for the checks (when there are any).
    checker: Option<&'a Connection>,
    replica: &'a Path,
    checks: &'a [String],
    generation: u64,
    /// When the open SQLite transaction began, and the bytes of pages it wrote.
    batch: Option<(std::time::Instant, u64)>,
    /// A stream transaction's savepoint is open: pages were written, its commit not seen.
    in_txn: bool,
    failure: Option<CheckFailure>,
    /// The state after the last transaction applied in the open batch.
    pending: Option<FollowState>,
    /// The replica's state after the last batch committed (and saved).
    reached: Option<FollowState>,
    /// The stream's page 1 stamps after the last transaction applied, and those of the open
    /// transaction's page 1 if it wrote one.
    stamps: Option<Stamps>,
    txn_stamps: Option<Stamps>,
}

impl<'a> Applier<'a> {
    fn new(
        conn: &'a Connection,
        checker: Option<&'a Connection>,
        replica: &'a Path,
        checks: &'a [String],
        (generation, stamps): (u64, Option<Stamps>),
    ) -> Self {
        Self {
            conn,
            checker,
            replica,
            checks,
            generation,
            batch: None,
            in_txn: false,
            failure: None,
            pending: None,
            reached: None,
            stamps,
            txn_stamps: None,
        }
    }

    fn sql(&self, e: rusqlite::Error) -> ReadError {
        ReadError::Output(std::io::Error::other(format!(
            "{}: {e}",
            self.replica.display()
        )))
    }

    fn exec(&self, sql: &str) -> Result<(), ReadError> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| self.sql(e))
    }

    /// Opens the batch and the stream transaction's savepoint, as needed.
    fn begin_txn(&mut self) -> Result<(), ReadError> {
        if self.batch.is_none() {
            self.exec("BEGIN IMMEDIATE")?;
            self.batch = Some((std::time::Instant::now(), 0));
        }
        if !self.in_txn {
            self.exec("SAVEPOINT walstream_txn")?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// Commits the open batch and saves the state it reached.
    fn commit_batch(&mut self) -> Result<(), ReadError> {
        debug_assert!(!self.in_txn);
        if self.batch.is_none() {
            return Ok(());
        }
        self.exec("COMMIT")?;
        self.batch = None;
        if let Some(state) = self.pending.take() {
            save_state(self.replica, &state)
                .map_err(|e| ReadError::Output(std::io::Error::other(e.to_string())))?;
            self.reached = Some(state);
        }
        Ok(())
    }

    /// Commits the batch (the transaction `c` last in it) and runs the checks on it. Checks
    /// read through their own connection: this one writes pages under SQLite's b-tree layer,
    /// which keeps what it parsed of a page before (and the schema) as it was, so its reads
    /// could be stale. A reader of the committed replica sees what any reader would.
    fn commit_batch_then_check(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        self.commit_batch()?;
        let Some(checker) = self.checker else {
            return Ok(());
        };
        match run_checks(checker, self.checks) {
            Ok(None) => Ok(()),
            Ok(Some((check, returned))) => {
                // The replica keeps the transaction that failed, for whoever looks into it.
                self.failure = Some(CheckFailure {
                    generation: self.generation,
                    seq: c.seq,
                    commit_time_ms: c.commit_time_ms,
                    check,
                    returned,
                });
                Err(ReadError::Output(std::io::Error::other("check failed")))
            }
            Err(e) => Err(ReadError::Output(std::io::Error::other(e.to_string()))),
        }
    }

    /// After the replay: a transaction cut short is rolled back, the batch committed.
    fn finish(&mut self) -> Result<(), ValidateError> {
        let rolled_back = if self.in_txn {
            self.in_txn = false;
            self.txn_stamps = None;
            self.exec("ROLLBACK TO walstream_txn")
                .and_then(|()| self.exec("RELEASE walstream_txn"))
        } else {
            Ok(())
        };
        let committed = rolled_back.and_then(|()| self.commit_batch());
        if committed.is_err() && self.batch.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        committed.map_err(ValidateError::from)
    }
}

impl Visitor for Applier<'_> {
    fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        self.begin_txn()?;
        self.conn
            .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute((pgno, data)))
            .map_err(|e| self.sql(e))?;
        if let Some((_, bytes)) = &mut self.batch {
            *bytes += data.len() as u64;
        }
        if pgno == 1 {
            self.txn_stamps = stamps_of(data);
        }
        Ok(())
    }

    fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
        self.begin_txn()?;
        let pages: u32 = self
            .conn
            .prepare_cached("PRAGMA page_count")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.sql(e))?;
        let shrinks = c.db_size_pages < pages;
        if shrinks {
            // Inserting a NULL page truncates the database to the pages before it, at COMMIT.
            self.conn
                .prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, NULL)")
                .and_then(|mut s| s.execute([c.db_size_pages + 1]))
                .map_err(|e| self.sql(e))?;
        }
        if let Some(t) = self.txn_stamps.take() {
            self.stamps = Some(t);
        }
        let bad = |what: &str| ReadError::Output(std::io::Error::other(format!("bad {what}")));
        self.pending = Some(FollowState {
            generation: self.generation,
            seq: c.seq,
            head: c.hash.as_slice().try_into().map_err(|_| bad("hash"))?,
            root: Some(
                c.state_root
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("state root"))?,
            ),
            stamps: self.stamps,
        });
        if shrinks {
            // Committed at once: releasing the savepoint would make SQLite take the database's
            // size from the page 1 just written and forget the truncation.
            self.in_txn = false;
            return self.commit_batch_then_check(c);
        }
        self.exec("RELEASE walstream_txn")?;
        self.in_txn = false;
        if !self.checks.is_empty() {
            return self.commit_batch_then_check(c);
        }
        if let Some((since, bytes)) = self.batch {
            if since.elapsed() >= std::time::Duration::from_millis(BATCH_MS) || bytes >= BATCH_BYTES
            {
                self.commit_batch()?;
            }
        }
        Ok(())
    }
}
