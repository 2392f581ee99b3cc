//! The measurements that are not plain alternating timings (bytes, syscalls, the large
//! database, the instruction profile) and the Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::run::{
    measure, Changesets, Driver, Mode, Results, ShipOut, TxnBytes, WorkerOut, ZSTD_LEVEL,
};
use crate::workload::{Scale, Workload};

pub const ANALYSIS_MARKER: &str =
    "<!-- Everything below this line is kept by `make bench`; edit it by hand. -->";

// ---- statistics ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stat(v: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

fn ratio_cell(s: Option<Stat>) -> String {
    match s {
        Some(s) => format!("**{:.3}×** [{:.3}–{:.3}]", s.median, s.min, s.max),
        None => "–".into(),
    }
}

fn num_cell(s: Option<Stat>, digits: usize, unit: &str) -> String {
    match s {
        Some(s) => format!(
            "{:.*}{unit} [{:.*}–{:.*}]",
            digits, s.median, digits, s.min, digits, s.max
        ),
        None => "–".into(),
    }
}

/// " (N runs: WHAT)" after a cell, or nothing when no run is concerned.
fn runs_note(n: usize, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} runs: {what})")
    }
}

fn mib(kb: i64) -> f64 {
    kb as f64 / 1024.0
}

// ---- shipping to S3 -------------------------------------------------------------------------

/// Workloads of the S3 section: small, medium and order-book transactions.
pub const SHIP_WORKLOADS: [Workload; 3] =
    [Workload::Txn1Normal, Workload::Txn100, Workload::OrderBook];

/// `WALSTREAM_SEAL_MS` settings of the S3 section: walstream's default (10 ms) and one second
/// (Litestream's sync interval). From format v4 a new segment continues the page bases of the
/// sealed one (`KeptContinued`), so the interval trades lag for objects more than for bytes.
pub const SHIP_SEAL_MS: [Option<u64>; 2] = [None, Some(1000)];

pub type ShipRuns = BTreeMap<(String, Option<u64>), Vec<(WorkerOut, WorkerOut)>>;

/// Plain SQLite and walstream with an S3 target, alternating, `reps` times per workload and
/// seal interval.
pub fn measure_ship(d: &mut Driver) -> ShipRuns {
    let mut out = ShipRuns::new();
    for rep in 0..d.opts.reps {
        for (w, seal_ms) in SHIP_WORKLOADS
            .into_iter()
            .flat_map(|w| SHIP_SEAL_MS.map(|s| (w, s)))
        {
            let mut modes = [Mode::Plain, Mode::WalstreamS3];
            modes.rotate_left(rep % 2);
            let mut plain = WorkerOut::default();
            let mut s3 = WorkerOut::default();
            for mode in modes {
                eprintln!(
                    "ship rep {}/{} {w:?} {mode:?} seal {seal_ms:?}",
                    rep + 1,
                    d.opts.reps
                );
                let mut job = d.job(mode, w, d.scale, false);
                job.seal_ms = seal_ms;
                let (o, _) = d.run_worker(&job);
                let _ = fs::remove_dir_all(&job.dir);
                match mode {
                    Mode::Plain => plain = o,
                    _ => s3 = o,
                }
            }
            out.entry((format!("{w:?}"), seal_ms))
                .or_default()
                .push((plain, s3));
        }
    }
    out
}

fn render_ship(d: &Driver, res: &Results, s: &mut String) {
    let _ = writeln!(s, "## Shipping to S3 (a local SeaweedFS on 127.0.0.1)\n");
    let Some(_) = d.opts.s3_bucket.as_ref().filter(|_| !res.ship.is_empty()) else {
        let why = d
            .opts
            .s3_missing
            .clone()
            .unwrap_or_else(|| "not asked for (--s3-bucket)".into());
        let _ = writeln!(s, "Not measured: {why}.\n");
        return;
    };
    let _ = writeln!(
        s,
        "The same workloads with `walstream_target=s3://...` (the spool beside the database, \
         uploaded by walstream's background shipper thread in the host process), alternating with \
         plain SQLite. Writer time ÷ plain: the application's time, shipper included (it shares the \
         2 cores). Lag: from the last commit until `walstream_status()` reports every transaction \
         uploaded (polled every 2 ms). Uploaded: bytes the shipper sent during the body and the wait, \
         ÷ transactions. The shipper uploads a segment once it is sealed, and seals the active segment \
         once its oldest transaction waited `WALSTREAM_SEAL_MS` (docs/S3.md); from format v4 a new \
         segment continues the page bases of the one sealed before it (`KeptContinued`), so a short \
         interval costs objects rather than bytes (before v4, each segment started its bases afresh): \
         measured at walstream's default and at one second (Litestream's interval).\n"
    );
    let _ = writeln!(
        s,
        "| workload | `WALSTREAM_SEAL_MS` | writer time ÷ plain | lag after the last commit, ms | uploaded bytes per txn | objects uploaded per txn |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (w, seal_ms) in SHIP_WORKLOADS
        .into_iter()
        .flat_map(|w| SHIP_SEAL_MS.map(|s| (w, s)))
    {
        let Some(runs) = res.ship.get(&(format!("{w:?}"), seal_ms)) else {
            continue;
        };
        let ok: Vec<&(WorkerOut, WorkerOut)> = runs
            .iter()
            .filter(|(p, x)| p.error.is_none() && x.error.is_none())
            .collect();
        let ratio: Vec<f64> = ok.iter().map(|(p, x)| x.secs / p.secs).collect();
        let ship: Vec<(&ShipOut, u64)> = ok
            .iter()
            .filter_map(|(_, x)| Some((x.ship.as_ref()?, x.commits.max(1))))
            .collect();
        let lag: Vec<f64> = ship.iter().filter_map(|(o, _)| o.lag_ms).collect();
        let late = ship.iter().filter(|(o, _)| o.lag_ms.is_none()).count();
        let bytes: Vec<f64> = ship
            .iter()
            .map(|(o, n)| o.bytes_uploaded_body as f64 / *n as f64)
            .collect();
        let objects: Vec<f64> = ship
            .iter()
            .map(|(o, n)| o.objects_uploaded_body as f64 / *n as f64)
            .collect();
        let failed = runs.len() - ok.len();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}{}{} | {} | {} |",
            w.label(),
            seal_ms.map_or("10 (default)".to_string(), |ms| ms.to_string()),
            ratio_cell(stat(&ratio)),
            num_cell(stat(&lag), 0, ""),
            runs_note(late, "not within 120 s"),
            runs_note(failed, "failed, see the errors below"),
            num_cell(stat(&bytes), 0, ""),
            num_cell(stat(&objects), 3, ""),
        );
    }
    let _ = writeln!(s);
}

