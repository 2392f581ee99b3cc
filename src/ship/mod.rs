//! Shipping a spool to a remote target (S3) in the background, off the commit path.
//!
//! For a remote target the spool is the local directory `<db>-walstream/`. Capture appends to it
//! on the commit path exactly as for a local target; a [`Shipper`] thread (one per process per
//! spool, started lazily) uploads what is sealed, oldest first:
//!
//! 1. every file of every generation older than the newest complete one (then deletes them from
//!    the spool: the target has acknowledged them);
//! 2. the newest generation's snapshot and its sealed segments. These stay in the spool (capture
//!    rebuilds its state tree from the newest generation), and `ship.state` records how far the
//!    target acknowledged them, so a restarted process does not upload them again.
//!
//! The active segment is sealed by the shipper itself (under the spool lock) once its oldest
//! transaction is `seal_ms` old or it holds `seal_txns` transactions; capture also rolls it at
//! `seal_bytes`. Only one process ships a spool at a time: the holder of an `flock` on
//! `ship.lock`; others retry now and then. Every upload is conditional (`If-None-Match: *`):
//! an object that already exists is accepted only if its content hash equals the local file's
//! (our own earlier upload); otherwise another writer uses the prefix and shipping stops with a
//! clear error. Before it uploads the snapshot that starts a generation, the shipper also checks
//! that the target's newest generation is one this spool shipped (or that there is none).
//!
//! Failures are recorded (see [`ShipShared`]) and retried with exponential backoff. Nothing is
//! deleted from the spool before the target acknowledged it. See docs/S3.md.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::json;

use crate::layout::{self, ObjectName};
use crate::record::pb::{record::Body, Record};
use crate::record::{FileKind, RecordReader};
use crate::spool::Spool;
use crate::target::{self, PutOutcome, Target, TargetError, TargetSpec};

/// Lock file whose holder ships the spool.
pub const SHIP_LOCK_NAME: &str = "ship.lock";
/// What the target acknowledged of the newest generation (JSON).
pub const SHIP_STATE_NAME: &str = "ship.state";

/// Shipping settings, from the environment (see docs/S3.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ShipConfig {
    /// Seal the active segment once its oldest unshipped transaction is this old (ms).
    pub seal_ms: u64,
    /// ... or once it holds this many transactions.
    pub seal_txns: u64,
    /// Capture rolls a segment at this size (bytes).
    pub seal_bytes: u64,
    /// Capture stops (the WAL keeps the transactions) while this many bytes are unshipped.
    pub spool_limit: Option<u64>,
    /// Start a new generation once the newest one holds this many bytes of segments.
    pub snapshot_bytes: Option<u64>,
    /// ... or once it is this old (ms).
    pub snapshot_interval_ms: Option<u64>,
    /// Automatic retention after each new generation is shipped (see `prune`).
    pub keep_generations: Option<u64>,
    pub keep_days: Option<f64>,
    /// Longest wait between retries after a failure (ms).
    pub backoff_max_ms: u64,
    /// The capture's signing key: segments the shipper seals are signed too (not from the
    /// environment; set by the capture).
    pub signer: Option<std::sync::Arc<crate::sign::Signer>>,
}

impl Default for ShipConfig {
    fn default() -> Self {
        Self {
            seal_ms: 10,
            seal_txns: 1000,
            seal_bytes: crate::spool::SEGMENT_BYTES_MAX_DEFAULT,
            spool_limit: None,
            snapshot_bytes: Some(256 << 20),
            snapshot_interval_ms: None,
            keep_generations: None,
            keep_days: None,
            backoff_max_ms: 5_000,
            signer: None,
        }
    }
}

/// Parses a byte count: digits with an optional K, M, G or T suffix (powers of 1024; an `iB` or
/// `B` after it is accepted).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn off(s: &str) -> bool {
    matches!(s, "0" | "off" | "none" | "never")
}

