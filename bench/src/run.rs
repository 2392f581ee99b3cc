//! The worker (one workload, one mode, one process) and the driver that alternates them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::report;
use crate::workload::{self, Scale, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Plain SQLite in WAL mode.
    Plain,
    /// Through the walstream VFS (local target: the spool beside the database).
    Walstream,
    /// Plain SQLite with `litestream replicate` running to a local directory.
    Litestream,
    /// Through the walstream VFS with an S3 target (`Job::s3_target`): the spool beside the
    /// database, shipped by walstream's background shipper.
    WalstreamS3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub mode: Mode,
    pub workload: Workload,
    pub scale: Scale,
    pub dir: PathBuf,
    pub ext: PathBuf,
    pub litestream: Option<PathBuf>,
    /// Record the bytes each transaction appends to the stream (walstream mode only).
    pub bytes: bool,
    /// `s3://bucket/prefix` for `Mode::WalstreamS3`.
    #[serde(default)]
    pub s3_target: Option<String>,
    /// `WALSTREAM_SEAL_MS` for the worker (None: walstream's default).
    #[serde(default)]
    pub seal_ms: Option<u64>,
    /// The CLI, to run `walstream follow` into a replica beside the workload (walstream mode).
    #[serde(default)]
    pub follow_cli: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOut {
    pub secs: f64,
    pub commits: u64,
    pub fingerprint: i64,
    pub maxrss_kb: i64,
    pub close_secs: f64,
    /// walstream: transactions the stream gained during the timed body.
    pub stream_txns: Option<u64>,
    pub litestream: Option<LitestreamOut>,
    pub bytes: Option<TxnBytes>,
    pub ship: Option<ShipOut>,
    #[serde(default)]
    pub follow: Option<FollowOut>,
    pub error: Option<String>,
}

/// A `walstream follow` process keeping a replica beside the workload (`Job::follow_cli`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FollowOut {
    /// Time from the last commit until the follower's state file named the last transaction
    /// (None: not within the timeout).
    pub lag_ms: Option<f64>,
    /// The follower's CPU time (user + system) from its start to the end of the wait.
    pub cpu_secs: f64,
    /// The replica's fingerprint equals the primary's at the end.
    pub same: bool,
}

/// Shipping to S3 (`Mode::WalstreamS3`), from `walstream_status()`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShipOut {
    /// Time from the last commit until the shipper reported every transaction uploaded (None:
    /// not within the timeout).
    pub lag_ms: Option<f64>,
    /// Bytes the shipper uploaded from the start of the timed body until it caught up.
    pub bytes_uploaded_body: u64,
    /// Objects uploaded in the same time.
    pub objects_uploaded_body: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LitestreamOut {
    /// Time from the last commit until a replica file that restores to the final state was
    /// written (None: not within the timeout).
    pub lag_ms: Option<f64>,
    pub replica_bytes_body: u64,
    pub daemon_maxrss_kb: i64,
    pub daemon_cpu_secs: f64,
}

/// Per-transaction byte counts of the order-book body (walstream mode with `bytes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TxnBytes {
    pub fingerprint: i64,
    pub wal_pages: Vec<u64>,
    pub wal_pages_zstd: Vec<u64>,
    pub stream: Vec<u64>,
    pub stream_zstd: Vec<u64>,
    pub wal_pages_zstd_all: u64,
    pub stream_zstd_all: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Changesets {
    pub fingerprint: i64,
    pub raw: Vec<u64>,
    pub zstd: Vec<u64>,
    pub zstd_all: u64,
}

pub const ZSTD_LEVEL: i32 = 3;

pub fn zstd_len(b: &[u8]) -> u64 {
    zstd::bulk::compress(b, ZSTD_LEVEL).expect("zstd").len() as u64
}

// ---- the worker ----------------------------------------------------------------------------

fn load_extension(ext: &Path) {
    let conn = Connection::open_in_memory().unwrap();
    // SAFETY: loading walstream's own extension.
    unsafe {
        conn.load_extension_enable().unwrap();
        // The entry point by name: a copy of the library under another name still loads.
        conn.load_extension(ext, Some("sqlite3_walstream_init"))
            .unwrap();
        conn.load_extension_disable().unwrap();
    }
}