// ---- following a live replica ---------------------------------------------------------------

const FOLLOW_WORKLOADS: [Workload; 2] = [Workload::Txn1Normal, Workload::OrderBook];

pub fn measure_follow(d: &mut Driver) -> BTreeMap<String, Vec<WorkerOut>> {
    let mut out: BTreeMap<String, Vec<WorkerOut>> = BTreeMap::new();
    for rep in 0..d.opts.reps {
        for w in FOLLOW_WORKLOADS {
            eprintln!("follow rep {}/{} {w:?}", rep + 1, d.opts.reps);
            let mut job = d.job(Mode::Walstream, w, d.scale, false);
            job.follow_cli = Some(d.opts.cli.clone());
            let (o, _) = d.run_worker(&job);
            let _ = fs::remove_dir_all(&job.dir);
            out.entry(format!("{w:?}")).or_default().push(o);
        }
    }
    out
}

fn render_follow(res: &Results, s: &mut String) {
    let _ = writeln!(
        s,
        "## Following a live replica
"
    );
    if res.follow.is_empty() {
        let _ = writeln!(s, "Not measured (`--only` left it out).\n");
        return;
    }
    let _ = writeln!(
        s,
        "`walstream follow TARGET replica.db --interval-ms 10` runs beside the workload (walstream, \
         local target), from the setup's state on. Lag: from the last commit until the follower's \
         state file names the last transaction (polled every 2 ms). Follower CPU: its user + system \
         time over the whole run, per transaction and as a share of the writer's time (the two \
         share the 2 cores). The replica's content equals the primary's at the end in every run \
         marked so.\n"
    );
    let _ = writeln!(
        s,
        "| workload | txns | lag after the last commit, ms | follower CPU per txn, µs | follower CPU ÷ writer time | replica equals primary |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for w in FOLLOW_WORKLOADS {
        let Some(runs) = res.follow.get(&format!("{w:?}")) else {
            continue;
        };
        let ok: Vec<(&WorkerOut, &crate::run::FollowOut)> = runs
            .iter()
            .filter(|o| o.error.is_none())
            .filter_map(|o| Some((o, o.follow.as_ref()?)))
            .collect();
        let lag: Vec<f64> = ok.iter().filter_map(|(_, f)| f.lag_ms).collect();
        let late = ok.iter().filter(|(_, f)| f.lag_ms.is_none()).count();
        let per_txn: Vec<f64> = ok
            .iter()
            .map(|(o, f)| f.cpu_secs * 1e6 / o.commits.max(1) as f64)
            .collect();
        let share: Vec<f64> = ok.iter().map(|(o, f)| f.cpu_secs / o.secs).collect();
        let same = ok.iter().filter(|(_, f)| f.same).count();
        let commits = ok.first().map_or(0, |(o, _)| o.commits);
        let _ = writeln!(
            s,
            "| {} | {commits} | {}{}{} | {} | {} | {same} of {} runs |",
            w.label(),
            num_cell(stat(&lag), 0, ""),
            runs_note(late, "not within 120 s"),
            runs_note(runs.len() - ok.len(), "failed, see the errors below"),
            num_cell(stat(&per_txn), 0, ""),
            num_cell(stat(&share), 2, ""),
            runs.len(),
        );
    }
    let _ = writeln!(s);
}

// ---- bytes per transaction ------------------------------------------------------------------

/// The order book's bytes per transaction, and the changesets of the same transactions or why
/// they were not measured.
pub type BytesResult = (TxnBytes, Option<Changesets>, Option<String>);

pub fn measure_bytes(d: &mut Driver) -> BytesResult {
    eprintln!("bytes per transaction (order book)");
    let job = d.job(Mode::Walstream, Workload::OrderBook, d.scale, true);
    let (out, _) = d.run_worker(&job);
    let _ = fs::remove_dir_all(&job.dir);
    let bytes = out.bytes.unwrap_or_default();
    let (cs, why) = match (d.opts.session_bin.clone(), d.opts.session_missing.clone()) {
        (Some(bin), _) => {
            let job = d.job(Mode::Plain, Workload::OrderBook, d.scale, false);
            let u = measure(
                Command::new(&bin)
                    .arg("changesets")
                    .arg(serde_json::to_string(&job).unwrap()),
            );
            let _ = fs::remove_dir_all(&job.dir);
            match serde_json::from_str::<Changesets>(u.stdout.trim()) {
                Ok(c) if c.fingerprint == bytes.fingerprint => (Some(c), None),
                Ok(c) => (
                    None,
                    Some(format!(
                        "the session build made other transactions (fingerprint {} against {})",
                        c.fingerprint, bytes.fingerprint
                    )),
                ),
                Err(e) => (
                    None,
                    Some(format!(
                        "the session build failed: {e}: {}",
                        u.stderr.trim()
                    )),
                ),
            }
        }
        (None, why) => (None, Some(why.unwrap_or_else(|| "no session build".into()))),
    };
    (bytes, cs, why)
}

// ---- syscalls -------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct Syscalls {
    /// (workload, mode) -> syscall -> calls per commit.
    pub per_commit: BTreeMap<(String, String), BTreeMap<String, f64>>,
    pub counts: (u64, u64),
    pub error: Option<String>,
}

fn parse_strace_summary(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.len() < 5 || t[0].starts_with('%') || t[0].starts_with('-') {
            continue;
        }
        let name = t[t.len() - 1];
        if name == "total" {
            continue;
        }
        if let Ok(calls) = t[3].parse::<u64>() {
            m.insert(name.to_string(), calls);
        }
    }
    m
}

fn scaled(base: Scale, w: Workload, n: u64) -> Scale {
    let mut s = base;
    match w {
        Workload::Txn1Normal => s.txn1 = n,
        Workload::Txn1Full => s.txn1_full = n,
        Workload::Txn100 => s.txn100 = n,
        Workload::OrderBook => s.orderbook_txns = n,
        Workload::Read => {
            s.reads = n;
            s.read_rows = 20_000;
        }
        _ => {}
    }
    s
}

