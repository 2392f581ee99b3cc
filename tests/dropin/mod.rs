//! Helpers for the drop-in and under-fire tests (preload, clients, many_writers, crash_torture,
//! power_loss, errors_catalogue): running real programs (the system `sqlite3` shell,
//! `/usr/bin/python3`, Node, small C programs built with gcc) and checking their streams with the
//! `walstream` CLI, exactly as a user would.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{cli_path, ext_path};

pub const PYTHON: &str = "/usr/bin/python3";
pub const SQLITE3: &str = "/usr/bin/sqlite3";

/// Runs `cmd`, feeding `stdin`; panics with its stderr unless it succeeds. Returns stdout.
pub fn run_ok(cmd: &mut Command, stdin: &str) -> String {
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{:?} failed ({}):\nstdout: {}\nstderr: {}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `python3 -c script` (the system python, whose sqlite3 module links the system SQLite).
pub fn python(script: &str) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg(script);
    cmd
}

/// The target directory walstream uses by default for `db`.
pub fn default_target_dir(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-walstream", db.display()))
}

/// `walstream restore TARGET -o OUT` (plus `extra` arguments); panics on failure.
pub fn restore(target: &Path, out: &Path, extra: &[&str]) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
    }
    let mut args = vec![
        "restore",
        target.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = Command::new(cli_path()).args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "walstream {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `walstream verify TARGET`; panics on failure.
pub fn verify(target: &Path) {
    let o = Command::new(cli_path())
        .args(["verify", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "walstream verify {} failed: {}{}",
        target.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Restores the newest state of `target` and asserts it is byte-identical to `db`, a database
/// whose last connection has closed (so the file holds every committed page and no WAL).
pub fn assert_restores_to_file(target: &Path, db: &Path) {
    assert!(
        !Path::new(&format!("{}-wal", db.display())).exists(),
        "{} still has a WAL: a connection is open",
        db.display()
    );
    verify(target);
    let out = db.with_extension("restored");
    restore(target, &out, &[]);
    let restored = std::fs::read(&out).unwrap();
    let primary = std::fs::read(db).unwrap();
    assert!(
        restored == primary,
        "restore of {} differs from {} ({} vs {} bytes)",
        target.display(),
        db.display(),
        restored.len(),
        primary.len()
    );
}

/// `SELECT ...` on a database with the system sqlite3 shell, without walstream. Use it only
/// when no captured connection is open: as the last connection, it checkpoints and removes
/// the WAL on close.
pub fn query(db: &Path, sql: &str) -> String {
    run_ok(Command::new(SQLITE3).arg(db).arg(sql), "")
        .trim()
        .to_string()
}

/// The extension path as `.load` and `load_extension` take it.
pub fn ext() -> String {
    ext_path().display().to_string()
}

/// Compiles a C program with gcc (into `dir`); `link` is what to link it with.
pub fn gcc(dir: &Path, name: &str, source: &str, link: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let exe = dir.join(name);
    let mut cmd = Command::new("gcc");
    cmd.arg("-O1")
        .arg("-Wall")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(link);
    run_ok(&mut cmd, "");
    exe
}

/// Compiles a C shared library (an LD_PRELOAD shim) with gcc (into `dir`).
pub fn gcc_shared(dir: &Path, name: &str, source: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let so = dir.join(format!("{name}.so"));
    let mut cmd = Command::new("gcc");
    cmd.args(["-O1", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl");
    run_ok(&mut cmd, "");
    so
}

/// A small deterministic PRNG (xorshift64*), so failures can be replayed from the seed printed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn from_env_or_time(var: &str) -> (Self, u64) {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        (Rng::new(seed), seed)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Rounds for a repeated test: `var` from the environment, else `default`.
pub fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `walstream inspect` of every segment of every generation of a local target, concatenated.
pub fn inspect_segments(target: &Path) -> String {
    let mut segments = Vec::new();
    let gens = target.join("generations");
    for g in std::fs::read_dir(&gens).unwrap() {
        for f in std::fs::read_dir(g.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "wseg") {
                segments.push(p);
            }
        }
    }
    segments.sort();
    let mut out = String::new();
    for s in segments {
        let o = Command::new(cli_path())
            .arg("inspect")
            .arg(&s)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "inspect {}: {}",
            s.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}
