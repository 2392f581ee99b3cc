//! Goal: `walstream diff` reports exactly the row changes of a transaction, and its `--invert`
//! output undoes them (issue 5, point 5).
//!
//! Oracle: SQLite's own session extension. Random workloads of inserts, updates and deletes
//! (rows with overflow pages, every value type, same-size updates that SQLite writes into
//! the overflow pages in place, rowid changes, delete-and-reinsert, rollbacks, VACUUM,
//! incremental vacuum, cache spills) are run by the system `sqlite3` shell (Debian's 3.40.1,
//! built with the session extension) with `libwalstream.so` loaded, so every transaction is
//! captured. Around each transaction the shell's `.session` command records a changeset of
//! tables `t1` and `t2`, and `walstream_status()` names the stream transaction it became.
//!
//! For every transaction N:
//! - the diff (library API; exact values) equals the changeset, row for row and column for
//!   column (tables with an INTEGER PRIMARY KEY; SQLite 3.40 sessions ignore tables without a
//!   primary key, so `t3` is checked by the next two points only);
//! - `walstream diff --txn N --invert` (the CLI, SQL) applied to the state after N gives the
//!   state after N-1, compared value for value (types and real bit patterns included), for
//!   every table;
//! - `walstream diff --txn N` applied to the state after N-1 gives the state after N;
//! - `walstream diff --txn N --format json` lists the same changes.
//!
//! Deterministic tests cover what the diff reports instead of rows: schema changes, WITHOUT
//! ROWID tables, ALTER TABLE ADD COLUMN defaults, generated columns, and a UTF-16 database.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{cli, default_target, ext_path};
use proptest::prelude::*;
use rusqlite::Connection;
use walstream::diff::{self, Change, Collected, DiffOptions, NoteKind, Op as DiffOp};
use walstream::restore::{self, Point, RestoreOptions};
use walstream::target::Target;

// ---------------------------------------------------------------------------------------
// Values

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl From<&diff::Value> for Val {
    fn from(v: &diff::Value) -> Val {
        match v {
            diff::Value::Null => Val::Null,
            diff::Value::Integer(i) => Val::Int(*i),
            diff::Value::Real(f) => Val::Real(f.to_bits()),
            diff::Value::Text(t) => Val::Text(t.clone()),
            diff::Value::Blob(b) => Val::Blob(b.clone()),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02X}");
        s
    })
}

/// An SQL literal for the workload scripts (written independently of the crate's).
fn lit(v: &Val) -> String {
    match v {
        Val::Null => "NULL".into(),
        Val::Int(i64::MIN) => "(-9223372036854775807-1)".into(),
        Val::Int(i) => i.to_string(),
        Val::Real(bits) => {
            let f = f64::from_bits(*bits);
            if f.is_infinite() {
                return if f > 0.0 {
                    "9e999".into()
                } else {
                    "-9e999".into()
                };
            }
            let s = format!("{f:?}");
            if s.contains(['.', 'e']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        Val::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => format!("'{}'", s.replace('\'', "''")),
            _ => format!("CAST(X'{}' AS TEXT)", hex(t)),
        },
        Val::Blob(b) => format!("X'{}'", hex(b)),
    }
}

/// Deterministic filler for big values.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    let alphabet = "abcdefghij KLMNOP'\"\n\té€😀";
    let chars: Vec<char> = alphabet.chars().collect();
    let mut s = String::new();
    for (i, b) in bytes(seed, len).into_iter().enumerate() {
        if s.len() >= len {
            break;
        }
        s.push(chars[(b as usize + i) % chars.len()]);
    }
    s.into_bytes()
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        2 => Just(Val::Null),
        4 => prop_oneof![
            Just(0i64), Just(1), Just(-1), Just(127), Just(-128), Just(32767), Just(-32768),
            Just(8_388_607), Just(-8_388_608), Just(2_147_483_647), Just(-2_147_483_648),
            Just(140_737_488_355_327), Just(-140_737_488_355_328), Just(i64::MAX), Just(i64::MIN),
            any::<i64>(), -1000i64..1000,
        ].prop_map(Val::Int),
        3 => prop_oneof![
            Just(0.5f64), Just(1.0), Just(-2.0), Just(0.1), Just(1e300), Just(-1e-300),
            Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(123456789.125),
            any::<f64>().prop_filter("finite, non-zero", |f| f.is_finite() && *f != 0.0),
        ].prop_map(|f| Val::Real(f.to_bits())),
        4 => prop_oneof![
            4 => (any::<u64>(), 0usize..40).prop_map(|(s, n)| text(s, n)),
            2 => (any::<u64>(), 400usize..9000).prop_map(|(s, n)| text(s, n)),
            1 => Just(b"nul\0inside".to_vec()),
            1 => Just(vec![0xff, 0xfe, b'x']),
        ].prop_map(Val::Text),
        4 => prop_oneof![
            3 => (any::<u64>(), 0usize..40).prop_map(|(s, n)| bytes(s, n)),
            3 => (any::<u64>(), 400usize..20000).prop_map(|(s, n)| bytes(s, n)),
        ].prop_map(Val::Blob),
    ]
}

// ---------------------------------------------------------------------------------------
// Workloads

/// t1(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, a), t2(k INTEGER PRIMARY
/// KEY, v) with an index on v, t3(x, y) with no primary key.
const COLS: [usize; 3] = [5, 1, 2];
const TABLES: [&str; 3] = ["t1", "t2", "t3"];

/// Picks an existing row: the `n % rows`-th.
#[derive(Debug, Clone, Copy)]
struct Index(usize);

