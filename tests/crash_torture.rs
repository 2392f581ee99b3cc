//! Goal: a writer killed with SIGKILL at random instants — between statements, inside COMMIT,
//! while capture reads the WAL, in the middle of a spool append, while a checkpoint resets the
//! WAL, while the last connection closes — loses nothing it acknowledged (guarantee 2).
//!
//! Method: a python writer (the system SQLite, walstream loaded) commits transactions of mixed
//! sizes (one row; 40 pages; ~700 pages, whose capture streams megabytes into the spool),
//! checkpoints now and then, and prints each id after `COMMIT` returns. The test reads a random
//! number of those lines, lets a random fraction of a millisecond pass (to spread the instant,
//! not to wait for anything), and kills the writer. Every line printed before death counts as
//! acknowledged. Then, through walstream in this process: the next write lock (what the next
//! writer's first transaction does) catches up; the primary must hold every acknowledged id;
//! `walstream verify` must pass; the newest restore must equal the primary's committed image
//! (`sqlite_dbpage`) and pass `PRAGMA integrity_check`.
//!
//! Each database lives for `EPOCH` rounds: in half the epochs this process keeps a connection
//! open between rounds (the WAL and wal-index persist, resets come from checkpoints), in the
//! others every round ends with a last close (WAL deleted, the next writer starts a new WAL).
//! The test reports how many kills left a partial transaction in the spool and how many left
//! committed transactions uncaptured, to show the instants covered.
//!
//! Rounds: `WALSTREAM_TORTURE_ROUNDS` (default 200; `make torture` runs 3000). Seed:
//! `WALSTREAM_SEED` replays a run.

mod common;
mod dropin;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dropin::*;
use walstream::reader::{self, ReplayLimit, Visitor};

const EPOCH: usize = 10;

const WRITER: &str = r#"
import random, sqlite3, sys
ext, db, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = random.Random(seed)
boot = sqlite3.connect(':memory:')
boot.enable_load_extension(True)
boot.load_extension(ext)
c = sqlite3.connect('file:' + db + '?vfs=walstream', uri=True, isolation_level=None, timeout=60)
c.execute('PRAGMA busy_timeout=60000')
c.execute('PRAGMA journal_mode=WAL')
c.execute('PRAGMA synchronous=' + rnd.choice(['OFF', 'NORMAL', 'FULL']))
c.execute('PRAGMA wal_autocheckpoint=' + str(rnd.choice([0, 5, 50, 1000])))
c.execute('CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, pad BLOB)')
c.execute('CREATE TABLE IF NOT EXISTS big(k INTEGER PRIMARY KEY, pad BLOB)')
if c.execute('SELECT count(*) FROM big').fetchone()[0] == 0:
    c.execute('INSERT INTO big WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 700) SELECT k, randomblob(3500) FROM n')
i = c.execute('SELECT coalesce(max(id), 0) FROM t').fetchone()[0]
while True:
    i += 1
    r = rnd.random()
    c.execute('BEGIN')
    c.execute('INSERT INTO t VALUES (?, randomblob(?))', (i, rnd.choice([10, 500, 3000])))
    if r > 0.96:
        c.execute('UPDATE big SET pad = randomblob(3500)')
    elif r > 0.75:
        c.execute('UPDATE big SET pad = randomblob(3500) WHERE k % 17 = ?', (i % 17,))
    c.execute('COMMIT')
    print(i, flush=True)
    if rnd.random() < 0.04:
        c.execute('PRAGMA wal_checkpoint(' + rnd.choice(['PASSIVE', 'FULL', 'RESTART', 'TRUNCATE']) + ')').fetchall()
    if rnd.random() < 0.01:
        c.close()
        c = sqlite3.connect('file:' + db + '?vfs=walstream', uri=True, isolation_level=None, timeout=60)
        c.execute('PRAGMA busy_timeout=60000')
"#;

struct Nop;
impl Visitor for Nop {}

/// Whether the newest generation ends with a partial transaction (a writer died mid-append).
fn torn_tail(db: &Path) -> bool {
    let target = default_target(db);
    let Ok(objects) = reader::latest_generation(target.as_ref()) else {
        return false;
    };
    match reader::replay(target.as_ref(), &objects, ReplayLimit::All, &mut Nop) {
        Ok(summary) => summary.torn_tail.is_some(),
        Err(_) => false,
    }
}

