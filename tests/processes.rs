//! Goal: capture works across processes and survives a writer killed right after COMMIT
//! (guarantees 1 and 2), through the system's own SQLite (3.40.1) driven by `/usr/bin/python3`
//! and the `sqlite3` shell.
//!
//! Method: child processes load `libwalstream.so` into the system SQLite and write; this
//! process writes too. A child that prints after each COMMIT is killed with SIGKILL; every
//! transaction it reported must be in the stream, and the restored database must equal the
//! primary as SQLite recovers it.

mod common;
mod dropin;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use dropin::{python, run_ok, SQLITE3};

#[test]
fn two_processes_writing_in_turn_are_captured_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = open_captured(&db, "");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(who TEXT, n INTEGER);")
        .unwrap();
    let target = default_target(&db);
    let mut expected = Vec::new();
    for round in 0..4 {
        run_ok(
            &mut python(&python_captured(&db, &format!(
                "for i in range(5):\n    conn.execute(\"INSERT INTO t VALUES ('py', ?)\", ({round} * 10 + i,))"
            ))),
            "",
        );
        for i in 0..3 {
            conn.execute("INSERT INTO t VALUES ('rust', ?1)", [round * 10 + i])
                .unwrap();
        }
        let (generation, seq) = stream_head(target.as_ref());
        expected.push((seq, image_hash(&conn)));
        assert_eq!(generation, 1);
    }
    let replayed = replay_hashes(target.as_ref(), 1);
    for (seq, hash) in expected {
        assert_eq!(replayed[&seq], hash, "txn {seq}");
    }
    let (_, last) = stream_head(target.as_ref());
    assert_eq!(
        last,
        1 + 4 * (5 + 3),
        "every commit of both processes is one txn"
    );
}

#[test]
fn writer_killed_right_after_commit_loses_nothing() {
    for kill_after in [1usize, 7, 40] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let body = "conn.execute('PRAGMA journal_mode=WAL')\n\
                    conn.execute('CREATE TABLE IF NOT EXISTS t(n INTEGER, pad BLOB)')\n\
                    i = 0\n\
                    while True:\n    \
                        conn.execute('BEGIN')\n    \
                        conn.execute('INSERT INTO t VALUES (?, randomblob(3000))', (i,))\n    \
                        conn.execute('COMMIT')\n    \
                        print(i, flush=True)\n    \
                        i += 1";
        let mut child = python(&python_captured(&db, body))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acknowledged = None;
        for _ in 0..kill_after {
            acknowledged = Some(lines.next().unwrap().unwrap().parse::<i64>().unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let acknowledged = acknowledged.unwrap();
        // The next open through walstream recovers the WAL and catches up with anything the
        // killed writer committed but had not finished capturing.
        let reopened = open_captured(&db, "");
        let max: i64 = reopened
            .query_row("SELECT max(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(max >= acknowledged);
        let primary = image(&reopened);
        drop(reopened);
        let restored = restore_latest(&db);
        assert_eq!(
            blake3::hash(&restored),
            blake3::hash(&primary),
            "kill after {kill_after}: restored database differs"
        );
        let out = db.with_extension("restored");
        let check = open_plain(&out);
        let restored_max: i64 = check
            .query_row("SELECT max(n) FROM t", [], |r| r.get(0))
            .unwrap();
        assert!(
            restored_max >= acknowledged,
            "acknowledged txn {acknowledged} missing from the stream"
        );
    }
}

#[test]
fn sqlite3_shell_session_restores_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let script = format!(
        ".load {ext}\n.open file:{db}?vfs=walstream\nPRAGMA journal_mode=WAL;\n\
         CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT);\n\
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<500)\n\
         INSERT INTO kv SELECT 'key'||i, hex(randomblob(100)) FROM c;\n\
         UPDATE kv SET v = 'x' WHERE rowid % 3 = 0;\n\
         DELETE FROM kv WHERE rowid % 5 = 0;\n\
         SELECT json_extract(walstream_status(), '$.last_seq');\n",
        ext = ext_path().with_extension("").display(),
        db = db.display()
    );
    let stdout = run_ok(&mut Command::new(SQLITE3), &script);
    assert!(
        stdout.lines().any(|l| l.trim() == "4"),
        "status reports 4 captured txns: {stdout}"
    );
    // The shell closed the database: the WAL is checkpointed and gone, so the file is the image.
    assert!(!Path::new(&format!("{}-wal", db.display())).exists());
    let primary = std::fs::read(&db).unwrap();
    assert_eq!(blake3::hash(&restore_latest(&db)), blake3::hash(&primary));
}
