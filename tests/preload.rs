//! Goal: `LD_PRELOAD=libwalstream.so program` captures an unmodified program that links SQLite
//! dynamically (the `sqlite3` shell, `/usr/bin/python3`, a C program using each of
//! `sqlite3_open`, `sqlite3_open16` and `sqlite3_open_v2`), with no code change; the limits are
//! as documented (a statically linked SQLite is not captured, and says so through a missing
//! `walstream_status()`); and the same library loaded the ordinary way (`.load`) interposes
//! nothing.
//!
//! Method: each program writes plain file names with the library preloaded; the stream is
//! verified and restored with the CLI and compared byte for byte with the database file after
//! the program exits (its last close checkpoints everything into the file).

mod common;
mod dropin;

use std::path::Path;
use std::process::Command;

use dropin::*;

const C_PROGRAM: &str = r#"
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void exec(sqlite3 *db, const char *sql) {
    char *err = 0;
    if (sqlite3_exec(db, sql, 0, 0, &err) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, err);
        exit(2);
    }
}

static void status(const char *label, sqlite3 *db) {
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT walstream_status()", -1, &st, 0) != SQLITE_OK) {
        printf("%s: error: %s\n", label, sqlite3_errmsg(db));
        return;
    }
    sqlite3_step(st);
    printf("%s: %s\n", label, (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

static void work(const char *label, sqlite3 *db) {
    exec(db, "PRAGMA journal_mode=WAL; CREATE TABLE t(x);"
             "INSERT INTO t VALUES (randomblob(100));"
             "INSERT INTO t SELECT randomblob(3000) FROM t;");
    status(label, db);
}

int main(int argc, char **argv) {
    if (argc != 4) return 9;
    /* Must still work: walstream installs itself at the first open, not before main. */
    printf("config: %d\n", sqlite3_config(SQLITE_CONFIG_MULTITHREAD));
    sqlite3 *a = 0, *b = 0, *c = 0;
    if (sqlite3_open(argv[1], &a) != SQLITE_OK) return 3;
    unsigned short name16[4096];
    size_t n = strlen(argv[2]);
    for (size_t i = 0; i <= n; i++) name16[i] = (unsigned char)argv[2][i];
    if (sqlite3_open16(name16, &b) != SQLITE_OK) return 4;
    if (sqlite3_open_v2(argv[3], &c, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, 0) != SQLITE_OK)
        return 5;
    work("open", a);
    work("open16", b);
    work("open_v2", c);
    sqlite3_close(a);
    sqlite3_close(b);
    sqlite3_close(c);
    return 0;
}
"#;

fn preloaded(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", ext());
    cmd
}

#[test]
fn sqlite3_shell_under_ld_preload_captures_a_plain_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shell.db");
    let script = "PRAGMA journal_mode=WAL;\n\
         CREATE TABLE kv(k TEXT PRIMARY KEY, v TEXT);\n\
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300)\n\
         INSERT INTO kv SELECT 'key'||i, hex(randomblob(200)) FROM c;\n\
         UPDATE kv SET v = 'x' WHERE rowid % 3 = 0;\n\
         SELECT json_extract(walstream_status(), '$.captured'), json_extract(walstream_status(), '$.last_seq');\n";
    let out = run_ok(preloaded(SQLITE3).arg(&db), script);
    assert!(
        out.lines().any(|l| l.trim() == "1|3"),
        "captured, 3 txns: {out}"
    );
    assert_restores_to_file(&default_target_dir(&db), &db);
}

#[test]
fn python_under_ld_preload_captures_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("py.db");
    let script = format!(
        "import sqlite3, json\n\
         a = sqlite3.connect({db:?}, isolation_level=None)\n\
         a.execute('PRAGMA journal_mode=WAL')\n\
         a.execute('CREATE TABLE t(who TEXT, n INTEGER, pad BLOB)')\n\
         b = sqlite3.connect({db:?}, isolation_level=None)\n\
         for i in range(20):\n    \
             (a if i % 2 else b).execute('INSERT INTO t VALUES (?, ?, randomblob(500))', ('ab'[i % 2], i))\n\
         b.execute('BEGIN'); b.execute('DELETE FROM t WHERE n % 3 = 0'); b.execute('COMMIT')\n\
         s = json.loads(a.execute('SELECT walstream_status()').fetchone()[0])\n\
         print(s['captured'], s['last_seq'])\n\
         a.close(); b.close()\n",
        db = db.display().to_string()
    );
    let out = run_ok(preloaded(PYTHON).arg("-c").arg(script), "");
    assert_eq!(out.trim(), "True 22", "1 create + 20 inserts + 1 delete");
    assert_restores_to_file(&default_target_dir(&db), &db);
}