impl ShipConfig {
    /// Reads `WALSTREAM_SEAL_MS`, `WALSTREAM_SEAL_TXNS`, `WALSTREAM_SEAL_BYTES`,
    /// `WALSTREAM_SPOOL_LIMIT`, `WALSTREAM_SNAPSHOT_BYTES`, `WALSTREAM_SNAPSHOT_INTERVAL_S`,
    /// `WALSTREAM_KEEP_GENERATIONS`, `WALSTREAM_KEEP_DAYS`, `WALSTREAM_SHIP_BACKOFF_MAX_MS`.
    /// An unparsable value is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        let mut c = ShipConfig::default();
        let num = |name: &str| -> Result<Option<u64>, String> {
            env(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
        };
        let bytes = |name: &str| -> Result<Option<Option<u64>>, String> {
            env(name)
                .map(|v| {
                    if off(&v) {
                        Ok(None)
                    } else {
                        parse_bytes(&v)
                            .map(Some)
                            .ok_or(format!("{name}={v:?} is not a size such as 64M"))
                    }
                })
                .transpose()
        };
        if let Some(v) = num("WALSTREAM_SEAL_MS")? {
            c.seal_ms = v;
        }
        if let Some(v) = num("WALSTREAM_SEAL_TXNS")? {
            c.seal_txns = v.max(1);
        }
        if let Some(v) = bytes("WALSTREAM_SEAL_BYTES")? {
            c.seal_bytes = v.unwrap_or(u64::MAX).max(4096);
        }
        if let Some(v) = bytes("WALSTREAM_SPOOL_LIMIT")? {
            c.spool_limit = v;
        }
        if let Some(v) = bytes("WALSTREAM_SNAPSHOT_BYTES")? {
            c.snapshot_bytes = v;
        }
        if let Some(v) = num("WALSTREAM_SNAPSHOT_INTERVAL_S")? {
            c.snapshot_interval_ms = (v > 0).then_some(v * 1000);
        }
        if let Some(v) = num("WALSTREAM_KEEP_GENERATIONS")? {
            c.keep_generations = (v > 0).then_some(v);
        }
        if let Some(v) = env("WALSTREAM_KEEP_DAYS") {
            let d: f64 = v
                .parse()
                .map_err(|_| format!("WALSTREAM_KEEP_DAYS={v:?} is not a number"))?;
            c.keep_days = (d > 0.0).then_some(d);
        }
        if let Some(v) = num("WALSTREAM_SHIP_BACKOFF_MAX_MS")? {
            c.backoff_max_ms = v.max(10);
        }
        Ok(c)
    }
}

