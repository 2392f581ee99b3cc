//! Goal: every row of docs/ERRORS.md — what goes wrong, the exact error, and why nothing is lost
//! — is checked here (or in tests/bad_input.rs, tests/preload.rs and tests/sqlite_modes.rs, which
//! the document names): a full disk (a small tmpfs; a file-size limit), a spool that cannot be
//! written (an immutable segment), a spool file corrupted on disk, a SQLite too old, the extension loaded
//! into two SQLite libraries, bad settings, leaving WAL mode, missing pieces of a stream.
//!
//! Method: real programs (`/usr/bin/python3` with the system SQLite, small C programs) hit each
//! condition; the test checks the message (`walstream_status()`, SQLite's error, the CLI's
//! stderr) and then that the stream, once the condition is gone, restores to the database byte
//! for byte. The tmpfs and immutable-file tests need root; without it they say so and pass,
//! unless `WALSTREAM_REQUIRE_MOUNT=1` (set by `make test` when it runs as root).

mod common;
mod dropin;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use dropin::*;

/// Python prelude: walstream loaded into the system SQLite; `connect(db, params)` opens through
/// it; `status(c)` is walstream_status() as a dict.
fn py(body: &str) -> String {
    format!(
        "import sqlite3, json, os, sys, signal, resource\n\
         boot = sqlite3.connect(':memory:')\n\
         boot.enable_load_extension(True)\n\
         boot.load_extension({ext:?})\n\
         def connect(db, params=''):\n    \
             return sqlite3.connect('file:' + db + '?vfs=walstream' + params, uri=True, isolation_level=None)\n\
         def status(c):\n    \
             return json.loads(c.execute('SELECT walstream_status()').fetchone()[0])\n\
         {body}\n",
        ext = ext()
    )
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs(at.to_path_buf()));
        }
        assert!(
            std::env::var_os("WALSTREAM_REQUIRE_MOUNT").is_none(),
            "cannot mount a tmpfs at {} but WALSTREAM_REQUIRE_MOUNT is set",
            at.display()
        );
        eprintln!("note: cannot mount a tmpfs (not root?); test skipped");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_under_the_spool_falls_behind_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "1m") else {
        return;
    };
    let db = dir.path().join("app.db");
    let target = fs.0.join("stream");
    let script = py(&format!(
        "c = connect({db:?}, '&walstream_target=' + {target:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)')\n\
         with open({filler:?}, 'wb') as f:\n    \
             try:\n        \
                 while True: f.write(b'x' * 65536); f.flush()\n    \
             except OSError: pass\n\
         for i in range(20): c.execute('INSERT INTO t(pad) VALUES (randomblob(8000))')\n\
         s = status(c); print('full:', s['behind'], s['last_seq'], s['last_error'])\n\
         print('truncate checkpoint:', c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0], os.path.getsize({db:?} + '-wal') > 0)\n\
         os.remove({filler:?})\n\
         c.execute('INSERT INTO t(pad) VALUES (randomblob(10))')\n\
         s = status(c); print('freed:', s['behind'], s['last_seq'])\n\
         c.close()\n",
        db = db.display().to_string(),
        target = target.display().to_string(),
        filler = fs.0.join("filler").display().to_string(),
    ));
    let out = run_ok(&mut python(&script), "");
    assert!(
        out.contains("full: True 1 spool ")
            && out.contains(".wseg: No space left on device (os error 28)"),
        "{out}"
    );
    assert!(
        out.contains("truncate checkpoint: 1 True"),
        "the WAL is kept while behind: {out}"
    );
    assert!(
        out.contains("freed: False 22"),
        "every commit captured once space is back: {out}"
    );
    assert_restores_to_file(&target, &db);
}