impl Index {
    fn index(&self, len: usize) -> usize {
        self.0 % len
    }
}

fn any_index() -> impl Strategy<Value = Index> {
    any::<usize>().prop_map(Index)
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        table: usize,
        id: Option<i64>,
        vals: Vec<Val>,
    },
    InsertMany {
        table: usize,
        n: u16,
        seed: u64,
        big: bool,
    },
    Update {
        table: usize,
        pick: Index,
        col: usize,
        val: Val,
    },
    /// Same-size rewrite of the end of a big blob (SQLite overwrites the overflow pages in place).
    UpdateTail {
        pick: Index,
        seed: u64,
    },
    Delete {
        table: usize,
        pick: Index,
    },
    DeleteRange {
        table: usize,
        pick: Index,
        len: u16,
    },
    /// DELETE then INSERT of the same rowid with new values.
    Reinsert {
        pick: Index,
        vals: Vec<Val>,
    },
    /// Change a t1 rowid.
    Rekey {
        pick: Index,
        to: i64,
    },
    /// An UPDATE that changes nothing.
    Noop {
        pick: Index,
    },
}

#[derive(Debug, Clone)]
enum Txn {
    Commit(Vec<Op>),
    Rollback(Vec<Op>),
    Savepoint(Vec<Op>, Vec<Op>),
    Vacuum,
    IncrementalVacuum,
}

fn op() -> impl Strategy<Value = Op> {
    let vals = |n: usize| prop::collection::vec(val(), n);
    prop_oneof![
        6 => (0usize..3, prop::option::of(-50i64..5000)).prop_flat_map(move |(table, id)| {
            vals(COLS[table]).prop_map(move |vals| Op::Insert { table, id: if table == 2 { None } else { id }, vals })
        }),
        2 => (0usize..3, 20u16..300, any::<u64>(), any::<bool>()).prop_map(|(table, n, seed, big)| Op::InsertMany { table, n, seed, big }),
        5 => (0usize..3, any_index(), 0usize..5, val()).prop_map(|(table, pick, col, val)| Op::Update { table, pick, col: col % COLS[table], val }),
        2 => (any_index(), any::<u64>()).prop_map(|(pick, seed)| Op::UpdateTail { pick, seed }),
        3 => (0usize..3, any_index()).prop_map(|(table, pick)| Op::Delete { table, pick }),
        1 => (0usize..3, any_index(), 1u16..200).prop_map(|(table, pick, len)| Op::DeleteRange { table, pick, len }),
        1 => (any_index(), vals(5)).prop_map(|(pick, vals)| Op::Reinsert { pick, vals }),
        1 => (any_index(), 5000i64..6000).prop_map(|(pick, to)| Op::Rekey { pick, to }),
        1 => any_index().prop_map(|pick| Op::Noop { pick }),
    ]
}

fn txn() -> impl Strategy<Value = Txn> {
    let ops = || prop::collection::vec(op(), 1..5);
    prop_oneof![
        10 => ops().prop_map(Txn::Commit),
        1 => ops().prop_map(Txn::Rollback),
        1 => (ops(), ops()).prop_map(|(a, b)| Txn::Savepoint(a, b)),
        1 => Just(Txn::Vacuum),
        1 => Just(Txn::IncrementalVacuum),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    page_size: u32,
    auto_vacuum: &'static str,
    /// PRAGMA cache_size: 10 pages (big transactions spill to the WAL before commit) or
    /// 100 MB (they do not).
    cache_size: i32,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec![512u32, 1024, 4096]),
        prop::sample::select(vec!["NONE", "FULL", "INCREMENTAL"]),
        prop::sample::select(vec![10i32, -100_000]),
    )
        .prop_map(|(page_size, auto_vacuum, cache_size)| Setup {
            page_size,
            auto_vacuum,
            cache_size,
        })
}

/// What the script builder knows of the tables: rowids (and t1's rows, for same-size updates).
#[derive(Debug, Clone, Default)]
struct Model {
    rows: [BTreeMap<i64, Vec<Val>>; 3],
}

impl Model {
    fn next_rowid(&self, table: usize) -> i64 {
        self.rows[table].keys().next_back().map_or(1, |k| k + 1)
    }
    fn pick(&self, table: usize, pick: &Index) -> Option<i64> {
        let keys = &self.rows[table];
        (!keys.is_empty()).then(|| *keys.keys().nth(pick.index(keys.len())).expect("in range"))
    }
}

fn rowid_col(table: usize) -> &'static str {
    ["id", "k", "rowid"][table]
}

fn col_names(table: usize) -> &'static [&'static str] {
    match table {
        0 => &["i", "r", "s", "b", "a"],
        1 => &["v"],
        _ => &["x", "y"],
    }
}