fn head(db: &Path) -> Option<(u64, u64)> {
    let target = default_target(db);
    let g = reader::latest_generation(target.as_ref()).ok()?;
    Some((
        g.generation,
        reader::last_committed_seq(target.as_ref(), &g).ok()?,
    ))
}

/// How a round's writer dies.
#[derive(Clone, Copy)]
enum Kill {
    /// SIGKILL from this process at a random instant.
    Instant,
    /// The writer kills itself at the n-th I/O call of a kind (tests/c/crash_at.c), after
    /// writing a fraction of the buffer.
    At {
        kind: &'static str,
        n: u64,
        fraction: f64,
    },
}

/// In self-kill rounds, lines read before giving up on the I/O call being reached.
const SELF_KILL_LINES_MAX: u64 = 400;

impl Kill {
    fn pick(rng: &mut Rng) -> Kill {
        let fraction = rng.below(1000) as f64 / 1000.0;
        let (kind, max_n) = match rng.below(20) {
            0..=7 => return Kill::Instant,
            8..=11 => ("spool", 40),
            12..=14 => ("wal", 400),
            15..=16 => ("db", 200),
            _ => ("sync", 60),
        };
        Kill::At {
            kind,
            n: 1 + rng.below(max_n),
            fraction,
        }
    }
    fn spec(&self) -> Option<String> {
        match self {
            Kill::Instant => None,
            Kill::At { kind, n, fraction } => Some(format!("{kind}:{n}:{fraction}")),
        }
    }
    fn name(&self, reached: bool) -> String {
        match self {
            Kill::Instant => "instant".into(),
            Kill::At { kind, .. } if reached => kind.to_string(),
            Kill::At { kind, .. } => format!("{kind} (not reached; killed)"),
        }
    }
}

/// The number of generations of `db`'s stream. A killed writer leaves the WAL intact, so the
/// history never needs to restart: a generation that holds transactions is never followed by
/// another (that fails the test, with `walstream ls`, which names each generation's reason).
/// One exception is tolerated and counted: a writer killed while starting a generation, after
/// its snapshot but before its first marker, leaves a generation with no transactions that the
/// next writer cannot continue; it starts another from a fresh snapshot, losing nothing.
fn generations_of(db: &Path, seed: u64, stats: &mut Stats) -> u64 {
    let Some((newest, _)) = head(db) else {
        return 0;
    };
    if newest > 1 {
        let target = default_target_dir(db);
        let (_, ls, _) = cli(&["ls", target.to_str().unwrap()]);
        let mut current = 0;
        for line in ls.lines() {
            if let Some(rest) = line.strip_prefix("generation ") {
                current = rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            } else if line.trim_start().starts_with("segment")
                && current < newest
                && !line.contains("no txns")
            {
                panic!("{}: generation {current} holds transactions but a newer one started after process kills (seed {seed}):\n{ls}", db.display());
            }
        }
        stats.empty_generations_abandoned += newest - 1;
    }
    newest
}

#[derive(Default, Debug)]
struct Stats {
    kills: std::collections::BTreeMap<String, usize>,
    rounds: usize,
    acknowledged: u64,
    torn_tail: usize,
    uncaptured_at_kill: usize,
    killed_before_first_ack: usize,
    generations: u64,
    empty_generations_abandoned: u64,
}

