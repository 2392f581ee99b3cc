//! Verifying a whole stream: every generation replayed and validated (page hashes, chain
//! hashes, sequence numbers, segment boundaries, snapshot hashes) and every generation checked
//! to follow the one before it.

use crate::reader::{self, Integrity, ReadError, ReplayLimit, ReplaySummary, Visitor};
use crate::record::hex;
use crate::target::Target;

/// The result of a successful verification.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub generations: Vec<ReplaySummary>,
    pub bytes: u64,
}

struct Progress<'a> {
    base: u64,
    report: &'a mut dyn FnMut(u64),
}

impl Visitor for Progress<'_> {
    fn progress(&mut self, bytes: u64) {
        (self.report)(self.base + bytes)
    }
}

fn integrity(generation: u64, key: String, problem: String) -> ReadError {
    ReadError::Integrity(Box::new(Integrity { generation, seq: None, pgno: None, key, offset: None, problem }))
}

/// Verifies every generation in `target`; stops at the first failure. `progress` receives the
/// stored bytes checked so far (the total is the sum of the inventory's sizes).
pub fn verify(target: &dyn Target, progress: &mut dyn FnMut(u64)) -> Result<VerifyReport, ReadError> {
    let generations = reader::inventory(target)?;
    if generations.is_empty() {
        return Err(ReadError::Empty(target.describe()));
    }
    let mut done = Vec::new();
    let mut base = 0;
    let mut previous: Option<ReplaySummary> = None;
    for objects in &generations {
        let Some(snapshot) = &objects.snapshot else {
            let key = objects.segments.values().next().map(|s| s.key.clone()).unwrap_or_default();
            return Err(integrity(objects.generation, key, "segments without a snapshot (the snapshot is missing)".into()));
        };
        let mut visitor = Progress { base, report: progress };
        let summary = reader::replay(target, objects, ReplayLimit::All, &mut visitor)?;
        if let Some(torn) = &summary.torn_tail {
            return Err(integrity(objects.generation, torn.clone(), "the stream ends with an incomplete record or transaction (a writer stopped mid-append, or the file was truncated)".into()));
        }
        if let Some(prev) = &previous {
            if prev.generation + 1 == objects.generation {
                let follows = summary.prev_generation_hash == Some(prev.head_hash);
                if !follows {
                    let recorded = summary.prev_generation_hash.map(|h| hex(&h)).unwrap_or_else(|| "nothing".into());
                    return Err(integrity(objects.generation, snapshot.key.clone(), format!(
                        "snapshot follows {recorded}, but generation {} ends at {}", prev.generation, hex(&prev.head_hash)
                    )));
                }
                if !prev.ended {
                    return Err(integrity(prev.generation, snapshot.key.clone(), format!(
                        "generation {} was not ended before generation {} began", prev.generation, objects.generation
                    )));
                }
            }
        }
        base += objects.bytes();
        previous = Some(summary.clone());
        done.push(summary);
    }
    Ok(VerifyReport { generations: done, bytes: base })
}