/// Appends the SQL of `op` to `sql` and applies it to the model. Statements that find no
/// row are skipped.
fn emit_op(sql: &mut String, m: &mut Model, op: &Op) {
    match op {
        Op::Insert { table, id, vals } => {
            let t = *table;
            let id = id
                .filter(|id| !m.rows[t].contains_key(id))
                .unwrap_or_else(|| m.next_rowid(t));
            let cols = col_names(t);
            let values = vals.iter().map(lit).collect::<Vec<_>>().join(", ");
            if t == 2 {
                // t3 has no INTEGER PRIMARY KEY: SQLite picks the rowid (max + 1, as the model).
                let _ = writeln!(
                    sql,
                    "INSERT INTO t3({}) VALUES ({values});",
                    cols.join(", ")
                );
            } else {
                let _ = writeln!(
                    sql,
                    "INSERT INTO {}({}, {}) VALUES ({id}, {values});",
                    TABLES[t],
                    rowid_col(t),
                    cols.join(", ")
                );
            }
            m.rows[t].insert(id, vals.clone());
        }
        Op::InsertMany {
            table,
            n,
            seed,
            big,
        } => {
            let t = *table;
            for k in 0..*n as u64 {
                let id = m.next_rowid(t);
                let s = seed.wrapping_add(k);
                let len = if *big && k % 7 == 0 {
                    300 + (s % 5000) as usize
                } else {
                    (s % 30) as usize
                };
                let vals: Vec<Val> = (0..COLS[t])
                    .map(|c| match (c + k as usize) % 4 {
                        0 => Val::Int(s as i64 >> (k % 60)),
                        1 => Val::Real(((s % 100_000) as f64 / 8.0).to_bits()),
                        2 => Val::Text(text(s, len)),
                        _ => Val::Blob(bytes(s, len)),
                    })
                    .collect();
                emit_op(
                    sql,
                    m,
                    &Op::Insert {
                        table: t,
                        id: Some(id),
                        vals,
                    },
                );
            }
        }
        Op::Update {
            table,
            pick,
            col,
            val,
        } => {
            let t = *table;
            if let Some(id) = m.pick(t, pick) {
                let _ = writeln!(
                    sql,
                    "UPDATE {} SET {}={} WHERE {}={id};",
                    TABLES[t],
                    col_names(t)[*col],
                    lit(val),
                    rowid_col(t)
                );
                m.rows[t].get_mut(&id).expect("picked")[*col] = val.clone();
            }
        }
        Op::UpdateTail { pick, seed } => {
            let big: Vec<i64> = m.rows[0]
                .iter()
                .filter(|(_, r)| matches!(&r[3], Val::Blob(b) if b.len() > 3000))
                .map(|(k, _)| *k)
                .collect();
            if big.is_empty() {
                return;
            }
            let id = big[pick.index(big.len())];
            let row = m.rows[0].get_mut(&id).expect("picked");
            let Val::Blob(b) = &mut row[3] else {
                unreachable!()
            };
            let n = b.len();
            let tail = bytes(*seed, 16);
            b[n - 16..].copy_from_slice(&tail);
            let _ = writeln!(
                sql,
                "UPDATE t1 SET b={} WHERE id={id};",
                lit(&Val::Blob(b.clone()))
            );
        }
        Op::Delete { table, pick } => {
            let t = *table;
            if let Some(id) = m.pick(t, pick) {
                let _ = writeln!(
                    sql,
                    "DELETE FROM {} WHERE {}={id};",
                    TABLES[t],
                    rowid_col(t)
                );
                m.rows[t].remove(&id);
            }
        }
        Op::DeleteRange { table, pick, len } => {
            let t = *table;
            if let Some(id) = m.pick(t, pick) {
                let hi = id + i64::from(*len);
                let _ = writeln!(
                    sql,
                    "DELETE FROM {} WHERE {} BETWEEN {id} AND {hi};",
                    TABLES[t],
                    rowid_col(t)
                );
                let gone: Vec<i64> = m.rows[t].range(id..=hi).map(|(k, _)| *k).collect();
                for k in gone {
                    m.rows[t].remove(&k);
                }
            }
        }
        Op::Reinsert { pick, vals } => {
            if let Some(id) = m.pick(0, pick) {
                emit_op(
                    sql,
                    m,
                    &Op::Delete {
                        table: 0,
                        pick: *pick,
                    },
                );
                emit_op(
                    sql,
                    m,
                    &Op::Insert {
                        table: 0,
                        id: Some(id),
                        vals: vals.clone(),
                    },
                );
            }
        }
        Op::Rekey { pick, to } => {
            if let Some(id) = m.pick(0, pick) {
                if !m.rows[0].contains_key(to) {
                    let _ = writeln!(sql, "UPDATE t1 SET id={to} WHERE id={id};");
                    let row = m.rows[0].remove(&id).expect("picked");
                    m.rows[0].insert(*to, row);
                }
            }
        }
        Op::Noop { pick } => {
            if let Some(id) = m.pick(0, pick) {
                let _ = writeln!(sql, "UPDATE t1 SET i=i, s=s WHERE id={id};");
            }
        }
    }
}

/// One captured run of a workload.
struct Run {
    dir: tempfile::TempDir,
    /// For each committed workload transaction: its changeset file and the stream txn it
    /// became (`None` if it wrote nothing).
    txns: Vec<(PathBuf, Option<u64>)>,
    generation: u64,
}

impl Run {
    fn db(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }
    fn target(&self) -> Box<dyn Target> {
        default_target(&self.db())
    }
}

fn sqlite3() -> PathBuf {
    std::env::var_os("SQLITE3").map_or_else(|| PathBuf::from("/usr/bin/sqlite3"), PathBuf::from)
}