/// BLAKE3 (hex) of a local file.
pub fn file_hash(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// What the shipper reports, shared with capture (for `walstream_status()` and the spool limit).
#[derive(Debug, Default)]
pub struct ShipShared {
    state: Mutex<ShipState>,
    wake: Condvar,
    /// Bytes in the spool not yet acknowledged by the target.
    unshipped_bytes: AtomicU64,
    /// Set by the shipper: capture should start a new generation at its next commit.
    new_generation: Mutex<Option<String>>,
    /// The `ship.lock` file while this process holds it.
    lock_file: Mutex<Option<File>>,
    stop: AtomicBool,
}

/// The shipper's progress and errors.
#[derive(Debug, Default, Clone)]
pub struct ShipState {
    /// This process holds `ship.lock` and ships.
    pub shipping: bool,
    /// Newest generation and transaction the target acknowledged (shipped in any process).
    pub shipped: Option<(u64, u64)>,
    /// Newest generation and transaction captured, as last told by capture.
    pub captured: Option<(u64, u64)>,
    /// When a captured transaction was first waiting to be shipped (ms since the epoch).
    pub pending_since_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub errors: u64,
    /// Shipping stopped because another writer uses the prefix.
    pub conflict: bool,
    pub objects_uploaded: u64,
    pub bytes_uploaded: u64,
    pub objects_pruned: u64,
    pub last_ship_ms: Option<i64>,
    /// The shipper asked capture for a new generation; why.
    pub generation_requested: Option<String>,
    kicked: bool,
}

impl ShipShared {
    pub fn snapshot(&self) -> ShipState {
        self.state.lock().clone()
    }

    pub fn unshipped_bytes(&self) -> u64 {
        self.unshipped_bytes.load(Ordering::Relaxed)
    }

    /// Status fields for `walstream_status()`.
    pub fn status_json(&self, spool_limit: Option<u64>) -> serde_json::Value {
        let s = self.snapshot();
        let now = crate::now_ms();
        let lag_txns = match (s.captured, s.shipped) {
            (Some((cg, cs)), Some((sg, ss))) if cg == sg => cs.saturating_sub(ss),
            (Some((_, cs)), _) => cs,
            _ => 0,
        };
        let caught_up = lag_txns == 0
            && s.captured.is_some()
            && s.captured.map(|c| c.0) == s.shipped.map(|c| c.0);
        let lag_ms = if caught_up {
            0
        } else {
            s.pending_since_ms.map_or(0, |t| (now - t).max(0))
        };
        json!({
            "shipping": s.shipping,
            "shipped_generation": s.shipped.map(|p| p.0),
            "shipped_seq": s.shipped.map(|p| p.1),
            "lag_txns": lag_txns,
            "lag_ms": lag_ms,
            "ship_error": s.last_error,
            "ship_error_ms": s.last_error_ms,
            "ship_errors": s.errors,
            "ship_conflict": s.conflict,
            "objects_uploaded": s.objects_uploaded,
            "bytes_uploaded": s.bytes_uploaded,
            "objects_pruned": s.objects_pruned,
            "unshipped_bytes": self.unshipped_bytes(),
            "spool_limit": spool_limit,
            "last_ship_ms": s.last_ship_ms,
            "generation_requested": s.generation_requested,
        })
    }

    /// Tells the shipper that capture reached `captured` (never blocks on the network: the
    /// state mutex is only ever held for a few field updates). The shipper is woken only when
    /// it has something new to schedule: the first transaction it has not shipped (it then
    /// sleeps until that segment is due to be sealed, and while transactions keep coming it
    /// runs again after each upload), or every `NOTIFY_WAKE_TXNS`-th transaction (for
    /// `WALSTREAM_SEAL_TXNS`). Waking it at every commit cost the committing thread a pass of
    /// the shipper (a directory listing and the spool lock) per commit.
    pub fn notify(&self, captured: Option<(u64, u64)>) {
        let mut s = self.state.lock();
        let mut wake = captured.is_none();
        if captured.is_some() && captured != s.captured {
            if s.pending_since_ms.is_none() {
                s.pending_since_ms = Some(crate::now_ms());
                wake = true;
            }
            wake |= captured.is_some_and(|(_, seq)| seq % NOTIFY_WAKE_TXNS == 0);
            s.captured = captured;
        }
        if !wake {
            return;
        }
        s.kicked = true;
        drop(s);
        self.wake.notify_one();
    }

    /// A new generation the shipper asked for (taken once).
    pub fn take_generation_request(&self) -> Option<String> {
        self.new_generation.lock().take()
    }

    fn error(&self, message: String, conflict: bool) {
        let mut s = self.state.lock();
        s.last_error = Some(message);
        s.last_error_ms = Some(crate::now_ms());
        s.errors += 1;
        s.conflict = conflict;
    }

    /// Waits until notified or `deadline`.
    fn wait(&self, deadline: Instant) {
        let mut s = self.state.lock();
        if !s.kicked && !self.stop.load(Ordering::Relaxed) {
            let _ = self.wake.wait_until(&mut s, deadline);
        }
        s.kicked = false;
    }
}

/// `ShipShared::notify` wakes the shipper at least every this many transactions.
const NOTIFY_WAKE_TXNS: u64 = 256;

/// The background shipper of one spool in this process.
pub struct Shipper {
    shared: Arc<ShipShared>,
    pid: u32,
    config: ShipConfig,
}

impl Shipper {
    /// Starts the shipper thread for the spool in `spool_dir`, shipping to `spec`.
    pub fn start(spool_dir: PathBuf, spec: TargetSpec, config: ShipConfig) -> io::Result<Self> {
        let shared = Arc::new(ShipShared::default());
        let worker = Worker::new(spool_dir, spec, config.clone(), shared.clone());
        std::thread::Builder::new()
            .name("walstream-ship".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            pid: std::process::id(),
            config,
        })
    }

    pub fn shared(&self) -> &Arc<ShipShared> {
        &self.shared
    }

    pub fn config(&self) -> &ShipConfig {
        &self.config
    }

    /// Whether this shipper was started by another process (this one is a `fork()` child).
    pub fn is_inherited(&self) -> bool {
        self.pid != std::process::id()
    }

    /// In a `fork()` child: lets go of the parent's shipper without touching its thread's state
    /// (no thread runs it here). Closes this process's copy of the `ship.lock` descriptor, which
    /// would otherwise keep the parent's lock held after the parent exits.
    pub fn abandon(self) {
        if let Some(mut lock) = self.shared.lock_file.try_lock() {
            lock.take();
        }
        std::mem::forget(self);
    }

    /// The error capture reports instead of appending while the unshipped spool is over the limit.
    pub fn limit_error(&self) -> Option<String> {
        let limit = self.config.spool_limit?;
        let unshipped = self.shared.unshipped_bytes();
        (unshipped >= limit).then(|| {
            let why = self
                .shared
                .snapshot()
                .last_error
                .unwrap_or_else(|| "shipping is behind".into());
            format!(
                "the spool holds {unshipped} unshipped bytes, at its limit of {limit} \
                 (WALSTREAM_SPOOL_LIMIT): capture pauses and SQLite's WAL keeps the new \
                 transactions until shipping catches up ({why})"
            )
        })
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }
}