fn open(job: &Job, db: &Path) -> Connection {
    let target_param = match job.mode {
        Mode::Plain | Mode::Litestream => None,
        Mode::Walstream => Some(String::new()),
        Mode::WalstreamS3 => {
            let target = job
                .s3_target
                .as_deref()
                .expect("an S3 job names its target");
            Some(format!("&walstream_target={target}"))
        }
    };
    let conn = match target_param {
        None => Connection::open(db).unwrap(),
        Some(param) => {
            load_extension(&job.ext);
            let uri = format!("file:{}?vfs=walstream{param}", db.display());
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI;
            Connection::open_with_flags(uri, flags).unwrap()
        }
    };
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", job.workload.synchronous())
        .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

pub fn maxrss_kb() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss
    }
}

fn stream_seq(db: &Path) -> Option<u64> {
    use walstream::target::{self, TargetSpec};
    let t = target::open(&TargetSpec::default_for(db)).ok()?;
    let g = walstream::reader::latest_generation(t.as_ref()).ok()?;
    walstream::reader::last_committed_seq(t.as_ref(), &g).ok()
}

pub fn worker(job: &Job) -> WorkerOut {
    let db = job.dir.join("bench.db");
    let conn = open(job, &db);
    workload::setup(&conn, job.workload, &job.scale).unwrap();
    let setup_fp = workload::fingerprint(&conn, job.workload).unwrap();
    let seq_before = (job.mode == Mode::Walstream)
        .then(|| stream_seq(&db))
        .flatten();
    let mut ls = match job.mode {
        Mode::Litestream => Some(Litestream::start(job, &db, setup_fp)),
        _ => None,
    };
    let mut bytes = (job.bytes && job.mode == Mode::Walstream).then(|| StreamTap::new(&db));
    let commits = job.scale.commits(job.workload);
    let mut noop = |_: &Connection| {};
    let mut tap = |_: &Connection| {
        if let Some(b) = bytes.as_mut() {
            b.after_commit();
        }
    };
    let after: &mut dyn FnMut(&Connection) = if job.bytes { &mut tap } else { &mut noop };
    let ship_before = (job.mode == Mode::WalstreamS3).then(|| ship_status(&conn));
    let mut follower = job
        .follow_cli
        .as_ref()
        .filter(|_| job.mode == Mode::Walstream)
        .map(|cli| Follower::start(cli, job, &db));
    let t0 = Instant::now();
    let fp = workload::run(&conn, job.workload, &job.scale, after).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let last_commit = SystemTime::now();
    let mut out = WorkerOut {
        secs,
        commits,
        fingerprint: fp,
        ..Default::default()
    };
    if let Some(l) = ls.as_mut() {
        if job.workload != Workload::Read {
            out.litestream = Some(l.lag(fp, last_commit));
        }
    }
    if let Some(before) = seq_before {
        out.stream_txns = stream_seq(&db).map(|s| s - before);
    }
    if let Some(before) = ship_before {
        out.ship = Some(ship_lag(&conn, &before, t0 + Duration::from_secs_f64(secs)));
    }
    if let Some(f) = follower.take() {
        out.follow = Some(f.finish(&db, job.workload, fp, t0 + Duration::from_secs_f64(secs)));
    }
    out.bytes = bytes.map(|b| b.finish(fp));
    let t1 = Instant::now();
    drop(conn);
    out.close_secs = t1.elapsed().as_secs_f64();
    if let Some(l) = ls {
        let mut r = l.stop();
        if let Some(o) = out.litestream.as_mut() {
            r.lag_ms = o.lag_ms;
            r.replica_bytes_body = o.replica_bytes_body;
        }
        out.litestream = Some(r);
    }
    out.maxrss_kb = maxrss_kb();
    out
}

/// `walstream follow` into `replica.db` beside the database, polling every 10 ms.
struct Follower {
    child: std::process::Child,
    replica: PathBuf,
}

