//! Retention: deleting old generations from a target, never what the newest restore point needs.
//!
//! A generation is restorable on its own (its snapshot plus its segments), so retention works by
//! whole generations. The newest complete generation — the one holding the newest restore point
//! — is always kept, and so is anything newer (a generation still being written). An older
//! generation is kept while it is among the newest `generations` complete ones, or while it
//! holds restore points younger than `days` (it ended, i.e. its successor started, less than
//! `days` ago). Incomplete older generations (segments without a snapshot, left by an
//! interrupted prune) restore nothing and are deleted. Segments are deleted newest first and the
//! snapshot last; an interrupted prune is finished by running it again.

use std::io::Read;

use crate::reader::{self, GenerationObjects, ReadError};
use crate::record::pb::{record::Body, Record};
use crate::record::{FileKind, RecordReader};
use crate::target::Target;

/// What to keep (at least one must be given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keep {
    /// Keep the newest N complete generations (at least 1 is always kept).
    pub generations: Option<u64>,
    /// Keep every generation holding restore points from the last D days.
    pub days: Option<f64>,
}

/// What a prune did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub kept: Vec<u64>,
    pub deleted_generations: Vec<u64>,
    /// Keys deleted (or to delete).
    pub deleted: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("say what to keep: --keep-generations N and/or --keep-days D")]
    NothingToKeep,
}

fn created_ms(target: &dyn Target, g: &GenerationObjects) -> Result<i64, ReadError> {
    let key = &g.snapshot.as_ref().expect("complete generation").key;
    let rec_err = |source| ReadError::Record {
        key: key.clone(),
        source,
    };
    let reader: Box<dyn Read + Send> = target.get(key)?;
    let mut r = RecordReader::new(reader)
        .and_then(|r| r.expect_kind(FileKind::Snapshot))
        .map_err(rec_err)?;
    match r.next_record().map_err(rec_err)? {
        Some((
            _,
            Record {
                body: Some(Body::SnapshotHeader(h)),
            },
        )) => Ok(h.created_ms),
        _ => Err(ReadError::Record {
            key: key.clone(),
            source: crate::record::RecordError::TruncatedHeader,
        }),
    }
}

/// Decides which generations go.
pub fn plan(
    target: &dyn Target,
    keep: &Keep,
) -> Result<(PruneReport, Vec<GenerationObjects>), PruneError> {
    if keep.generations.is_none() && keep.days.is_none() {
        return Err(PruneError::NothingToKeep);
    }
    let inventory = reader::inventory(target)?;
    let Some(newest) = inventory
        .iter()
        .rev()
        .find(|g| g.snapshot.is_some())
        .map(|g| g.generation)
    else {
        return Err(ReadError::Empty(target.describe()).into());
    };
    let cutoff_ms = keep
        .days
        .map(|d| crate::now_ms() - (d * 86_400_000.0) as i64);
    let keep_count = keep.generations.map(|n| n.max(1));
    let mut report = PruneReport::default();
    let mut doomed = Vec::new();
    // Walk from the newest down; `successor_start` is when the next newer generation began.
    let mut successor_start: Option<i64> = None;
    let mut complete_seen = 0u64;
    for g in inventory.iter().rev() {
        if g.generation >= newest {
            if g.snapshot.is_some() {
                complete_seen += 1;
                successor_start = Some(created_ms(target, g)?);
            }
            report.kept.push(g.generation);
            continue;
        }
        if g.snapshot.is_none() {
            doomed.push(g.clone());
            continue;
        }
        complete_seen += 1;
        let by_count = keep_count.is_some_and(|n| complete_seen <= n);
        let by_age = cutoff_ms.is_some_and(|cut| successor_start.is_none_or(|end| end >= cut));
        successor_start = Some(created_ms(target, g)?);
        if by_count || by_age {
            report.kept.push(g.generation);
        } else {
            doomed.push(g.clone());
        }
    }
    report.kept.reverse();
    doomed.reverse();
    for g in &doomed {
        report.deleted_generations.push(g.generation);
        for s in g.segments.values().rev() {
            report.deleted.push(s.key.clone());
        }
        if let Some(s) = &g.snapshot {
            report.deleted.push(s.key.clone());
        }
        report.bytes += g.bytes();
    }
    Ok((report, doomed))
}

/// Deletes the generations `plan` picks (with `dry_run`, only reports them).
pub fn prune(target: &dyn Target, keep: &Keep, dry_run: bool) -> Result<PruneReport, PruneError> {
    let (report, _) = plan(target, keep)?;
    if !dry_run {
        for key in &report.deleted {
            target.delete(key).map_err(ReadError::from)?;
        }
    }
    Ok(report)
}
