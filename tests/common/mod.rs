//! Shared helpers for the integration tests: loading the extension into rusqlite's bundled
//! SQLite, reading a database's committed image through SQLite itself (`sqlite_dbpage`),
//! replaying a stream into images to compare, running the CLI, restoring the newest state, the
//! test S3 server's settings, and (in `bank`) the bank-transfer workload of the validator tests.
#![allow(dead_code)]

pub mod bank;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Once;

use rusqlite::{Connection, OpenFlags};
use walstream::reader::{self, ReadError, ReplayLimit, Visitor};
use walstream::record::pb;
use walstream::target::{self, Target, TargetSpec};

/// Path of the built extension: `WALSTREAM_EXT` (set by `make test`) or target/release.
pub fn ext_path() -> PathBuf {
    match std::env::var_os("WALSTREAM_EXT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/libwalstream.so"),
    }
}

/// Path of the built CLI: `WALSTREAM_CLI` (set by `make test`) or target/release.
pub fn cli_path() -> PathBuf {
    match std::env::var_os("WALSTREAM_CLI") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/walstream"),
    }
}

static LOAD: Once = Once::new();

/// Loads the extension once per process (it registers the `walstream` VFS permanently).
pub fn load_extension() {
    LOAD.call_once(|| {
        let path = ext_path();
        assert!(
            path.exists(),
            "{} is missing: run `make` first",
            path.display()
        );
        let conn = Connection::open_in_memory().unwrap();
        // SAFETY: loading our own extension, built by this repository.
        unsafe {
            conn.load_extension_enable().unwrap();
            conn.load_extension(&path, None::<&str>).unwrap();
            conn.load_extension_disable().unwrap();
        }
    });
}

/// Opens `db` through the walstream VFS (extra URI parameters may be appended with `&...`).
pub fn open_captured(db: &Path, params: &str) -> Connection {
    load_extension();
    let uri = format!("file:{}?vfs=walstream{params}", db.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(uri, flags).unwrap()
}

/// Opens `db` with plain SQLite (no capture).
pub fn open_plain(db: &Path) -> Connection {
    Connection::open(db).unwrap()
}

/// The committed image of the main database as this connection sees it: every page, in order,
/// read through SQLite's `sqlite_dbpage`.
pub fn image(conn: &Connection) -> Vec<u8> {
    let mut stmt = conn
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    let mut out = Vec::new();
    let mut rows = stmt.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        let page: Vec<u8> = row.get(0).unwrap();
        out.extend_from_slice(&page);
    }
    out
}

/// A database image with SQLite's own stamps on page 1 zeroed: the change counter (bytes
/// 24..28) and the counter and SQLite version that last wrote the file (92..100), which
/// SQLite rewrites whenever it commits page 1. A follower's replica holds the stream's pages
/// but for these.
pub fn unstamped(mut image: Vec<u8>) -> Vec<u8> {
    if image.len() >= 100 {
        image[24..28].fill(0);
        image[92..100].fill(0);
    }
    image
}

/// Asserts that the database file `replica` (a follower's) holds `primary`'s pages, but for
/// SQLite's stamps on page 1 (`unstamped`), naming the first byte where they differ.
#[track_caller]
pub fn assert_replica_is(replica: &Path, primary: &Connection) {
    let (r, p) = (
        unstamped(image(&open_plain(replica))),
        unstamped(image(primary)),
    );
    if r != p {
        let at = r.iter().zip(&p).position(|(a, b)| a != b);
        panic!(
            "{} ({} bytes) differs from the primary ({} bytes), first at byte {at:?}",
            replica.display(),
            r.len(),
            p.len()
        );
    }
}

pub fn image_hash(conn: &Connection) -> blake3::Hash {
    blake3::hash(&image(conn))
}

/// The default target of `db`.
pub fn default_target(db: &Path) -> Box<dyn Target> {
    target::open(&TargetSpec::default_for(db)).unwrap()
}

/// The newest generation number and its last committed transaction.
pub fn stream_head(target: &dyn Target) -> (u64, u64) {
    let g = reader::latest_generation(target).unwrap();
    let seq = reader::last_committed_seq(target, &g).unwrap();
    (g.generation, seq)
}

