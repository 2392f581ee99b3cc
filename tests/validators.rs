//! Goal: validators can check invariants at every transaction, follow a live replica without
//! ever seeing a torn transaction, and prove a file equals a transaction's state by its root
//! (issue 5: `verify --check`, `follow`, `root`).
//!
//! Method: a bank-transfer workload whose invariant (the total balance) holds at every commit
//! is captured through the extension; one transaction deliberately breaks it. The CLI must name
//! exactly that transaction. A follower process keeps a replica while this process writes and
//! a reader loop checks the invariant on the replica continuously.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bank::{bank, transfer, TornReader, INVARIANT};
use common::*;
use walstream::target::Target;

fn target_str(db: &Path) -> String {
    format!("{}-walstream", db.display())
}

/// Two transactions: the first breaks the invariant (its number is returned), the second
/// mends it.
fn break_the_invariant_once(conn: &rusqlite::Connection, target: &dyn Target) -> u64 {
    conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 7", [])
        .unwrap();
    let broken_at = stream_head(target).1;
    conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 7", [])
        .unwrap();
    broken_at
}

/// `dir/bank.db` of `accounts` accounts, captured, after `transfers` transfers.
fn bank_with_transfers(
    dir: &Path,
    accounts: i64,
    transfers: i64,
) -> (std::path::PathBuf, rusqlite::Connection) {
    let db = dir.join("bank.db");
    let conn = bank(&db, "", accounts);
    for i in 0..transfers {
        transfer(&conn, i, accounts);
    }
    (db, conn)
}

#[test]
fn check_names_the_one_transaction_that_breaks_an_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let conn = bank(&db, "", 50);
    let target = default_target(&db);
    let mut broken_at = 0;
    for i in 0..2000 {
        if i == 1234 {
            broken_at = break_the_invariant_once(&conn, target.as_ref());
        } else {
            transfer(&conn, i, 50);
        }
    }
    drop(conn);
    let t = target_str(&db);
    let (ok, out, err) = cli(&["verify", &t, "--check", INVARIANT, "--json"]);
    assert!(!ok, "the broken invariant must fail verification");
    assert!(
        err.contains(&format!("generation 1, txn {broken_at} ")),
        "names txn {broken_at}: {err}"
    );
    assert!(err.contains("returned 0"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["failure"]["txn"], broken_at);
    // Outside the broken transaction the invariant holds.
    let (ok, _, err) = cli(&[
        "verify",
        &t,
        "--check",
        INVARIANT,
        "--to",
        &(broken_at - 1).to_string(),
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&[
        "verify",
        &t,
        "--check",
        INVARIANT,
        "--from",
        &(broken_at + 1).to_string(),
    ]);
    assert!(ok, "{err}");
    // A check that is not valid SQL is a clear error too.
    let (ok, _, err) = cli(&["verify", &t, "--check", "SELECT nonsense FROM nowhere"]);
    assert!(!ok);
    assert!(
        err.contains("cannot run") && err.contains("no such table"),
        "{err}"
    );
}

#[test]
fn root_of_a_restored_file_equals_the_recorded_root() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let conn = bank(&db, "", 300);
    for i in 0..200 {
        transfer(&conn, i, 300);
    }
    conn.execute_batch("DELETE FROM accounts WHERE id > 250; VACUUM;")
        .unwrap();
    let t = target_str(&db);
    for txn in ["5", "150", "203"] {
        let out = dir.path().join(format!("at-{txn}.db"));
        let (ok, _, err) = cli(&["restore", &t, "-o", out.to_str().unwrap(), "--txn", txn]);
        assert!(ok, "{err}");
        let (ok, from_file, err) = cli(&["root", "--db", out.to_str().unwrap()]);
        assert!(ok, "{err}");
        let (ok, recorded, err) = cli(&["root", &t, "--txn", txn]);
        assert!(ok, "{err}");
        let word = |s: &str| s.split_whitespace().next().unwrap().to_string();
        assert_eq!(word(&from_file), word(&recorded), "txn {txn}");
    }
    // The root as versions 1 to 3 define it (one definition for the three) is another hash of
    // the same file; a stream's recorded roots follow its files, so the option needs --db.
    let file = dir.path().join("at-150.db");
    let file = file.to_str().unwrap();
    let root_as = |v: &str| {
        let (ok, out, err) = cli(&["root", "--db", file, "--format-version", v]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("format version {v}")), "{out}");
        out.split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(root_as("1"), root_as("3"));
    assert_ne!(root_as("3"), root_as("4"));
    let (ok, _, err) = cli(&["root", "--db", file, "--format-version", "5"]);
    assert!(!ok && err.contains("5 is not in 1..=4"), "{err}");
    let (ok, _, err) = cli(&["root", &t, "--format-version", "3"]);
    assert!(
        !ok && err.contains("--format-version applies to --db only"),
        "{err}"
    );

    // A single changed byte changes the root.
    let out = dir.path().join("at-150.db");
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&out, bytes).unwrap();
    let (_, changed, _) = cli(&["root", "--db", out.to_str().unwrap()]);
    let (_, recorded, _) = cli(&["root", &t, "--txn", "150"]);
    assert_ne!(
        changed.split_whitespace().next(),
        recorded.split_whitespace().next()
    );
}

