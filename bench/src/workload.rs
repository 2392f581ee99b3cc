//! The workloads: each has an untimed setup (schema, pre-populated rows) and a timed body. All
//! randomness comes from a seeded generator and every query orders its results, so the same
//! workload replayed on the same SQLite makes the same transactions (the changeset build relies
//! on this to see the transactions the walstream run captured).

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    /// 1-row transactions, synchronous=NORMAL.
    Txn1Normal,
    /// 1-row transactions, synchronous=FULL.
    Txn1Full,
    /// 100-row transactions, synchronous=NORMAL.
    Txn100,
    /// One transaction of `bulk_rows` rows.
    Bulk,
    /// Point and range reads, no writes.
    Read,
    /// Exchange sequencer: 100 order-book operations per transaction.
    OrderBook,
    /// A database of at least `big_bytes`, written in 10 MB transactions.
    Big,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::Txn1Normal => "1-row txns, synchronous=NORMAL",
            Workload::Txn1Full => "1-row txns, synchronous=FULL",
            Workload::Txn100 => "100-row txns, NORMAL",
            Workload::Bulk => "one 200k-row txn, NORMAL",
            Workload::Read => "read-only query loop",
            Workload::OrderBook => "order book, 100 ops/txn, NORMAL",
            Workload::Big => "large database",
        }
    }

    pub fn synchronous(self) -> &'static str {
        match self {
            Workload::Txn1Full => "FULL",
            _ => "NORMAL",
        }
    }
}

/// Sizes of the workloads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Scale {
    pub txn1: u64,
    pub txn1_full: u64,
    pub txn100: u64,
    pub bulk_rows: u64,
    pub read_rows: u64,
    pub reads: u64,
    pub orderbook_txns: u64,
    pub big_bytes: u64,
}

impl Scale {
    pub fn full() -> Self {
        Scale {
            txn1: 10_000,
            txn1_full: 2000,
            txn100: 500,
            bulk_rows: 200_000,
            read_rows: 100_000,
            reads: 100_000,
            orderbook_txns: 300,
            big_bytes: 1 << 30,
        }
    }

    pub fn quick() -> Self {
        Scale {
            txn1: 2000,
            txn1_full: 400,
            txn100: 100,
            bulk_rows: 200_000,
            read_rows: 50_000,
            reads: 30_000,
            orderbook_txns: 60,
            big_bytes: 128 << 20,
        }
    }

    /// The number of commits the timed body of `w` makes.
    pub fn commits(&self, w: Workload) -> u64 {
        match w {
            Workload::Txn1Normal => self.txn1,
            Workload::Txn1Full => self.txn1_full,
            Workload::Txn100 => self.txn100,
            Workload::Bulk => 1,
            Workload::Read => 0,
            Workload::OrderBook => self.orderbook_txns,
            Workload::Big => self.big_bytes.div_ceil(BIG_TXN_ROWS * BIG_ROW_BYTES),
        }
    }
}

const BIG_TXN_ROWS: u64 = 10_000;
const BIG_ROW_BYTES: u64 = 1000;

/// splitmix64: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A printable payload of `len` bytes (hex of random words: compressible about 2:1, like
    /// typical text columns).
    pub fn payload(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// Creates the schema and the untimed initial rows.
pub fn setup(conn: &Connection, w: Workload, scale: &Scale) -> rusqlite::Result<()> {
    match w {
        Workload::Txn1Normal | Workload::Txn1Full | Workload::Txn100 | Workload::Bulk => {
            conn.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL);
                 CREATE INDEX t_k ON t(k);",
            )?;
            // A few thousand rows so that the tree is not trivially small.
            let mut rng = Rng::new(1);
            let tx = conn.unchecked_transaction()?;
            {
                let mut ins = tx.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)")?;
                for _ in 0..5000 {
                    ins.execute(params![rng.below(1 << 40) as i64, rng.payload(100)])?;
                }
            }
            tx.commit()
        }
        Workload::Read => {
            conn.execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v TEXT NOT NULL);
                 CREATE INDEX t_k ON t(k);",
            )?;
            let mut rng = Rng::new(2);
            let tx = conn.unchecked_transaction()?;
            {
                let mut ins = tx.prepare("INSERT INTO t(k, v) VALUES (?1, ?2)")?;
                for i in 0..scale.read_rows {
                    ins.execute(params![
                        (i * 7919 % scale.read_rows) as i64,
                        rng.payload(100)
                    ])?;
                }
            }
            tx.commit()
        }
        Workload::OrderBook => orderbook_setup(conn),
        Workload::Big => {
            conn.execute_batch("CREATE TABLE big(id INTEGER PRIMARY KEY, v BLOB NOT NULL);")
        }
    }
}