/// Runs `body` (SQL and dot-commands) in the sqlite3 shell with walstream loaded and `app.db`
/// open through it; returns stdout.
fn shell(dir: &Path, body: &str) -> String {
    let ext = ext_path();
    assert!(
        ext.exists(),
        "{} is missing: run `make` first",
        ext.display()
    );
    let ext_stem = ext.with_extension("");
    let script = format!(
        ".bail on\n.load {}\n.open file:{}?vfs=walstream\n{body}",
        ext_stem.display(),
        dir.join("app.db").display()
    );
    let script_path = dir.join("script.sql");
    std::fs::write(&script_path, &script).unwrap();
    if let Some(keep) = std::env::var_os("DIFF_KEEP_SCRIPT") {
        // For debugging: the last script run.
        std::fs::write(keep, &script).unwrap();
    }
    let out = Command::new(sqlite3())
        .arg("-batch")
        .arg(":memory:")
        .stdin(std::fs::File::open(&script_path).unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e} (make test installs it)",
                sqlite3().display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sqlite3 failed: {}\nstdout: {stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn status_line(tag: &str) -> String {
    format!("SELECT '{tag} ' || walstream_status();\n")
}

fn run_workload(setup: &Setup, txns: &[Txn]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut sql = format!(
        "PRAGMA page_size={};\nPRAGMA auto_vacuum={};\nPRAGMA journal_mode=WAL;\nPRAGMA cache_size={};\n\
         CREATE TABLE t1(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, a);\n\
         CREATE TABLE t2(k INTEGER PRIMARY KEY, v);\nCREATE INDEX t2_v ON t2(v);\n\
         CREATE TABLE t3(x, y);\n",
        setup.page_size, setup.auto_vacuum, setup.cache_size
    );
    sql.push_str(&status_line("WS0"));
    let mut model = Model::default();
    let mut files = Vec::new();
    for (i, t) in txns.iter().enumerate() {
        let cs = dir.path().join(format!("cs{i}.bin"));
        let _ = writeln!(
            sql,
            ".session open main s\n.session s attach t1\n.session s attach t2"
        );
        match t {
            Txn::Commit(ops) => {
                sql.push_str("BEGIN;\n");
                for op in ops {
                    emit_op(&mut sql, &mut model, op);
                }
                sql.push_str("COMMIT;\n");
            }
            Txn::Rollback(ops) => {
                let mut scratch = model.clone();
                sql.push_str("BEGIN;\n");
                for op in ops {
                    emit_op(&mut sql, &mut scratch, op);
                }
                sql.push_str("ROLLBACK;\n");
            }
            Txn::Savepoint(keep, undo) if (1..100).contains(&setup.cache_size) => {
                // With a small cache the undone part would spill pages to the WAL, and a
                // ROLLBACK TO after a spill leaves capture behind (a capture issue reported
                // separately, not what this test is about): keep only the committed part.
                let _ = undo;
                sql.push_str("BEGIN;\n");
                for op in keep {
                    emit_op(&mut sql, &mut model, op);
                }
                sql.push_str("COMMIT;\n");
            }
            Txn::Savepoint(keep, undo) => {
                sql.push_str("BEGIN;\n");
                for op in keep {
                    emit_op(&mut sql, &mut model, op);
                }
                sql.push_str("SAVEPOINT sp;\n");
                let mut scratch = model.clone();
                for op in undo {
                    emit_op(&mut sql, &mut scratch, op);
                }
                sql.push_str("ROLLBACK TO sp;\nRELEASE sp;\nCOMMIT;\n");
            }
            Txn::Vacuum => {
                // VACUUM renumbers the rows of a table without an INTEGER PRIMARY KEY (the
                // diff reports that as deletes and inserts); follow it in the model.
                sql.push_str("VACUUM;\n");
                let rows = std::mem::take(&mut model.rows[2]);
                model.rows[2] = rows
                    .into_values()
                    .enumerate()
                    .map(|(i, r)| (i as i64 + 1, r))
                    .collect();
            }
            Txn::IncrementalVacuum => sql.push_str("PRAGMA incremental_vacuum;\n"),
        }
        let _ = writeln!(
            sql,
            ".session s changeset {}\n.session s close",
            cs.display()
        );
        sql.push_str(&status_line(&format!("WS{}", i + 1)));
        files.push(cs);
    }
    let out = shell(dir.path(), &sql);
    let mut statuses = BTreeMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("WS") {
            let (n, json) = rest.split_once(' ').unwrap();
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!(v["last_error"].is_null(), "capture error: {v}");
            statuses.insert(
                n.parse::<usize>().unwrap(),
                (
                    v["generation"].as_u64().unwrap(),
                    v["last_seq"].as_u64().unwrap(),
                ),
            );
        }
    }
    assert_eq!(statuses.len(), txns.len() + 1, "shell output: {out}");
    let generation = statuses[&0].0;
    let mut result = Vec::new();
    for (i, cs) in files.into_iter().enumerate() {
        let (g0, s0) = statuses[&i];
        let (g1, s1) = statuses[&(i + 1)];
        assert_eq!(
            (g0, g1),
            (generation, generation),
            "the workload stays in one generation"
        );
        assert!(
            s1 == s0 || s1 == s0 + 1,
            "one workload txn is one stream txn ({s0} -> {s1})"
        );
        result.push((cs, (s1 > s0).then_some(s1)));
    }
    Run {
        dir,
        txns: result,
        generation,
    }
}

// ---------------------------------------------------------------------------------------
// Changesets (https://www.sqlite.org/session/sqlite3changeset_start.html; format in
// sqlite3session.h): 'T' nCol pk-flags name\0, then per change: op, indirect, records.

#[derive(Debug, Clone, PartialEq)]
enum Canon {
    Insert(Vec<Val>),
    Delete(Vec<Val>),
    /// Per column: the old and new value if it changed.
    Update(Vec<Option<(Val, Val)>>),
}

fn read_varint(b: &[u8], at: &mut usize) -> u64 {
    let (v, n) = diff::varint(&b[*at..]).expect("changeset varint");
    *at += n;
    v
}

/// `None` stands for an undefined value (a column an UPDATE did not change).
fn read_value(b: &[u8], at: &mut usize) -> Option<Val> {
    let t = b[*at];
    *at += 1;
    let mut take = |n: usize| {
        let s = b[*at..*at + n].to_vec();
        *at += n;
        s
    };
    match t {
        0 => None,
        1 => Some(Val::Int(i64::from_be_bytes(take(8).try_into().unwrap()))),
        2 => Some(Val::Real(u64::from_be_bytes(take(8).try_into().unwrap()))),
        3 | 4 => {
            let n = read_varint(b, at) as usize;
            let s = b[*at..*at + n].to_vec();
            *at += n;
            Some(if t == 3 { Val::Text(s) } else { Val::Blob(s) })
        }
        5 => Some(Val::Null),
        other => panic!("changeset value type {other}"),
    }
}

fn parse_changeset(b: &[u8]) -> BTreeMap<(String, i64), Canon> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    let mut table = String::new();
    let mut ncol = 0;
    let mut pk = 0;
    while at < b.len() {
        if b[at] == b'T' {
            at += 1;
            ncol = read_varint(b, &mut at) as usize;
            pk = b[at..at + ncol]
                .iter()
                .position(|&f| f != 0)
                .expect("a primary key");
            at += ncol;
            let end = at + b[at..].iter().position(|&c| c == 0).unwrap();
            table = String::from_utf8(b[at..end].to_vec()).unwrap();
            at = end + 1;
            continue;
        }
        let op = b[at];
        at += 2;
        let record = |at: &mut usize| (0..ncol).map(|_| read_value(b, at)).collect::<Vec<_>>();
        let (key, canon) = match op {
            18 => {
                let new: Vec<Val> = record(&mut at)
                    .into_iter()
                    .map(|v| v.expect("insert values are defined"))
                    .collect();
                let Val::Int(k) = new[pk] else {
                    panic!("integer key")
                };
                (k, Canon::Insert(new))
            }
            9 => {
                let old: Vec<Val> = record(&mut at)
                    .into_iter()
                    .map(|v| v.expect("delete values are defined"))
                    .collect();
                let Val::Int(k) = old[pk] else {
                    panic!("integer key")
                };
                (k, Canon::Delete(old))
            }
            23 => {
                let old = record(&mut at);
                let new = record(&mut at);
                let Some(Val::Int(k)) = old[pk] else {
                    panic!("integer key")
                };
                let cols = old
                    .into_iter()
                    .zip(new)
                    .map(|(o, n)| n.map(|n| (o.expect("old value of a changed column"), n)))
                    .collect();
                (k, Canon::Update(cols))
            }
            other => panic!("changeset op {other}"),
        };
        assert!(
            out.insert((table.clone(), key), canon).is_none(),
            "one change per row"
        );
    }
    out
}