#[test]
fn full_disk_under_the_database_fails_only_the_commit_sqlite_fails() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "2m") else {
        return;
    };
    let db = fs.0.join("app.db");
    let script = py(&format!(
        "c = connect({db:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)')\n\
         for i in range(5): c.execute('INSERT INTO t(pad) VALUES (randomblob(20000))')\n\
         ok = 5\n\
         with open({filler:?}, 'wb') as f:\n    \
             try:\n        \
                 while True: f.write(b'x' * 65536); f.flush()\n    \
             except OSError: pass\n\
         try:\n    \
             while True:\n        \
                 c.execute('INSERT INTO t(pad) VALUES (randomblob(20000))'); ok += 1\n\
         except sqlite3.Error as e:\n    \
             print('full:', e)\n\
         os.remove({filler:?})\n\
         c.execute('INSERT INTO t(pad) VALUES (randomblob(10))')\n\
         s = status(c); print('after:', s['behind'], s['generation'], s['last_seq'] == ok + 2)\n\
         c.close()\n",
        db = db.display().to_string(),
        filler = fs.0.join("filler").display().to_string(),
    ));
    let out = run_ok(&mut python(&script), "");
    assert!(out.contains("full: database or disk is full"), "{out}");
    assert!(
        out.contains("after: False 1 True"),
        "every successful commit is in the stream: {out}"
    );
    assert_restores_to_file(&default_target_dir(&db), &db);
}