pub fn measure_syscalls(d: &mut Driver, errors: &mut Vec<String>) -> Option<Syscalls> {
    let strace = Path::new("/usr/bin/strace");
    if !strace.exists() {
        return Some(Syscalls {
            error: Some("strace is not installed".into()),
            ..Default::default()
        });
    }
    let (n1, n2) = (100u64, 300u64);
    let mut out = Syscalls {
        counts: (n1, n2),
        ..Default::default()
    };
    for w in [
        Workload::Txn1Normal,
        Workload::Txn1Full,
        Workload::Txn100,
        Workload::OrderBook,
    ] {
        for mode in [Mode::Plain, Mode::Walstream] {
            eprintln!("strace {w:?} {mode:?}");
            let mut calls = Vec::new();
            for n in [n1, n2] {
                let job = d.job(mode, w, scaled(d.scale, w, n), false);
                let file = job.dir.join("strace.txt");
                let mut c = Command::new(strace);
                c.arg("-f").arg("-c").arg("-o").arg(&file).arg("--").args(
                    std::iter::once(d.worker_cmd(&job).get_program().to_os_string())
                        .chain(d.worker_cmd(&job).get_args().map(|a| a.to_os_string())),
                );
                let u = measure(&mut c);
                if !u.ok {
                    errors.push(format!("strace {w:?} {mode:?}: {}", u.stderr.trim()));
                }
                calls.push(parse_strace_summary(
                    &fs::read_to_string(&file).unwrap_or_default(),
                ));
                let _ = fs::remove_dir_all(&job.dir);
            }
            let names: std::collections::BTreeSet<&String> =
                calls[0].keys().chain(calls[1].keys()).collect();
            let per: BTreeMap<String, f64> = names
                .into_iter()
                .map(|k| {
                    let a = *calls[0].get(k).unwrap_or(&0) as f64;
                    let b = *calls[1].get(k).unwrap_or(&0) as f64;
                    (k.clone(), (b - a) / (n2 - n1) as f64)
                })
                .collect();
            out.per_commit
                .insert((format!("{w:?}"), format!("{mode:?}")), per);
        }
    }
    Some(out)
}

// ---- the large database ---------------------------------------------------------------------

#[derive(Debug, Default)]
pub struct Big {
    pub db_bytes: u64,
    pub stream_bytes: u64,
    pub host_rss_kb: BTreeMap<String, i64>,
    pub build_secs: BTreeMap<String, f64>,
    pub restore_secs: Vec<f64>,
    pub restore_rss_kb: Vec<i64>,
    pub cp_secs: Vec<f64>,
    pub verify_secs: Vec<f64>,
    pub verify_rss_kb: Vec<i64>,
    pub blake3_secs: Vec<f64>,
    pub stream_ok: bool,
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn stream_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wseg" || x == "wsnap") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn measure_big(d: &mut Driver, errors: &mut Vec<String>) -> Option<Big> {
    let mut big = Big::default();
    // Plain first (then deleted), so that at most one copy of the database is on disk with
    // its stream, a restore and a copy.
    let mut kept = None;
    for mode in [Mode::Plain, Mode::Walstream] {
        eprintln!("large database ({} MiB) {mode:?}", d.scale.big_bytes >> 20);
        let job = d.job(mode, Workload::Big, d.scale, false);
        let (out, u) = d.run_worker(&job);
        if let Some(e) = out.error {
            errors.push(format!("large database {mode:?}: {e}"));
            let _ = fs::remove_dir_all(&job.dir);
            return None;
        }
        big.host_rss_kb.insert(format!("{mode:?}"), u.maxrss_kb);
        big.build_secs.insert(format!("{mode:?}"), out.secs);
        if mode == Mode::Walstream {
            big.stream_ok = out.stream_txns == Some(out.commits);
            kept = Some(job);
        } else {
            let _ = fs::remove_dir_all(&job.dir);
        }
    }
    let job = kept?;
    let db = job.dir.join("bench.db");
    let spool = PathBuf::from(format!("{}-walstream", db.display()));
    big.db_bytes = fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    big.stream_bytes = stream_files(&spool)
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let out = job.dir.join("restored.db");
    let copy = job.dir.join("copy.db");
    for rep in 0..d.opts.reps {
        let mut steps = vec![0, 1, 2, 3];
        steps.rotate_left(rep % 4);
        for s in steps {
            match s {
                0 => {
                    eprintln!("restore {}/{}", rep + 1, d.opts.reps);
                    let u = measure(
                        Command::new(&d.opts.cli)
                            .arg("restore")
                            .arg(&spool)
                            .arg("-o")
                            .arg(&out),
                    );
                    if u.ok {
                        big.restore_secs.push(u.wall);
                        big.restore_rss_kb.push(u.maxrss_kb);
                    } else {
                        errors.push(format!("restore: {}", u.stderr.trim()));
                    }
                    let _ = fs::remove_file(&out);
                }
                1 => {
                    let u = measure(Command::new("sh").arg("-c").arg(format!(
                        "cp '{}' '{}' && sync '{}'",
                        db.display(),
                        copy.display(),
                        copy.display()
                    )));
                    if u.ok {
                        big.cp_secs.push(u.wall);
                    }
                    let _ = fs::remove_file(&copy);
                }
                2 => {
                    let u = measure(Command::new(&d.opts.cli).arg("verify").arg(&spool));
                    if u.ok {
                        big.verify_secs.push(u.wall);
                        big.verify_rss_kb.push(u.maxrss_kb);
                    } else {
                        errors.push(format!("verify: {}", u.stderr.trim()));
                    }
                }
                _ => {
                    let t0 = Instant::now();
                    let mut h = blake3::Hasher::new();
                    let mut buf = vec![0u8; 1 << 20];
                    for p in stream_files(&spool) {
                        let mut f = fs::File::open(p).unwrap();
                        loop {
                            let n = f.read(&mut buf).unwrap();
                            if n == 0 {
                                break;
                            }
                            h.update(&buf[..n]);
                        }
                    }
                    std::hint::black_box(h.finalize());
                    big.blake3_secs.push(t0.elapsed().as_secs_f64());
                }
            }
        }
    }
    let _ = dir_bytes(&job.dir);
    let _ = fs::remove_dir_all(&job.dir);
    Some(big)
}