fn spawn_follower(target: &str, replica: &Path) -> KillOnDrop {
    KillOnDrop(
        Command::new(cli_path())
            .args([
                "follow",
                target,
                replica.to_str().unwrap(),
                "--interval-ms",
                "20",
                "--check",
                INVARIANT,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn replica_seq(replica: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(format!("{}-follow", replica.display())).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["seq"].as_u64()
}

fn wait_for_seq(replica: &Path, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica_seq(replica) != Some(seq) {
        assert!(
            Instant::now() < deadline,
            "follower did not reach txn {seq} (at {:?})",
            replica_seq(replica)
        );
        std::thread::yield_now();
    }
}

#[test]
fn follower_replica_never_shows_a_torn_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let conn = bank(&db, "", 40);
    let target = default_target(&db);
    let replica = dir.path().join("replica.db");
    let t = target_str(&db);
    let mut follower = spawn_follower(&t, &replica);
    wait_for_seq(&replica, stream_head(target.as_ref()).1);

    let reader = TornReader::spawn(&replica, 40);
    for i in 0..400 {
        transfer(&conn, i, 40);
        if i % 70 == 35 {
            // Killed (SIGKILL) wherever it was, in the middle of a batch or between a batch's
            // commit and saving its position, a restarted follower resumes (or seeds its
            // replica again) and readers still see whole transactions only.
            drop(follower);
            follower = spawn_follower(&t, &replica);
        }
    }
    let last = stream_head(target.as_ref()).1;
    wait_for_seq(&replica, last);
    let reads = reader.stop();
    assert!(reads > 0);
    // The replica equals the primary (but for SQLite's stamps on page 1: `unstamped`).
    assert_replica_is(&replica, &conn);
    drop(follower);
}

#[test]
fn follower_reseeds_from_a_new_generation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let conn = bank(&db, "", 20);
    for i in 0..10 {
        transfer(&conn, i, 20);
    }
    drop(conn);
    let replica = dir.path().join("replica.db");
    let t = target_str(&db);
    let (ok, _, err) = cli(&["follow", &t, replica.to_str().unwrap(), "--once"]);
    assert!(ok, "{err}");
    // Change the database without walstream: the next capture starts generation 2.
    let plain = open_plain(&db);
    plain.execute_batch("UPDATE accounts SET balance = balance + 1 WHERE id = 1; UPDATE accounts SET balance = balance - 1 WHERE id = 2;").unwrap();
    plain
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(plain);
    let conn = open_captured(&db, "");
    for i in 0..5 {
        transfer(&conn, i, 20);
    }
    let target = default_target(&db);
    assert_eq!(
        stream_head(target.as_ref()).0,
        2,
        "a change without walstream starts a new generation"
    );
    let (ok, out, err) = cli(&["follow", &t, replica.to_str().unwrap(), "--once"]);
    assert!(ok, "{err}");
    assert!(out.contains("generation 2: seeded"), "{out}");
    assert_replica_is(&replica, &conn);
}

/// A target that counts the bytes read from it, the reads it was asked for and the objects it
/// listed; while `torn` is set, a read from an offset returns only the first half of what is
/// there (as a reader that came while a writer was appending).
struct CountingTarget {
    inner: Box<dyn Target>,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    gets: std::sync::atomic::AtomicU64,
    listed: std::sync::atomic::AtomicU64,
    torn: std::sync::atomic::AtomicBool,
}

struct CountingReader {
    inner: Box<dyn std::io::Read + Send>,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl CountingTarget {
    fn listed_all(
        &self,
        r: Result<Vec<walstream::target::ObjectInfo>, walstream::target::TargetError>,
    ) -> Result<Vec<walstream::target::ObjectInfo>, walstream::target::TargetError> {
        if let Ok(v) = &r {
            self.listed
                .fetch_add(v.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn count(&self, r: Box<dyn std::io::Read + Send>) -> Box<dyn std::io::Read + Send> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(CountingReader {
            inner: r,
            read: self.read.clone(),
        })
    }
}

impl Target for CountingTarget {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self) -> Result<Vec<walstream::target::ObjectInfo>, walstream::target::TargetError> {
        self.listed_all(self.inner.list())
    }
    fn list_after(
        &self,
        start_after: &str,
    ) -> Result<Vec<walstream::target::ObjectInfo>, walstream::target::TargetError> {
        self.listed_all(self.inner.list_after(start_after))
    }
    fn get(
        &self,
        key: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, walstream::target::TargetError> {
        self.inner.get(key).map(|r| self.count(r))
    }
    fn get_from(
        &self,
        key: &str,
        offset: u64,
    ) -> Result<Box<dyn std::io::Read + Send>, walstream::target::TargetError> {
        let r = self.inner.get_from(key, offset)?;
        if !self.torn.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(self.count(r));
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut { r }, &mut bytes).unwrap();
        bytes.truncate(bytes.len() / 2);
        Ok(self.count(Box::new(std::io::Cursor::new(bytes))))
    }
    fn put_file(&self, key: &str, path: &Path) -> Result<(), walstream::target::TargetError> {
        self.inner.put_file(key, path)
    }
    fn put_file_if_absent(
        &self,
        key: &str,
        path: &Path,
    ) -> Result<walstream::target::PutOutcome, walstream::target::TargetError> {
        self.inner.put_file_if_absent(key, path)
    }
    fn delete(&self, key: &str) -> Result<(), walstream::target::TargetError> {
        self.inner.delete(key)
    }
}

/// A bank database in `dir` whose stream rolls every 24 KiB (so that a follower crosses many
/// rolls, most of them continuing kept versions), its target counted, and a follower with the
/// bank's invariant that has seeded its replica: (primary, target, replica, follower).
fn seeded_follower_of_small_segments(
    dir: &Path,
) -> (
    rusqlite::Connection,
    CountingTarget,
    std::path::PathBuf,
    walstream::validate::Follower,
) {
    let db = dir.join("bank.db");
    let conn = bank(&db, "&walstream_segment_bytes=24K", 60);
    let counting = CountingTarget {
        inner: default_target(&db),
        read: Default::default(),
        gets: Default::default(),
        listed: Default::default(),
        torn: Default::default(),
    };
    let replica = dir.join("replica.db");
    let mut follower =
        walstream::validate::Follower::new(replica.clone(), vec![INVARIANT.to_string()]);
    let first = follower.step(&counting).unwrap();
    assert!(
        matches!(first, walstream::validate::FollowStep::Seeded { .. }),
        "{first:?}"
    );
    (conn, counting, replica, follower)
}

/// A follower that takes one round per transaction reads each record of the stream about once
/// (it reads on from where the last round stopped: in the active segment, and across sealed
/// segments whose kept page versions the next one continues), and its replica equals the
/// primary at every round.
#[test]
fn follower_reads_on_from_where_it_stopped() {
    use walstream::validate::FollowStep;
    let dir = tempfile::tempdir().unwrap();
    let (conn, counting, replica, mut follower) = seeded_follower_of_small_segments(dir.path());
    counting.read.store(0, std::sync::atomic::Ordering::Relaxed);
    counting
        .listed
        .store(0, std::sync::atomic::Ordering::Relaxed);
    for i in 0..1500 {
        transfer(&conn, i, 60);
        let seq = stream_head(counting.inner.as_ref()).1;
        match follower.step(&counting).unwrap() {
            FollowStep::Advanced { to, .. } => assert_eq!(to.seq, seq),
            other => panic!("round {i}: {other:?}"),
        }
        if i % 300 == 0 {
            assert_replica_is(&replica, &conn);
        }
    }
    assert_replica_is(&replica, &conn);
    let objects = walstream::reader::latest_generation(counting.inner.as_ref()).unwrap();
    assert!(
        objects.segments.len() > 10,
        "the stream rolled {} times",
        objects.segments.len()
    );
    let stream_bytes: u64 = objects.segments.values().map(|o| o.size).sum();
    let read = counting.read.load(std::sync::atomic::Ordering::Relaxed);
    // Each round reads what is new once (the replay reads again from memory what finding the
    // newest transaction read), and at a roll the new segment's header: re-reading a segment
    // from its start at every round would read hundreds of times the stream.
    assert!(
        read <= stream_bytes + stream_bytes / 10,
        "{read} bytes read to follow a {stream_bytes}-byte stream"
    );
    // One read of the newest segment a round, and a few more where the stream rolled.
    let gets = counting.gets.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        gets <= 1500 + 4 * objects.segments.len() as u64,
        "{gets} reads in 1500 rounds over {} segments",
        objects.segments.len()
    );
    // A round that finds nothing new lists, and reads nothing.
    for _ in 0..3 {
        let step = follower.step(&counting).unwrap();
        assert!(matches!(step, FollowStep::UpToDate(_)), "{step:?}");
    }
    assert_eq!(
        counting.read.load(std::sync::atomic::Ordering::Relaxed),
        read
    );
    assert_eq!(
        counting.gets.load(std::sync::atomic::Ordering::Relaxed),
        gets
    );
    // And each round lists the newest segment, what came after it and the snapshot (which
    // sorts after the segments), not every object of the stream.
    let listed = counting.listed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        listed <= 4 * 1500,
        "{listed} objects listed in 1500 rounds of a stream of {} objects",
        objects.segments.len() + 1
    );
}

/// A round that finds the newest transaction half written applies nothing; a later round, after
/// the segment rolled, applies it and what followed from what the stream holds then (a round
/// once replayed the half it had kept from the earlier one, and failed).
#[test]
fn follower_reads_again_what_an_earlier_round_found_torn() {
    use std::sync::atomic::Ordering::Relaxed;
    use walstream::validate::FollowStep;
    let dir = tempfile::tempdir().unwrap();
    let (conn, counting, replica, mut follower) = seeded_follower_of_small_segments(dir.path());
    transfer(&conn, 0, 60);
    let step = follower.step(&counting).unwrap();
    assert!(matches!(step, FollowStep::Advanced { .. }), "{step:?}");
    transfer(&conn, 1, 60);
    counting.torn.store(true, Relaxed);
    let step = follower.step(&counting).unwrap();
    assert!(matches!(step, FollowStep::UpToDate(_)), "{step:?}");
    counting.torn.store(false, Relaxed);
    let segments = || {
        walstream::reader::latest_generation(counting.inner.as_ref())
            .unwrap()
            .segments
            .len()
    };
    let before = segments();
    let mut i = 2;
    while segments() == before {
        transfer(&conn, i, 60);
        i += 1;
    }
    let seq = stream_head(counting.inner.as_ref()).1;
    match follower.step(&counting).unwrap() {
        FollowStep::Advanced { to, .. } => assert_eq!(to.seq, seq),
        other => panic!("{other:?}"),
    }
    assert_replica_is(&replica, &conn);
}

/// Checks run on each transaction inside a batch; the one that fails is committed to the
/// replica (its state saved) and named, and nothing after it is applied.
#[test]
fn follower_stops_at_the_failing_transaction_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (db, conn) = bank_with_transfers(dir.path(), 30, 10);
    let t = target_str(&db);
    let replica = dir.path().join("replica.db");
    let r = replica.to_str().unwrap();
    let (ok, _, err) = cli(&["follow", &t, r, "--once", "--check", INVARIANT]);
    assert!(ok, "{err}");
    let target = default_target(&db);
    let mut broken_at = 0;
    for i in 10..400 {
        if i == 250 {
            broken_at = break_the_invariant_once(&conn, target.as_ref());
        } else {
            transfer(&conn, i, 30);
        }
    }
    let (ok, _, err) = cli(&["follow", &t, r, "--once", "--check", INVARIANT]);
    assert!(!ok, "the broken invariant must stop the follower");
    assert!(err.contains(&format!("txn {broken_at} ")), "{err}");
    assert_eq!(replica_seq(&replica), Some(broken_at));
    // The replica is the failing transaction's state (but for SQLite's stamps on page 1).
    let at = dir.path().join("at.db");
    let n = broken_at.to_string();
    let (ok, _, err) = cli(&["restore", &t, "-o", at.to_str().unwrap(), "--txn", &n]);
    assert!(ok, "{err}");
    assert_replica_is(&replica, &open_plain(&at));
}

/// A replica that is not the state its follow file names (a follower stopped between
/// committing a batch and saving where it was, or something else wrote to it) is seeded
/// again, with a message saying why, instead of failing every round on a state root mismatch.
#[test]
fn follower_reseeds_a_replica_ahead_of_its_follow_file() {
    let dir = tempfile::tempdir().unwrap();
    let (db, conn) = bank_with_transfers(dir.path(), 30, 10);
    let t = target_str(&db);
    let replica = dir.path().join("replica.db");
    let r = replica.to_str().unwrap();
    let state = dir.path().join("replica.db-follow");
    let follow = |want: &str| {
        let (ok, out, err) = cli(&["follow", &t, r, "--once"]);
        assert!(ok, "{err}");
        assert!(out.contains(want), "{want:?} in {out}");
        out
    };
    follow("seeded");
    let behind = std::fs::read(&state).unwrap();
    for i in 10..60 {
        transfer(&conn, i, 30);
    }
    follow("applied");
    // As if the follower had stopped after committing the batch, before saving its state.
    std::fs::write(&state, &behind).unwrap();
    for i in 60..80 {
        transfer(&conn, i, 30);
    }
    let out = follow("seeded");
    assert!(out.contains("not the state its follow file names"), "{out}");
    assert_replica_is(&replica, &conn);

    // A follow file written before the root was recorded is trusted as it is.
    let text = std::fs::read_to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("root");
    std::fs::write(&state, v.to_string()).unwrap();
    for i in 80..90 {
        transfer(&conn, i, 30);
    }
    follow("applied");
    assert_replica_is(&replica, &conn);
}

/// A transaction that shrinks the database (DELETE then VACUUM) shrinks the replica's file as
/// well: the replica is the stream's state byte for byte, its root the recorded one.
#[test]
fn follower_replica_shrinks_with_the_primary() {
    use walstream::validate::{FollowStep, Follower};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let conn = open_captured(&db, "");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    let target = default_target(&db);
    let replica = dir.path().join("replica.db");
    let mut follower = Follower::new(replica.clone(), vec![]);
    follower.step(target.as_ref()).unwrap();
    for i in 0..100 {
        conn.execute("INSERT INTO t(v) VALUES (randomblob(3000))", [])
            .unwrap();
        if i % 10 == 0 {
            follower.step(target.as_ref()).unwrap();
        }
    }
    // Grows and shrinks inside one round (the batch), then shrinks alone.
    conn.execute_batch("DELETE FROM t WHERE id > 50; VACUUM;")
        .unwrap();
    conn.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
        .unwrap();
    follower.step(target.as_ref()).unwrap();
    conn.execute_batch("DELETE FROM t WHERE id > 10; VACUUM;")
        .unwrap();
    let step = follower.step(target.as_ref()).unwrap();
    assert!(matches!(step, FollowStep::Advanced { .. }), "{step:?}");
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert_replica_is(&replica, &conn);
    // A `root --db` of a file whose write-ahead log holds pages is refused, by name.
    let r = replica.to_str().unwrap();
    let (ok, _, err) = cli(&["root", "--db", r]);
    assert!(!ok && err.contains("replica.db-wal"), "{err}");
    // Checkpointed, the file itself is as short as the primary.
    let plain = open_plain(&replica);
    plain
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    drop(plain);
    assert_eq!(
        std::fs::metadata(&replica).unwrap().len(),
        pages as u64 * 4096
    );
    // A follower started afresh finds the replica is the state its follow file names (SQLite
    // stamped page 1 its own way: the follow file keeps the stream's stamps to check with).
    drop(follower);
    let mut again = Follower::new(replica.clone(), vec![]);
    let step = again.step(target.as_ref()).unwrap();
    assert!(matches!(step, FollowStep::UpToDate(_)), "{step:?}");
}

/// Checks see each transaction's rows as a fresh reader would, though the follower writes the
/// replica's pages under SQLite's b-tree layer: a count kept in one table must match the rows
/// of another after every transaction, in a follower that lives across many rounds.
#[test]
fn follower_checks_see_every_transaction_fresh() {
    use walstream::validate::Follower;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("counted.db");
    let conn = open_captured(&db, "");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE meta(n INTEGER); INSERT INTO meta VALUES (0);",
    )
    .unwrap();
    let target = default_target(&db);
    let replica = dir.path().join("replica.db");
    let check = "SELECT (SELECT count(*) FROM t) = (SELECT n FROM meta)".to_string();
    let mut follower = Follower::new(replica.clone(), vec![check]);
    follower.step(target.as_ref()).unwrap();
    for i in 0..300 {
        conn.execute_batch(&format!(
            "BEGIN; INSERT INTO t(v) VALUES ('row {i} {}'); UPDATE meta SET n = n + 1; COMMIT;",
            "x".repeat(i % 200)
        ))
        .unwrap();
        if i % 7 == 0 {
            follower.step(target.as_ref()).unwrap();
        }
    }
    follower.step(target.as_ref()).unwrap();
    assert_replica_is(&replica, &conn);
}