#[test]
fn c_program_under_ld_preload_captures_each_open_function() {
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "opens", C_PROGRAM, &["-lsqlite3"]);
    let dbs: Vec<_> = ["a.db", "b.db", "c.db"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let out = run_ok(preloaded(exe.to_str().unwrap()).args(&dbs), "");
    assert!(
        out.contains("config: 0"),
        "sqlite3_config before the first open still works: {out}"
    );
    for label in ["open", "open16", "open_v2"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .unwrap();
        assert!(
            line.contains("\"captured\":true") && line.contains("\"last_seq\":3"),
            "{line}"
        );
    }
    for db in &dbs {
        assert_restores_to_file(&default_target_dir(db), db);
    }
}

#[test]
fn statically_linked_sqlite_is_not_captured_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(
        dir.path(),
        "static_opens",
        C_PROGRAM,
        &[
            "-Wl,-Bstatic",
            "-lsqlite3",
            "-Wl,-Bdynamic",
            "-lm",
            "-lpthread",
            "-ldl",
        ],
    );
    let dbs: Vec<_> = ["a.db", "b.db", "c.db"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let out = run_ok(preloaded(exe.to_str().unwrap()).args(&dbs), "");
    // How a user notices: the status function does not exist, and no stream directory appears.
    assert!(
        out.contains("open_v2: error: no such function: walstream_status"),
        "{out}"
    );
    for db in &dbs {
        assert!(db.exists());
        assert!(
            !default_target_dir(db).exists(),
            "{} must not be captured",
            db.display()
        );
    }
}

#[test]
fn loaded_extension_interposes_nothing() {
    // SQLite's unix VFS loads extensions with dlopen(RTLD_NOW | RTLD_GLOBAL), so the exported
    // sqlite3_open* do enter the global scope. Python's SQLite is loaded RTLD_LOCAL (by the
    // _sqlite3 module), so a global lookup now finds walstream's export first: it must forward
    // to the real SQLite unchanged, without making walstream the default VFS.
    let dir = tempfile::tempdir().unwrap();
    let via_global = dir.path().join("global.db");
    let via_module = dir.path().join("module.db");
    let script = format!(
        "import sqlite3, ctypes, os\n\
         boot = sqlite3.connect(':memory:')\n\
         boot.enable_load_extension(True)\n\
         boot.load_extension({ext:?})\n\
         P = ctypes.c_void_p\n\
         ours = ctypes.CDLL({ext:?}).sqlite3_open_v2\n\
         glob = ctypes.CDLL(None).sqlite3_open_v2\n\
         print('global lookup finds walstream:', ctypes.cast(ours, P).value == ctypes.cast(glob, P).value)\n\
         glob.argtypes = [ctypes.c_char_p, ctypes.POINTER(P), ctypes.c_int, ctypes.c_char_p]\n\
         lib = ctypes.CDLL('libsqlite3.so.0')\n\
         lib.sqlite3_exec.argtypes = [P, ctypes.c_char_p, P, P, P]\n\
         lib.sqlite3_close.argtypes = [P]\n\
         db = P()\n\
         print('rc:', glob({g:?}.encode(), ctypes.byref(db), 6, None))\n\
         print('exec:', lib.sqlite3_exec(db, b'PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1)', None, None, None))\n\
         lib.sqlite3_close(db)\n\
         c = sqlite3.connect({m:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(x)'); c.commit()\n\
         print(c.execute('SELECT walstream_status()').fetchone()[0])\n\
         c.close()\n",
        ext = ext(),
        g = via_global.display().to_string(),
        m = via_module.display().to_string(),
    );
    let out = run_ok(
        python(&script)
            .env_remove("LD_PRELOAD")
            .env_remove("WALSTREAM_DEFAULT_VFS"),
        "",
    );
    assert!(out.contains("global lookup finds walstream: True"), "{out}");
    assert!(
        out.contains("rc: 0") && out.contains("exec: 0"),
        "forwarded to the real SQLite: {out}"
    );
    assert!(
        out.contains("\"captured\":false"),
        "walstream is not the default: {out}"
    );
    assert_eq!(query(&via_global, "SELECT count(*) FROM t"), "1");
    assert!(!default_target_dir(&via_global).exists());
    assert!(!default_target_dir(&via_module).exists());
}