// ---- instruction profile --------------------------------------------------------------------

/// (instructions, function) lines of a callgrind profile, the largest first.
pub type ProfileLines = Vec<(u64, String)>;

#[derive(Debug, Default)]
pub struct Profile {
    /// workload -> mode -> instructions per commit (user space, callgrind).
    pub ir_per_commit: BTreeMap<String, BTreeMap<String, f64>>,
    /// workload -> (inclusive lines, exclusive lines) of the walstream run.
    pub top: BTreeMap<String, (ProfileLines, ProfileLines)>,
    /// restore/verify -> instructions per byte of database.
    pub per_byte: BTreeMap<String, f64>,
    /// Totals for the `top` tables that are not per-transaction ones.
    pub totals: BTreeMap<String, f64>,
    pub error: Option<String>,
}

fn callgrind_total(file: &Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn annotate(file: &Path, inclusive: bool) -> Vec<(u64, String)> {
    let out = Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .arg("--auto=no")
        .arg("--threshold=99")
        .arg(file)
        .output();
    let Ok(out) = out else { return Vec::new() };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut best: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        // "1,234,567 (12.34%)  file:function [object]"
        let Some((num, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(ir) = num.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, rest)) = rest.split_once(')') else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with("PROGRAM TOTALS") {
            continue;
        }
        let rest = rest.split(" [").next().unwrap_or(rest);
        let (file, func) = rest.split_once(':').unwrap_or(("", rest));
        // Assembly without symbols (BLAKE3's compression functions): name the source file.
        let name = if func.starts_with("0x") || func.is_empty() {
            format!("{} ({func})", file.rsplit('/').next().unwrap_or(file))
        } else {
            func.to_string()
        };
        let e = best.entry(name).or_insert(0);
        *e = (*e).max(ir);
    }
    let mut rows: Vec<(u64, String)> = best.into_iter().map(|(f, ir)| (ir, f)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    rows
}

pub fn measure_profile(d: &mut Driver, errors: &mut Vec<String>) -> Option<Profile> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Some(Profile {
            error: Some("valgrind is not installed".into()),
            ..Default::default()
        });
    }
    let mut p = Profile::default();
    for (w, n) in [
        (Workload::Txn1Normal, 300u64),
        (Workload::OrderBook, 30),
        (Workload::Txn100, 30),
        (Workload::Read, 3000),
    ] {
        for mode in [Mode::Plain, Mode::Walstream] {
            eprintln!("callgrind {w:?} {mode:?}");
            let job = d.job(mode, w, scaled(d.scale, w, n), false);
            let file = job.dir.join("callgrind.out");
            let worker = d.worker_cmd(&job);
            let u = measure(
                Command::new("valgrind")
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", file.display()))
                    .arg("--toggle-collect=*workload::run*")
                    .arg(worker.get_program())
                    .args(worker.get_args()),
            );
            if !u.ok {
                errors.push(format!(
                    "callgrind {w:?} {mode:?}: {}",
                    u.stderr.lines().last().unwrap_or("")
                ));
            }
            if let Some(total) = callgrind_total(&file) {
                p.ir_per_commit
                    .entry(format!("{w:?}"))
                    .or_default()
                    .insert(format!("{mode:?}"), total as f64 / n as f64);
            }
            if mode == Mode::Walstream {
                let keep = |rows: Vec<(u64, String)>| -> Vec<(u64, String)> {
                    rows.into_iter().map(|(ir, f)| (ir / n, f)).collect()
                };
                let inc = keep(annotate(&file, true));
                let exc = keep(annotate(&file, false));
                p.top.insert(format!("{w:?}"), (inc, exc));
            }
            let _ = fs::remove_dir_all(&job.dir);
        }
    }
    // Restore and verify of a stream of 48 MB of 10 MB transactions.
    let mut scale = d.scale;
    scale.big_bytes = 48 << 20;
    let job = d.job(Mode::Walstream, Workload::Big, scale, false);
    eprintln!("callgrind restore/verify");
    let (out, _) = d.run_worker(&job);
    if out.error.is_none() {
        let db = job.dir.join("bench.db");
        let db_bytes = fs::metadata(&db).map(|m| m.len()).unwrap_or(1);
        let spool = format!("{}-walstream", db.display());
        for (name, args) in [
            (
                "restore",
                vec![
                    "restore".to_string(),
                    spool.clone(),
                    "-o".into(),
                    job.dir.join("r.db").display().to_string(),
                ],
            ),
            ("verify", vec!["verify".to_string(), spool.clone()]),
        ] {
            let file = job.dir.join(format!("callgrind-{name}.out"));
            let u = measure(
                Command::new("valgrind")
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", file.display()))
                    .arg(&d.opts.cli)
                    .args(&args),
            );
            if !u.ok {
                errors.push(format!(
                    "callgrind {name}: {}",
                    u.stderr.lines().last().unwrap_or("")
                ));
            }
            let total = callgrind_total(&file).unwrap_or(0);
            p.per_byte
                .insert(name.to_string(), total as f64 / db_bytes as f64);
            let per_mb = |rows: Vec<(u64, String)>| -> Vec<(u64, String)> {
                rows.into_iter()
                    .map(|(ir, f)| (ir * (1 << 20) / db_bytes, f))
                    .collect()
            };
            p.top.insert(
                format!("walstream {name}, per MiB of database"),
                (
                    per_mb(annotate(&file, true)),
                    per_mb(annotate(&file, false)),
                ),
            );
            p.totals.insert(
                format!("walstream {name}, per MiB of database"),
                total as f64 * (1u64 << 20) as f64 / db_bytes as f64,
            );
        }
    }
    let _ = fs::remove_dir_all(&job.dir);
    Some(p)
}