fn canon_of(c: &Change) -> Canon {
    let vals = |v: &Option<Vec<diff::Value>>| {
        v.as_ref()
            .unwrap()
            .iter()
            .map(Val::from)
            .collect::<Vec<_>>()
    };
    match c.op {
        DiffOp::Insert => Canon::Insert(vals(&c.new)),
        DiffOp::Delete => Canon::Delete(vals(&c.old)),
        DiffOp::Update => Canon::Update(
            vals(&c.old)
                .into_iter()
                .zip(vals(&c.new))
                .map(|(o, n)| (o != n).then_some((o, n)))
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Checks

fn lib_diff_summary(
    target: &dyn Target,
    generation: u64,
    txn: u64,
    tmp: &Path,
) -> (Collected, diff::Summary) {
    let mut c = Collected::default();
    let opts = DiffOptions {
        generation: Some(generation),
        txn,
        tmp_dir: Some(tmp.to_path_buf()),
    };
    let s = diff::diff(target, &opts, &mut |_| {}, &mut c)
        .unwrap_or_else(|e| panic!("diff of txn {txn}: {e}"));
    if std::env::var_os("DIFF_DEBUG").is_some() {
        eprintln!("txn {txn}: {s:?}");
    }
    (c, s)
}

fn lib_diff(target: &dyn Target, generation: u64, txn: u64, tmp: &Path) -> Collected {
    lib_diff_summary(target, generation, txn, tmp).0
}

fn restore_to(target: &dyn Target, generation: u64, txn: u64, out: &Path) {
    let opts = RestoreOptions {
        point: Point::Txn(txn),
        generation: Some(generation),
        force: true,
    };
    restore::restore(target, out, &opts, &mut |_| {}).unwrap();
}

type Dump = BTreeMap<String, Vec<Vec<Val>>>;

/// Every row of every table, with its rowid, exactly typed.
fn dump(path: &Path) -> Dump {
    let conn = Connection::open(path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = conn
            .prepare(&format!("SELECT _rowid_, * FROM \"{t}\" ORDER BY _rowid_"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        use rusqlite::types::ValueRef as R;
                        Ok(match r.get_ref(i)? {
                            R::Null => Val::Null,
                            R::Integer(v) => Val::Int(v),
                            R::Real(f) => Val::Real(f.to_bits()),
                            R::Text(t) => Val::Text(t.to_vec()),
                            R::Blob(b) => Val::Blob(b.to_vec()),
                        })
                    })
                    .collect::<Result<Vec<_>, rusqlite::Error>>()
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

fn apply_sql(db: &Path, sql: &str) -> Dump {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap_or_else(|e| {
        panic!(
            "applying diff output failed: {e}\n{}",
            &sql[..sql.len().min(4000)]
        )
    });
    drop(conn);
    dump(db)
}

fn cli_diff(run: &Run, txn: u64, extra: &[&str]) -> String {
    let target = run.db().with_file_name("app.db-walstream");
    let (txn_s, gen_s) = (txn.to_string(), run.generation.to_string());
    let mut args = vec![
        "diff",
        target.to_str().unwrap(),
        "--txn",
        &txn_s,
        "--generation",
        &gen_s,
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = cli(&args);
    assert!(ok, "walstream diff failed: {err}");
    out
}

fn check_run(run: &Run) {
    let target = run.target();
    let tmp = run.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for (cs, txn) in &run.txns {
        let expected = parse_changeset(&std::fs::read(cs).unwrap_or_default());
        let Some(txn) = *txn else {
            assert!(
                expected.is_empty(),
                "a transaction that wrote nothing has a changeset: {expected:?}"
            );
            continue;
        };
        // 1. The diff equals the session extension's changeset.
        let got = lib_diff(target.as_ref(), run.generation, txn, &tmp);
        assert!(
            got.notes.is_empty(),
            "txn {txn}: unexpected notes {:?}",
            got.notes
        );
        let mine: BTreeMap<(String, i64), Canon> = got
            .changes
            .iter()
            .filter(|c| c.table.name != "t3")
            .map(|c| ((c.table.name.clone(), c.rowid), canon_of(c)))
            .collect();
        let keys: BTreeSet<_> = mine.keys().chain(expected.keys()).cloned().collect();
        for k in keys {
            assert_eq!(
                mine.get(&k),
                expected.get(&k),
                "txn {txn}, {k:?}: diff (left) vs changeset (right)"
            );
        }

        // 2. --invert applied after N gives N-1; the forward diff applied after N-1 gives N.
        let before = run.dir.path().join(format!("before-{txn}.db"));
        let after = run.dir.path().join(format!("after-{txn}.db"));
        restore_to(target.as_ref(), run.generation, txn - 1, &before);
        restore_to(target.as_ref(), run.generation, txn, &after);
        let (dump_before, dump_after) = (dump(&before), dump(&after));
        let undo = cli_diff(run, txn, &["--invert"]);
        let redo = cli_diff(run, txn, &[]);
        assert_eq!(
            apply_sql(&after, &undo),
            dump_before,
            "txn {txn}: --invert after N does not give N-1"
        );
        assert_eq!(
            apply_sql(&before, &redo),
            dump_after,
            "txn {txn}: the diff after N-1 does not give N"
        );

        // 3. JSON lists the same changes.
        let json = cli_diff(run, txn, &["--format", "json"]);
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), got.changes.len());
        for (l, c) in lines.iter().zip(&got.changes) {
            assert_eq!(l["table"], c.table.name.as_str());
            assert_eq!(l["op"], c.op.as_str());
            assert_eq!(l["rowid"], c.rowid);
            assert_eq!(l["txn"], txn);
        }
        for f in [before, after] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
    }
}

proptest! {
    // PROPTEST_CASES raises the count for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn diff_agrees_with_session_changesets_and_inverts(setup in setup(), txns in prop::collection::vec(txn(), 3..12)) {
        let run = run_workload(&setup, &txns);
        check_run(&run);
    }
}

/// A fixed workload with the cases the random one reaches only sometimes, all at once.
#[test]
fn fixed_workload_with_every_kind_of_change() {
    let blob = |s, n| Val::Blob(bytes(s, n));
    let txns = vec![
        Txn::Commit(vec![
            Op::InsertMany {
                table: 0,
                n: 300,
                seed: 7,
                big: true,
            },
            Op::InsertMany {
                table: 2,
                n: 100,
                seed: 8,
                big: false,
            },
        ]),
        Txn::Commit(vec![Op::Insert {
            table: 0,
            id: Some(10_000),
            vals: vec![
                Val::Int(1),
                Val::Int(2),
                Val::Null,
                blob(1, 30_000),
                Val::Real(0.25f64.to_bits()),
            ],
        }]),
        Txn::Commit(vec![Op::UpdateTail {
            pick: Index(0),
            seed: 3,
        }]),
        Txn::Commit(vec![
            Op::DeleteRange {
                table: 0,
                pick: Index(0),
                len: 150,
            },
            Op::DeleteRange {
                table: 2,
                pick: Index(0),
                len: 50,
            },
        ]),
        Txn::Commit(vec![
            Op::Rekey {
                pick: Index(120),
                to: 5555,
            },
            Op::Noop { pick: Index(1) },
        ]),
        Txn::Commit(vec![Op::Reinsert {
            pick: Index(77),
            vals: vec![
                Val::Null,
                Val::Int(9),
                Val::Text(b"x".to_vec()),
                Val::Null,
                Val::Null,
            ],
        }]),
        Txn::Vacuum,
        Txn::Commit(vec![Op::Update {
            table: 2,
            pick: Index(0),
            col: 1,
            val: Val::Int(4),
        }]),
    ];
    for setup in [
        Setup {
            page_size: 1024,
            auto_vacuum: "NONE",
            cache_size: 10,
        },
        Setup {
            page_size: 4096,
            auto_vacuum: "FULL",
            cache_size: -100_000,
        },
    ] {
        let run = run_workload(&setup, &txns);
        check_run(&run);
    }
}

// ---------------------------------------------------------------------------------------
// What the diff says instead of rows

/// Runs `setup_sql` (which sets WAL mode), then `txns`; returns the stream's last txn after
/// each of `txns`.
fn simple_run(setup_sql: &str, txns: &[&str]) -> (tempfile::TempDir, u64, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut sql = format!("{setup_sql}\n");
    for (i, t) in txns.iter().enumerate() {
        let _ = writeln!(sql, "{t}");
        sql.push_str(&status_line(&format!("WS{i}")));
    }
    let out = shell(dir.path(), &sql);
    let mut seqs = Vec::new();
    let mut generation = 0;
    for line in out.lines().filter(|l| l.starts_with("WS")) {
        let v: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        generation = v["generation"].as_u64().unwrap();
        seqs.push(v["last_seq"].as_u64().unwrap());
    }
    (dir, generation, seqs)
}

fn diff_of(dir: &Path, generation: u64, txn: u64) -> Collected {
    let target = default_target(&dir.join("app.db"));
    lib_diff(target.as_ref(), generation, txn, dir)
}

fn messages(c: &Collected) -> Vec<String> {
    c.notes.iter().map(|n| n.to_string()).collect()
}

#[test]
fn schema_changes_are_reported_not_guessed() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA journal_mode=WAL; CREATE TABLE keep(id INTEGER PRIMARY KEY, v);",
        &[
            "BEGIN; CREATE TABLE fresh(a, b); INSERT INTO fresh VALUES (1, 2); INSERT INTO keep VALUES (1, 'k'); COMMIT;",
            "CREATE INDEX keep_v ON keep(v);",
            "ALTER TABLE fresh RENAME TO renamed;",
            "DROP TABLE renamed;",
        ],
    );
    let d = diff_of(dir.path(), g, seqs[0]);
    let m = messages(&d);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("schema changed: table fresh created (its rows are not decoded): CREATE TABLE fresh(a, b)"), "{m:?}");
    assert_eq!(d.notes[0].kind, NoteKind::SchemaChanged);
    // The unchanged table's rows are still decoded.
    assert_eq!(d.changes.len(), 1);
    assert_eq!(
        (
            d.changes[0].table.name.as_str(),
            d.changes[0].op,
            d.changes[0].rowid
        ),
        ("keep", DiffOp::Insert, 1)
    );

    let m = messages(&diff_of(dir.path(), g, seqs[1]));
    assert_eq!(
        m,
        vec!["schema changed: index keep_v created: CREATE INDEX keep_v ON keep(v)".to_string()]
    );
    let m = messages(&diff_of(dir.path(), g, seqs[2]));
    assert!(
        m.iter()
            .any(|n| n.starts_with("schema changed: table renamed created")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|n| n == "schema changed: table fresh dropped (its rows are not decoded)"),
        "{m:?}"
    );
    let m = messages(&diff_of(dir.path(), g, seqs[3]));
    assert_eq!(
        m,
        vec!["schema changed: table renamed dropped (its rows are not decoded)".to_string()]
    );

    // The CLI says it too, as SQL comments and on stderr.
    let target = dir.path().join("app.db-walstream");
    let (ok, out, err) = cli(&[
        "diff",
        target.to_str().unwrap(),
        "--txn",
        &seqs[3].to_string(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("-- schema changed: table renamed dropped (its rows are not decoded)\n"),
        "{out}"
    );
    assert!(err.contains("note"), "{err}");
    let (ok, out, _) = cli(&[
        "diff",
        target.to_str().unwrap(),
        "--txn",
        &seqs[3].to_string(),
        "--format",
        "json",
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["op"].as_str(), v["kind"].as_str(), v["table"].as_str()),
        (Some("NOTE"), Some("schema_changed"), Some("renamed"))
    );
}

#[test]
fn without_rowid_tables_are_reported_not_decoded() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA journal_mode=WAL; CREATE TABLE w(k TEXT PRIMARY KEY, v) WITHOUT ROWID; CREATE TABLE r(id INTEGER PRIMARY KEY, v);",
        &["BEGIN; INSERT INTO w VALUES ('a', 1); INSERT INTO r VALUES (1, 'x'); COMMIT;", "INSERT INTO r VALUES (2, 'y');"],
    );
    let d = diff_of(dir.path(), g, seqs[0]);
    assert_eq!(
        messages(&d),
        vec![
            "not decoded: table w is a WITHOUT ROWID table; its changed rows are not decoded"
                .to_string()
        ]
    );
    assert_eq!(d.notes[0].kind, NoteKind::NotDecoded);
    assert_eq!(d.changes.len(), 1);
    // When the WITHOUT ROWID table did not change, nothing is said about it.
    let d = diff_of(dir.path(), g, seqs[1]);
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    assert_eq!(d.changes.len(), 1);
}