#[test]
fn read_only_open_with_an_unusable_target_runs_uncaptured() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.db");
    run_ok(
        Command::new(SQLITE3).arg(&db),
        "CREATE TABLE t(x); INSERT INTO t VALUES (42);",
    );
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let script = format!(
        "import sqlite3\n\
         r = sqlite3.connect('file:' + {db:?} + '?mode=ro', uri=True)\n\
         print('read:', r.execute('SELECT x FROM t').fetchone()[0])\n\
         try:\n    \
             w = sqlite3.connect({db:?}); w.execute('INSERT INTO t VALUES (1)'); w.commit(); print('write: ok')\n\
         except sqlite3.Error as e:\n    \
             print('write:', e)\n",
        db = db.display().to_string()
    );
    let out = run_ok(
        preloaded(PYTHON)
            .env("WALSTREAM_TARGET", blocker.join("sub"))
            .arg("-c")
            .arg(script),
        "",
    );
    assert!(out.contains("read: 42"), "{out}");
    assert!(out.contains("write: unable to open database file"), "{out}");
}

#[test]
fn rollback_journal_databases_keep_working_under_ld_preload() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("journal.db");
    let script = format!(
        "import sqlite3\n\
         c = sqlite3.connect({db:?}, isolation_level=None)\n\
         for mode in ['delete', 'truncate', 'persist', 'memory', 'delete']:\n    \
             print(c.execute('PRAGMA journal_mode=' + mode).fetchone()[0])\n\
         c.execute('CREATE TABLE t(x)'); c.execute('INSERT INTO t VALUES (1)')\n\
         print(c.execute('PRAGMA journal_mode=WAL').fetchone()[0])\n\
         c.execute('INSERT INTO t VALUES (2)')\n\
         try:\n    \
             c.execute('PRAGMA journal_mode=DELETE')\n\
         except sqlite3.Error as e:\n    \
             print('refused:', e)\n\
         c.execute('INSERT INTO t VALUES (3)')\n\
         c.close()\n",
        db = db.display().to_string()
    );
    let out = run_ok(preloaded(PYTHON).arg("-c").arg(script), "");
    assert_eq!(
        out.lines().take(6).collect::<Vec<_>>(),
        ["delete", "truncate", "persist", "memory", "delete", "wal"],
        "{out}"
    );
    assert!(
        out.contains("refused: walstream: journal_mode=DELETE would stop capture"),
        "{out}"
    );
    assert_eq!(query(&db, "SELECT group_concat(x) FROM t"), "1,2,3");
    assert_restores_to_file(&default_target_dir(&db), &db);
}

#[test]
fn preloading_into_programs_without_sqlite_is_harmless() {
    let out = run_ok(preloaded("/bin/sh").arg("-c").arg("echo ok"), "");
    assert_eq!(out.trim(), "ok");
    assert!(Path::new(&ext()).exists());
}