impl Follower {
    /// Starts the follower and waits until it has seeded the replica with the setup's state.
    fn start(cli: &Path, job: &Job, db: &Path) -> Self {
        let replica = job.dir.join("replica.db");
        let child = Command::new(cli)
            .arg("follow")
            .arg(format!("{}-walstream", db.display()))
            .arg(&replica)
            .args(["--interval-ms", "10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("walstream follow");
        let f = Follower { child, replica };
        let seq = stream_seq(db).unwrap_or(0);
        f.wait_for(seq, Instant::now() + Duration::from_secs(120));
        f
    }

    fn seq(&self) -> Option<u64> {
        let text = fs::read_to_string(format!("{}-follow", self.replica.display())).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["seq"].as_u64()
    }

    /// Polls the follower's state file every 2 ms until it names `seq`; false at `deadline`.
    fn wait_for(&self, seq: u64, deadline: Instant) -> bool {
        while self.seq().is_none_or(|s| s < seq) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn finish(mut self, db: &Path, w: Workload, fp: i64, last_commit: Instant) -> FollowOut {
        let last = stream_seq(db).unwrap_or(0);
        let caught_up = self.wait_for(last, Instant::now() + Duration::from_secs(120));
        let lag_ms = caught_up.then(|| last_commit.elapsed().as_secs_f64() * 1e3);
        let cpu_secs = cpu_secs(self.child.id()).unwrap_or(f64::NAN);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let same = Connection::open(&self.replica)
            .ok()
            .and_then(|c| workload::fingerprint(&c, w).ok())
            == Some(fp);
        FollowOut {
            lag_ms,
            cpu_secs,
            same,
        }
    }
}

/// User + system CPU seconds of a running process, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn ship_status(conn: &Connection) -> serde_json::Value {
    let s: String = conn
        .query_row("SELECT walstream_status()", [], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

/// Waits (polling every 2 ms, at most 120 s) until the shipper has uploaded every captured
/// transaction; the lag is counted from `last_commit`.
fn ship_lag(conn: &Connection, before: &serde_json::Value, last_commit: Instant) -> ShipOut {
    let field = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = ship_status(conn);
        let caught_up = !s["last_seq"].is_null()
            && s["shipped_seq"] == s["last_seq"]
            && s["shipped_generation"] == s["generation"]
            && field(&s, "lag_txns") == 0;
        if caught_up || Instant::now() > deadline {
            return ShipOut {
                lag_ms: caught_up.then(|| last_commit.elapsed().as_secs_f64() * 1e3),
                bytes_uploaded_body: field(&s, "bytes_uploaded")
                    .saturating_sub(field(before, "bytes_uploaded")),
                objects_uploaded_body: field(&s, "objects_uploaded")
                    .saturating_sub(field(before, "objects_uploaded")),
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads what each transaction appended to the stream's segments.
struct StreamTap {
    gen_root: PathBuf,
    read: BTreeMap<PathBuf, u64>,
    out: TxnBytes,
    all_pages: Vec<u8>,
    all_stream: Vec<u8>,
    /// Each segment's format version and page decoder (which keeps the segment's kept pages).
    decoders: BTreeMap<PathBuf, (u32, walstream::record::page::PageDecoder)>,
}

impl StreamTap {
    fn new(db: &Path) -> Self {
        let gen_root = PathBuf::from(format!("{}-walstream/generations", db.display()));
        let mut t = StreamTap {
            gen_root,
            read: BTreeMap::new(),
            out: TxnBytes::default(),
            all_pages: Vec::new(),
            all_stream: Vec::new(),
            decoders: BTreeMap::new(),
        };
        t.take_new();
        t
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut gens: Vec<PathBuf> = fs::read_dir(&self.gen_root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        gens.sort();
        let mut out = Vec::new();
        for g in gens {
            let mut segs: Vec<PathBuf> = fs::read_dir(&g)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "wseg"))
                        .collect()
                })
                .unwrap_or_default();
            segs.sort();
            out.extend(segs);
        }
        out
    }

    /// Bytes appended to any segment since the last call, and the page images of the `Page`
    /// records among them (decoded: format v2 stores pages compressed or as deltas).
    fn take_new(&mut self) -> (Vec<u8>, Vec<u8>) {
        use walstream::record::frame::{FileKind, RecordReader};
        use walstream::record::page::{PageDecoder, PAGE_BYTES_MAX};
        use walstream::record::pb::record::Body;
        let mut new = Vec::new();
        let mut pages = Vec::new();
        for seg in self.segments() {
            let from = self.read.get(&seg).copied().unwrap_or(0);
            let mut f = fs::File::open(&seg).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            self.read.insert(seg.clone(), buf.len() as u64);
            if buf.len() as u64 <= from {
                continue;
            }
            new.extend_from_slice(&buf[from as usize..]);
            let mut reader = if from == 0 {
                match RecordReader::new(&buf[..]) {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            } else {
                let version = self
                    .decoders
                    .get(&seg)
                    .map_or(walstream::record::FORMAT_VERSION, |d| d.0);
                RecordReader::resume(&buf[from as usize..], FileKind::Segment, version, from)
            };
            let version = reader.version();
            let (_, decoder) = self
                .decoders
                .entry(seg)
                .or_insert_with(|| (version, PageDecoder::new(version)));
            while let Ok(Some((_, r))) = reader.next_record() {
                if let Some(Body::Page(p)) = r.body {
                    pages.extend_from_slice(
                        decoder
                            .decode(&p, PAGE_BYTES_MAX)
                            .expect("the stream decodes"),
                    );
                }
            }
        }
        (new, pages)
    }

    fn after_commit(&mut self) {
        let (new, pages) = self.take_new();
        self.out.wal_pages.push(pages.len() as u64);
        self.out.wal_pages_zstd.push(zstd_len(&pages));
        self.out.stream.push(new.len() as u64);
        self.out.stream_zstd.push(zstd_len(&new));
        self.all_pages.extend_from_slice(&pages);
        self.all_stream.extend_from_slice(&new);
    }

    fn finish(mut self, fp: i64) -> TxnBytes {
        self.out.fingerprint = fp;
        self.out.wal_pages_zstd_all = zstd_len(&self.all_pages);
        self.out.stream_zstd_all = zstd_len(&self.all_stream);
        self.out
    }
}

/// `litestream replicate DB file:///DIR`, started before the timed body.
struct Litestream {
    bin: PathBuf,
    child: std::process::Child,
    replica: PathBuf,
    scratch: PathBuf,
    workload: Workload,
    body_start: SystemTime,
}

fn listing(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Bytes of Litestream's level-0 files (one per sync: what it ships as transactions arrive;
/// snapshots and compactions are written on their own schedules).
fn l0_bytes(files: &[(PathBuf, u64, SystemTime)], since: SystemTime) -> u64 {
    files
        .iter()
        .filter(|f| f.0.to_string_lossy().contains("/ltx/0/") && f.2 >= since)
        .map(|f| f.1)
        .sum()
}

impl Litestream {
    fn start(job: &Job, db: &Path, setup_fp: i64) -> Self {
        let bin = job.litestream.clone().expect("litestream binary");
        let replica = job.dir.join("litestream-replica");
        let scratch = job.dir.join("litestream-check");
        fs::create_dir_all(&replica).unwrap();
        fs::create_dir_all(&scratch).unwrap();
        let log = fs::File::create(job.dir.join("litestream.log")).unwrap();
        let child = Command::new(&bin)
            .arg("replicate")
            .arg(db)
            .arg(format!("file://{}", replica.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start litestream");
        let mut ls = Litestream {
            bin,
            child,
            replica,
            scratch,
            workload: job.workload,
            body_start: SystemTime::now(),
        };
        // Timing starts once the replica holds the set-up state.
        if ls.lag(setup_fp, SystemTime::now()).lag_ms.is_none() {
            eprintln!(
                "litestream did not replicate the initial state; see {}",
                job.dir.join("litestream.log").display()
            );
        }
        ls.body_start = SystemTime::now();
        ls
    }

    /// Waits until the replica restores to `fp`; the lag is the write time of the newest
    /// replica file at that point minus `since`.
    fn lag(&mut self, fp: i64, since: SystemTime) -> LitestreamOut {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last: Option<Vec<(PathBuf, u64, SystemTime)>> = None;
        let mut n = 0;
        while Instant::now() < deadline {
            let now = listing(&self.replica);
            if last.as_ref() != Some(&now) && !now.is_empty() {
                n += 1;
                let out = self.scratch.join(format!("check-{n}.db"));
                let ok = Command::new(&self.bin)
                    .arg("restore")
                    .arg("-o")
                    .arg(&out)
                    .arg(format!("file://{}", self.replica.display()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                let restored = ok
                    && Connection::open_with_flags(&out, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .ok()
                        .and_then(|c| workload::fingerprint(&c, self.workload).ok())
                        == Some(fp);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{suffix}", out.display()));
                }
                if restored {
                    let newest = now.iter().map(|f| f.2).max().unwrap_or(since);
                    let lag = newest.duration_since(since).unwrap_or_default();
                    let bytes = l0_bytes(&now, self.body_start);
                    return LitestreamOut {
                        lag_ms: Some(lag.as_secs_f64() * 1e3),
                        replica_bytes_body: bytes,
                        ..Default::default()
                    };
                }
                last = Some(now);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        LitestreamOut::default()
    }

    fn stop(self) -> LitestreamOut {
        let pid = self.child.id() as i32;
        // SAFETY: signalling and reaping our own child.
        let ru = unsafe {
            libc::kill(pid, libc::SIGTERM);
            let mut status = 0;
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::wait4(pid, &mut status, 0, &mut ru);
            ru
        };
        std::mem::forget(self.child);
        LitestreamOut {
            daemon_maxrss_kb: ru.ru_maxrss,
            daemon_cpu_secs: tv(ru.ru_utime) + tv(ru.ru_stime),
            ..Default::default()
        }
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

// ---- running children ---------------------------------------------------------------------

/// What a finished child process used.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub ok: bool,
    pub wall: f64,
    pub maxrss_kb: i64,
    /// User and system CPU time.
    #[allow(dead_code)]
    pub cpu_secs: f64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion and reports its wall time, peak RSS and CPU time (wait4).
pub fn measure(cmd: &mut Command) -> Usage {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
    let pid = child.id() as i32;
    // SAFETY: reaping our own child, whose handle is forgotten below.
    let (status, ru) = unsafe {
        let mut status = 0;
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut ru);
        (status, ru)
    };
    let wall = t0.elapsed().as_secs_f64();
    std::mem::forget(child);
    stderr.push_str(&err_thread.join().unwrap_or_default());
    Usage {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall,
        maxrss_kb: ru.ru_maxrss,
        cpu_secs: tv(ru.ru_utime) + tv(ru.ru_stime),
        stdout,
        stderr,
    }
}

// ---- the driver ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub reps: usize,
    pub out: Option<PathBuf>,
    pub ext: PathBuf,
    pub cli: PathBuf,
    pub litestream: Option<PathBuf>,
    pub litestream_missing: Option<String>,
    pub session_bin: Option<PathBuf>,
    pub session_missing: Option<String>,
    pub work: PathBuf,
    pub only: Option<String>,
    /// `s3://bucket` of a local S3 server (credentials and endpoint from the AWS environment).
    pub s3_bucket: Option<String>,
    pub s3_missing: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            reps: 5,
            out: None,
            ext: PathBuf::from("target/release/libwalstream.so"),
            cli: PathBuf::from("target/release/walstream"),
            litestream: None,
            litestream_missing: None,
            session_bin: None,
            session_missing: None,
            work: PathBuf::from("target/bench-work"),
            only: None,
            s3_bucket: None,
            s3_missing: None,
        }
    }
}

pub struct Driver {
    pub opts: Options,
    pub scale: Scale,
    exe: PathBuf,
    counter: u64,
}

impl Driver {
    fn fresh_dir(&mut self, name: &str) -> PathBuf {
        self.counter += 1;
        let d = self.opts.work.join(format!("{:04}-{name}", self.counter));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn job(&mut self, mode: Mode, workload: Workload, scale: Scale, bytes: bool) -> Job {
        let dir = self.fresh_dir(&format!("{workload:?}-{mode:?}"));
        Job {
            mode,
            workload,
            scale,
            dir,
            ext: self.opts.ext.clone(),
            litestream: self.opts.litestream.clone(),
            bytes,
            s3_target: (mode == Mode::WalstreamS3).then(|| {
                let bucket = self.opts.s3_bucket.as_deref().unwrap_or("none");
                format!(
                    "s3://{bucket}/bench-{}-{}",
                    std::process::id(),
                    self.counter
                )
            }),
            seal_ms: None,
            follow_cli: None,
        }
    }

    pub fn worker_cmd(&self, job: &Job) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("worker").arg(serde_json::to_string(job).unwrap());
        if let Some(ms) = job.seal_ms {
            c.env("WALSTREAM_SEAL_MS", ms.to_string());
        }
        c
    }

    /// Runs one worker; returns its result and its process usage.
    pub fn run_worker(&self, job: &Job) -> (WorkerOut, Usage) {
        let u = measure(&mut self.worker_cmd(job));
        let out = if u.ok {
            serde_json::from_str(u.stdout.trim()).unwrap_or_else(|e| WorkerOut {
                error: Some(format!("bad worker output: {e}")),
                ..Default::default()
            })
        } else {
            WorkerOut {
                error: Some(format!("worker failed: {}", u.stderr.trim())),
                ..Default::default()
            }
        };
        (out, u)
    }

    pub fn modes(&self) -> Vec<Mode> {
        let mut m = vec![Mode::Plain, Mode::Walstream];
        if self.opts.litestream.is_some() {
            m.push(Mode::Litestream);
        }
        m
    }
}

/// Results of the whole run, handed to the report.
#[derive(Default)]
pub struct Results {
    /// workload -> mode -> one result per repetition.
    pub timed: BTreeMap<String, BTreeMap<String, Vec<WorkerOut>>>,
    pub restore_small: Vec<BTreeMap<String, f64>>,
    pub big: Option<report::Big>,
    pub syscalls: Option<report::Syscalls>,
    pub bytes: Option<report::BytesResult>,
    pub profile: Option<report::Profile>,
    /// (workload, WALSTREAM_SEAL_MS) -> (plain, walstream with an S3 target) per repetition.
    pub ship: report::ShipRuns,
    /// workload -> walstream runs with a follower beside them.
    pub follow: BTreeMap<String, Vec<WorkerOut>>,
    pub errors: Vec<String>,
    pub elapsed_secs: f64,
}

pub fn driver(opts: Options) -> i32 {
    let t_start = Instant::now();
    let scale = if opts.quick {
        Scale::quick()
    } else {
        Scale::full()
    };
    let _ = fs::remove_dir_all(&opts.work);
    fs::create_dir_all(&opts.work).unwrap();
    let opts = Options {
        ext: fs::canonicalize(&opts.ext).expect("--ext: build the extension first (make ext)"),
        cli: fs::canonicalize(&opts.cli).expect("--cli: build the CLI first (make cli)"),
        work: fs::canonicalize(&opts.work).unwrap(),
        ..opts
    };
    let mut d = Driver {
        opts,
        scale,
        exe: std::env::current_exe().unwrap(),
        counter: 0,
    };
    let mut res = Results::default();
    let only = d.opts.only.clone();
    let want = |name: &str| d_only(&only, name);

    // 1. Commit overhead and Litestream, alternating.
    if want("overhead") {
        let workloads = [
            Workload::Txn1Normal,
            Workload::Txn1Full,
            Workload::Txn100,
            Workload::Bulk,
            Workload::Read,
            Workload::OrderBook,
        ];
        for rep in 0..d.opts.reps {
            let mut restore_times = BTreeMap::new();
            for w in workloads {
                let mut modes = d.modes();
                let k = rep % modes.len();
                modes.rotate_left(k);
                for mode in modes {
                    let job = d.job(mode, w, scale, false);
                    eprintln!("rep {}/{} {:?} {:?}", rep + 1, d.opts.reps, w, mode);
                    let (out, _) = d.run_worker(&job);
                    if let Some(e) = &out.error {
                        res.errors.push(format!("{w:?} {mode:?}: {e}"));
                    }
                    if w == Workload::OrderBook && out.error.is_none() {
                        restore_times.extend(small_restores(&d, &job));
                    }
                    res.timed
                        .entry(format!("{w:?}"))
                        .or_default()
                        .entry(format!("{mode:?}"))
                        .or_default()
                        .push(out);
                    let _ = fs::remove_dir_all(&job.dir);
                }
            }
            res.restore_small.push(restore_times);
        }
    }

    // 1b. Shipping to a local S3 server: the writer's time against plain SQLite, and the lag.
    if want("ship") && d.opts.s3_bucket.is_some() {
        res.ship = crate::report::measure_ship(&mut d);
        for (w, runs) in &res.ship {
            for o in runs.iter().flat_map(|(p, x)| [p, x]) {
                if let Some(e) = &o.error {
                    res.errors.push(format!("ship {w:?}: {e}"));
                }
            }
        }
    }
    // 1c. A follower keeping a replica beside the workload: its lag and its CPU.
    if want("follow") {
        res.follow = crate::report::measure_follow(&mut d);
        for (w, runs) in &res.follow {
            for e in runs.iter().filter_map(|o| o.error.as_ref()) {
                res.errors.push(format!("follow {w}: {e}"));
            }
        }
    }
    // 2. Bytes per transaction on the order book.
    if want("bytes") {
        res.bytes = Some(crate::report::measure_bytes(&mut d));
    }
    // 3. fsyncs and syscalls per commit (strace).
    if want("syscalls") {
        res.syscalls = crate::report::measure_syscalls(&mut d, &mut res.errors);
    }
    // 4. The large database: RSS, restore against cp, verify against BLAKE3.
    if want("big") {
        res.big = crate::report::measure_big(&mut d, &mut res.errors);
    }
    // 5. Instruction profile (callgrind).
    if want("profile") {
        res.profile = crate::report::measure_profile(&mut d, &mut res.errors);
    }
    res.elapsed_secs = t_start.elapsed().as_secs_f64();
    let md = report::render(&d, &res);
    match &d.opts.out {
        Some(path) => {
            let kept = fs::read_to_string(path)
                .ok()
                .and_then(|s| report::kept_analysis(&s));
            let full = format!("{md}{}", kept.unwrap_or_else(report::default_analysis));
            fs::write(path, full).unwrap();
            eprintln!("wrote {}", path.display());
        }
        None => print!("{md}"),
    }
    let _ = fs::remove_dir_all(&d.opts.work);
    for e in &res.errors {
        eprintln!("error: {e}");
    }
    0
}

fn d_only(only: &Option<String>, name: &str) -> bool {
    only.as_ref()
        .is_none_or(|o| o.split(',').any(|x| x == name))
}

/// After an order-book run: restore its replica (walstream or Litestream), or copy the
/// database (plain), timed. Returns `mode -> seconds`.
fn small_restores(d: &Driver, job: &Job) -> BTreeMap<String, f64> {
    let db = job.dir.join("bench.db");
    let out = job.dir.join("restored.db");
    let mut m = BTreeMap::new();
    let u = match job.mode {
        Mode::Plain => measure(Command::new("sh").arg("-c").arg(format!(
            "cp '{}' '{}' && sync '{}'",
            db.display(),
            out.display(),
            out.display()
        ))),
        Mode::Walstream => measure(
            Command::new(&d.opts.cli)
                .arg("restore")
                .arg(format!("{}-walstream", db.display()))
                .arg("-o")
                .arg(&out),
        ),
        // Not restored: its spool holds the same stream as the local-target run's.
        Mode::WalstreamS3 => return m,
        Mode::Litestream => measure(
            Command::new(d.opts.litestream.as_ref().unwrap())
                .arg("restore")
                .arg("-o")
                .arg(&out)
                .arg(format!(
                    "file://{}",
                    job.dir.join("litestream-replica").display()
                )),
        ),
    };
    if u.ok {
        m.insert(format!("{:?}", job.mode), u.wall);
    }
    m
}
