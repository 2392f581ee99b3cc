//! The bank-transfer workload of the validator tests (tests/validators.rs, and `follow` over S3
//! in tests/s3_ship.rs): accounts whose total balance holds at every commit, transfers between
//! them, and a reader that checks a replica never shows a torn transaction.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::open_captured;

/// The sum of all balances.
pub const TOTAL: i64 = 1_000_000;
/// Holds at every commit (an empty table counts as balanced).
pub const INVARIANT: &str = "SELECT coalesce(sum(balance), 1000000) = 1000000 FROM accounts";

/// Creates `accounts` accounts in `db`, opened through walstream with URI `params` (see
/// `open_captured`), in one transaction after the schema's.
pub fn bank(db: &Path, params: &str, accounts: i64) -> Connection {
    let conn = open_captured(db, params);
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);").unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..accounts {
        let balance = if i == 0 {
            TOTAL - (accounts - 1) * 100
        } else {
            100
        };
        conn.execute("INSERT INTO accounts VALUES (?1, ?2)", (i, balance))
            .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    conn
}

/// Transfer number `i`: one transaction that moves 5 between two accounts.
pub fn transfer(conn: &Connection, i: i64, accounts: i64) {
    let (from, to) = (i % accounts, (i * 7 + 3) % accounts);
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "UPDATE accounts SET balance = balance - 5 WHERE id = ?1",
        [from],
    )
    .unwrap();
    conn.execute(
        "UPDATE accounts SET balance = balance + 5 WHERE id = ?1",
        [to],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

/// A thread that opens `replica` read-only again and again and asserts that it always holds
/// `accounts` accounts whose balances sum to `TOTAL`, until `stop`.
pub struct TornReader {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl TornReader {
    pub fn spawn(replica: &Path, accounts: i64) -> TornReader {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (replica, stop) = (replica.to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let r = Connection::open_with_flags(
                        &replica,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .unwrap();
                    r.busy_timeout(Duration::from_secs(5)).unwrap();
                    let (sum, count): (i64, i64) = r
                        .query_row("SELECT sum(balance), count(*) FROM accounts", [], |x| {
                            Ok((x.get(0)?, x.get(1)?))
                        })
                        .unwrap();
                    assert_eq!(
                        (sum, count),
                        (TOTAL, accounts),
                        "the replica showed a torn transaction"
                    );
                    reads += 1;
                }
                reads
            })
        };
        TornReader { stop, thread }
    }

    /// Stops the thread; returns how many times it read the replica (a failed check panics
    /// here).
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
