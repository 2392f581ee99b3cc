//! Goal: several processes, each with several connections on their own threads, writing the
//! same database at once (busy_timeout) while checkpoints of every kind run (explicit PASSIVE,
//! FULL, RESTART, TRUNCATE and auto-checkpoints): the stream holds every transaction exactly
//! once, in commit order, and restores to the primary (guarantee 1 under contention).
//!
//! Method: each transaction (`BEGIN IMMEDIATE`) appends the row `id = max(id) + 1` to `log` and
//! sets `counter.n = id`, so the commit order is written into the data. After all writers exit:
//! the stream is one generation whose last transaction is `1 + commits` (the schema, then one
//! per commit); the newest restore equals the database file byte for byte; and a restore at
//! transaction `s` holds exactly the rows `1..s-1` (checked at sampled points, with
//! `integrity_check`). Writers start together: each prints `ready` and waits for a line on
//! stdin.

mod common;
mod dropin;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use dropin::*;

const WORKER: &str = r#"
import random, sqlite3, sys, threading
ext, db, proc_id, conns, txns, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
boot = sqlite3.connect(':memory:')
boot.enable_load_extension(True)
boot.load_extension(ext)
uri = 'file:' + db + '?vfs=walstream'

def connect(rnd):
    c = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=120, check_same_thread=False)
    c.execute('PRAGMA busy_timeout=120000')
    c.execute('PRAGMA synchronous=' + rnd.choice(['NORMAL', 'FULL']))
    c.execute('PRAGMA wal_autocheckpoint=' + str(rnd.choice([0, 8, 40, 1000])))
    return c

failures = []
def worker(k):
    rnd = random.Random(seed * 1000 + proc_id * 10 + k)
    try:
        c = connect(rnd)
        go.wait()
        for i in range(txns):
            c.execute('BEGIN IMMEDIATE')
            c.execute('INSERT INTO log(id, proc, conn, i, pad) '
                      'VALUES ((SELECT coalesce(max(id), 0) + 1 FROM log), ?, ?, ?, randomblob(?))',
                      (proc_id, k, i, rnd.choice([8, 200, 1500, 6000, 20000])))
            c.execute('UPDATE counter SET n = (SELECT max(id) FROM log)')
            if rnd.random() < 0.2:
                c.execute('UPDATE log SET hits = hits + 1 WHERE id = abs(random()) % (SELECT max(id) FROM log) + 1')
            c.execute('COMMIT')
            if rnd.random() < 0.06:
                mode = rnd.choice(['PASSIVE', 'FULL', 'RESTART', 'TRUNCATE'])
                c.execute('PRAGMA wal_checkpoint(' + mode + ')').fetchall()
        c.close()
    except Exception as e:
        failures.append(repr(e))

go = threading.Event()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in threads: t.start()
print('ready', flush=True)
sys.stdin.readline()
go.set()
for t in threads: t.join()
if failures:
    print('failures:', failures, flush=True)
    sys.exit(1)
print('done', flush=True)
"#;

#[test]
fn processes_and_connections_writing_concurrently_with_checkpoints() {
    let (procs, conns, txns) = (4usize, 3usize, rounds("WALSTREAM_MANY_WRITERS_TXNS", 60));
    let (_, seed) = Rng::from_env_or_time("WALSTREAM_SEED");
    eprintln!("many_writers: seed {seed} (set WALSTREAM_SEED to replay)");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let setup = format!(
        ".load {}\n.open file:{}?vfs=walstream\nPRAGMA journal_mode=WAL;\n\
         BEGIN;\n\
         CREATE TABLE log(id INTEGER PRIMARY KEY, proc INT, conn INT, i INT, hits INT DEFAULT 0, pad BLOB);\n\
         CREATE TABLE counter(n INTEGER);\n\
         INSERT INTO counter VALUES (0);\n\
         COMMIT;\n",
        ext(),
        db.display()
    );
    // The setup connection stays open until every writer is ready, so the WAL is never deleted
    // in between (no reason for a new generation).
    let mut holder = Command::new(SQLITE3)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut holder_in = holder.stdin.take().unwrap();
    holder_in.write_all(setup.as_bytes()).unwrap();
    holder_in.write_all(b".print setup-done\n").unwrap();
    let mut holder_out = BufReader::new(holder.stdout.take().unwrap()).lines();
    loop {
        let line = holder_out.next().unwrap().unwrap();
        if line.trim() == "setup-done" {
            break;
        }
    }

    let mut children = Vec::new();
    for p in 0..procs {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(WORKER)
            .args([ext(), db.display().to_string()])
            .args([p, conns, txns, seed as usize].map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(out.next().unwrap().unwrap(), "ready");
        children.push((child, out));
    }
    drop(holder_in); // the shell exits; writers keep the database open
    assert!(holder.wait().unwrap().success());
    for (child, _) in &mut children {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    for (mut child, mut out) in children {
        let line = out.next().unwrap().unwrap();
        assert_eq!(line, "done", "writer failed: {line}");
        assert!(child.wait().unwrap().success());
    }

    let commits = procs * conns * txns;
    let target = default_target_dir(&db);
    assert_eq!(
        query(
            &db,
            "SELECT count(*), max(id), (SELECT n FROM counter) FROM log"
        ),
        format!("{commits}|{commits}|{commits}")
    );
    let (ok, ls, err) = common::cli(&["ls", target.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        ls.lines().filter(|l| l.starts_with("generation ")).count(),
        1,
        "one generation: {ls}"
    );
    let last = (commits + 1) as u64;
    assert!(
        ls.contains(&format!("..={last} ")),
        "the stream ends at txn {last}: {ls}"
    );
    assert_restores_to_file(&target, &db);
    let restarts = inspect_segments(&target)
        .matches("WAL reset (Restart)")
        .count();
    eprintln!(
        "many_writers: {commits} commits, {restarts} WAL restarts followed in one generation"
    );
    assert!(restarts > 0, "the checkpoints reset the WAL at least once");

    // Commit order: at transaction s, exactly the rows 1..s-1 exist.
    let mut rng = Rng::new(seed);
    let mut points: Vec<u64> = (0..20).map(|_| 1 + rng.below(last)).collect();
    points.extend([1, 2, last - 1, last]);
    points.sort_unstable();
    points.dedup();
    let out = dir.path().join("at.db");
    for s in points {
        restore(&target, &out, &["--txn", &s.to_string()]);
        let n = s - 1;
        assert_eq!(
            query(
                &out,
                "SELECT count(*), coalesce(max(id), 0), (SELECT n FROM counter) FROM log"
            ),
            format!("{n}|{n}|{n}"),
            "restore at txn {s}"
        );
        assert_eq!(
            query(&out, "PRAGMA integrity_check"),
            "ok",
            "restore at txn {s}"
        );
    }
}
