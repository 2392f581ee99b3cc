//! Goal: every way a real client can load walstream captures exactly what it commits: the
//! `sqlite3` shell (`.load`, URI `?vfs=walstream`), Python's `sqlite3` (`load_extension`), Rust
//! `rusqlite` (`load_extension`), Node `better-sqlite3` 12 (`loadExtension`, default-VFS
//! setting: its bundled SQLite takes no URI file names), and the default-VFS setting with code
//! that opens a plain file name.
//!
//! Method: each client runs the same workload (one transaction per statement: schema, bulk
//! insert, update, delete, index, overflow pages, VACUUM that shrinks the file), reports
//! `walstream_status()`, and closes; the stream is verified and restored with the CLI, and the
//! restore must equal the database file byte for byte.
//!
//! Node: `make test` installs better-sqlite3@12 into target/node-clients (see the Makefile's
//! `test-deps-clients`) and sets `WALSTREAM_REQUIRE_NODE=1`; run by hand without it, the Node
//! test is skipped with a note.

mod common;
mod dropin;

use std::path::{Path, PathBuf};
use std::process::Command;

use dropin::*;

/// One transaction each.
const WORKLOAD: &[&str] = &[
    "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT, b BLOB)",
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<400) \
     INSERT INTO kv SELECT i, 'value ' || i, randomblob(i % 700) FROM c",
    "UPDATE kv SET v = upper(v) || '!' WHERE k % 3 = 0",
    "DELETE FROM kv WHERE k % 5 = 0",
    "CREATE INDEX kv_v ON kv(v)",
    "INSERT INTO kv VALUES (100000, 'big', randomblob(200000))",
    "DELETE FROM kv WHERE k > 150",
    "VACUUM",
];

fn workload_sql() -> String {
    WORKLOAD.iter().map(|s| format!("{s};\n")).collect()
}

fn expect_captured_all(status_json: &str) {
    let v: serde_json::Value = serde_json::from_str(status_json.trim())
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {status_json}"));
    assert_eq!(v["captured"], true, "{status_json}");
    assert_eq!(
        v["last_seq"],
        WORKLOAD.len() as u64,
        "one txn per statement: {status_json}"
    );
    assert_eq!(v["behind"], false, "{status_json}");
}

fn check(db: &Path) {
    assert_restores_to_file(&default_target_dir(db), db);
    assert_eq!(query(db, "SELECT count(*) FROM kv"), "120");
    assert_eq!(query(db, "PRAGMA integrity_check"), "ok");
}

#[test]
fn sqlite3_shell_with_load_and_uri() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shell.db");
    let script = format!(
        ".load {}\n.open file:{}?vfs=walstream\nPRAGMA journal_mode=WAL;\n{}SELECT walstream_status();\n",
        ext(),
        db.display(),
        workload_sql()
    );
    let out = run_ok(&mut Command::new(SQLITE3), &script);
    expect_captured_all(out.lines().last().unwrap());
    check(&db);
}

#[test]
fn python_with_load_extension_and_uri() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("python.db");
    let script = common::python_captured(
        &db,
        "conn.execute('PRAGMA journal_mode=WAL')\n\
         for s in sys.stdin.read().split(';\\n'):\n    \
             if s.strip(): conn.execute(s)\n\
         print(conn.execute('SELECT walstream_status()').fetchone()[0])\n\
         conn.close()",
    );
    let out = run_ok(&mut python(&script), &workload_sql());
    expect_captured_all(&out);
    check(&db);
}

#[test]
fn default_vfs_setting_with_code_opening_a_plain_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    // The application code only opens "plain.db": no URI, no VFS name.
    let script = format!(
        "import sqlite3, sys, os\n\
         boot = sqlite3.connect(':memory:')\n\
         boot.enable_load_extension(True)\n\
         boot.load_extension({ext:?})\n\
         os.chdir({dir:?})\n\
         c = sqlite3.connect('plain.db', isolation_level=None)\n\
         c.execute('PRAGMA journal_mode=WAL')\n\
         for s in sys.stdin.read().split(';\\n'):\n    \
             if s.strip(): c.execute(s)\n\
         print(c.execute('SELECT walstream_status()').fetchone()[0])\n\
         c.close()\n",
        ext = ext(),
        dir = dir.path().display().to_string()
    );
    let out = run_ok(
        python(&script).env("WALSTREAM_DEFAULT_VFS", "1"),
        &workload_sql(),
    );
    expect_captured_all(&out);
    check(&db);
}

#[test]
fn rusqlite_with_load_extension() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rusqlite.db");
    let conn = common::open_captured(&db, "");
    conn.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    for s in WORKLOAD {
        conn.execute_batch(s).unwrap();
    }
    let status: String = conn
        .query_row("SELECT walstream_status()", [], |r| r.get(0))
        .unwrap();
    expect_captured_all(&status);
    drop(conn);
    check(&db);
}

/// better-sqlite3's package directory, or `None` when it is not installed.
fn better_sqlite3() -> Option<PathBuf> {
    let dir = std::env::var_os("WALSTREAM_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node-clients/node_modules")
        })
        .join("better-sqlite3");
    let built = dir.join("build/Release/better_sqlite3.node");
    if built.exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("WALSTREAM_REQUIRE_NODE").is_none(),
        "{} is missing but WALSTREAM_REQUIRE_NODE is set: `make test-deps-clients` installs it",
        built.display()
    );
    eprintln!(
        "note: better-sqlite3 is not installed ({}); Node test skipped",
        built.display()
    );
    None
}

#[test]
fn node_better_sqlite3_with_load_extension() {
    let Some(module) = better_sqlite3() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let script = format!(
        "const Database = require({module:?});\n\
         const boot = new Database(':memory:');\n\
         boot.loadExtension({ext:?});\n\
         const db = new Database({db:?});\n\
         db.pragma('journal_mode = WAL');\n\
         const input = require('fs').readFileSync(0, 'utf8');\n\
         for (const s of input.split(';\\n')) if (s.trim()) db.exec(s);\n\
         console.log(db.prepare('SELECT walstream_status() AS s').get().s);\n\
         db.close();\n\
         boot.close();\n",
        module = module.display().to_string(),
        ext = ext(),
        db = db.display().to_string()
    );
    let out = run_ok(
        Command::new("node")
            .arg("-e")
            .arg(script)
            .env("WALSTREAM_DEFAULT_VFS", "1"),
        &workload_sql(),
    );
    expect_captured_all(&out);
    check(&db);
}

#[test]
fn node_better_sqlite3_is_not_reached_by_ld_preload() {
    // better-sqlite3 compiles its own SQLite into the addon with hidden symbols: LD_PRELOAD
    // cannot interpose it (the documented limit); the status function shows it.
    let Some(module) = better_sqlite3() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node-preload.db");
    let script = format!(
        "const Database = require({module:?});\n\
         const db = new Database({db:?});\n\
         db.pragma('journal_mode = WAL'); db.exec('CREATE TABLE t(x)');\n\
         try {{ db.prepare('SELECT walstream_status()').get(); }} catch (e) {{ console.log(String(e)); }}\n\
         db.close();\n",
        module = module.display().to_string(),
        db = db.display().to_string()
    );
    let out = run_ok(
        Command::new("node")
            .arg("-e")
            .arg(script)
            .env("LD_PRELOAD", ext()),
        "",
    );
    assert!(out.contains("no such function: walstream_status"), "{out}");
    assert!(!default_target_dir(&db).exists());
}
