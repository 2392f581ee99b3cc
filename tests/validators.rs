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

fn target_str(db: &Path) -> String {
    format!("{}-walstream", db.display())
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
            conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 7", [])
                .unwrap();
            broken_at = stream_head(target.as_ref()).1;
            conn.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 7", [])
                .unwrap();
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
        if i == 150 {
            // A restarted follower resumes where it was.
            drop(follower);
            follower = spawn_follower(&t, &replica);
        }
    }
    let last = stream_head(target.as_ref()).1;
    wait_for_seq(&replica, last);
    let reads = reader.stop();
    assert!(reads > 0);
    // The replica equals the primary byte for byte.
    let r = open_plain(&replica);
    assert_eq!(image_hash(&r), image_hash(&conn));
    drop(r);
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
    let r = open_plain(&replica);
    assert_eq!(image_hash(&r), image_hash(&conn));
}
