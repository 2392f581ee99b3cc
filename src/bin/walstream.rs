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

/// `println!` for the command's output: when the reader has gone (`walstream ls | head`), stop
/// quietly with success instead of panicking on the closed pipe.
macro_rules! out {
    ($($arg:tt)*) => { print_line(format_args!($($arg)*)) };
}

fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("walstream: error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

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
        /// SQL invariant to run at every transaction boundary; it passes when it returns one
        /// row whose first value is true (non-zero). May be given several times.
        #[arg(long = "check", value_name = "SQL")]
        checks: Vec<String>,
        /// With --check: only this generation (default: all).
        #[arg(long, requires = "checks")]
        generation: Option<u64>,
        /// With --check: run the checks from this transaction on (0: the snapshot).
        #[arg(long, requires = "checks")]
        from: Option<u64>,
        /// With --check: run the checks up to this transaction.
        #[arg(long, requires = "checks")]
        to: Option<u64>,
        /// Print the result (or the failure) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Require signed heads made with this public key (a KEYFILE.pub from `walstream
        /// keygen`): every sealed segment must end with a valid signature over its last head,
        /// and the newest head must be signed. May be given several times (any of the keys).
        #[arg(long, value_name = "FILE")]
        pubkey: Vec<PathBuf>,
        /// With --pubkey: accept a newest head that is not signed yet (a live stream's active
        /// segment is signed when it is sealed or the database is closed).
        #[arg(long, requires = "pubkey")]
        allow_unsigned_tail: bool,
    },
    /// Create a signing key: KEYFILE (the secret, mode 0600) and KEYFILE.pub (the public key).
    ///
    /// Give KEYFILE to the capturing process (URI parameter walstream_signing_key=KEYFILE or
    /// environment WALSTREAM_SIGNING_KEY=KEYFILE) and KEYFILE.pub to `verify --pubkey`. Never
    /// overwrites an existing file.
    Keygen {
        /// Signature algorithm.
        #[arg(long, value_parser = ["ed25519", "secp256k1"], default_value = "ed25519")]
        curve: String,
        /// The secret key file to create.
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Keep a read replica up to date as the stream grows. Readers of the replica (plain SQLite)
    /// see whole transactions only; a new generation re-seeds the replica from its snapshot;
    /// progress is kept in REPLICA-follow, so a restarted follower resumes where it was. A target
    /// that holds no generation yet is waited for.
    Follow {
        target: String,
        /// The replica database file (created if missing).
        replica: PathBuf,
        /// SQL invariant to run after every applied transaction (see `verify --check`).
        #[arg(long = "check", value_name = "SQL")]
        checks: Vec<String>,
        /// How often to look for new transactions, in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Catch up once and exit instead of following.
        #[arg(long)]
        once: bool,
    },
    /// Print a state root: of a database file (--db), or as recorded after transaction N of a
    /// stream (verified by replaying it). Equal roots mean byte-identical database images.
    Root {
        /// The stream (with --txn).
        #[arg(required_unless_present = "db", conflicts_with = "db")]
        target: Option<String>,
        /// A database file to compute the root of.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Transaction whose recorded root to print (default: the newest).
        #[arg(long)]
        txn: Option<u64>,
        /// Generation (default: the newest).
        #[arg(long)]
        generation: Option<u64>,
        /// With --db: the root as this format version defines it, to compare with a stream
        /// written in it (versions 1 to 3 share one definition, version 4 has its own)
        /// [default: 4]
        #[arg(long,
              value_parser = clap::value_parser!(u32).range(
                  i64::from(walstream::record::frame::FORMAT_VERSION_MIN)
                      ..=i64::from(walstream::record::FORMAT_VERSION)))]
        format_version: Option<u32>,
    },
    /// List generations, snapshots and segments with their transaction ranges, sizes and times.
    Ls { target: String },
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
    /// Row-level diff of one transaction: the rows it inserted, updated and deleted in every
    /// rowid table, decoded from the pages it wrote and their previous versions in the stream.
    ///
    /// SQL output is a transaction of INSERT/UPDATE/DELETE statements (with --invert, the
    /// statements that undo it: applied to the state after txn N they give the state after txn
    /// N-1). JSON output is one object per line: {"table","op","rowid","old","new",...}.
    /// What is not decoded is said in the output: schema changes ("schema changed: ..."),
    /// WITHOUT ROWID tables, and index changes (which are not rows) are not decoded.
    Diff {
        /// The stream.
        target: String,
        /// The transaction to diff against the state before it (1 or more).
        #[arg(long)]
        txn: u64,
        /// Generation (default: the newest).
        #[arg(long)]
        generation: Option<u64>,
        /// Print the undo of the transaction instead.
        #[arg(long)]
        invert: bool,
        /// Output format.
        #[arg(long, value_parser = ["sql", "json"], default_value = "sql")]
        format: String,
        /// Directory for the two temporary images (default: the system temporary directory;
        /// needs room for the database).
        #[arg(long, value_name = "DIR")]
        tmp_dir: Option<PathBuf>,
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
        Command::Restore {
            target,
            output,
            txn,
            time,
            generation,
            force,
        } => cmd_restore(&target, &output, txn, time.as_deref(), generation, force),
        Command::Verify {
            target,
            checks,
            generation,
            from,
            to,
            json,
            pubkey,
            allow_unsigned_tail,
        } => {
            if checks.is_empty() || !pubkey.is_empty() {
                cmd_verify(&target, json, &pubkey, allow_unsigned_tail).and_then(|()| {
                    if checks.is_empty() {
                        return Ok(());
                    }
                    let opts = walstream::validate::CheckOptions {
                        checks,
                        generation,
                        from,
                        to,
                    };
                    cmd_verify_checks(&target, &opts, json)
                })
            } else {
                let opts = walstream::validate::CheckOptions {
                    checks,
                    generation,
                    from,
                    to,
                };
                cmd_verify_checks(&target, &opts, json)
            }
        }
        Command::Follow {
            target,
            replica,
            checks,
            interval_ms,
            once,
        } => cmd_follow(&target, replica, checks, interval_ms, once),
        Command::Root {
            target,
            db,
            txn,
            generation,
            format_version,
        } => cmd_root(
            target.as_deref(),
            db.as_deref(),
            txn,
            generation,
            format_version,
        ),
        Command::Ls { target } => cmd_ls(&target),
        Command::Prune {
            target,
            keep_generations,
            keep_days,
            dry_run,
        } => cmd_prune(&target, keep_generations, keep_days, dry_run),
        Command::Diff {
            target,
            txn,
            generation,
            invert,
            format,
            tmp_dir,
        } => cmd_diff(&target, txn, generation, invert, &format, tmp_dir),
        Command::Inspect { file, verbose } => cmd_inspect(&file, verbose),
        Command::Keygen { curve, out } => cmd_keygen(&curve, &out),
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
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
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
    let t = humantime::parse_rfc3339_weak(s).with_context(|| {
        format!("--time {s:?} is not an RFC 3339 time such as 2026-11-25T13:00:00Z")
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
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
    let opts = RestoreOptions {
        point,
        generation,
        force,
    };
    let (objects, _) = restore::resolve(target.as_ref(), &opts)?;
    let bar = progress_bar(objects.bytes(), "restoring");
    let restored = restore::restore(target.as_ref(), output, &opts, &mut |b| bar.set_position(b))
        .with_context(|| format!("restoring {} from {uri}", output.display()))?;
    bar.finish_and_clear();
    let s = &restored.summary;
    out!(
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

fn cmd_verify_checks(
    uri: &str,
    opts: &walstream::validate::CheckOptions,
    json: bool,
) -> Result<()> {
    use walstream::validate::{verify_with_checks, ValidateError};
    let target = open_target(uri)?;
    let total: u64 = reader::inventory(target.as_ref())?
        .iter()
        .map(|g| g.bytes())
        .sum();
    let bar = progress_bar(total, "checking");
    let result = verify_with_checks(target.as_ref(), opts, &mut |b| bar.set_position(b));
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            if json {
                let gens: Vec<_> = report
                    .generations
                    .iter()
                    .map(|(g, n, c)| serde_json::json!({"generation": g, "txns": n, "checked": c}))
                    .collect();
                out!("{}", serde_json::json!({"ok": true, "generations": gens}));
            } else {
                for (g, n, c) in &report.generations {
                    out!("generation {g}: txns 1..={n} replayed, {c} boundaries checked, all checks passed");
                }
            }
            Ok(())
        }
        Err(ValidateError::CheckFailed(f)) => {
            if json {
                out!(
                    "{}",
                    serde_json::json!({"ok": false, "failure": f.to_json()})
                );
            }
            bail!("{} (committed {})", f, format_ms(f.commit_time_ms))
        }
        Err(e) => Err(e).with_context(|| format!("checking {uri}")),
    }
}

fn cmd_follow(
    uri: &str,
    replica: PathBuf,
    checks: Vec<String>,
    interval_ms: u64,
    once: bool,
) -> Result<()> {
    use walstream::reader::ReadError;
    use walstream::validate::{FollowStep, Follower, SeedReason, ValidateError};
    let target = open_target(uri)?;
    let mut follower = Follower::new(replica.clone(), checks);
    // Consecutive failed rounds tolerated (network errors, an object store caught mid-update)
    // before following gives up; a failed check stops it at once.
    const RETRIES: u32 = 10;
    let mut waiting = false;
    let mut failures = 0u32;
    loop {
        let step = follower.step(target.as_ref());
        // A validator may start before the primary's first snapshot reaches the target: wait
        // for it (`--once` reports it as an error instead).
        if let (Err(ValidateError::Read(ReadError::Empty(_))), false) = (&step, once) {
            if !waiting {
                eprintln!("walstream: {uri} holds no complete generation yet; waiting for one");
                waiting = true;
            }
            std::thread::sleep(Duration::from_millis(interval_ms));
            continue;
        }
        match &step {
            Err(e)
                if !once && failures < RETRIES && !matches!(e, ValidateError::CheckFailed(_)) =>
            {
                failures += 1;
                eprintln!("walstream: following {uri}: {e} (retrying, {failures} of {RETRIES})");
                std::thread::sleep(Duration::from_millis(
                    interval_ms.max(100) << failures.min(5),
                ));
                continue;
            }
            Ok(_) => failures = 0,
            Err(_) => {}
        }
        match step.with_context(|| format!("following {uri} into {}", replica.display()))? {
            FollowStep::UpToDate(_) => {}
            FollowStep::Advanced { from_seq, to } => {
                out!(
                    "generation {}: applied txns {}..={}",
                    to.generation,
                    from_seq + 1,
                    to.seq
                )
            }
            FollowStep::Seeded { to, why } => {
                let why = match why {
                    SeedReason::New | SeedReason::NewGeneration => "",
                    SeedReason::ReplicaChanged => {
                        " (the replica was not the state its follow file names: changed by \
                         something else, or a follower stopped between committing to it and \
                         saving where it was)"
                    }
                };
                out!(
                    "generation {}: seeded at txn {}{why}",
                    to.generation,
                    to.seq
                )
            }
        }
        if once {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
}

fn cmd_root(
    uri: Option<&str>,
    db: Option<&Path>,
    txn: Option<u64>,
    generation: Option<u64>,
    format_version: Option<u32>,
) -> Result<()> {
    if db.is_none() && format_version.is_some() {
        bail!(
            "--format-version applies to --db only: the roots a stream records follow the \
             format version of the files that hold them"
        );
    }
    if let Some(path) = db {
        let format_version = format_version.unwrap_or(walstream::record::FORMAT_VERSION);
        let scheme = walstream::state::RootScheme::of_version(format_version);
        let (page_size, root) = root_of_file(path, scheme)?;
        out!(
            "{}  {} ({} pages of {page_size} bytes, format version {format_version})",
            hex(&root),
            path.display(),
            std::fs::metadata(path)?.len() / u64::from(page_size)
        );
        return Ok(());
    }
    let uri = uri.expect("clap requires TARGET without --db");
    let target = open_target(uri)?;
    let objects = match generation {
        Some(g) => reader::generation(target.as_ref(), g)?,
        None => reader::latest_generation(target.as_ref())?,
    };
    let seq = match txn {
        Some(n) => n,
        None => reader::last_committed_seq(target.as_ref(), &objects)?,
    };
    struct NoPages;
    impl reader::Visitor for NoPages {}
    let summary = reader::replay(
        target.as_ref(),
        &objects,
        reader::ReplayLimit::Txn(seq),
        &mut NoPages,
    )?;
    out!(
        "{}  generation {} txn {}",
        hex(&summary.state_root),
        summary.generation,
        summary.last_seq
    );
    Ok(())
}

/// The state root of a database file, read page by page.
fn root_of_file(
    path: &Path,
    scheme: walstream::state::RootScheme,
) -> Result<(u32, walstream::record::Hash)> {
    use std::io::Read;
    // The file alone is not the database while its write-ahead log holds pages (a live
    // database, or a follower's replica): its root would be that of an older state.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    if let Ok(m) = std::fs::metadata(&wal) {
        if m.len() > 0 {
            bail!(
                "{} holds {} bytes of write-ahead log that {} does not include yet: checkpoint \
                 it first (sqlite3 {} 'PRAGMA wal_checkpoint(TRUNCATE)'), or take the root of a \
                 restored copy",
                wal.display(),
                m.len(),
                path.display(),
                path.display()
            );
        }
    }
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut header = [0u8; 100];
    file.read_exact(&mut header)
        .with_context(|| format!("{}: not a SQLite database (too short)", path.display()))?;
    if &header[..16] != b"SQLite format 3\0" {
        bail!("{}: not a SQLite database", path.display());
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let page_size = if raw == 1 { 65536 } else { raw };
    let file = File::open(path)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut tree = walstream::state::StateTree::new(page_size, scheme);
    let mut page = vec![0u8; page_size as usize];
    let mut pgno = 0u32;
    loop {
        match reader.read_exact(&mut page) {
            Ok(()) => {
                pgno += 1;
                tree.set_page(pgno, *blake3::hash(&page).as_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((page_size, tree.root()?))
}

fn cmd_keygen(curve: &str, out: &Path) -> Result<()> {
    use walstream::sign::{Algorithm, Signer};
    let algorithm = Algorithm::parse(curve).with_context(|| format!("unknown curve {curve:?}"))?;
    let signer = Signer::generate(algorithm)?;
    let pub_path = signer.write_new(out)?;
    out!(
        "wrote {} (secret, mode 0600) and {}",
        out.display(),
        pub_path.display()
    );
    out!("public key: {}", signer.public_key());
    Ok(())
}

fn cmd_verify(uri: &str, json: bool, pubkeys: &[PathBuf], allow_unsigned_tail: bool) -> Result<()> {
    let public_keys = pubkeys
        .iter()
        .map(|p| walstream::sign::PublicKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = verify::VerifyOptions {
        public_keys,
        allow_unsigned_tail,
    };
    let target = open_target(uri)?;
    let total: u64 = reader::inventory(target.as_ref())?
        .iter()
        .map(|g| g.bytes())
        .sum();
    let bar = progress_bar(total, "verifying");
    let result = verify::verify_with(target.as_ref(), &opts, &mut |b| bar.set_position(b));
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if json {
                out!(
                    "{}",
                    serde_json::json!({"ok": false, "error": e.to_string()})
                );
            }
            return Err(e).with_context(|| format!("verification of {uri} failed"));
        }
    };
    if json {
        let gens: Vec<_> = report.generations.iter().map(|g| serde_json::json!({
            "generation": g.generation, "last_seq": g.last_seq, "head": hex(&g.head_hash), "state_root": hex(&g.state_root)
        })).collect();
        let mut out = serde_json::json!({"ok": true, "generations": gens, "bytes": report.bytes});
        if !opts.public_keys.is_empty() {
            out["signatures"] = report.signatures.into();
        }
        out!("{out}");
        return Ok(());
    }
    for g in &report.generations {
        out!(
            "generation {}: snapshot of {} pages, txns 1..={} verified, head {}",
            g.generation,
            g.snapshot_pages,
            g.last_seq,
            &hex(&g.head_hash)[..16]
        );
    }
    if !opts.public_keys.is_empty() {
        out!(
            "signatures: {} valid, every sealed segment signed",
            report.signatures
        );
    }
    out!(
        "ok: {} generation(s), {} bytes verified",
        report.generations.len(),
        report.bytes
    );
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
    out!("target {}", target.describe());
    for g in &generations {
        let Some(snapshot) = &g.snapshot else {
            out!("generation {} (incomplete: no snapshot)", g.generation);
            continue;
        };
        let header = snapshot_header(target.as_ref(), &snapshot.key)?;
        out!(
            "generation {}  started {}  reason: {}  {} bytes",
            g.generation,
            format_ms(header.created_ms),
            header.reason,
            g.bytes()
        );
        out!(
            "  snapshot  {}  {} pages x {} bytes  {} bytes",
            snapshot.key,
            header.page_count,
            header.page_size,
            snapshot.size
        );
        for object in g.segments.values() {
            let stats = segment_stats(target.as_ref(), &object.key)?;
            let range = match (stats.first, stats.last) {
                (Some((a, ta)), Some((b, tb))) => {
                    format!("txns {a}..={b}  {} .. {}", format_ms(ta), format_ms(tb))
                }
                _ => "no txns".to_string(),
            };
            out!("  segment   {}  {range}  {} bytes", object.key, object.size);
        }
    }
    Ok(())
}

fn snapshot_header(
    target: &dyn Target,
    key: &str,
) -> Result<walstream::record::pb::SnapshotHeader> {
    let mut r = RecordReader::new(target.get(key)?).with_context(|| key.to_string())?;
    match r.next_record().with_context(|| key.to_string())? {
        Some((
            _,
            Record {
                body: Some(Body::SnapshotHeader(h)),
            },
        )) => Ok(h),
        _ => bail!("{key}: does not start with a snapshot header"),
    }
}

fn segment_stats(target: &dyn Target, key: &str) -> Result<SegmentStats> {
    let mut r = RecordReader::new(target.get(key)?).with_context(|| key.to_string())?;
    let mut stats = SegmentStats::default();
    loop {
        match r.next_record() {
            Ok(Some((
                _,
                Record {
                    body: Some(Body::TxnCommit(c)),
                },
            ))) => {
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

fn cmd_prune(
    uri: &str,
    keep_generations: Option<u64>,
    keep_days: Option<f64>,
    dry_run: bool,
) -> Result<()> {
    let target = open_target(uri)?;
    let keep = walstream::prune::Keep {
        generations: keep_generations,
        days: keep_days,
    };
    let report = walstream::prune::prune(target.as_ref(), &keep, dry_run)
        .with_context(|| format!("pruning {uri}"))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    for key in &report.deleted {
        out!("{verb} {key}");
    }
    out!(
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
            .with_context(|| {
                format!("{text}: an object URL ends in generations/<generation>/<name>")
            })?;
        let (root, key) = rest.split_at(at);
        let target = open_target(&format!("s3://{}", root.trim_end_matches('/')))?;
        return Ok(target.get(key)?);
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(BufReader::new(file)))
}

fn cmd_diff(
    uri: &str,
    txn: u64,
    generation: Option<u64>,
    invert: bool,
    format: &str,
    tmp_dir: Option<PathBuf>,
) -> Result<()> {
    use walstream::diff::{self, DiffOptions, JsonWriter, Sink, SqlWriter};
    let target = open_target(uri)?;
    let objects = match generation {
        Some(g) => reader::generation(target.as_ref(), g)?,
        None => reader::latest_generation(target.as_ref())?,
    };
    let opts = DiffOptions {
        generation: Some(objects.generation),
        txn,
        tmp_dir,
    };
    let out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut sink: Box<dyn Sink> = match format {
        "json" => Box::new(JsonWriter::new(out, invert)),
        _ => Box::new(SqlWriter { out, invert }),
    };
    let bar = progress_bar(objects.bytes(), "replaying");
    let result = diff::diff(
        target.as_ref(),
        &opts,
        &mut |b| bar.set_position(b),
        sink.as_mut(),
    );
    bar.finish_and_clear();
    if let Err(diff::DiffError::Output(e)) = &result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(()); // the reader stopped early (`| head`)
        }
    }
    let summary = result.with_context(|| {
        format!(
            "diff of txn {txn} of generation {} in {uri}",
            objects.generation
        )
    })?;
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
    out!(
        "{}: {:?} file, format version {}",
        path.display(),
        r.kind(),
        r.version()
    );
    let mut pages = walstream::record::page::PageDecoder::new(r.version());
    while let Some((offset, record)) = r
        .next_record()
        .with_context(|| path.display().to_string())?
    {
        let line = match record.body.expect("reader rejects empty records") {
            Body::SegmentHeader(h) => format!(
                "segment header: generation {} first txn {} prev hash {}",
                h.generation,
                h.first_seq,
                hex(&h.prev_hash)
            ),
            Body::TxnBegin(b) => format!("txn {} begin", b.seq),
            Body::KeptContinued(_) => "kept page versions continued from the previous segment \
                 (this file alone cannot decode deltas against them)"
                .to_string(),
            Body::Page(p) => {
                let (how, stored) = match (p.data.len(), p.zstd.len(), p.zstd_delta.len()) {
                    (_, 0, 0) => ("raw", p.data.len()),
                    (_, 0, n) => ("zstd delta", n),
                    (_, n, _) => ("zstd", n),
                };
                let kept = if p.kept { ", kept" } else { "" };
                let line = match pages.decode(&p, walstream::record::page::PAGE_BYTES_MAX) {
                    Ok(data) => {
                        let head = if verbose {
                            format!(" data {}..", hex(&data[..data.len().min(16)]))
                        } else {
                            String::new()
                        };
                        format!(
                            "{} bytes, {how} {stored} bytes{kept}) hash {}{head}",
                            data.len(),
                            hex(&p.hash)
                        )
                    }
                    Err(problem) => format!(
                        "{how} {stored} bytes{kept}: {problem}) hash {}",
                        hex(&p.hash)
                    ),
                };
                format!("  page {} ({line}", p.pgno)
            }
            Body::TxnCommit(c) => format!(
                "txn {} commit: {} pages, db size {} pages, time {}, hash {}",
                c.seq,
                c.page_count,
                c.db_size_pages,
                format_ms(c.commit_time_ms),
                hex(&c.hash)
            ),
            Body::SegmentEnd(e) => {
                format!("segment end: {:?}, next txn {}", e.reason(), e.next_seq)
            }
            Body::WalReset(w) => format!("WAL reset ({:?}) after txn {}", w.kind(), w.after_seq),
            Body::SnapshotHeader(h) => format!(
                "snapshot header: generation {} {} pages x {} bytes, reason: {}, created {}",
                h.generation,
                h.page_count,
                h.page_size,
                h.reason,
                format_ms(h.created_ms)
            ),
            Body::SnapshotChunk(c) => format!(
                "snapshot chunk: pages {}..={}",
                c.first_pgno,
                c.first_pgno as usize + c.hashes.len() - 1
            ),
            Body::SnapshotEnd(e) => format!("snapshot end: hash {}", hex(&e.hash)),
            Body::HeadSignature(s) => format!(
                "head signature: generation {} txn {} head {} by {} {} signature {}",
                s.generation,
                s.seq,
                hex(&s.head_hash),
                walstream::sign::Algorithm::from_pb(s.algorithm)
                    .map_or("(unknown algorithm)", |a| a.name()),
                hex(&s.public_key),
                hex(&s.signature)
            ),
        };
        out!("{offset:>10}  {line}");
    }
    Ok(())
}