/// `ship.state`: how far the target acknowledged this spool's newest generation.
#[derive(Debug, Clone, Default, PartialEq)]
struct AckState {
    target: String,
    generation: u64,
    snapshot_hash: String,
    /// Every segment of `generation` with a first transaction up to this one is acknowledged
    /// (0: only the snapshot).
    segment: u64,
    /// Last transaction in those segments.
    seq: u64,
    /// Header-only copies of segments, uploaded before the sealed segment that names them as
    /// next, so that the stream in the target never ends with a sealed segment whose successor
    /// is missing (readers report that as a hole): key and content hash of each. The full
    /// segment replaces its placeholder once sealed. Usually one (the active segment's); two
    /// while a segment is being replaced.
    placeholders: Vec<(String, String)>,
}

impl AckState {
    fn load(dir: &Path) -> Option<Self> {
        let text = fs::read_to_string(dir.join(SHIP_STATE_NAME)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Self {
            target: v["target"].as_str()?.to_string(),
            generation: v["generation"].as_u64()?,
            snapshot_hash: v["snapshot_hash"].as_str()?.to_string(),
            segment: v["segment"].as_u64()?,
            seq: v["seq"].as_u64()?,
            placeholders: match (
                &v["placeholders"],
                v["placeholder_key"].as_str(),
                v["placeholder_hash"].as_str(),
            ) {
                (serde_json::Value::Array(list), _, _) => list
                    .iter()
                    .map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                    .collect::<Option<Vec<_>>>()?,
                // Written by an earlier version: one placeholder.
                (_, Some(k), Some(h)) => vec![(k.to_string(), h.to_string())],
                _ => Vec::new(),
            },
        })
    }

