//! Goal: a database captured with an S3 target is shipped to a real S3-compatible server
//! (SeaweedFS, started by `make test`) off the commit path, survives outages and restarts with
//! no missing or duplicate transaction, refuses a second writer on its prefix, and keeps what
//! the newest restore point needs under retention.
//!
//! Method: writers are `/usr/bin/python3` children that load `libwalstream.so` and take
//! commands on stdin (so each can have its own AWS settings and can be killed), or this process
//! through rusqlite. Outage tests run a private SeaweedFS instance that they stop and restart.
//! Every wait polls `walstream_status()` or the bucket with a deadline; nothing sleeps to
//! synchronise. Restores are compared byte for byte with the primary's committed image.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::bank::{bank, transfer, TornReader, INVARIANT};
use common::*;
use serde_json::Value;
use walstream::reader;
use walstream::target::s3::S3Target;

const PYTHON: &str = "/usr/bin/python3";
const WAIT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    std::env::var_os("WALSTREAM_TEST_S3_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server.sh"))
}

/// A private SeaweedFS instance (for tests that stop the server).
struct Server {
    dir: tempfile::TempDir,
    endpoint: String,
    env: S3Env,
}

impl Server {
    fn start(env: &S3Env) -> Server {
        let mut s = Server {
            dir: tempfile::tempdir().unwrap(),
            endpoint: String::new(),
            env: env.clone(),
        };
        s.run("start");
        let out = Command::new(script())
            .arg("env")
            .arg(s.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let endpoint = text
            .lines()
            .find_map(|l| l.strip_prefix("export AWS_ENDPOINT_URL="))
            .expect("endpoint")
            .to_string();
        s.endpoint = endpoint;
        s
    }

    fn run(&self, what: &str) {
        let st = Command::new(script())
            .arg(what)
            .arg(self.dir.path())
            .env("AWS_ACCESS_KEY_ID", &self.env.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.env.secret)
            .status()
            .unwrap();
        assert!(st.success(), "s3-server.sh {what} failed");
    }

    fn target(&self, prefix: &str) -> S3Target {
        S3Target::open_at(&self.env.bucket, prefix, Some(self.endpoint.clone())).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A python writer: `txn N` commits N transactions (each one INSERT), `status` prints the status.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const WRITER: &str = r#"
import sqlite3, sys, json, time
boot = sqlite3.connect(':memory:')
boot.enable_load_extension(True)
boot.load_extension(sys.argv[1])
conn = sqlite3.connect('file:' + sys.argv[2] + '?vfs=walstream', uri=True, isolation_level=None)
conn.execute('PRAGMA journal_mode=WAL')
conn.execute('CREATE TABLE IF NOT EXISTS t(i INTEGER PRIMARY KEY, v BLOB)')
def status():
    return json.loads(conn.execute('SELECT walstream_status()').fetchone()[0])
print(json.dumps(status()), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == 'txn':
        worst = 0.0
        for _ in range(int(cmd[1])):
            t0 = time.monotonic()
            conn.execute('INSERT INTO t(v) VALUES (randomblob(700))')
            worst = max(worst, time.monotonic() - t0)
        s = status()
        s['worst_commit_ms'] = worst * 1000
        print(json.dumps(s), flush=True)
    elif cmd[0] == 'status':
        print(json.dumps(status()), flush=True)
"#;

impl Writer {
    fn spawn(db: &Path, env: &[(&str, String)]) -> Writer {
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-c").arg(WRITER).arg(ext_path()).arg(db);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = Writer {
            child,
            stdin,
            stdout,
        };
        w.line();
        w
    }

    fn line(&mut self) -> Value {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "the writer exited");
        serde_json::from_str(&s).unwrap()
    }

    fn txns(&mut self, n: u32) -> Value {
        writeln!(self.stdin, "txn {n}").unwrap();
        self.line()
    }

    fn status(&mut self) -> Value {
        writeln!(self.stdin, "status").unwrap();
        self.line()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits until everything captured is shipped and no error is pending.
    fn wait_shipped(&mut self) -> Value {
        poll("everything shipped", WAIT, || {
            let s = self.status();
            let done = s["last_seq"].is_u64()
                && s["shipped_seq"] == s["last_seq"]
                && s["shipped_generation"] == s["generation"]
                && s["ship_error"].is_null();
            if done {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_env(env: &S3Env, endpoint: &str, target: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", env.key.clone()),
        ("AWS_SECRET_ACCESS_KEY", env.secret.clone()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("WALSTREAM_TARGET", target.to_string()),
        ("WALSTREAM_SHIP_BACKOFF_MAX_MS", "500".to_string()),
    ]
}

/// The primary's committed image, read with plain SQLite through a connection of its own (the
/// writer's cache may hold other bytes for freelist pages, which SQLite never writes:
/// docs/GUARANTEES.md §1).
fn primary_image(db: &Path) -> Vec<u8> {
    image(&open_plain(db))
}

fn restore_via_cli(endpoint: &str, uri: &str, extra: &[&str], dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    let mut args = vec!["restore", uri, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = cli_at(endpoint, &args);
    assert!(ok, "restore {extra:?} failed: {stdout}{stderr}");
    std::fs::read(out).unwrap()
}

fn verify_ok(endpoint: &str, uri: &str) {
    let (ok, stdout, stderr) = cli_at(endpoint, &["verify", uri]);
    assert!(ok, "verify failed: {stdout}{stderr}");
}

#[test]
fn restore_from_s3_equals_the_primary_at_latest_random_txns_and_random_times() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("restore"));
    let conn = open_captured(&db, &format!("&walstream_target={uri}"));
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    let mut images = std::collections::BTreeMap::new();
    let mut lags = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..60u64 {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..(1 + rnd() % 5) {
            let k = rnd() % 200;
            conn.execute(
                "INSERT OR REPLACE INTO t VALUES (?1, ?2)",
                rusqlite::params![k as i64, "x".repeat((rnd() % 3000) as usize)],
            )
            .unwrap();
        }
        if i % 7 == 3 {
            conn.execute("DELETE FROM t WHERE k % 3 = 0", []).unwrap();
        }
        tx.commit().unwrap();
        let seq = status(&conn)["last_seq"].as_u64().unwrap();
        images.insert(seq, blake3::hash(&primary_image(&db)));
        if i % 10 == 9 {
            // Lag at light load: from this commit until S3 acknowledged it.
            let t0 = Instant::now();
            poll("shipping", WAIT, || {
                let s = status(&conn);
                if s["shipped_seq"].as_u64() == Some(seq) {
                    Ok(())
                } else {
                    Err(s.to_string())
                }
            });
            lags.push(t0.elapsed());
        }
    }
    lags.sort();
    eprintln!(
        "ship lag after a commit (local SeaweedFS): median {:?}, max {:?}",
        lags[lags.len() / 2],
        lags.last().unwrap()
    );
    assert!(
        lags[lags.len() / 2] < Duration::from_millis(500),
        "median lag {:?}",
        lags[lags.len() / 2]
    );
    let s = status(&conn);
    assert!(s["ship_error"].is_null(), "{s}");
    assert_eq!(s["lag_txns"], 0);

    let target =
        walstream::target::open(&walstream::target::TargetSpec::parse(&uri).unwrap()).unwrap();
    let (generation, last) = stream_head(target.as_ref());
    assert_eq!(generation, 1);
    let replayed = replay_hashes(target.as_ref(), generation);
    for (seq, hash) in &images {
        assert_eq!(replayed.get(seq), Some(hash), "txn {seq} replayed from S3");
    }
    // The CLI: latest, random txns, random times.
    let endpoint = env.endpoint.clone();
    let latest = restore_via_cli(&endpoint, &uri, &[], dir.path(), "latest.db");
    assert_eq!(
        latest,
        primary_image(&db),
        "latest restore equals the primary"
    );
    let seqs: Vec<u64> = images.keys().copied().collect();
    for i in 0..5 {
        let seq = seqs[(rnd() % seqs.len() as u64) as usize];
        let got = restore_via_cli(
            &endpoint,
            &uri,
            &["--txn", &seq.to_string()],
            dir.path(),
            &format!("txn{i}.db"),
        );
        assert_eq!(blake3::hash(&got), images[&seq], "restore --txn {seq}");
    }
    // Commit times from the stream; --time T restores the last txn committed at or before T.
    let mut times = Vec::new();
    struct Times<'a>(&'a mut Vec<(u64, i64)>);
    impl reader::Visitor for Times<'_> {
        fn txn_commit(
            &mut self,
            c: &walstream::record::pb::TxnCommit,
        ) -> Result<(), reader::ReadError> {
            self.0.push((c.seq, c.commit_time_ms));
            Ok(())
        }
    }
    let objects = reader::generation(target.as_ref(), generation).unwrap();
    reader::replay(
        target.as_ref(),
        &objects,
        reader::ReplayLimit::All,
        &mut Times(&mut times),
    )
    .unwrap();
    assert_eq!(times.len() as u64, last);
    for i in 0..4 {
        let (_, t) = times[(rnd() % times.len() as u64) as usize];
        let expected = times
            .iter()
            .filter(|(_, ct)| *ct <= t)
            .map(|(s, _)| *s)
            .max()
            .unwrap();
        let when = humantime_rfc3339(t);
        let got = restore_via_cli(
            &endpoint,
            &uri,
            &["--time", &when],
            dir.path(),
            &format!("time{i}.db"),
        );
        assert_eq!(
            blake3::hash(&got),
            images[&expected],
            "restore --time {when} (txn {expected})"
        );
    }
    verify_ok(&endpoint, &uri);
    let (ok, stdout, stderr) = cli_at(&endpoint, &["ls", &uri]);
    assert!(
        ok && stdout.contains("generation 1") && stdout.contains("segment"),
        "{stdout}{stderr}"
    );
    // inspect takes an object URL too.
    let key = reader::generation(target.as_ref(), 1)
        .unwrap()
        .segments
        .values()
        .next()
        .unwrap()
        .key
        .clone();
    let (ok, stdout, stderr) = cli_at(&endpoint, &["inspect", &format!("{uri}/{key}")]);
    assert!(
        ok && stdout.contains("segment header") && stdout.contains("commit"),
        "{stdout}{stderr}"
    );
}

/// Formats ms since the epoch as RFC 3339 with milliseconds (UTC).
fn humantime_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// How long the server stays down: 30 s (`WALSTREAM_TEST_OUTAGE_S` to change it when running by
/// hand); shipping fails and backs off many times meanwhile.
fn outage() -> Duration {
    let s = std::env::var("WALSTREAM_TEST_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(s)
}

/// Commits during an outage until it has lasted `outage()` and shipping has failed repeatedly.
fn write_through_outage(w: &mut Writer) -> Value {
    let start = Instant::now();
    let mut last;
    loop {
        last = w.txns(5);
        assert!(
            last["worst_commit_ms"].as_f64().unwrap() < 1000.0,
            "a commit waited for S3: {last}"
        );
        let failed =
            last["ship_errors"].as_u64().unwrap_or(0) >= 3 && last["ship_error"].is_string();
        if failed && start.elapsed() >= outage() {
            break;
        }
        assert!(
            start.elapsed() < outage() + WAIT,
            "shipping never reported the outage: {last}"
        );
    }
    assert!(
        last["unshipped_bytes"].as_u64().unwrap() > 0,
        "the spool holds what waits: {last}"
    );
    assert!(
        last["shipped_seq"].as_u64() < last["last_seq"].as_u64(),
        "{last}"
    );
    last
}

#[test]
fn s3_outage_mid_workload_then_every_committed_txn_arrives() {
    let Some(env) = s3_env() else { return };
    let srv = Server::start(&env);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/outage", env.bucket);
    let mut w = Writer::spawn(&db, &aws_env(&env, &srv.endpoint, &uri));
    w.txns(20);
    w.wait_shipped();
    srv.run("stop");
    let during = write_through_outage(&mut w);
    let msg = during["ship_error"].as_str().unwrap();
    assert!(msg.contains("s3://"), "the error names the target: {msg}");
    srv.run("start");
    let s = w.wait_shipped();
    let last = s["last_seq"].as_u64().unwrap();
    assert!(last > 20 + 5);
    let t = srv.target("outage");
    assert_eq!(stream_head(&t), (1, last), "every committed txn arrived");
    let restored = restore_via_cli(&srv.endpoint, &uri, &[], dir.path(), "restored.db");
    assert_eq!(restored, primary_image(&db));
    verify_ok(&srv.endpoint, &uri);
}

#[test]
fn application_killed_during_an_outage_loses_nothing_and_ships_once() {
    let Some(env) = s3_env() else { return };
    let srv = Server::start(&env);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/killed", env.bucket);
    let aws = aws_env(&env, &srv.endpoint, &uri);
    let mut w = Writer::spawn(&db, &aws);
    w.txns(10);
    w.wait_shipped();
    srv.run("stop");
    let during = write_through_outage(&mut w);
    let committed = during["last_seq"].as_u64().unwrap();
    w.kill();
    srv.run("start");
    // A new process opens the database: its shipper ships what the spool holds.
    let mut w2 = Writer::spawn(&db, &aws);
    let t = srv.target("killed");
    poll("the killed writer's transactions in S3", WAIT, || {
        let head = reader::latest_generation(&t)
            .and_then(|g| Ok((g.generation, reader::last_committed_seq(&t, &g)?)));
        match head {
            Ok(h) if h == (1, committed) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let s = w2.txns(7);
    assert_eq!(
        s["last_seq"].as_u64(),
        Some(committed + 7),
        "no txn lost or repeated: {s}"
    );
    w2.wait_shipped();
    assert_eq!(stream_head(&t), (1, committed + 7));
    verify_ok(&srv.endpoint, &uri);
    let restored = restore_via_cli(&srv.endpoint, &uri, &[], dir.path(), "restored.db");
    drop(w2);
    assert_eq!(restored, primary_image(&db));
}

#[test]
fn wrong_credentials_missing_bucket_and_unreachable_endpoint_are_clear_and_lose_nothing() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "wrong-credentials",
            {
                let mut e = aws_env(
                    &env,
                    &env.endpoint,
                    &format!("s3://{}/{}", env.bucket, unique_prefix("creds")),
                );
                e.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
                e
            },
            &[
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
            ],
        ),
        (
            "missing-bucket",
            aws_env(&env, &env.endpoint, "s3://walstream-missing-bucket/p"),
            &["does not exist"],
        ),
        (
            "unreachable",
            aws_env(
                &env,
                "http://127.0.0.1:1",
                &format!("s3://{}/p", env.bucket),
            ),
            &["cannot reach the S3 endpoint"],
        ),
    ];
    for (name, aws, needles) in cases {
        let db = dir.path().join(format!("{name}.db"));
        let mut w = Writer::spawn(&db, &aws);
        w.txns(12);
        let s = poll("a shipping error", WAIT, || {
            let s = w.status();
            if s["ship_error"].is_string() {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        });
        let msg = s["ship_error"].as_str().unwrap();
        assert!(needles.iter().any(|n| msg.contains(n)), "{name}: {msg}");
        let s = w.txns(3);
        assert_eq!(
            s["last_seq"].as_u64(),
            Some(16),
            "{name}: commits go on: {s}"
        );
        // Nothing is lost: the spool holds every transaction.
        let spool =
            walstream::target::open(&walstream::target::TargetSpec::default_for(&db)).unwrap();
        assert_eq!(stream_head(spool.as_ref()), (1, 16), "{name}");
        drop(w);
        let out = dir.path().join(format!("{name}.restored"));
        let (ok, o, e) = cli(&[
            "restore",
            &format!("{}-walstream", db.display()),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{o}{e}");
        assert_eq!(std::fs::read(&out).unwrap(), primary_image(&db), "{name}");
        // The CLI names the problem too.
        let uri = aws
            .iter()
            .find(|(k, _)| *k == "WALSTREAM_TARGET")
            .unwrap()
            .1
            .clone();
        let mut cmd = Command::new(cli_path());
        cmd.args(["ls", &uri]);
        for (k, v) in &aws {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: ls succeeded");
        assert!(
            needles.iter().any(|n| stderr.contains(n)),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_second_writer_on_the_same_prefix_is_refused() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("two-writers"));
    let aws = aws_env(&env, &env.endpoint, &uri);
    let a_db = dir.path().join("a.db");
    let b_db = dir.path().join("b.db");
    let mut a = Writer::spawn(&a_db, &aws);
    a.txns(8);
    a.wait_shipped();
    let mut b = Writer::spawn(&b_db, &aws);
    b.txns(5);
    let s = poll("the second writer's refusal", WAIT, || {
        let s = b.status();
        if s["ship_conflict"] == true {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    let msg = s["ship_error"].as_str().unwrap();
    assert!(msg.contains("another writer uses"), "{msg}");
    assert_eq!(s["shipped_seq"], Value::Null, "B shipped nothing: {s}");
    // A goes on; the prefix holds A's history only.
    a.txns(4);
    let s = a.wait_shipped();
    let target =
        walstream::target::open(&walstream::target::TargetSpec::parse(&uri).unwrap()).unwrap();
    assert_eq!(
        stream_head(target.as_ref()),
        (1, s["last_seq"].as_u64().unwrap())
    );
    verify_ok(&env.endpoint, &uri);
    let restored = restore_via_cli(&env.endpoint, &uri, &[], dir.path(), "restored.db");
    assert_eq!(restored, primary_image(&a_db));
    // B lost nothing either: its spool holds all of its transactions.
    let spool =
        walstream::target::open(&walstream::target::TargetSpec::default_for(&b_db)).unwrap();
    assert_eq!(
        stream_head(spool.as_ref()).1,
        b.status()["last_seq"].as_u64().unwrap()
    );
}

#[test]
fn scheduled_snapshots_and_retention_keep_the_newest_restore_point() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("retention"));
    let mut aws = aws_env(&env, &env.endpoint, &uri);
    aws.push(("WALSTREAM_SNAPSHOT_BYTES", "48K".into()));
    aws.push(("WALSTREAM_KEEP_GENERATIONS", "2".into()));
    let mut w = Writer::spawn(&db, &aws);
    let target =
        walstream::target::open(&walstream::target::TargetSpec::parse(&uri).unwrap()).unwrap();
    poll("four generations", WAIT, || {
        let s = w.txns(10);
        if s["generation"].as_u64().unwrap_or(0) >= 4 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let s = w.wait_shipped();
    let generation = s["generation"].as_u64().unwrap();
    let inv = reader::inventory(target.as_ref()).unwrap();
    let complete: Vec<u64> = inv
        .iter()
        .filter(|g| g.snapshot.is_some())
        .map(|g| g.generation)
        .collect();
    assert!(
        complete.len() <= 2,
        "automatic retention keeps 2 generations: {complete:?}"
    );
    assert_eq!(complete.last(), Some(&generation));
    assert!(s["objects_pruned"].as_u64().unwrap() > 0, "{s}");
    // The spool let go of the shipped older generations.
    let spool_gens = std::fs::read_dir(format!("{}-walstream/generations", db.display()))
        .unwrap()
        .count();
    assert!(spool_gens <= 2, "spool holds {spool_gens} generations");
    verify_ok(&env.endpoint, &uri);
    // Manual prune: even --keep-generations 1 keeps what the newest restore point needs.
    let (ok, stdout, stderr) = cli(&["prune", &uri, "--keep-generations", "1", "--dry-run"]);
    assert!(ok && stdout.contains("would delete"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = cli(&["prune", &uri, "--keep-days", "0"]);
    assert!(ok, "{stdout}{stderr}");
    let inv = reader::inventory(target.as_ref()).unwrap();
    assert_eq!(
        inv.iter().map(|g| g.generation).collect::<Vec<_>>(),
        vec![generation],
        "{stdout}"
    );
    let restored = restore_via_cli(&env.endpoint, &uri, &[], dir.path(), "restored.db");
    assert_eq!(restored, primary_image(&db));
    verify_ok(&env.endpoint, &uri);
    let (ok, _, stderr) = cli(&["prune", &uri]);
    assert!(!ok && stderr.contains("say what to keep"), "{stderr}");
}

#[test]
fn spool_limit_pauses_capture_without_losing_anything() {
    let Some(env) = s3_env() else { return };
    let srv = Server::start(&env);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/limit", env.bucket);
    let mut aws = aws_env(&env, &srv.endpoint, &uri);
    aws.push(("WALSTREAM_SPOOL_LIMIT", "64K".into()));
    let mut w = Writer::spawn(&db, &aws);
    w.txns(5);
    w.wait_shipped();
    srv.run("stop");
    // Past the limit commits still succeed; capture pauses and says why; the WAL keeps them.
    let s = poll("the spool limit", WAIT, || {
        let s = w.txns(20);
        let msg = s["last_error"].as_str().unwrap_or("");
        if s["behind"] == true && msg.contains("limit") {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    let paused_at = s["last_seq"].as_u64().unwrap();
    let s = w.txns(30);
    assert_eq!(
        s["last_seq"].as_u64(),
        Some(paused_at),
        "capture paused at the limit: {s}"
    );
    assert!(s["worst_commit_ms"].as_f64().unwrap() < 1000.0);
    srv.run("start");
    // Shipping frees the spool; the next commit captures everything the WAL kept.
    let s = poll("capture resumes", WAIT, || {
        let s = w.txns(1);
        if s["behind"] == false {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert!(s["last_seq"].as_u64().unwrap() > paused_at + 30);
    let s = w.wait_shipped();
    let t = srv.target("limit");
    assert_eq!(stream_head(&t), (1, s["last_seq"].as_u64().unwrap()));
    let restored = restore_via_cli(&srv.endpoint, &uri, &[], dir.path(), "restored.db");
    assert_eq!(restored, primary_image(&db));
}

const FORKER: &str = r#"
import sqlite3, sys, json, os, time
boot = sqlite3.connect(':memory:')
boot.enable_load_extension(True)
boot.load_extension(sys.argv[1])
uri = 'file:' + sys.argv[2] + '?vfs=walstream'
def status(c):
    return json.loads(c.execute('SELECT walstream_status()').fetchone()[0])
def wait_shipped(c):
    end = time.monotonic() + 60
    while True:
        s = status(c)
        if s['shipped_seq'] == s['last_seq'] and s['last_seq'] is not None:
            return s
        if time.monotonic() > end:
            print(json.dumps({'timeout': s}), flush=True)
            os._exit(1)
        time.sleep(0.02)
conn = sqlite3.connect(uri, uri=True, isolation_level=None)
conn.execute('PRAGMA journal_mode=WAL')
conn.execute('CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB)')
for _ in range(4):
    conn.execute('INSERT INTO t(v) VALUES (randomblob(500))')
wait_shipped(conn)
conn.close()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)  # the parent has exited (its end of the pipe closed)
    c = sqlite3.connect(uri, uri=True, isolation_level=None)
    for _ in range(6):
        c.execute('INSERT INTO t(v) VALUES (randomblob(500))')
    s = wait_shipped(c)
    print(json.dumps(s), flush=True)
    os._exit(0)
else:
    os.close(r)
    os._exit(0)
"#;

// Also the regression test for a shipper stopped between two uploads: the child exits as soon
// as its last transaction is acknowledged, and the target must still read as a whole stream
// (the successor's placeholder is uploaded before the sealed segment that names it).
#[test]
fn a_forked_child_ships_with_its_own_shipper_after_the_parent_exits() {
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("fork"));
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-W")
        .arg("ignore")
        .arg("-c")
        .arg(FORKER)
        .arg(ext_path())
        .arg(&db);
    for (k, v) in aws_env(&env, &env.endpoint, &uri) {
        cmd.env(k, v);
    }
    // The parent exits at once; the child keeps stdout open until it is done.
    let out = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let s: Value = serde_json::from_str(text.lines().last().expect("the child reported")).unwrap();
    assert_eq!(s["last_seq"], 11, "CREATE TABLE, 4 + 6 inserts: {s}");
    assert_eq!(s["shipped_seq"], 11, "{s}");
    assert_eq!(
        s["shipping"], true,
        "the child ships itself once the parent is gone: {s}"
    );
    let target =
        walstream::target::open(&walstream::target::TargetSpec::parse(&uri).unwrap()).unwrap();
    assert_eq!(stream_head(target.as_ref()), (1, 11));
    verify_ok(&env.endpoint, &uri);
    assert_eq!(
        restore_via_cli(&env.endpoint, &uri, &[], dir.path(), "r.db"),
        primary_image(&db)
    );
}

/// Issue 5 on S3: `walstream follow s3://...` keeps a replica that readers never see torn,
/// resumes after a restart, and ends equal to the primary.
#[test]
fn follow_keeps_a_replica_of_an_s3_stream_through_a_restart() {
    const ACCOUNTS: i64 = 20;
    let Some(env) = s3_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let uri = format!("s3://{}/{}", env.bucket, unique_prefix("follow"));
    let replica = dir.path().join("replica.db");
    let follow_state = PathBuf::from(format!("{}-follow", replica.display()));
    let replica_seq = || -> Option<u64> {
        let text = std::fs::read_to_string(&follow_state).ok()?;
        serde_json::from_str::<Value>(&text).ok()?["seq"].as_u64()
    };
    let log = dir.path().join("follow.log");
    let spawn_with = |checks: &[&str]| {
        let mut args = vec![
            "follow",
            &uri,
            replica.to_str().unwrap(),
            "--interval-ms",
            "20",
        ];
        for c in checks {
            args.extend(["--check", c]);
        }
        let child = Command::new(cli_path())
            .args(args)
            .env("AWS_ENDPOINT_URL", &env.endpoint)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let spawn = || spawn_with(&[INVARIANT]);
    let wait_replica = |seq: u64| {
        poll(&format!("the replica at txn {seq}"), WAIT, || {
            if replica_seq() == Some(seq) {
                Ok(())
            } else {
                Err(format!(
                    "at {:?}; the follower said: {}",
                    replica_seq(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
            }
        })
    };
    // Started before the primary exists: it waits for the first generation. (Without the
    // check: the invariant cannot run before its table exists.)
    let mut follower = spawn_with(&[]);
    let conn = bank(&db, &format!("&walstream_target={uri}"), ACCOUNTS);
    let shipped = || {
        poll("everything shipped", WAIT, || {
            let s = status(&conn);
            match s["last_seq"].as_u64() {
                Some(last) if s["shipped_seq"].as_u64() == Some(last) => Ok(last),
                _ => Err(s.to_string()),
            }
        })
    };
    wait_replica(shipped());
    drop(follower);
    follower = spawn();

    let reader = TornReader::spawn(&replica, ACCOUNTS);
    for i in 0..150 {
        transfer(&conn, i, ACCOUNTS);
        if i == 60 {
            // A restarted follower resumes where it was (from its state file, not from the start).
            let at = shipped();
            wait_replica(at);
            drop(follower);
            follower = spawn();
        }
    }
    wait_replica(shipped());
    assert!(reader.stop() > 0);
    drop(follower);
    assert_eq!(
        unstamped(image(&open_plain(&replica))),
        unstamped(primary_image(&db)),
        "the replica equals the primary (but for SQLite's stamps on page 1)"
    );
    let (ok, out, err) = cli_at(
        &env.endpoint,
        &["follow", &uri, replica.to_str().unwrap(), "--once"],
    );
    assert!(ok, "{out}{err}");
}