#[test]
fn writer_killed_at_random_instants_loses_nothing_acknowledged() {
    let total = rounds("WALSTREAM_TORTURE_ROUNDS", 200);
    let (mut rng, seed) = Rng::from_env_or_time("WALSTREAM_SEED");
    eprintln!("crash_torture: {total} rounds, seed {seed} (set WALSTREAM_SEED to replay)");
    let started = Instant::now();
    let mut stats = Stats::default();
    let dir = tempfile::tempdir().unwrap();
    let restored = dir.path().join("restored.db");
    let injector = gcc_shared(dir.path(), "crash_at", include_str!("c/crash_at.c"));
    let mut holder: Option<rusqlite::Connection> = None;
    let mut db = dir.path().join("unused.db");
    let mut keep_open = false;
    let mut max_acked: i64 = 0;
    for round in 0..total {
        if round % EPOCH == 0 {
            if let Some(prev) = holder.take() {
                drop(prev);
            }
            if round > 0 {
                let g = generations_of(&db, seed, &mut stats);
                stats.generations += g;
            }
            db = dir.path().join(format!("torture-{}.db", round / EPOCH));
            keep_open = (round / EPOCH) % 2 == 1;
            max_acked = 0;
        }
        let child_seed = rng.next() % 1_000_000_007;
        let how = Kill::pick(&mut rng);
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-c")
            .arg(WRITER)
            .args([ext(), db.display().to_string(), child_seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(spec) = how.spec() {
            cmd.env("LD_PRELOAD", &injector).env("CRASH_AT", spec);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let wanted = match how {
            Kill::Instant => rng.below(40),
            _ => SELF_KILL_LINES_MAX,
        };
        let mut acked: i64 = max_acked;
        let mut eof = false;
        for _ in 0..wanted {
            match lines.next() {
                Some(Ok(l)) => acked = l.trim().parse().unwrap(),
                _ => {
                    eof = true;
                    break;
                }
            }
        }
        if let Kill::Instant = how {
            // Spread the instant of death over the next transaction or two.
            let until = Instant::now() + Duration::from_micros(rng.below(3000));
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        *stats.kills.entry(how.name(eof)).or_default() += 1;
        // Lines already in the pipe were printed after their COMMIT returned: acknowledged too.
        for l in lines.map_while(Result::ok) {
            acked = l.trim().parse().unwrap();
        }
        if acked == max_acked {
            stats.killed_before_first_ack += 1;
        }
        stats.acknowledged += (acked - max_acked) as u64;
        max_acked = acked;

        // What the kill left behind, before anyone touches the database again.
        let torn = torn_tail(&db);
        let before = head(&db);

        // The next writer's first write lock catches up (the same moment fires in any writer).
        let conn = match holder.take() {
            Some(c) => c,
            None => open_captured(&db, ""),
        };
        conn.busy_timeout(Duration::from_secs(60)).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT;").unwrap();
        let after = head(&db);
        if torn {
            stats.torn_tail += 1;
        }
        if before.is_some()
            && after.is_some()
            && after.unwrap().1 > before.unwrap().1
            && after.unwrap().0 == before.unwrap().0
        {
            stats.uncaptured_at_kill += 1;
        }
        let has_t: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 't'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let max: i64 = if has_t == 1 {
            conn.query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
                .unwrap()
        } else {
            0
        };
        assert!(max >= acked, "round {round} (seed {seed}): acknowledged id {acked} missing from the primary (max {max})");
        if has_t == 0 {
            // Killed before the schema existed: nothing was committed, nothing to restore.
            assert_eq!(acked, 0);
            if keep_open {
                holder = Some(conn);
            }
            continue;
        }
        let primary = blake3::hash(&image(&conn));

        let target = default_target_dir(&db);
        verify(&target);
        restore(&target, &restored, &[]);
        let bytes = std::fs::read(&restored).unwrap();
        assert!(
            blake3::hash(&bytes) == primary,
            "round {round} (seed {seed}): restore differs from the primary ({} bytes)",
            bytes.len()
        );
        let check = rusqlite::Connection::open(&restored).unwrap();
        let ok: String = check
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            ok, "ok",
            "round {round} (seed {seed}): restored database is corrupt"
        );
        let restored_max: i64 = check
            .query_row("SELECT coalesce(max(id), 0) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(
            restored_max >= acked,
            "round {round}: acknowledged id {acked} missing from the stream"
        );
        drop(check);

        if keep_open {
            holder = Some(conn);
        } else {
            drop(conn); // the last close: checkpoint, WAL deleted
        }
        stats.rounds += 1;
    }
    drop(holder);
    let g = generations_of(&db, seed, &mut stats);
    stats.generations += g;
    let databases = total.div_ceil(EPOCH) as u64;
    eprintln!(
        "crash_torture: {stats:?} in {:.1}s ({databases} databases of {EPOCH} rounds)",
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(
        stats.generations - stats.empty_generations_abandoned,
        databases,
        "seed {seed}"
    );
    if total >= 100 {
        assert!(
            stats.torn_tail > 0,
            "some kills must land in the middle of a spool append"
        );
        assert!(
            stats.uncaptured_at_kill > 0,
            "some kills must land between commit and capture"
        );
    }
}