// ---- the report -----------------------------------------------------------------------------

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine(d: &Driver) -> String {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let sqlite = rusqlite::Connection::open_in_memory()
        .and_then(|c| c.query_row("SELECT sqlite_version()", [], |r| r.get::<_, String>(0)))
        .unwrap_or_default();
    let work = d.opts.work.display().to_string();
    let mut s = String::new();
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} × {} |", sh("nproc"), cpu.trim());
    let _ = writeln!(s, "| memory | {} |", sh("free -h | awk '/Mem:/{print $2}'"));
    let _ = writeln!(s, "| kernel | {} |", sh("uname -sr"));
    let _ = writeln!(
        s,
        "| disk (benchmark directory) | {} |",
        sh(&format!(
            "df -hT '{work}' | awk 'NR==2{{print $1\", \"$2\", \"$3\" total, \"$5\" free\"}}'"
        ))
    );
    let _ = writeln!(
        s,
        "| block device | {} |",
        sh("lsblk -dno NAME,MODEL,ROTA,SIZE 2>/dev/null | head -3 | tr '\\n' ';'")
    );
    let _ = writeln!(s, "| SQLite (host process: rusqlite bundled) | {sqlite} |");
    let _ = writeln!(
        s,
        "| SQLite (system `sqlite3` shell, not used for timing) | {} |",
        sh("sqlite3 --version 2>/dev/null | cut -d' ' -f1")
    );
    let ls = match (&d.opts.litestream, &d.opts.litestream_missing) {
        (Some(b), _) => sh(&format!("'{}' version", b.display())),
        (None, Some(why)) => format!("not run: {why}"),
        _ => "not run".into(),
    };
    let _ = writeln!(s, "| Litestream | {ls} |");
    let _ = writeln!(s, "| rustc | {} |", sh("rustc --version"));
    let _ = writeln!(
        s,
        "| walstream | {} |",
        sh(concat!(
            // A run of a tree with uncommitted changes says so: its numbers belong to no commit.
            "h=$(git rev-parse --short HEAD 2>/dev/null) && ",
            "[ -n \"$(git status --porcelain --untracked-files=no -- ':/' ",
            "':(top,exclude)docs/BENCHMARKS.md')\" ] && h=\"$h with uncommitted changes\"; ",
            "echo \"$h\""
        ))
    );
    let _ = writeln!(
        s,
        "| load average at the end | {} |",
        sh("cut -d' ' -f1-3 /proc/loadavg")
    );
    s
}

fn ratios(res: &Results, w: &str, mode: &str, f: impl Fn(&WorkerOut) -> Option<f64>) -> Vec<f64> {
    let Some(m) = res.timed.get(w) else {
        return Vec::new();
    };
    let (Some(base), Some(other)) = (m.get("Plain"), m.get(mode)) else {
        return Vec::new();
    };
    base.iter()
        .zip(other)
        .filter(|(a, b)| a.error.is_none() && b.error.is_none())
        .filter_map(|(a, b)| Some(f(b)? / f(a)?))
        .collect()
}

fn target_of(w: Workload) -> (f64, &'static str) {
    match w {
        Workload::Txn1Full => (1.05, "≤ 1.05×"),
        Workload::Txn1Normal => (1.10, "≤ 1.10×"),
        Workload::Read => (1.00, "1.00×"),
        _ => (1.05, "≤ 1.05×"),
    }
}

fn verdict(s: Option<Stat>, target: f64, tolerance: f64) -> &'static str {
    match s {
        Some(s) if s.median <= target + tolerance => "met",
        Some(_) => "**not met**",
        None => "–",
    }
}

