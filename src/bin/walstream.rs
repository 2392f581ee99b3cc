//! The `walstream` command: restore, verify, list and inspect streams.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use walstream::reader;
use walstream::record::pb::{record::Body, Record};
use walstream::record::{hex, RecordReader};
use walstream::restore::{self, Point, RestoreOptions};
use walstream::target::{self, Target, TargetSpec};
use walstream::verify;

/// Continuous, verifiable replication of SQLite databases.
///
/// TARGET is where a stream is stored: a directory path (by default `<db>-walstream` beside the
/// database), `file:///abs/dir`, or `s3://bucket/prefix`.
#[derive(Parser)]
#[command(name = "walstream", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild a database from a stream, at its newest transaction or an earlier point.
    ///
    /// The output is written to a temporary file and renamed into place when complete; every
    /// page and chain hash read on the way is verified.
    Restore {
        /// The stream to restore from.
        target: String,
        /// The database file to create.
        #[arg(short, long)]
        output: PathBuf,
        /// Restore the state right after this transaction (0: the generation's snapshot).
        #[arg(long, conflicts_with = "time")]
        txn: Option<u64>,
        /// Restore the newest transaction committed at or before this time (RFC 3339, e.g.
        /// 2026-11-25T13:00:00Z).
        #[arg(long)]
        time: Option<String>,
        /// Generation to restore from (default: the newest, or with --time the newest that
        /// existed then).
        #[arg(long)]
        generation: Option<u64>,
        /// Replace OUTPUT (and remove its -wal and -shm files) if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a whole stream: page hashes, the hash chain, sequence gaps, segment boundaries,
    /// snapshots and the links between generations. Exits non-zero naming the first failure.
    Verify {
        target: String,
    },
    /// List generations, snapshots and segments with their transaction ranges, sizes and times.
    Ls {
        target: String,
    },
    /// Delete old generations from a stream, never what the newest restore point needs.
    ///
    /// Keeps the newest complete generation always, plus the newest N (--keep-generations) and
    /// every generation holding restore points from the last D days (--keep-days).
    Prune {
        target: String,
        /// Keep the newest N complete generations.
        #[arg(long, value_name = "N")]
        keep_generations: Option<u64>,
        /// Keep every generation with restore points from the last D days (fractions allowed).
        #[arg(long, value_name = "D")]
        keep_days: Option<f64>,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a segment or snapshot file record by record (a local file, or an object as
    /// s3://bucket/prefix/generations/.../name).
    Inspect {
        file: PathBuf,
        /// Also print page contents' first bytes.
        #[arg(long)]
        verbose: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Restore { target, output, txn, time, generation, force } => {
            cmd_restore(&target, &output, txn, time.as_deref(), generation, force)
        }
        Command::Verify { target } => cmd_verify(&target),
        Command::Ls { target } => cmd_ls(&target),
        Command::Prune { target, keep_generations, keep_days, dry_run } => {
            cmd_prune(&target, keep_generations, keep_days, dry_run)
        }
        Command::Inspect { file, verbose } => cmd_inspect(&file, verbose),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walstream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_target(uri: &str) -> Result<Box<dyn Target>> {
    let spec = TargetSpec::parse(uri)?;
    Ok(target::open(&spec)?)
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(s: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("--time {s:?} is not an RFC 3339 time such as 2026-11-25T13:00:00Z"))?;
    Ok(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

fn cmd_restore(
    uri: &str,
    output: &Path,
    txn: Option<u64>,
    time: Option<&str>,
    generation: Option<u64>,
    force: bool,
) -> Result<()> {
    let target = open_target(uri)?;
    let point = match (txn, time) {
        (Some(n), _) => Point::Txn(n),
        (None, Some(t)) => Point::Time(parse_time(t)?),
        (None, None) => Point::Latest,
    };
    let opts = RestoreOptions { point, generation, force };
    let (objects, _) = restore::resolve(target.as_ref(), &opts)?;
    let bar = progress_bar(objects.bytes(), "restoring");
    let restored = restore::restore(target.as_ref(), output, &opts, &mut |b| bar.set_position(b))
        .with_context(|| format!("restoring {} from {uri}", output.display()))?;
    bar.finish_and_clear();
    let s = &restored.summary;
    println!(
        "restored {} from generation {} at txn {} (committed {}): {} pages of {} bytes, head {}",
        output.display(),
        s.generation,
        s.last_seq,
        format_ms(s.last_commit_ms),
        s.db_size_pages,
        s.page_size,
        &hex(&s.head_hash)[..16],
    );
    Ok(())
}

fn cmd_verify(uri: &str) -> Result<()> {
    let target = open_target(uri)?;
    let total: u64 = reader::inventory(target.as_ref())?.iter().map(|g| g.bytes()).sum();
    let bar = progress_bar(total, "verifying");
    let result = verify::verify(target.as_ref(), &mut |b| bar.set_position(b));
    bar.finish_and_clear();
    let report = result.with_context(|| format!("verification of {uri} failed"))?;
    for g in &report.generations {
        println!(
            "generation {}: snapshot of {} pages, txns 1..={} verified, head {}",
            g.generation,
            g.snapshot_pages,
            g.last_seq,
            &hex(&g.head_hash)[..16]
        );
    }
    println!("ok: {} generation(s), {} bytes verified", report.generations.len(), report.bytes);
    Ok(())
}

/// Collects the transaction range and times of one segment.
#[derive(Default)]
struct SegmentStats {
    first: Option<(u64, i64)>,
    last: Option<(u64, i64)>,
}

fn cmd_ls(uri: &str) -> Result<()> {
    let target = open_target(uri)?;
    let generations = reader::inventory(target.as_ref())?;
    if generations.is_empty() {
        bail!("target {} holds no generations", target.describe());
    }
    println!("target {}", target.describe());
    for g in &generations {
        let Some(snapshot) = &g.snapshot else {
            println!("generation {} (incomplete: no snapshot)", g.generation);
            continue;
        };
        let header = snapshot_header(target.as_ref(), &snapshot.key)?;
        println!(
            "generation {}  started {}  reason: {}  {} bytes",
            g.generation,
            format_ms(header.created_ms),
            header.reason,
            g.bytes()
        );
        println!(
            "  snapshot  {}  {} pages x {} bytes  {} bytes",
            snapshot.key, header.page_count, header.page_size, snapshot.size
        );
        for object in g.segments.values() {
            let stats = segment_stats(target.as_ref(), &object.key)?;
            let range = match (stats.first, stats.last) {
                (Some((a, ta)), Some((b, tb))) => {
                    format!("txns {a}..={b}  {} .. {}", format_ms(ta), format_ms(tb))
                }
                _ => "no txns".to_string(),
            };
            println!("  segment   {}  {range}  {} bytes", object.key, object.size);
        }
    }
    Ok(())
}

fn snapshot_header(target: &dyn Target, key: &str) -> Result<walstream::record::pb::SnapshotHeader> {
    let mut r = RecordReader::new(target.get(key)?).with_context(|| key.to_string())?;
    match r.next_record().with_context(|| key.to_string())? {
        Some((_, Record { body: Some(Body::SnapshotHeader(h)) })) => Ok(h),
        _ => bail!("{key}: does not start with a snapshot header"),
    }
}

fn segment_stats(target: &dyn Target, key: &str) -> Result<SegmentStats> {
    let mut r = RecordReader::new(target.get(key)?).with_context(|| key.to_string())?;
    let mut stats = SegmentStats::default();
    loop {
        match r.next_record() {
            Ok(Some((_, Record { body: Some(Body::TxnCommit(c)) }))) => {
                let point = (c.seq, c.commit_time_ms);
                stats.first.get_or_insert(point);
                stats.last = Some(point);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.is_torn_tail() => break,
            Err(e) => return Err(e).with_context(|| key.to_string()),
        }
    }
    Ok(stats)
}

fn cmd_prune(uri: &str, keep_generations: Option<u64>, keep_days: Option<f64>, dry_run: bool) -> Result<()> {
    let target = open_target(uri)?;
    let keep = walstream::prune::Keep { generations: keep_generations, days: keep_days };
    let report = walstream::prune::prune(target.as_ref(), &keep, dry_run)
        .with_context(|| format!("pruning {uri}"))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for key in &report.deleted {
        println!("{verb} {key}");
    }
    println!(
        "{verb} {} generation(s) ({} objects, {} bytes); kept generation(s) {:?}",
        report.deleted_generations.len(),
        report.deleted.len(),
        report.bytes,
        report.kept
    );
    Ok(())
}

/// Opens a local file, or an object named by an `s3://bucket/prefix/generations/...` URL.
fn open_input(path: &Path) -> Result<Box<dyn std::io::Read + Send>> {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix("s3://") {
        let at = rest
            .find(&format!("{}/", walstream::layout::GENERATIONS_DIR))
            .with_context(|| format!("{text}: an object URL ends in generations/<generation>/<name>"))?;
        let (root, key) = rest.split_at(at);
        let target = open_target(&format!("s3://{}", root.trim_end_matches('/')))?;
        return Ok(target.get(key)?);
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

fn cmd_diff(uri: &str, txn: u64, generation: Option<u64>, invert: bool, format: &str, tmp_dir: Option<PathBuf>) -> Result<()> {
    use walstream::diff::{self, DiffOptions, JsonWriter, Sink, SqlWriter};
    let target = open_target(uri)?;
    let objects = match generation {
        Some(g) => reader::generation(target.as_ref(), g)?,
        None => reader::latest_generation(target.as_ref())?,
    };
    let opts = DiffOptions { generation: Some(objects.generation), txn, tmp_dir };
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut sink: Box<dyn Sink> = match format {
        "json" => Box::new(JsonWriter::new(out, invert)),
        _ => Box::new(SqlWriter { out, invert }),
    };
    let bar = progress_bar(objects.bytes(), "replaying");
    let result = diff::diff(target.as_ref(), &opts, &mut |b| bar.set_position(b), sink.as_mut());
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("diff of txn {txn} of generation {} in {uri}", objects.generation))?;
    if summary.notes > 0 {
        eprintln!(
            "walstream: note: the output holds {} note(s): schema changes or changes not decoded as rows",
            summary.notes
        );
    }
    Ok(())
}

fn cmd_inspect(path: &Path, verbose: bool) -> Result<()> {
    let input = open_input(path)?;
    let mut r = RecordReader::new(input).with_context(|| path.display().to_string())?;
    println!("{}: {:?} file, format version {}", path.display(), r.kind(), walstream::record::FORMAT_VERSION);
    while let Some((offset, record)) = r.next_record().with_context(|| path.display().to_string())? {
        let line = match record.body.expect("reader rejects empty records") {
            Body::SegmentHeader(h) => format!(
                "segment header: generation {} first txn {} prev hash {}",
                h.generation, h.first_seq, hex(&h.prev_hash)
            ),
            Body::TxnBegin(b) => format!("txn {} begin", b.seq),
            Body::Page(p) => {
                let head = if verbose { format!(" data {}..", hex(&p.data[..p.data.len().min(16)])) } else { String::new() };
                format!("  page {} ({} bytes) hash {}{head}", p.pgno, p.data.len(), hex(&p.hash))
            }
            Body::TxnCommit(c) => format!(
                "txn {} commit: {} pages, db size {} pages, time {}, hash {}",
                c.seq, c.page_count, c.db_size_pages, format_ms(c.commit_time_ms), hex(&c.hash)
            ),
            Body::SegmentEnd(e) => format!("segment end: {:?}, next txn {}", e.reason(), e.next_seq),
            Body::WalReset(w) => format!("WAL reset ({:?}) after txn {}", w.kind(), w.after_seq),
            Body::SnapshotHeader(h) => format!(
                "snapshot header: generation {} {} pages x {} bytes, reason: {}, created {}",
                h.generation, h.page_count, h.page_size, h.reason, format_ms(h.created_ms)
            ),
            Body::SnapshotChunk(c) => format!("snapshot chunk: pages {}..={}", c.first_pgno, c.first_pgno as usize + c.hashes.len() - 1),
            Body::SnapshotEnd(e) => format!("snapshot end: hash {}", hex(&e.hash)),
        };
        println!("{offset:>10}  {line}");
    }
    Ok(())
}