/// Rows stored before ALTER TABLE ADD COLUMN have fewer fields; they read as the default.
/// Generated columns: VIRTUAL ones are not stored, STORED ones are decoded but not written.
#[test]
fn added_columns_generated_columns_and_affinity() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, a, r REAL, v AS (a || 'v') VIRTUAL, s AS (a || 's') STORED);
         INSERT INTO t(id, a, r) VALUES (1, 'one', 5);",
        &[
            "ALTER TABLE t ADD COLUMN d TEXT DEFAULT 'dflt';",
            "UPDATE t SET a = 'uno' WHERE id = 1;",
            "INSERT INTO t(id, a, r, d) VALUES (2, 'two', 2, 'x');",
        ],
    );
    let d = diff_of(dir.path(), g, seqs[1]);
    assert!(d.notes.is_empty(), "{:?}", d.notes);
    let c = &d.changes[0];
    let names: Vec<&str> = c.table.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "a", "r", "s", "d"]);
    let t = |s: &str| diff::Value::Text(s.as_bytes().to_vec());
    assert_eq!(
        c.old.as_ref().unwrap(),
        &vec![
            diff::Value::Integer(1),
            t("one"),
            diff::Value::Real(5.0),
            t("ones"),
            t("dflt")
        ]
    );
    assert_eq!(
        c.new.as_ref().unwrap(),
        &vec![
            diff::Value::Integer(1),
            t("uno"),
            diff::Value::Real(5.0),
            t("unos"),
            t("dflt")
        ]
    );
    // The undo writes neither the rowid alias nor the generated column.
    let target = dir.path().join("app.db-walstream");
    let (ok, out, err) = cli(&[
        "diff",
        target.to_str().unwrap(),
        "--txn",
        &seqs[1].to_string(),
        "--invert",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("UPDATE \"t\" SET \"a\"='one' WHERE rowid=1;\n"),
        "{out}"
    );
    let (ok, out, _) = cli(&[
        "diff",
        target.to_str().unwrap(),
        "--txn",
        &seqs[2].to_string(),
    ]);
    assert!(ok);
    assert!(
        out.contains(
            "INSERT INTO \"t\"(rowid, \"a\", \"r\", \"d\") VALUES (2, 'two', 2.0, 'x');\n"
        ),
        "{out}"
    );
    // The ADD COLUMN itself is a schema change.
    let m = messages(&diff_of(dir.path(), g, seqs[0]));
    assert!(
        m.len() == 1 && m[0].starts_with("schema changed: table t redefined"),
        "{m:?}"
    );
}

