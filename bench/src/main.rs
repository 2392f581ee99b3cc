//! `make bench`: walstream against plain SQLite in WAL mode (and Litestream), side by side.
//!
//! ```text
//! walstream-bench run [--quick] [--reps N] [--out docs/BENCHMARKS.md] --ext SO --cli BIN
//!                    [--litestream BIN | --litestream-missing WHY] [--session-bin BIN]
//! walstream-bench worker JSON       one workload in one mode, in this process (used by `run`)
//! walstream-bench changesets JSON   per-transaction session changesets (the `session` build)
//! ```
//!
//! Every timed run is its own process, started fresh on a new database in the same directory;
//! runs alternate between the modes (their order rotates each repetition), and every result is a
//! ratio of paired runs of one repetition, summarised as the median with min and max.

mod report;
mod run;
mod workload;

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("worker") => {
            let job: run::Job = serde_json::from_str(&args[1]).expect("worker job JSON");
            let out = run::worker(&job);
            println!("{}", serde_json::to_string(&out).unwrap());
            0
        }
        Some("changesets") => {
            let job: run::Job = serde_json::from_str(&args[1]).expect("changesets job JSON");
            changesets(&job)
        }
        Some("run") => {
            let mut opts = run::Options::default();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let mut val = || {
                    it.next()
                        .cloned()
                        .unwrap_or_else(|| panic!("{a} needs a value"))
                };
                match a.as_str() {
                    "--quick" => opts.quick = true,
                    "--reps" => opts.reps = val().parse().expect("--reps N"),
                    "--out" => opts.out = Some(PathBuf::from(val())),
                    "--ext" => opts.ext = PathBuf::from(val()),
                    "--cli" => opts.cli = PathBuf::from(val()),
                    "--litestream" => opts.litestream = Some(PathBuf::from(val())),
                    "--litestream-missing" => opts.litestream_missing = Some(val()),
                    "--session-bin" => opts.session_bin = Some(PathBuf::from(val())),
                    "--session-missing" => opts.session_missing = Some(val()),
                    "--work" => opts.work = PathBuf::from(val()),
                    "--only" => opts.only = Some(val()),
                    "--s3-bucket" => opts.s3_bucket = Some(val()),
                    "--s3-missing" => opts.s3_missing = Some(val()),
                    other => panic!("unknown option {other}"),
                }
            }
            run::driver(opts)
        }
        _ => {
            eprintln!("usage: walstream-bench run [--quick] [--reps N] [--out FILE] --ext SO --cli BIN ...");
            2
        }
    };
    std::process::exit(code);
}

#[cfg(feature = "session")]
fn changesets(job: &run::Job) -> i32 {
    use rusqlite::session::Session;
    let db = job.dir.join("changesets.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .unwrap();
    workload::setup(&conn, job.workload, &job.scale).unwrap();
    let mut ob = workload::OrderBook::new(&conn).unwrap();
    let mut sizes = Vec::new();
    for _ in 0..job.scale.orderbook_txns {
        let mut session = Session::new(&conn).unwrap();
        session.attach(None::<&str>).unwrap();
        ob.txn(&conn, 100).unwrap();
        let mut cs = Vec::new();
        session.changeset_strm(&mut cs).unwrap();
        sizes.push(cs);
    }
    let fp = workload::fingerprint(&conn, job.workload).unwrap();
    let out = run::Changesets {
        fingerprint: fp,
        raw: sizes.iter().map(|c| c.len() as u64).collect(),
        zstd: sizes.iter().map(|c| run::zstd_len(c)).collect(),
        zstd_all: run::zstd_len(&sizes.concat()),
    };
    println!("{}", serde_json::to_string(&out).unwrap());
    0
}

#[cfg(not(feature = "session"))]
fn changesets(_job: &run::Job) -> i32 {
    eprintln!("this build has no session extension (build with --features session)");
    3
}