/// Replays a generation in memory and returns the BLAKE3 of the database image after every
/// transaction (key 0: the snapshot).
pub fn replay_hashes(target: &dyn Target, generation: u64) -> BTreeMap<u64, blake3::Hash> {
    struct Images {
        image: Vec<u8>,
        page_size: usize,
        hashes: BTreeMap<u64, blake3::Hash>,
    }
    impl Images {
        fn put(&mut self, pgno: u32, data: &[u8]) {
            self.page_size = data.len();
            let at = (pgno as usize - 1) * data.len();
            if self.image.len() < at + data.len() {
                self.image.resize(at + data.len(), 0);
            }
            self.image[at..at + data.len()].copy_from_slice(data);
        }
    }
    impl Visitor for Images {
        fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
            self.put(pgno, data);
            Ok(())
        }
        fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
            self.put(pgno, data);
            Ok(())
        }
        fn txn_commit(&mut self, c: &pb::TxnCommit) -> Result<(), ReadError> {
            self.image
                .resize(c.db_size_pages as usize * self.page_size, 0);
            self.hashes.insert(c.seq, blake3::hash(&self.image));
            Ok(())
        }
    }
    let objects = reader::generation(target, generation).unwrap();
    let mut v = Images {
        image: Vec::new(),
        page_size: 0,
        hashes: BTreeMap::new(),
    };
    let summary = reader::replay(target, &objects, ReplayLimit::All, &mut v).unwrap();
    assert!(
        summary.torn_tail.is_none(),
        "torn tail: {:?}",
        summary.torn_tail
    );
    v.hashes.insert(0, {
        // The snapshot image is the state before txn 1; recompute it by replaying to 0.
        let mut s = Images {
            image: Vec::new(),
            page_size: 0,
            hashes: BTreeMap::new(),
        };
        reader::replay(target, &objects, ReplayLimit::Txn(0), &mut s).unwrap();
        blake3::hash(&s.image)
    });
    v.hashes
}

/// Runs the CLI; returns (exit success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    cli_output(Command::new(cli_path()).args(args))
}

/// Runs the CLI with an explicit S3 endpoint (`AWS_ENDPOINT_URL`); returns (exit success,
/// stdout, stderr).
pub fn cli_at(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    cli_output(
        Command::new(cli_path())
            .args(args)
            .env("AWS_ENDPOINT_URL", endpoint),
    )
}

fn cli_output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Restores the newest state of `db`'s default target into `db` with the extension
/// `.restored` (replacing it), through the library; returns the restored file's bytes.
pub fn restore_latest(db: &Path) -> Vec<u8> {
    let out = db.with_extension("restored");
    let _ = std::fs::remove_file(&out);
    let target = default_target(db);
    let opts = walstream::restore::RestoreOptions {
        point: walstream::restore::Point::Latest,
        generation: None,
        force: false,
    };
    walstream::restore::restore(target.as_ref(), &out, &opts, &mut |_| {}).unwrap();
    std::fs::read(out).unwrap()
}

/// A python program (for `python3 -c`) that loads the extension and opens `db` through
/// walstream as `conn` (autocommit), then runs `body` (python source using `conn`).
pub fn python_captured(db: &Path, body: &str) -> String {
    format!(
        "import sqlite3, sys\n\
         boot = sqlite3.connect(':memory:')\n\
         boot.enable_load_extension(True)\n\
         boot.load_extension({ext:?})\n\
         conn = sqlite3.connect('file:' + {db:?} + '?vfs=walstream', uri=True, isolation_level=None)\n\
         {body}\n",
        ext = ext_path().display().to_string(),
        db = db.display().to_string(),
    )
}

/// A child process (a follower, a writer) killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- S3 (a real S3-compatible server; `make test` starts SeaweedFS, see scripts/s3-server.sh) ----

/// The S3 server the tests use, from the environment that `scripts/s3-server.sh env` prints.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub secret: String,
}

/// The test S3 server, or `None` (with a note) when run by hand without one. Under `make test`
/// (`WALSTREAM_REQUIRE_S3=1`) a missing server fails the test instead.
pub fn s3_env() -> Option<S3Env> {
    let var = |n: &str| std::env::var(n).ok().filter(|s| !s.is_empty());
    match (
        var("WALSTREAM_TEST_S3_ENDPOINT"),
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(endpoint), Some(key), Some(secret)) => Some(S3Env {
            endpoint,
            bucket: var("WALSTREAM_TEST_S3_BUCKET").unwrap_or_else(|| "walstream-test".into()),
            key,
            secret,
        }),
        _ => {
            assert!(
                var("WALSTREAM_REQUIRE_S3").is_none(),
                "WALSTREAM_TEST_S3_ENDPOINT is not set but WALSTREAM_REQUIRE_S3 is: `make test` \
                 starts the server with scripts/s3-server.sh"
            );
            eprintln!(
                "note: skipping an S3 test: no S3 server (run `make test`, or \
                 `scripts/s3-server.sh start && eval \"$(scripts/s3-server.sh env)\"`)"
            );
            None
        }
    }
}

/// A prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tests/{name}-{}-{nanos}", std::process::id())
}

/// `SELECT walstream_status()` parsed.
pub fn status(conn: &Connection) -> serde_json::Value {
    let text: String = conn
        .query_row("SELECT walstream_status()", [], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Polls `f` until it returns `Some`, failing with `what` (and the last value seen) after
/// `deadline`.
pub fn poll<T>(
    what: &str,
    deadline: std::time::Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let end = std::time::Instant::now() + deadline;
    let mut last;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}: {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