#[test]
fn utf16_databases_round_trip() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA encoding='UTF-16le'; PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT); INSERT INTO t VALUES (1, 'héllo 😀');",
        &["UPDATE t SET s = 'wörld' || char(0) || 'x' WHERE id = 1;"],
    );
    let d = diff_of(dir.path(), g, seqs[0]);
    let c = &d.changes[0];
    let utf16 =
        |s: &str| diff::Value::Text(s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect());
    assert_eq!(c.old.as_ref().unwrap()[1], utf16("héllo 😀"));
    assert_eq!(c.new.as_ref().unwrap()[1], utf16("wörld\0x"));
    let target = default_target(&dir.path().join("app.db"));
    let (before, after) = (dir.path().join("b.db"), dir.path().join("a.db"));
    restore_to(target.as_ref(), g, seqs[0] - 1, &before);
    restore_to(target.as_ref(), g, seqs[0], &after);
    let t = dir.path().join("app.db-walstream");
    let (ok, undo, err) = cli(&[
        "diff",
        t.to_str().unwrap(),
        "--txn",
        &seqs[0].to_string(),
        "--invert",
    ]);
    assert!(ok, "{err}");
    assert!(undo.contains("'héllo 😀'"), "{undo}");
    let (ok, redo, _) = cli(&["diff", t.to_str().unwrap(), "--txn", &seqs[0].to_string()]);
    assert!(ok);
    assert!(
        redo.contains("CAST(X'"),
        "text with a NUL is written as its bytes: {redo}"
    );
    let (db, da) = (dump(&before), dump(&after));
    assert_eq!(apply_sql(&after, &undo), db);
    assert_eq!(apply_sql(&before, &redo), da);
}