pub fn render(d: &Driver, res: &Results) -> String {
    let mut s = String::new();
    let sc = &d.scale;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `make bench{}` ({} repetitions, {:.0} s in all) — do not edit above the \
         analysis marker; run it again. Every number is a ratio of runs made side by side in one \
         run, on the same disk, alternating (the order of the modes rotates each repetition), each \
         run a fresh process on a fresh database: the **median** with [min–max] over the \
         repetitions, each ratio taken within one repetition. The baseline is plain SQLite in WAL \
         mode (same SQLite, same pragmas, no extension). Absolute times appear only as context.\n",
        if d.opts.quick { " BENCH_QUICK=1" } else { "" },
        d.opts.reps,
        res.elapsed_secs
    );
    let _ = writeln!(s, "## Machine\n\n{}", machine(d));

    // Commit overhead.
    let _ = writeln!(
        s,
        "## Commit overhead (time of the workload ÷ plain SQLite)\n"
    );
    let _ = writeln!(
        s,
        "Workloads: {} × 1-row txns at NORMAL, {} at FULL, {} × 100-row txns, one txn of {} rows \
         (rows: an integer key with an index and ~100 bytes of text, on a table pre-filled with 5000 rows), \
         a read loop of {} queries on {} rows (70% point, 20% index lookups, 10% ranges), and {} \
         order-book txns of 100 operations (5000 users, 10000 resting orders; half new orders with a \
         balance lock, a quarter cancels, a quarter matches writing a trade, two orders and four \
         balances). Setup (schema, pre-filled rows, walstream's first snapshot, Litestream's first \
         sync) is not timed; Litestream's writer overhead is the application's time while `litestream \
         replicate` runs beside it on the same 2 cores.\n",
        sc.txn1, sc.txn1_full, sc.txn100, sc.bulk_rows, sc.reads, sc.read_rows, sc.orderbook_txns
    );
    let _ = writeln!(
        s,
        "| workload | walstream | target | | Litestream | plain SQLite, per txn (context) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for w in [
        Workload::Txn1Normal,
        Workload::Txn1Full,
        Workload::Txn100,
        Workload::Bulk,
        Workload::OrderBook,
        Workload::Read,
    ] {
        let key = format!("{w:?}");
        let ws = stat(&ratios(res, &key, "Walstream", |o| Some(o.secs)));
        let ls = stat(&ratios(res, &key, "Litestream", |o| Some(o.secs)));
        let plain: Vec<f64> = res
            .timed
            .get(&key)
            .and_then(|m| m.get("Plain"))
            .map(|v| {
                v.iter()
                    .filter(|o| o.error.is_none())
                    .map(|o| o.secs / o.commits.max(1) as f64)
                    .collect()
            })
            .unwrap_or_default();
        let ctx = match (w, stat(&plain)) {
            (Workload::Read, Some(p)) => format!("{:.2} s per {} queries", p.median, sc.reads),
            (_, Some(p)) if p.median < 0.01 => format!("{:.0} µs", p.median * 1e6),
            (_, Some(p)) => format!("{:.1} ms", p.median * 1e3),
            _ => "–".into(),
        };
        let (t, tl) = target_of(w);
        // Within the noise of this machine a median at the target counts as met; the
        // tolerance is half a percent.
        let _ = writeln!(
            s,
            "| {} | {} | {tl} | {} | {} | {ctx} |",
            w.label(),
            ratio_cell(ws),
            verdict(ws, t, 0.005),
            if d.opts.litestream.is_some() {
                ratio_cell(ls)
            } else {
                "not run".into()
            }
        );
    }
    let _ = writeln!(s);
    // Host RSS.
    let _ = writeln!(s, "Peak RSS of the host process (getrusage, whole process including setup), walstream − plain, MiB:\n");
    let _ = writeln!(s, "| workload | plain | walstream | growth |");
    let _ = writeln!(s, "|---|---|---|---|");
    for w in [
        Workload::Txn1Normal,
        Workload::Txn100,
        Workload::Bulk,
        Workload::OrderBook,
    ] {
        let key = format!("{w:?}");
        let get = |mode: &str| -> Vec<f64> {
            res.timed
                .get(&key)
                .and_then(|m| m.get(mode))
                .map(|v| {
                    v.iter()
                        .filter(|o| o.error.is_none())
                        .map(|o| mib(o.maxrss_kb))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (p, ws) = (stat(&get("Plain")), stat(&get("Walstream")));
        let growth = match (p, ws) {
            (Some(p), Some(ws)) => format!("{:+.1}", ws.median - p.median),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {growth} |",
            w.label(),
            num_cell(p, 1, ""),
            num_cell(ws, 1, "")
        );
    }
    let _ = writeln!(s);
    // Stream completeness and lag.
    let _ = writeln!(s, "## Replication lag\n");
    let _ = writeln!(
        s,
        "walstream's lag is zero by construction for a local target: a transaction is in the stream \
         before its COMMIT returns. Checked in every timed run: transactions in the stream after the \
         body − before = commits made (runs where this held / runs): {}.\n",
        {
            let mut ok = 0;
            let mut all = 0;
            for m in res.timed.values() {
                for o in m.get("Walstream").into_iter().flatten() {
                    if o.commits > 0 {
                        all += 1;
                        ok += usize::from(o.stream_txns == Some(o.commits));
                    }
                }
            }
            format!("{ok}/{all}")
        }
    );
    if d.opts.litestream.is_some() {
        let _ = writeln!(
            s,
            "Litestream (defaults of `litestream replicate DB file:///DIR`): time from the last commit to the \
             write of the newest replica file at the first moment `litestream restore` of the replica \
             reproduces the final state (polled every 5 ms; a restore is tried whenever the replica's \
             files change). Its daemon's peak RSS and CPU time are from wait4.\n"
        );
        let _ = writeln!(s, "| workload | Litestream lag, ms | replica bytes per txn | daemon peak RSS, MiB | daemon CPU ÷ app time |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for w in [
            Workload::Txn1Normal,
            Workload::Txn1Full,
            Workload::Txn100,
            Workload::Bulk,
            Workload::OrderBook,
        ] {
            let key = format!("{w:?}");
            let runs: Vec<&WorkerOut> = res
                .timed
                .get(&key)
                .and_then(|m| m.get("Litestream"))
                .map(|v| v.iter().filter(|o| o.error.is_none()).collect())
                .unwrap_or_default();
            let lag: Vec<f64> = runs
                .iter()
                .filter_map(|o| o.litestream.as_ref()?.lag_ms)
                .collect();
            let missing = runs
                .iter()
                .filter(|o| o.litestream.as_ref().is_none_or(|l| l.lag_ms.is_none()))
                .count();
            let bytes: Vec<f64> = runs
                .iter()
                .filter_map(|o| {
                    Some(o.litestream.as_ref()?.replica_bytes_body as f64 / o.commits.max(1) as f64)
                })
                .collect();
            let rss: Vec<f64> = runs
                .iter()
                .filter_map(|o| Some(mib(o.litestream.as_ref()?.daemon_maxrss_kb)))
                .collect();
            let cpu: Vec<f64> = runs
                .iter()
                .filter_map(|o| Some(o.litestream.as_ref()?.daemon_cpu_secs / o.secs))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {}{} | {} | {} | {} |",
                w.label(),
                num_cell(stat(&lag), 0, ""),
                runs_note(missing, "not within 60 s"),
                num_cell(stat(&bytes), 0, ""),
                num_cell(stat(&rss), 1, ""),
                num_cell(stat(&cpu), 2, ""),
            );
        }
        let _ = writeln!(s);
    }
    render_ship(d, res, &mut s);
    render_follow(res, &mut s);
    // Small restores.
    if !res.restore_small.is_empty() {
        let _ = writeln!(
            s,
            "## Restoring the order-book database (time ÷ `cp` + `sync` of the same database)\n"
        );
        let _ = writeln!(
            s,
            "The database after the order-book run (a few MB: process start-up weighs a lot); each \
             repetition's restore is divided by the same repetition's copy.\n"
        );
        let _ = writeln!(s, "| tool | time ÷ cp |\n|---|---|");
        for mode in ["Walstream", "Litestream"] {
            let v: Vec<f64> = res
                .restore_small
                .iter()
                .filter_map(|m| Some(m.get(mode)? / m.get("Plain")?))
                .collect();
            if !v.is_empty() {
                let _ = writeln!(
                    s,
                    "| {} restore | {} |",
                    mode.to_lowercase(),
                    ratio_cell(stat(&v))
                );
            }
        }
        let _ = writeln!(s);
    }
    // Big.
    if let Some(b) = &res.big {
        let _ = writeln!(
            s,
            "## A database of {:.2} GiB\n",
            b.db_bytes as f64 / (1u64 << 30) as f64
        );
        let _ = writeln!(
            s,
            "Written in transactions of 10,000 rows of 1000 random bytes (≈10 MB each) at NORMAL, once \
             without and once with walstream (one run each: the RSS is what matters here). Stream: {:.2} GiB; \
             every transaction in the stream: {}. Restore, `cp` (+ `sync` of the copy; walstream restore \
             also syncs), `walstream verify` and BLAKE3 (one thread, reading the same stream files) alternate \
             {} times, with the files in the page cache (this measures CPU work, not the disk).\n",
            b.stream_bytes as f64 / (1u64 << 30) as f64,
            if b.stream_ok { "yes" } else { "**no**" },
            d.opts.reps
        );
        let hp = b.host_rss_kb.get("Plain").copied().unwrap_or(0);
        let hw = b.host_rss_kb.get("Walstream").copied().unwrap_or(0);
        let _ = writeln!(s, "| measure | result | target | |\n|---|---|---|---|");
        let growth = mib(hw - hp);
        let _ = writeln!(
            s,
            "| host peak RSS, plain → walstream | {:.1} → {:.1} MiB (**{:+.1} MiB**) | ≤ 8 MiB growth | {} |",
            mib(hp),
            mib(hw),
            growth,
            if growth <= 8.0 { "met" } else { "**not met**" }
        );
        if let (Some(p), Some(w)) = (b.build_secs.get("Plain"), b.build_secs.get("Walstream")) {
            let _ = writeln!(
                s,
                "| writing it, walstream ÷ plain (one run each) | {:.3}× | | |",
                w / p
            );
        }
        let tput = |secs: &[f64]| -> Vec<f64> {
            secs.iter().map(|t| b.db_bytes as f64 / t / 1e6).collect()
        };
        let rt: Vec<f64> = b
            .restore_secs
            .iter()
            .zip(&b.cp_secs)
            .map(|(r, c)| c / r)
            .collect();
        let rs = stat(&rt);
        let _ = writeln!(
            s,
            "| restore throughput ÷ cp throughput | {} | ≥ 0.5× | {} |",
            ratio_cell(rs),
            match rs {
                Some(r) if r.median >= 0.5 => "met",
                Some(_) => "**not met**",
                None => "–",
            }
        );
        let _ = writeln!(
            s,
            "| (context) restore, cp throughput, MB/s | {} ; {} | | |",
            num_cell(stat(&tput(&b.restore_secs)), 0, ""),
            num_cell(stat(&tput(&b.cp_secs)), 0, "")
        );
        let rr = stat(&b.restore_rss_kb.iter().map(|k| mib(*k)).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| `walstream restore` peak RSS | {} MiB | ≤ 64 MiB | {} |",
            num_cell(rr, 1, ""),
            match rr {
                Some(r) if r.max <= 64.0 => "met",
                Some(_) => "**not met**",
                None => "–",
            }
        );
        let vt: Vec<f64> = b
            .verify_secs
            .iter()
            .zip(&b.blake3_secs)
            .map(|(v, h)| h / v)
            .collect();
        let _ = writeln!(
            s,
            "| verify throughput ÷ BLAKE3 throughput over the same bytes | {} | | |",
            ratio_cell(stat(&vt))
        );
        let st = |secs: &[f64]| -> Vec<f64> {
            secs.iter()
                .map(|t| b.stream_bytes as f64 / t / 1e6)
                .collect()
        };
        let _ = writeln!(
            s,
            "| (context) verify, BLAKE3 throughput, MB/s | {} ; {} | | |",
            num_cell(stat(&st(&b.verify_secs)), 0, ""),
            num_cell(stat(&st(&b.blake3_secs)), 0, "")
        );
        let _ = writeln!(
            s,
            "| `walstream verify` peak RSS | {} MiB | | |\n",
            num_cell(
                stat(&b.verify_rss_kb.iter().map(|k| mib(*k)).collect::<Vec<_>>()),
                1,
                ""
            )
        );
    }
    // Syscalls.
    if let Some(sy) = &res.syscalls {
        let _ = writeln!(s, "## fsyncs and system calls per commit\n");
        if let Some(e) = &sy.error {
            let _ = writeln!(s, "Not measured: {e}.\n");
        } else {
            let _ = writeln!(
                s,
                "`strace -f -c` of a worker making {} and then {} commits; per commit = (calls at {} − calls \
                 at {}) ÷ {}, which cancels setup, snapshot and close.\n",
                sy.counts.0,
                sy.counts.1,
                sy.counts.1,
                sy.counts.0,
                sy.counts.1 - sy.counts.0
            );
            let syncs = ["fsync", "fdatasync", "sync_file_range", "syncfs", "msync"];
            let _ = writeln!(s, "| workload | fsync+fdatasync, plain | walstream | added | all syscalls, plain | walstream | added by walstream (largest) |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for w in [
                Workload::Txn1Normal,
                Workload::Txn1Full,
                Workload::Txn100,
                Workload::OrderBook,
            ] {
                let key = format!("{w:?}");
                let (Some(p), Some(ws)) = (
                    sy.per_commit.get(&(key.clone(), "Plain".into())),
                    sy.per_commit.get(&(key.clone(), "Walstream".into())),
                ) else {
                    continue;
                };
                let sum = |m: &BTreeMap<String, f64>, only: Option<&[&str]>| -> f64 {
                    m.iter()
                        .filter(|(k, _)| only.is_none_or(|o| o.contains(&k.as_str())))
                        .map(|(_, v)| v)
                        .sum()
                };
                let (fp, fw) = (sum(p, Some(&syncs)), sum(ws, Some(&syncs)));
                let mut added: Vec<(String, f64)> = ws
                    .iter()
                    .map(|(k, v)| (k.clone(), v - p.get(k).copied().unwrap_or(0.0)))
                    .filter(|(_, v)| v.abs() >= 0.05)
                    .collect();
                added.sort_by(|a, b| b.1.abs().partial_cmp(&a.1.abs()).unwrap());
                let added: Vec<String> = added
                    .iter()
                    .take(8)
                    .map(|(k, v)| format!("{k} {v:+.2}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "| {} | {fp:.2} | {fw:.2} | **{:+.2}** | {:.1} | {:.1} | {} |",
                    w.label(),
                    fw - fp,
                    sum(p, None),
                    sum(ws, None),
                    added.join(", ")
                );
            }
            let _ = writeln!(s);
        }
    }
    // Bytes.
    if let Some((b, cs, why)) = &res.bytes {
        let n = b.stream.len().max(1) as f64;
        let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / n;
        let _ = writeln!(
            s,
            "## Bytes shipped per transaction (order book, {} txns of 100 operations)\n",
            b.stream.len()
        );
        let _ = writeln!(
            s,
            "Mean bytes per transaction. zstd level {ZSTD_LEVEL}, each transaction compressed on its own \
             (what shipping transaction by transaction costs) and, for context, the whole run compressed \
             as one block ÷ transactions (what batching would cost). Raw WAL pages: the page images the \
             transaction wrote to the WAL (frame headers not counted), decoded from the stream's page \
             records. walstream stream: the bytes the transaction appended to the spool's segments \
             (the stream a local-directory target holds and S3 receives); since format v2 its pages \
             are already zstd-compressed, mostly as deltas against their previous version \
             (docs/FORMAT.md, \"Page content\"). Changesets: SQLite's session extension attached to every table, one changeset per \
             transaction, from the same seeded workload replayed by a build with the session extension \
             (checked to end in the same state).\n"
        );
        let _ = writeln!(
            s,
            "| what | raw | zstd per txn | zstd, whole run ÷ txns | ÷ changeset (zstd per txn) |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let csz = cs.as_ref().map(|c| c.zstd.iter().sum::<u64>() as f64 / n);
        let rel = |x: f64| csz.map_or("–".into(), |c| format!("{:.1}×", x / c));
        let _ = writeln!(
            s,
            "| raw WAL pages | {:.0} | {:.0} | {:.0} | {} |",
            mean(&b.wal_pages),
            mean(&b.wal_pages_zstd),
            b.wal_pages_zstd_all as f64 / n,
            rel(mean(&b.wal_pages_zstd))
        );
        let _ = writeln!(
            s,
            "| walstream stream (format v{}, raw = bytes as stored) | {:.0} | {:.0} | {:.0} | {} (as stored: {}) |",
            walstream::record::FORMAT_VERSION,
            mean(&b.stream),
            mean(&b.stream_zstd),
            b.stream_zstd_all as f64 / n,
            rel(mean(&b.stream_zstd)),
            rel(mean(&b.stream))
        );
        match cs {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "| session changesets | {:.0} | {:.0} | {:.0} | 1.0× |",
                    mean(&c.raw),
                    mean(&c.zstd),
                    c.zstd_all as f64 / n
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| session changesets | not measured: {} | | | |",
                    why.clone().unwrap_or_default()
                );
            }
        }
        let ls: Vec<f64> = res
            .timed
            .get("OrderBook")
            .and_then(|m| m.get("Litestream"))
            .map(|v| {
                v.iter()
                    .filter_map(|o| {
                        Some(
                            o.litestream.as_ref()?.replica_bytes_body as f64
                                / o.commits.max(1) as f64,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(l) = stat(&ls) {
            let _ = writeln!(
                s,
                "| Litestream replica growth (its own LTX files, as written) | {:.0} | | | {} |",
                l.median,
                rel(l.median)
            );
        }
        let _ = writeln!(s);
    }
    // Profile.
    if let Some(p) = &res.profile {
        let _ = writeln!(s, "## Instruction profile (callgrind)\n");
        if let Some(e) = &p.error {
            let _ = writeln!(s, "Not measured: {e}.\n");
        } else {
            let _ = writeln!(
                s,
                "`perf` has no hardware counters on this VM (`perf stat -e instructions` reports \
                 \"not supported\"), so the profile is valgrind's callgrind: user-space instructions \
                 (no kernel time: system calls and fsync cost nothing here, see the table above), \
                 collected only inside the timed body (`--toggle-collect`). It is exact and does not \
                 depend on the noisy neighbours.\n"
            );
            let _ = writeln!(s, "| workload | plain, instructions per txn (per query for Read) | walstream | ratio |\n|---|---|---|---|");
            for (w, m) in &p.ir_per_commit {
                if let (Some(a), Some(b)) = (m.get("Plain"), m.get("Walstream")) {
                    let _ = writeln!(s, "| {w} | {a:.0} | {b:.0} | {:.3}× |", b / a);
                }
            }
            let _ = writeln!(s);
            if !p.per_byte.is_empty() {
                let _ = writeln!(
                    s,
                    "`walstream restore` and `walstream verify` of a 48 MiB database written in 10 MB transactions \
                     (whole process): {}.\n",
                    p.per_byte.iter().map(|(k, v)| format!("{k} {v:.1} instructions per byte")).collect::<Vec<_>>().join(", ")
                );
            }
            for (w, (inc, exc)) in &p.top {
                let total = p
                    .ir_per_commit
                    .get(w)
                    .and_then(|m| m.get("Walstream"))
                    .or_else(|| p.totals.get(w))
                    .copied()
                    .unwrap_or(1.0);
                let unit = if p.totals.contains_key(w) {
                    ""
                } else if w == "Read" {
                    ", instructions per query"
                } else {
                    ", instructions per txn"
                };
                let _ = writeln!(s, "<details><summary>{w}: top functions{unit}</summary>\n");
                let _ = writeln!(s, "Inclusive (walstream's own frames and BLAKE3):\n\n| Ir | % | function |\n|---|---|---|");
                let interesting = |f: &str| {
                    (f.starts_with("walstream::")
                        || f.contains("<impl walstream::")
                        || f.contains("blake3"))
                        && !f.contains("api::guard")
                };
                for (ir, f) in inc.iter().filter(|(_, f)| interesting(f)).take(25) {
                    let _ = writeln!(
                        s,
                        "| {ir} | {:.1} | `{}` |",
                        *ir as f64 * 100.0 / total,
                        short(f)
                    );
                }
                let _ = writeln!(
                    s,
                    "\nExclusive (everything):\n\n| Ir | % | function |\n|---|---|---|"
                );
                for (ir, f) in exc.iter().take(20) {
                    let _ = writeln!(
                        s,
                        "| {ir} | {:.1} | `{}` |",
                        *ir as f64 * 100.0 / total,
                        short(f)
                    );
                }
                let _ = writeln!(s, "\n</details>\n");
            }
        }
    }
    if !res.errors.is_empty() {
        let _ = writeln!(s, "## Errors during this run\n");
        for e in &res.errors {
            let _ = writeln!(s, "- {}", e.replace('\n', " "));
        }
        let _ = writeln!(s);
    }
    s
}

fn short(f: &str) -> String {
    let f = f.replace('|', "\\|");
    if f.len() > 110 {
        format!(
            "{}…",
            &f[..f.char_indices().nth(110).map_or(f.len(), |(i, _)| i)]
        )
    } else {
        f
    }
}

pub fn kept_analysis(existing: &str) -> Option<String> {
    existing
        .rfind(ANALYSIS_MARKER)
        .map(|i| existing[i..].to_string())
}

pub fn default_analysis() -> String {
    format!("{ANALYSIS_MARKER}\n\n## Analysis\n\n(Write the reading of the numbers above here.)\n")
}