#[test]
fn file_size_limit_on_the_spool_falls_behind_then_catches_up() {
    // Without a tmpfs: RLIMIT_FSIZE set just above the active segment's size makes the next
    // append fail with EFBIG (SIGXFSZ ignored), while the small WAL stays below the limit.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let segment =
        default_target_dir(&db).join("generations/0000000000000001/0000000000000001.wseg");
    let script = py(&format!(
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n\
         c = connect({db:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)')\n\
         for i in range(40):\n    \
             c.execute('INSERT INTO t(pad) VALUES (randomblob(3000))')\n    \
             if i % 5 == 4: c.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n\
         resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({segment:?}) + 1000, hard))\n\
         for i in range(3): c.execute('INSERT INTO t(pad) VALUES (randomblob(3000))')\n\
         s = status(c); print('limited:', s['behind'], s['last_seq'], s['last_error'])\n\
         resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n\
         c.execute('INSERT INTO t(pad) VALUES (randomblob(10))')\n\
         s = status(c); print('lifted:', s['behind'], s['last_seq'])\n\
         c.close()\n",
        db = db.display().to_string(),
        segment = segment.display().to_string(),
    ));
    let out = run_ok(&mut python(&script), "");
    assert!(
        out.contains("limited: True 41 spool ") && out.contains("File too large (os error 27)"),
        "{out}"
    );
    assert!(out.contains("lifted: False 45"), "{out}");
    assert_restores_to_file(&default_target_dir(&db), &db);
}

/// `chattr +i` (or `-i`) on `path`; false when the file system or the privileges do not allow it.
fn immutable(path: &Path, on: bool) -> bool {
    Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn spool_that_cannot_be_written_falls_behind_then_catches_up() {
    // An immutable active segment refuses writes even through the descriptor walstream holds
    // open (as root, the only way to make a file unwritable to this process).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let segment =
        default_target_dir(&db).join("generations/0000000000000001/0000000000000001.wseg");
    let script = py(&format!(
        "c = connect({db:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB)')\n\
         print('ready', flush=True); sys.stdin.readline()\n\
         for i in range(10): c.execute('INSERT INTO t(pad) VALUES (randomblob(2000))')\n\
         s = status(c); print('unwritable:', s['behind'], s['last_seq'], s['last_error'], flush=True)\n\
         print('truncate checkpoint:', c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0], flush=True)\n\
         sys.stdin.readline()\n\
         c.execute('INSERT INTO t(pad) VALUES (randomblob(10))')\n\
         s = status(c); print('writable:', s['behind'], s['last_seq'], flush=True)\n\
         c.close()\n",
        db = db.display().to_string(),
    ));
    let mut child = python(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    if !immutable(&segment, true) {
        assert!(
            std::env::var_os("WALSTREAM_REQUIRE_MOUNT").is_none(),
            "chattr +i failed but WALSTREAM_REQUIRE_MOUNT is set"
        );
        eprintln!("note: chattr +i is not available here (not root, or the file system lacks it); test skipped");
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    stdin.write_all(b"go\n").unwrap();
    let unwritable = lines.next().unwrap().unwrap();
    let checkpoint = lines.next().unwrap().unwrap();
    assert!(immutable(&segment, false));
    stdin.write_all(b"go\n").unwrap();
    let writable = lines.next().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        unwritable.starts_with("unwritable: True 1 spool ")
            && unwritable.ends_with(".wseg: Operation not permitted (os error 1)"),
        "{unwritable}"
    );
    assert_eq!(
        checkpoint, "truncate checkpoint: 1",
        "the WAL is kept while behind"
    );
    assert_eq!(writable, "writable: False 12");
    assert_restores_to_file(&default_target_dir(&db), &db);
}

#[test]
fn spool_file_corrupted_on_disk_stops_capture_and_keeps_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let target = default_target_dir(&db);
    let segment = target.join("generations/0000000000000001/0000000000000001.wseg");
    let write = |n: usize| {
        py(&format!(
            "c = connect({db:?})\n\
             c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, pad BLOB)')\n\
             for i in range({n}): c.execute('INSERT INTO t(pad) VALUES (randomblob(3000))')\n\
             s = status(c); print('status:', s['behind'], s['last_seq'], s['last_error'])\n\
             print('truncate checkpoint:', c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])\n\
             c.close()\n\
             print('wal kept after close:', os.path.exists({db:?} + '-wal'))\n",
            db = db.display().to_string()
        ))
    };
    run_ok(&mut python(&write(3)), "");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 300;
    bytes[at] ^= 1;
    std::fs::write(&segment, bytes).unwrap();
    let out = run_ok(&mut python(&write(3)), "");
    assert!(
        out.contains("status: True None spool file ")
            && out.contains("0000000000000001.wseg: record at offset"),
        "{out}"
    );
    assert!(
        out.contains(": checksum mismatch (corrupt record)"),
        "{out}"
    );
    assert!(
        out.contains("truncate checkpoint: 1") && out.contains("wal kept after close: True"),
        "{out}"
    );
    let (ok, _, err) = common::cli(&["verify", target.to_str().unwrap()]);
    assert!(!ok && err.contains("checksum mismatch"), "{err}");
    // The way out: move the damaged stream aside; the next writer starts a new stream from a
    // snapshot of the database, WAL included.
    std::fs::rename(&target, dir.path().join("damaged-stream")).unwrap();
    let out = run_ok(&mut python(&write(1)), "");
    assert!(out.contains("status: False 1 None"), "{out}");
    assert_restores_to_file(&target, &db);
    assert_eq!(query(&db, "SELECT count(*) FROM t"), "7");
}

const FAKE_HOST: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sqlite3ext.h>

static int version(void) { return 3031001; }
static void *my_malloc(int n) { return malloc(n); }

int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 2; }
    int (*init)(void *, char **, const sqlite3_api_routines *) = dlsym(h, "sqlite3_walstream_init");
    static sqlite3_api_routines api; /* all null but the two routines the version check uses */
    api.libversion_number = version;
    api.malloc = my_malloc;
    char *err = 0;
    int rc = init(0, &err, &api);
    printf("rc=%d err=%s\n", rc, err ? err : "(none)");
    return 0;
}
"#;

#[test]
fn sqlite_older_than_3_32_is_refused_by_name() {
    // No SQLite older than 3.32 is at hand: a host that reports 3.31.1 calls the entry point.
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "fake_host", FAKE_HOST, &["-ldl"]);
    let out = run_ok(Command::new(exe).arg(ext()), "");
    assert_eq!(
        out.trim(),
        "rc=1 err=walstream needs SQLite 3.32.0 or later; this is 3.31.1"
    );
}

const TWO_SQLITES: &str = r#"
#include <dlfcn.h>
#include <stdio.h>

