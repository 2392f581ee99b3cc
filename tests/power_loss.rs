//! Goal: after a power cut, walstream's stream never holds a transaction the database lost unless
//! it started a new generation, never forks silently, and loses no acknowledged transaction with
//! `synchronous=FULL` (guarantees 1 and 2 under power loss).
//!
//! Method: tests/c/powerfail.c runs the system SQLite over a fault-injecting VFS *below*
//! walstream (registered as the default before walstream loads, so walstream wraps it) that
//! keeps every unsynced write in a cache and cuts the power at a random I/O event: unsynced
//! database/WAL sectors are lost (all of them, or a random subset), and every spool file is cut
//! back to its last fsynced length (or a random length past it). See the header of powerfail.c
//! for exactly what is modelled and what is not. Each round: `run` writes (synchronous FULL or
//! NORMAL, checkpoints, closes) until the power cut, printing each id after COMMIT returns;
//! `check` "reboots" (recovery, one write lock so capture catches up, a clean close). Then:
//! `integrity_check` passes; with FULL every acknowledged id survived; `walstream verify` passes
//! (hash chain, links between generations); the newest restore equals the database file byte
//! for byte; and if the generation that was newest before the cut holds ids the database lost,
//! a newer generation exists.
//!
//! Rounds: `WALSTREAM_POWER_ROUNDS` (default 200; `make torture` runs 2000). Seed:
//! `WALSTREAM_SEED`.

mod common;
mod dropin;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dropin::*;

const EPOCH: usize = 10;

/// Generations of a local target that have a snapshot, with the reason each started (from the
/// snapshot header, as `walstream inspect` prints it). Read from the directory, not with
/// `walstream ls`: right after a power cut the newest segment may be torn, which `ls` reports.
fn generations(target: &Path) -> Vec<(u64, String)> {
    let Ok(dirs) = std::fs::read_dir(target.join("generations")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in dirs {
        let d = d.unwrap().path();
        let snapshot = d.join("snapshot.wsnap");
        let Some(n) = d
            .file_name()
            .and_then(|n| u64::from_str_radix(n.to_str()?, 16).ok())
        else {
            continue;
        };
        if !snapshot.exists() {
            continue;
        }
        let (ok, text, err) = common::cli(&["inspect", snapshot.to_str().unwrap()]);
        assert!(ok, "inspect {}: {err}", snapshot.display());
        let reason = text
            .lines()
            .find_map(|l| l.split("reason: ").nth(1))
            .unwrap_or("");
        let reason = reason.rsplit_once(", created").map_or(reason, |(r, _)| r);
        out.push((n, reason.to_string()));
    }
    out.sort();
    out
}

fn newest_generation(target: &Path) -> u64 {
    generations(target).iter().map(|g| g.0).max().unwrap_or(0)
}

/// The largest id in `t`, 0 when the table does not exist yet.
fn max_id(db: &Path) -> i64 {
    if query(db, "SELECT count(*) FROM sqlite_master WHERE name = 't'") != "1" {
        return 0;
    }
    query(db, "SELECT coalesce(max(id), 0) FROM t")
        .parse()
        .unwrap()
}

fn field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no {label} in {out}"))
}