/// The timed body. `after_commit` runs after each commit (outside the timing when it matters:
/// only the bytes measurement passes a non-trivial one). Returns a fingerprint of the final
/// state (for replication lag and determinism checks).
pub fn run(
    conn: &Connection,
    w: Workload,
    scale: &Scale,
    after_commit: &mut dyn FnMut(&Connection),
) -> rusqlite::Result<i64> {
    match w {
        Workload::Txn1Normal | Workload::Txn1Full => {
            let n = if w == Workload::Txn1Full {
                scale.txn1_full
            } else {
                scale.txn1
            };
            let mut rng = Rng::new(10);
            let mut ins = conn.prepare_cached("INSERT INTO t(k, v) VALUES (?1, ?2)")?;
            for _ in 0..n {
                // Autocommit: one INSERT is one transaction.
                ins.execute(params![rng.below(1 << 40) as i64, rng.payload(100)])?;
                after_commit(conn);
            }
        }
        Workload::Txn100 => {
            let mut rng = Rng::new(11);
            for _ in 0..scale.txn100 {
                let tx = conn.unchecked_transaction()?;
                {
                    let mut ins = tx.prepare_cached("INSERT INTO t(k, v) VALUES (?1, ?2)")?;
                    for _ in 0..100 {
                        ins.execute(params![rng.below(1 << 40) as i64, rng.payload(100)])?;
                    }
                }
                tx.commit()?;
                after_commit(conn);
            }
        }
        Workload::Bulk => {
            let mut rng = Rng::new(12);
            let tx = conn.unchecked_transaction()?;
            {
                let mut ins = tx.prepare_cached("INSERT INTO t(k, v) VALUES (?1, ?2)")?;
                for _ in 0..scale.bulk_rows {
                    ins.execute(params![rng.below(1 << 40) as i64, rng.payload(100)])?;
                }
            }
            tx.commit()?;
            after_commit(conn);
        }
        Workload::Read => {
            let mut rng = Rng::new(13);
            let mut point = conn.prepare_cached("SELECT v FROM t WHERE id = ?1")?;
            let mut by_k = conn.prepare_cached("SELECT id, v FROM t WHERE k = ?1")?;
            let mut range = conn.prepare_cached(
                "SELECT count(*), sum(length(v)) FROM t WHERE k BETWEEN ?1 AND ?2",
            )?;
            let mut acc = 0i64;
            for i in 0..scale.reads {
                match i % 10 {
                    0 => {
                        let lo = rng.below(scale.read_rows) as i64;
                        let (c, s): (i64, Option<i64>) = range
                            .query_row(params![lo, lo + 50], |r| Ok((r.get(0)?, r.get(1)?)))?;
                        acc += c + s.unwrap_or(0);
                    }
                    1..=3 => {
                        let k = rng.below(scale.read_rows) as i64;
                        let mut rows = by_k.query(params![k])?;
                        while let Some(r) = rows.next()? {
                            acc += r.get::<_, i64>(0)?;
                        }
                    }
                    _ => {
                        let id = 1 + rng.below(scale.read_rows) as i64;
                        let v: Option<String> =
                            point.query_row(params![id], |r| r.get(0)).optional()?;
                        acc += v.map_or(0, |v| v.len() as i64);
                    }
                }
            }
            return Ok(acc);
        }
        Workload::OrderBook => {
            let mut ob = OrderBook::new(conn)?;
            for _ in 0..scale.orderbook_txns {
                ob.txn(conn, 100)?;
                after_commit(conn);
            }
        }
        Workload::Big => {
            let n = scale.commits(Workload::Big);
            let mut ins = conn.prepare_cached("INSERT INTO big(v) VALUES (randomblob(?1))")?;
            for _ in 0..n {
                let tx = conn.unchecked_transaction()?;
                for _ in 0..BIG_TXN_ROWS {
                    ins.execute(params![BIG_ROW_BYTES as i64])?;
                }
                tx.commit()?;
                after_commit(conn);
            }
        }
    }
    fingerprint(conn, w)
}