typedef struct sqlite3 sqlite3;
static void try_load(const char *lib, const char *ext) {
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("%s: %s\n", lib, dlerror()); return; }
    int (*open)(const char *, sqlite3 **) = dlsym(h, "sqlite3_open");
    int (*enable)(sqlite3 *, int) = dlsym(h, "sqlite3_enable_load_extension");
    int (*load)(sqlite3 *, const char *, const char *, char **) = dlsym(h, "sqlite3_load_extension");
    sqlite3 *db;
    char *err = 0;
    open(":memory:", &db);
    enable(db, 1);
    int rc = load(db, ext, 0, &err);
    printf("load rc=%d err=%s\n", rc, err ? err : "(none)");
}

int main(int argc, char **argv) {
    try_load("libsqlite3.so.0", argv[2]);
    try_load(argv[1], argv[2]); /* a second copy of the library, loaded separately */
    return 0;
}
"#;

#[test]
fn extension_loaded_into_a_second_sqlite_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(dir.path(), "two_sqlites", TWO_SQLITES, &["-ldl"]);
    let copy = dir.path().join("libsqlite3-copy.so");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0", &copy).unwrap();
    let out = run_ok(Command::new(exe).arg(&copy).arg(ext()), "");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines[0], "load rc=0 err=(none)", "{out}");
    assert_eq!(
        lines[1],
        "load rc=1 err=error during initialization: walstream is already loaded into another SQLite library in this \
         process; load it into one only",
        "{out}"
    );
}

#[test]
fn bad_settings_fail_the_open_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let script = py(&format!(
        "def attempt(label, params='', env=None):\n    \
             if env: os.environ.update(env)\n    \
             try:\n        \
                 connect({db:?}, params).execute('PRAGMA journal_mode=WAL'); print(label, 'opened')\n    \
             except sqlite3.Error as e:\n        \
                 print(label, 'error:', e, '|', status(boot)['last_open_error'])\n    \
             if env:\n        \
                 for k in env: del os.environ[k]\n\
         attempt('segment bytes:', '&walstream_segment_bytes=lots')\n\
         attempt('scheme:', '&walstream_target=ftp://host/x')\n\
         attempt('env target:', env={{'WALSTREAM_TARGET': 'gopher://x'}})\n\
         c = connect({db:?})\n\
         attempt('second target:', '&walstream_target=' + {other:?})\n",
        db = db.display().to_string(),
        other = dir.path().join("other").display().to_string(),
    ));
    let out = run_ok(&mut python(&script), "");
    let line = |label: &str| {
        out.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("{label} in {out}"))
            .to_string()
    };
    let seg = line("segment bytes:");
    assert!(seg.contains("error: unable to open database file") && seg.contains("walstream_segment_bytes / WALSTREAM_SEGMENT_BYTES = \"lots\" is not a size such as 64M"), "{seg}");
    assert!(line("scheme:").contains("unknown scheme \"ftp\""), "{out}");
    assert!(
        line("env target:").contains("unknown scheme \"gopher\""),
        "{out}"
    );
    let second = line("second target:");
    assert!(
        second.contains("is already open in this process with target"),
        "{second}"
    );
    assert!(!dir.path().join("other").exists());
}

#[test]
fn leaving_wal_mode_when_allowed_starts_a_new_generation_on_return() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let script = py(&format!(
        "c = connect({db:?})\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(x)'); c.execute('INSERT INTO t VALUES (1)')\n\
         print(c.execute('PRAGMA journal_mode=DELETE').fetchone()[0])\n\
         c.execute('INSERT INTO t VALUES (2)')\n\
         print(c.execute('PRAGMA journal_mode=WAL').fetchone()[0])\n\
         c.execute('INSERT INTO t VALUES (3)')\n\
         s = status(c); print(s['generation'], s['last_generation_reason'])\n\
         c.close()\n",
        db = db.display().to_string()
    ));
    let out = run_ok(python(&script).env("WALSTREAM_ALLOW_LEAVING_WAL", "1"), "");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(&lines[..2], ["delete", "wal"], "{out}");
    assert!(
        lines[2].starts_with("2 "),
        "the write made in DELETE mode is in a new generation's snapshot: {out}"
    );
    assert_restores_to_file(&default_target_dir(&db), &db);
    assert_eq!(query(&db, "SELECT group_concat(x) FROM t"), "1,2,3");
}