    fn save(&self, dir: &Path) -> io::Result<()> {
        let text = json!({
            "target": self.target,
            "generation": self.generation,
            "snapshot_hash": self.snapshot_hash,
            "segment": self.segment,
            "seq": self.seq,
            "placeholders": self.placeholders.iter().map(|(k, h)| [k, h]).collect::<Vec<_>>(),
        })
        .to_string();
        let tmp = dir.join(format!("{SHIP_STATE_NAME}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        fs::rename(&tmp, dir.join(SHIP_STATE_NAME))
    }
}

/// A file of the spool in the order it is shipped.
#[derive(Debug, Clone)]
struct SpoolFile {
    key: String,
    size: u64,
}

/// Generations of the spool: each one's snapshot (if any) and segments by first transaction.
type SpoolInventory = BTreeMap<u64, (Option<SpoolFile>, BTreeMap<u64, SpoolFile>)>;

/// The spool's generations and their files.
fn spool_inventory(dir: &Path) -> io::Result<SpoolInventory> {
    let mut out = SpoolInventory::new();
    let root = dir.join(layout::GENERATIONS_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(generation) = layout::parse_hex16(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(files) = fs::read_dir(entry.path()) else {
            continue;
        };
        for file in files {
            let file = file?;
            let key = format!(
                "{}/{}",
                layout::generation_dir(generation),
                file.file_name().to_string_lossy()
            );
            let Some(name) = layout::parse_key(&key) else {
                continue;
            };
            // Not `metadata()`: the active segment is among these (crate::file_size).
            let Ok(size) = crate::file_size::len_at(&file.path()) else {
                continue;
            };
            let f = SpoolFile { key, size };
            let g = out.entry(generation).or_default();
            match name {
                ObjectName::Snapshot { .. } => g.0 = Some(f),
                ObjectName::Segment { first_seq, .. } => {
                    g.1.insert(first_seq, f);
                }
            }
        }
    }
    Ok(out)
}

/// The last committed transaction in a local segment file (`first_seq - 1` if none).
fn segment_last_seq(path: &Path, first_seq: u64) -> io::Result<u64> {
    let mut r = RecordReader::new(BufReader::new(File::open(path)?))
        .and_then(|r| r.expect_kind(FileKind::Segment))
        .map_err(io::Error::other)?;
    let mut last = first_seq.saturating_sub(1);
    loop {
        match r.next_record() {
            Ok(Some((
                _,
                Record {
                    body: Some(Body::TxnCommit(c)),
                },
            ))) => last = c.seq,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.is_torn_tail() => break,
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    Ok(last)
}

/// Why a pass stopped early.
enum PassError {
    /// Retry after backoff.
    Retry(String),
    /// Another writer uses the prefix: retry only after the longest backoff.
    Conflict(String),
}

impl From<TargetError> for PassError {
    fn from(e: TargetError) -> Self {
        PassError::Retry(e.to_string())
    }
}

struct Worker {
    dir: PathBuf,
    spec: TargetSpec,
    config: ShipConfig,
    shared: Arc<ShipShared>,
    target: Option<Box<dyn Target>>,
    spool: Option<Spool>,
    ack: AckState,
    /// Active segment (generation, first_seq) with unsealed transactions, and since when.
    unsealed_since: Option<((u64, u64), Instant)>,
    /// When the newest generation was first seen (for the snapshot interval).
    generation_seen: Option<(u64, Instant)>,
    requested_for: Option<u64>,
}

impl Worker {
    fn new(dir: PathBuf, spec: TargetSpec, config: ShipConfig, shared: Arc<ShipShared>) -> Self {
        Self {
            dir,
            spec,
            config,
            shared,
            target: None,
            spool: None,
            ack: AckState::default(),
            unsealed_since: None,
            generation_seen: None,
            requested_for: None,
        }
    }

    fn target_name(&self) -> String {
        self.spec.describe()
    }

    fn run(mut self) {
        let mut backoff_ms = 0u64;
        let mut retry_at = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            if !self.holds_lock() {
                let _ = self.measure();
                self.shared
                    .wait(Instant::now() + Duration::from_millis(500));
                continue;
            }
            let now = Instant::now();
            if now < retry_at {
                let _ = self.measure();
                self.shared.wait(retry_at);
                continue;
            }
            match self.pass() {
                Ok(next_wake) => {
                    if backoff_ms > 0 {
                        self.shared.state.lock().last_error = None;
                        self.shared.state.lock().conflict = false;
                    }
                    backoff_ms = 0;
                    self.shared.wait(next_wake);
                }
                Err(e) => {
                    let (msg, conflict) = match e {
                        PassError::Retry(m) => (m, false),
                        PassError::Conflict(m) => (m, true),
                    };
                    backoff_ms = if conflict {
                        self.config.backoff_max_ms
                    } else {
                        (backoff_ms * 2).clamp(100, self.config.backoff_max_ms)
                    };
                    self.shared.error(msg, conflict);
                    retry_at = Instant::now() + Duration::from_millis(backoff_ms);
                }
            }
        }
    }

    /// Takes `ship.lock` if no other process holds it.
    fn holds_lock(&mut self) -> bool {
        let mut slot = self.shared.lock_file.lock();
        if slot.is_some() {
            return true;
        }
        let _ = fs::create_dir_all(&self.dir);
        let path = self.dir.join(SHIP_LOCK_NAME);
        let Ok(mut file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            return false;
        };
        if file.try_lock().is_err() {
            self.shared.state.lock().shipping = false;
            return false;
        }
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        *slot = Some(file);
        drop(slot);
        self.shared.state.lock().shipping = true;
        self.ack = AckState::load(&self.dir)
            .filter(|a| a.target == self.target_name())
            .unwrap_or_default();
        if self.ack.generation > 0 {
            self.shared.state.lock().shipped = Some((self.ack.generation, self.ack.seq));
        }
        true
    }

    /// Recomputes the unshipped bytes of the spool.
    fn measure(&self) -> io::Result<SpoolInventory> {
        let inv = spool_inventory(&self.dir)?;
        let mut unshipped = 0u64;
        for (&g, (snap, segs)) in &inv {
            let acked_gen = g == self.ack.generation;
            if let Some(s) = snap {
                if !acked_gen {
                    unshipped += s.size;
                }
            }
            for (&first, s) in segs {
                if !(acked_gen && first <= self.ack.segment) {
                    unshipped += s.size;
                }
            }
        }
        self.shared
            .unshipped_bytes
            .store(unshipped, Ordering::Relaxed);
        Ok(inv)
    }

    fn target(&mut self) -> Result<&dyn Target, PassError> {
        if self.target.is_none() {
            self.target = Some(target::open(&self.spec)?);
        }
        Ok(self.target.as_deref().expect("opened above"))
    }

    /// Seals the active segment when it is due. Returns when to look again.
    fn maybe_seal(&mut self) -> Result<Option<Instant>, PassError> {
        if self.spool.is_none() {
            let spool = Spool::open(&self.dir).map_err(|e| PassError::Retry(e.to_string()))?;
            self.spool = Some(spool);
        }
        let spool = self.spool.as_mut().expect("opened above");
        spool.segment_bytes_max = self.config.seal_bytes;
        spool.signer = self.config.signer.clone();
        let mut lock = spool.lock().map_err(|e| PassError::Retry(e.to_string()))?;
        let Some(tail) = lock.tail().cloned() else {
            self.unsealed_since = None;
            return Ok(None);
        };
        match self.generation_seen {
            Some((g, _)) if g == tail.generation => {}
            _ => self.generation_seen = Some((tail.generation, Instant::now())),
        }
        if tail.ended || tail.last_seq < tail.segment_first_seq {
            self.unsealed_since = None;
            return Ok(None);
        }
        let id = (tail.generation, tail.segment_first_seq);
        let since = match self.unsealed_since {
            Some((seen, at)) if seen == id => at,
            _ => {
                let now = Instant::now();
                self.unsealed_since = Some((id, now));
                now
            }
        };
        let due = since + Duration::from_millis(self.config.seal_ms);
        let txns = tail.last_seq + 1 - tail.segment_first_seq;
        if Instant::now() >= due || txns >= self.config.seal_txns {
            lock.seal_active()
                .map_err(|e| PassError::Retry(format!("sealing the active segment: {e}")))?;
            self.unsealed_since = None;
            return Ok(None);
        }
        Ok(Some(due))
    }

    /// One round: seal if due, upload what is sealed, prune. Returns when to run again.
    fn pass(&mut self) -> Result<Instant, PassError> {
        let mut next = Instant::now() + Duration::from_secs(1);
        let due = self.maybe_seal()?;
        if let Some(due) = due {
            next = next.min(due);
        }
        let inv = self
            .measure()
            .map_err(|e| PassError::Retry(format!("reading the spool: {e}")))?;
        let complete: Vec<u64> = inv
            .iter()
            .filter(|(_, (s, _))| s.is_some())
            .map(|(g, _)| *g)
            .collect();
        let Some(&newest) = complete.last() else {
            return Ok(next);
        };
        for &g in &complete {
            let (snap, segs) = &inv[&g];
            let snap = snap.as_ref().expect("complete");
            let old = g < newest;
            self.ship_snapshot(g, snap)?;
            let count = segs.len();
            for (i, (&first, seg)) in segs.iter().enumerate() {
                let last_one = i + 1 == count;
                if !old && last_one {
                    // The active segment: only its header, as a placeholder (usually uploaded
                    // already, before the segment sealed before it).
                    self.ship_placeholder(seg)?;
                    break;
                }
                // Already acknowledged (a generation that just became old keeps them in the
                // spool until now): only removed, never uploaded again.
                let acked = g == self.ack.generation && first <= self.ack.segment;
                if !acked {
                    // The successor's header goes first: if this process stops between the two
                    // uploads, the target still ends with a readable (empty) segment, not with
                    // a sealed one that names a missing successor.
                    if let Some((_, next)) = segs.range(first + 1..).next() {
                        self.ship_placeholder(next)?;
                    }
                    self.ship_segment(g, first, seg)?;
                }
                if old {
                    let _ = fs::remove_file(self.dir.join(&seg.key));
                }
            }
            if old {
                let _ = fs::remove_file(self.dir.join(&snap.key));
                let _ = fs::remove_dir(self.dir.join(layout::generation_dir(g)));
            }
        }
        self.measure()
            .map_err(|e| PassError::Retry(format!("reading the spool: {e}")))?;
        {
            let mut s = self.shared.state.lock();
            if s.captured.is_some_and(|c| Some(c) <= s.shipped) {
                s.pending_since_ms = None;
            } else if s.captured.is_some() && due.is_none() {
                // Transactions came during this round, after its seal decision: `notify` does
                // not wake the shipper for them, so the next round comes soon (and schedules
                // their segment's seal).
                let soon = Duration::from_millis(self.config.seal_ms.clamp(1, 50));
                next = next.min(Instant::now() + soon);
            }
        }
        self.maybe_request_generation(newest, &inv);
        Ok(next)
    }

    /// Uploads a generation's snapshot unless the target already acknowledged it.
    fn ship_snapshot(&mut self, generation: u64, snap: &SpoolFile) -> Result<(), PassError> {
        if self.ack.generation == generation {
            return Ok(());
        }
        let path = self.dir.join(&snap.key);
        let hash =
            file_hash(&path).map_err(|e| PassError::Retry(format!("{}: {e}", path.display())))?;
        if generation < self.ack.generation {
            // A leftover of a generation shipped before: the conditional upload decides.
            return self.upload(&snap.key, &path, &hash);
        }
        self.check_owner(generation)?;
        self.upload(&snap.key, &path, &hash)?;
        self.ack = AckState {
            target: self.target_name(),
            generation,
            snapshot_hash: hash,
            segment: 0,
            seq: 0,
            placeholders: std::mem::take(&mut self.ack.placeholders),
        };
        self.save_ack()?;
        // Retention first: once the status says the generation is shipped, what retention
        // removes is gone (a caller waiting for "shipped" then sees the pruned target).
        self.after_new_generation(generation);
        self.shared.state.lock().shipped = Some((generation, 0));
        Ok(())
    }

    fn ship_segment(
        &mut self,
        generation: u64,
        first_seq: u64,
        seg: &SpoolFile,
    ) -> Result<(), PassError> {
        let path = self.dir.join(&seg.key);
        let hash =
            file_hash(&path).map_err(|e| PassError::Retry(format!("{}: {e}", path.display())))?;
        let last = segment_last_seq(&path, first_seq)
            .map_err(|e| PassError::Retry(format!("{}: {e}", path.display())))?;
        self.upload(&seg.key, &path, &hash)?;
        let before = self.ack.placeholders.len();
        self.ack.placeholders.retain(|(k, _)| *k != seg.key);
        let replaced = self.ack.placeholders.len() != before;
        if self.ack.generation == generation {
            self.ack.segment = first_seq;
            self.ack.seq = last;
        }
        if replaced || self.ack.generation == generation {
            self.save_ack()?;
        }
        let mut s = self.shared.state.lock();
        s.shipped = Some((generation, last));
        s.last_ship_ms = Some(crate::now_ms());
        Ok(())
    }

    /// Uploads the header of a segment (once per segment) before the sealed segment that names
    /// it as next, so that the target never holds a sealed segment whose successor is missing.
    fn ship_placeholder(&mut self, seg: &SpoolFile) -> Result<(), PassError> {
        if self.ack.placeholders.iter().any(|(k, _)| *k == seg.key) {
            return Ok(());
        }
        let path = self.dir.join(&seg.key);
        let retry = |e: io::Error| PassError::Retry(format!("{}: {e}", path.display()));
        let header_len = {
            let mut r = RecordReader::new(BufReader::new(File::open(&path).map_err(retry)?))
                .map_err(|e| retry(io::Error::other(e)))?;
            match r.next_record() {
                Ok(Some(_)) => r.offset(),
                _ => return Ok(()), // not even a header yet: next round
            }
        };
        let mut bytes = vec![0u8; header_len as usize];
        File::open(&path)
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(retry)?;
        let tmp = self.dir.join("ship.placeholder.tmp");
        fs::write(&tmp, &bytes).map_err(retry)?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let result = self.upload(&seg.key, &tmp, &hash);
        let _ = fs::remove_file(&tmp);
        if let Err(PassError::Conflict(message)) = result {
            // The whole segment may be there already (uploaded in an earlier round whose
            // acknowledgement this process no longer has): then no placeholder is needed.
            let full = file_hash(&path).map_err(retry)?;
            if self.target()?.content_hash(&seg.key)? == full {
                return Ok(());
            }
            return Err(PassError::Conflict(message));
        }
        result?;
        self.ack.placeholders.push((seg.key.clone(), hash));
        self.save_ack()
    }

    fn save_ack(&self) -> Result<(), PassError> {
        self.ack
            .save(&self.dir)
            .map_err(|e| PassError::Retry(format!("writing {SHIP_STATE_NAME}: {e}")))
    }

    /// Conditional upload; an existing object must be this very content.
    fn upload(&mut self, key: &str, path: &Path, hash: &str) -> Result<(), PassError> {
        let size = crate::file_size::len_at(path).unwrap_or(0);
        let name = self.target_name();
        let placeholder = self
            .ack
            .placeholders
            .iter()
            .find(|(k, _)| k == key)
            .cloned();
        let target = self.target()?;
        match target.put_file_if_absent(key, path)? {
            PutOutcome::Created => {}
            PutOutcome::Exists => {
                let remote = target.content_hash(key)?;
                let own_placeholder = placeholder
                    .as_ref()
                    .is_some_and(|(k, h)| k == key && *h == remote);
                if own_placeholder {
                    target.put_file(key, path)?;
                } else if remote != hash {
                    return Err(PassError::Conflict(format!(
                        "another writer uses {name}: {key} already exists there with different \
                         content. walstream never interleaves two writers on one prefix, so \
                         this database is not shipped (its spool keeps every transaction); give \
                         it its own prefix, or remove the other stream"
                    )));
                }
            }
        }
        let mut s = self.shared.state.lock();
        s.objects_uploaded += 1;
        s.bytes_uploaded += size;
        Ok(())
    }

    /// Before a generation's snapshot is uploaded: the target's newest generation must be one
    /// this spool shipped, or none.
    fn check_owner(&mut self, generation: u64) -> Result<(), PassError> {
        let name = self.target_name();
        let ack = self.ack.clone();
        let dir = self.dir.clone();
        let target = self.target()?;
        let remote = match crate::reader::inventory(target) {
            Ok(inv) => inv,
            Err(crate::reader::ReadError::Target(e)) => return Err(e.into()),
            Err(e) => return Err(PassError::Retry(e.to_string())),
        };
        let Some(newest) = remote
            .iter()
            .rev()
            .find(|g| g.snapshot.is_some())
            .map(|g| g.generation)
        else {
            return Ok(());
        };
        let conflict = |why: String| {
            Err(PassError::Conflict(format!(
                "another writer uses {name}: {why}. walstream never interleaves two writers on one \
                 prefix, so this database is not shipped (its spool keeps every transaction); give \
                 it its own prefix, or remove the other stream"
            )))
        };
        if newest > generation {
            return conflict(format!(
                "the prefix holds generation {newest}, newer than this database's generation {generation}"
            ));
        }
        if newest == generation {
            return Ok(()); // the conditional upload decides
        }
        if ack.generation == newest {
            let remote_hash = target.content_hash(&layout::snapshot_key(newest))?;
            if remote_hash == ack.snapshot_hash {
                return Ok(());
            }
        }
        let local = dir.join(layout::snapshot_key(newest));
        if let Ok(h) = file_hash(&local) {
            if target.content_hash(&layout::snapshot_key(newest))? == h {
                return Ok(());
            }
        }
        conflict(format!(
            "its newest generation {newest} was not shipped from this database"
        ))
    }

    /// Automatic retention once a new generation is in the target.
    fn after_new_generation(&mut self, generation: u64) {
        let keep = crate::prune::Keep {
            generations: self.config.keep_generations,
            days: self.config.keep_days,
        };
        if keep.generations.is_none() && keep.days.is_none() {
            return;
        }
        let Ok(target) = self.target() else { return };
        match crate::prune::prune(target, &keep, false) {
            Ok(report) => {
                self.shared.state.lock().objects_pruned += report.deleted.len() as u64;
            }
            Err(e) => self.shared.error(
                format!("automatic retention after generation {generation}: {e}"),
                false,
            ),
        }
    }

    /// Asks capture for a new generation when the newest one has grown long or old.
    fn maybe_request_generation(&mut self, newest: u64, inv: &SpoolInventory) {
        if self.requested_for == Some(newest) {
            return;
        }
        let seg_bytes: u64 = inv
            .get(&newest)
            .map_or(0, |(_, s)| s.values().map(|f| f.size).sum());
        let by_size = self.config.snapshot_bytes.filter(|&b| seg_bytes >= b).map(|b| {
            format!("scheduled snapshot: generation {newest} holds {seg_bytes} bytes of segments (limit {b})")
        });
        let by_age = self.config.snapshot_interval_ms.and_then(|ms| {
            let (g, since) = self.generation_seen?;
            (g == newest && since.elapsed() >= Duration::from_millis(ms)).then(|| {
                format!(
                    "scheduled snapshot: generation {newest} is older than {} s",
                    ms / 1000
                )
            })
        });
        if let Some(reason) = by_size.or(by_age) {
            self.requested_for = Some(newest);
            self.shared.state.lock().generation_requested = Some(reason.clone());
            *self.shared.new_generation.lock() = Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("48K"), Some(48 << 10));
        assert_eq!(parse_bytes("16M"), Some(16 << 20));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("1T"), Some(1 << 40));
        for bad in ["", "M", "12X", "-1", "1.5G"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ack_state_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let a = AckState {
            target: "s3://b/p".into(),
            generation: 3,
            snapshot_hash: "ab".into(),
            segment: 17,
            seq: 40,
            placeholders: vec![(
                "generations/0000000000000003/0000000000000029.wseg".into(),
                "cd".into(),
            )],
        };
        a.save(dir.path()).unwrap();
        assert_eq!(AckState::load(dir.path()), Some(a));
    }
}