/// A number that changes with every committed transaction of the workload.
pub fn fingerprint(conn: &Connection, w: Workload) -> rusqlite::Result<i64> {
    let sql = match w {
        Workload::OrderBook => "SELECT coalesce(max(id), 0) FROM orders",
        Workload::Big => "SELECT coalesce(max(id), 0) FROM big",
        _ => "SELECT coalesce(max(id), 0) FROM t",
    };
    conn.query_row(sql, [], |r| r.get(0))
}

// ---- order book --------------------------------------------------------------------------

const USERS: u64 = 5000;
const OPEN_ORDERS: u64 = 10_000;
const MID_PRICE: i64 = 10_000;
/// Assets: 1 = base (quantity), 2 = quote (price * quantity).
const BASE: i64 = 1;
const QUOTE: i64 = 2;

fn orderbook_setup(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_ms INTEGER NOT NULL);
         CREATE TABLE balances(user_id INTEGER NOT NULL, asset INTEGER NOT NULL,
                               available INTEGER NOT NULL, locked INTEGER NOT NULL,
                               PRIMARY KEY(user_id, asset)) WITHOUT ROWID;
         CREATE TABLE orders(id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, side INTEGER NOT NULL,
                             price INTEGER NOT NULL, qty INTEGER NOT NULL, remaining INTEGER NOT NULL,
                             status INTEGER NOT NULL, ts INTEGER NOT NULL);
         CREATE INDEX orders_book ON orders(side, price, id) WHERE status = 0;
         CREATE INDEX orders_user ON orders(user_id);
         CREATE TABLE trades(id INTEGER PRIMARY KEY, buy_order INTEGER NOT NULL,
                             sell_order INTEGER NOT NULL, price INTEGER NOT NULL,
                             qty INTEGER NOT NULL, ts INTEGER NOT NULL);",
    )?;
    let mut rng = Rng::new(100);
    let tx = conn.unchecked_transaction()?;
    {
        let mut user = tx.prepare("INSERT INTO users(id, name, created_ms) VALUES (?1, ?2, ?3)")?;
        let mut bal = tx.prepare("INSERT INTO balances VALUES (?1, ?2, ?3, 0)")?;
        for id in 1..=USERS as i64 {
            user.execute(params![
                id,
                format!("user-{}", rng.payload(12)),
                1_700_000_000_000i64 + id
            ])?;
            bal.execute(params![id, BASE, 1_000_000_000i64])?;
            bal.execute(params![id, QUOTE, 1_000_000_000_000i64])?;
        }
    }
    tx.commit()?;
    let mut ob = OrderBook {
        rng: Rng::new(101),
        ts: 1_700_000_000_000,
    };
    let tx = conn.unchecked_transaction()?;
    for _ in 0..OPEN_ORDERS {
        ob.place(&tx)?;
    }
    tx.commit()
}

/// The sequencer: each operation is one of place (about half), cancel (a quarter) and match
/// (a quarter: the best bid against the best ask, one trade, four balance updates).
pub struct OrderBook {
    rng: Rng,
    ts: i64,
}

impl OrderBook {
    pub fn new(_conn: &Connection) -> rusqlite::Result<Self> {
        Ok(OrderBook {
            rng: Rng::new(7),
            ts: 1_800_000_000_000,
        })
    }