#[test]
fn missing_pieces_of_a_stream_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let script = py(&format!(
        "c = connect({db:?}, '&walstream_segment_bytes=20000')\n\
         c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(x)')\n\
         for i in range(12): c.execute('INSERT INTO t VALUES (randomblob(4000))')\n\
         c.close()\n",
        db = db.display().to_string()
    ));
    run_ok(&mut python(&script), "");
    let target = default_target_dir(&db);
    let gen = target.join("generations/0000000000000001");
    let mut segments: Vec<_> = std::fs::read_dir(&gen)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wseg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let t = target.to_str().unwrap();
    // A segment missing from the middle.
    let middle = segments[1].clone();
    let saved = std::fs::read(&middle).unwrap();
    std::fs::remove_file(&middle).unwrap();
    let (ok, _, err) = common::cli(&["verify", t]);
    assert!(!ok, "verify must fail");
    eprintln!("missing segment: {err}");
    // Where segments roll depends on how many bytes each transaction stores (compressed since
    // format v2): name the missing one and its successor by their first transactions.
    let first_seq = |p: &std::path::Path| {
        u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap()
    };
    let (missing, next) = (first_seq(&segments[1]), first_seq(&segments[2]));
    assert!(
        err.contains(&format!(
            "segment starts at txn {next} but txn {missing} comes next (a segment is missing or extra)"
        )),
        "{err}"
    );
    std::fs::write(&middle, saved).unwrap();
    // The snapshot missing: the generation is not restorable.
    std::fs::rename(gen.join("snapshot.wsnap"), gen.join("snapshot.moved")).unwrap();
    let out = dir.path().join("out.db");
    let (ok, _, err) = common::cli(&["restore", t, "-o", out.to_str().unwrap()]);
    assert!(!ok, "restore must fail");
    eprintln!("missing snapshot: {err}");
    assert!(err.contains("holds no complete generation"), "{err}");
    assert!(!out.exists());
}

#[test]
fn generation_ended_without_a_complete_successor_is_recovered() {
    // A writer that ended a generation and then failed (or died) before the next one's snapshot
    // was in place leaves: the old segment closed by SegmentEnd(NewGeneration), the new
    // generation directory holding only `snapshot.wsnap.tmp`. Found by SQLite's walcksum.test:
    // the next writer used to look for the successor forever (a stack overflow that killed the
    // host). It must start a new generation instead.
    use walstream::record::frame::encode_record;
    use walstream::record::pb::{record::Body, segment_end::Reason, Record, SegmentEnd};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let write = |n: usize| {
        py(&format!(
            "c = connect({db:?})\n\
             c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE IF NOT EXISTS t(x)')\n\
             for i in range({n}): c.execute('INSERT INTO t VALUES (randomblob(100))')\n\
             s = status(c); print('status:', s['behind'], s['generation'], s['last_error'])\n\
             c.close()\n",
            db = db.display().to_string()
        ))
    };
    run_ok(&mut python(&write(3)), "");
    let target = default_target_dir(&db);
    let segment = target.join("generations/0000000000000001/0000000000000001.wseg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = SegmentEnd {
        reason: Reason::NewGeneration as i32,
        next_seq: 5,
    };
    encode_record(
        &Record {
            body: Some(Body::SegmentEnd(end)),
        },
        walstream::record::FORMAT_VERSION,
        &mut bytes,
    );
    std::fs::write(&segment, bytes).unwrap();
    let next = target.join("generations/0000000000000002");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(next.join("snapshot.wsnap.tmp"), b"half a snapshot").unwrap();
    let out = run_ok(&mut python(&write(2)), "");
    assert!(
        out.contains("status: False 2 None"),
        "a new generation, no error: {out}"
    );
    assert_restores_to_file(&target, &db);
    assert!(!next.join("snapshot.wsnap.tmp").exists());
}