#[test]
fn power_cut_at_random_io_events() {
    let total = rounds("WALSTREAM_POWER_ROUNDS", 200);
    let (mut rng, seed) = Rng::from_env_or_time("WALSTREAM_SEED");
    eprintln!("power_loss: {total} rounds, seed {seed} (set WALSTREAM_SEED to replay)");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = gcc(
        dir.path(),
        "powerfail",
        include_str!("c/powerfail.c"),
        &["-Wl,--export-dynamic", "-lsqlite3", "-ldl"],
    );
    let restored = dir.path().join("restored.db");
    let mut db = dir.path().join("unused.db");
    let mut stats: BTreeMap<String, u64> = BTreeMap::new();
    let mut bump = |k: &str| *stats.entry(k.to_string()).or_default() += 1;
    for round in 0..total {
        if round % EPOCH == 0 {
            db = dir.path().join(format!("power-{}.db", round / EPOCH));
        }
        let target = default_target_dir(&db);
        let sync = if rng.below(2) == 0 { "FULL" } else { "NORMAL" };
        let keep = if rng.below(2) == 0 { "none" } else { "some" };
        let crash_at = 1 + rng.below(6000);
        let child_seed = rng.next() % 1_000_000_007;
        let before = newest_generation(&target);

        let env = [
            ("PF_SYNC", sync.to_string()),
            ("PF_KEEP", keep.to_string()),
            ("PF_CRASH_AT", crash_at.to_string()),
            ("PF_SEED", child_seed.to_string()),
        ];
        let ctx = format!("round {round} (seed {seed}): {env:?}");
        let run = Command::new(&exe)
            .args([ext(), db.display().to_string(), "run".into()])
            .envs(env.clone())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{ctx}: run failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let acked: i64 = String::from_utf8_lossy(&run.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .max()
            .unwrap_or(0);
        bump(
            if String::from_utf8_lossy(&run.stderr).contains("power cut") {
                "power cuts"
            } else {
                "no cut (ran to the end)"
            },
        );
        // What the stream holds after the cut, before the reboot touches it.
        let cut_generation = newest_generation(&target);
        let cut_max: Option<i64> = (cut_generation > 0).then(|| {
            restore(
                &target,
                &restored,
                &["--generation", &cut_generation.to_string()],
            );
            max_id(&restored)
        });

        let check = Command::new(&exe)
            .args([ext(), db.display().to_string(), "check".into()])
            .envs(env.clone())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&check.stdout).into_owned();
        assert!(
            check.status.success(),
            "{ctx}: reboot failed: {out} {}",
            String::from_utf8_lossy(&check.stderr)
        );
        assert_eq!(field(&out, "integrity"), "ok", "{ctx}");
        let max: i64 = field(&out, "max").parse().unwrap();
        if max < acked {
            assert_eq!(
                sync, "NORMAL",
                "{ctx}: acknowledged id {acked} lost with synchronous=FULL (database has {max})"
            );
            bump("acknowledged txns lost by the database (NORMAL)");
        }
        let status: serde_json::Value = serde_json::from_str(field(&out, "status")).unwrap();
        assert_eq!(status["behind"], false, "{ctx}: {status}");

        verify(&target);
        restore(&target, &restored, &[]);
        assert!(
            std::fs::read(&restored).unwrap() == std::fs::read(&db).unwrap(),
            "{ctx}: the newest restore differs from the database after the reboot"
        );
        let after = newest_generation(&target);
        if let Some(cut_max) = cut_max {
            if cut_max > max {
                assert!(after > cut_generation, "{ctx}: generation {cut_generation} holds ids up to {cut_max} but the database lost them (max {max}), and no new generation started");
                bump("the stream held txns the database lost -> new generation");
            }
        }
        for (_, reason) in generations(&target)
            .into_iter()
            .filter(|(g, _)| *g > before.max(1))
        {
            // With FULL, every captured frame was synced in the WAL first: the history always
            // continues, with one exception. A cut in the middle of a checkpoint that follows a
            // clean close (a WAL-reset marker recording the database file's size and mtime)
            // leaves part of the checkpoint's writes in the database file. Those pages are
            // still in the WAL, so nothing is lost, but the file no longer matches the marker
            // and walstream, which judges continuity after a close by size and mtime (not by
            // content), starts a new generation (seed 1795621148027687460, round 143).
            // Allowed and counted; see docs/GUARANTEES.md.
            let changed_after_close =
                reason.starts_with("the database file changed since the WAL was closed");
            assert!(
                sync == "NORMAL" || changed_after_close,
                "{ctx}: a new generation after a power cut with synchronous=FULL: {reason}"
            );
            bump(&format!("new generation after a cut with {sync}"));
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take_while(|c| *c != ':' && *c != '(')
                .collect();
            bump(&format!("reason: {}", reason.trim()));
        }
    }
    eprintln!(
        "power_loss: {stats:#?} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