#[test]
fn txn_zero_and_missing_txns_are_errors() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(a);",
        &["INSERT INTO t VALUES (1);"],
    );
    let target = default_target(&dir.path().join("app.db"));
    let mut c = Collected::default();
    let opts = |txn| DiffOptions {
        generation: Some(g),
        txn,
        tmp_dir: None,
    };
    assert!(matches!(
        diff::diff(target.as_ref(), &opts(0), &mut |_| {}, &mut c),
        Err(diff::DiffError::TxnZero)
    ));
    let err = diff::diff(target.as_ref(), &opts(seqs[0] + 5), &mut |_| {}, &mut c).unwrap_err();
    assert!(err.to_string().contains("has no transaction"), "{err}");
    let t = dir.path().join("app.db-walstream");
    let (ok, _, err) = cli(&["diff", t.to_str().unwrap(), "--txn", "0"]);
    assert!(
        !ok && err.contains("txn 0 is the generation's snapshot"),
        "{err}"
    );
}

/// The pages a diff decodes follow the pages the transaction wrote, not the size of the
/// tables: one changed row in a database of thousands of pages reads a few dozen.
#[test]
fn cost_follows_the_written_pages() {
    let (dir, g, seqs) = simple_run(
        "PRAGMA page_size=1024; PRAGMA journal_mode=WAL;
         CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
         CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX a_v ON a(v);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000)
           INSERT INTO a SELECT i, 'value ' || i, CASE WHEN i % 1000 = 0 THEN randomblob(5000) END FROM n;
         INSERT INTO b SELECT id, v FROM a;",
        &[
            "UPDATE a SET v = 'changed' WHERE id = 20001;",
            "UPDATE b SET v = 'changed' WHERE id = 777;",
            "DELETE FROM a WHERE id BETWEEN 100 AND 199;",
        ],
    );
    let target = default_target(&dir.path().join("app.db"));
    let pages = std::fs::metadata(dir.path().join("app.db")).unwrap().len() / 1024;
    assert!(pages > 2000, "{pages} pages");
    for (txn, rows, most) in [(seqs[0], 1, 40), (seqs[1], 1, 40), (seqs[2], 100, 80)] {
        let (c, s) = lib_diff_summary(target.as_ref(), g, txn, dir.path());
        assert_eq!(c.changes.len(), rows);
        assert!(!s.full_walk, "{s:?}");
        assert!(
            s.pages_read <= most,
            "txn {txn} read {} pages of {pages}: {s:?}",
            s.pages_read
        );
    }
}