    /// One transaction of `ops` operations, committed.
    pub fn txn(&mut self, conn: &Connection, ops: u32) -> rusqlite::Result<()> {
        // IMMEDIATE, as a sequencer would: a deferred transaction that reads first must upgrade
        // to a writer, which SQLite may refuse with SQLITE_BUSY without waiting (seen with
        // Litestream checkpointing beside it).
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..ops {
            let r = match self.rng.below(4) {
                0 | 1 => self.place(conn),
                2 => self.cancel(conn),
                _ => self.matching(conn),
            };
            if let Err(e) = r {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        conn.execute_batch("COMMIT")
    }

    fn place(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.ts += 1;
        let user = 1 + self.rng.below(USERS) as i64;
        let side = self.rng.below(2) as i64; // 0 buy, 1 sell
                                             // Buys below the mid price, sells above, with some overlap so that matches happen.
        let offset = self.rng.below(200) as i64 - 20;
        let price = if side == 0 {
            MID_PRICE - offset
        } else {
            MID_PRICE + offset
        };
        let qty = 1 + self.rng.below(100) as i64;
        conn.prepare_cached(
            "INSERT INTO orders(user_id, side, price, qty, remaining, status, ts) VALUES (?1, ?2, ?3, ?4, ?4, 0, ?5)",
        )?
        .execute(params![user, side, price, qty, self.ts])?;
        let (asset, amount) = if side == 0 {
            (QUOTE, price * qty)
        } else {
            (BASE, qty)
        };
        conn.prepare_cached(
            "UPDATE balances SET available = available - ?3, locked = locked + ?3 WHERE user_id = ?1 AND asset = ?2",
        )?
        .execute(params![user, asset, amount])?;
        Ok(())
    }

    fn cancel(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.ts += 1;
        let side = self.rng.below(2) as i64;
        let price = MID_PRICE + self.rng.below(400) as i64 - 200;
        let found: Option<(i64, i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT id, user_id, price, remaining FROM orders
                 WHERE status = 0 AND side = ?1 AND price >= ?2 ORDER BY side, price, id LIMIT 1",
            )?
            .query_row(params![side, price], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((id, user, price, remaining)) = found else {
            return Ok(());
        };
        conn.prepare_cached("UPDATE orders SET status = 2, ts = ?2 WHERE id = ?1")?
            .execute(params![id, self.ts])?;
        let (asset, amount) = if side == 0 {
            (QUOTE, price * remaining)
        } else {
            (BASE, remaining)
        };
        conn.prepare_cached(
            "UPDATE balances SET available = available + ?3, locked = locked - ?3 WHERE user_id = ?1 AND asset = ?2",
        )?
        .execute(params![user, asset, amount])?;
        Ok(())
    }

    fn matching(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.ts += 1;
        let best = |side: i64, sql: &str| -> rusqlite::Result<Option<(i64, i64, i64, i64)>> {
            conn.prepare_cached(sql)?
                .query_row(params![side], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
        };
        let bid = best(
            0,
            "SELECT id, user_id, price, remaining FROM orders WHERE status = 0 AND side = ?1
             ORDER BY side, price DESC, id LIMIT 1",
        )?;
        let ask = best(
            1,
            "SELECT id, user_id, price, remaining FROM orders WHERE status = 0 AND side = ?1
             ORDER BY side, price, id LIMIT 1",
        )?;
        let (Some(bid), Some(ask)) = (bid, ask) else {
            return Ok(());
        };
        // The sequencer crosses the best bid with the best ask at the ask's price (a market
        // maker would otherwise lift it), so every match trades.
        let qty = bid.3.min(ask.3);
        let price = ask.2;
        conn.prepare_cached(
            "INSERT INTO trades(buy_order, sell_order, price, qty, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![bid.0, ask.0, price, qty, self.ts])?;
        let mut fill = conn.prepare_cached(
            "UPDATE orders SET remaining = remaining - ?2, status = CASE WHEN remaining = ?2 THEN 1 ELSE 0 END,
             ts = ?3 WHERE id = ?1",
        )?;
        fill.execute(params![bid.0, qty, self.ts])?;
        fill.execute(params![ask.0, qty, self.ts])?;
        let mut bal = conn.prepare_cached(
            "UPDATE balances SET available = available + ?3, locked = locked - ?4 WHERE user_id = ?1 AND asset = ?2",
        )?;
        // Buyer: pays price*qty from locked quote (locked at the bid price; the difference
        // returns to available), receives qty base.
        bal.execute(params![bid.1, QUOTE, (bid.2 - price) * qty, bid.2 * qty])?;
        bal.execute(params![bid.1, BASE, qty, 0])?;
        // Seller: gives qty locked base, receives price*qty quote.
        bal.execute(params![ask.1, BASE, 0, qty])?;
        bal.execute(params![ask.1, QUOTE, price * qty, 0])?;
        Ok(())
    }
}
