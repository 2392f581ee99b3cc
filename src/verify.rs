//! Verifying a whole stream: every generation replayed and validated (page hashes, chain
//! hashes, sequence numbers, segment boundaries, snapshot hashes) and every generation checked
//! to follow the one before it; with public keys, every signed head (docs/FORMAT.md, "Signed
//! heads").

use crate::reader::{self, ChainPoint, Integrity, ReadError, ReplayLimit, ReplaySummary, Visitor};
use crate::record::hex;
use crate::record::pb;
use crate::sign::{PublicKey, SignatureProblem};
use crate::target::Target;

/// The result of a successful verification.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub generations: Vec<ReplaySummary>,
    pub bytes: u64,
    /// Head signatures checked (0 without public keys).
    pub signatures: u64,
}

/// What `verify_with` requires beyond the hashes.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Require signed heads made with one of these keys: every sealed segment holds a valid
    /// signature over the head it ends at, and so does the stream's newest head. Every
    /// signature in the stream must verify with one of them. Empty: signatures are skipped.
    pub public_keys: Vec<PublicKey>,
    /// With public keys: accept a newest head not covered by a signature yet (a live stream
    /// signs its active segment only when it is sealed or the database is closed).
    pub allow_unsigned_tail: bool,
}

struct Progress<'a> {
    base: u64,
    report: &'a mut dyn FnMut(u64),
    keys: &'a [PublicKey],
    /// The newest head covered by a valid signature: (segment key, seq).
    covered: Option<(String, u64)>,
    signatures: u64,
}

impl Progress<'_> {
    fn check(&self, sig: &pb::HeadSignature, at: &ChainPoint<'_>) -> Result<(), ReadError> {
        let claims = (sig.generation, sig.seq, sig.head_hash.as_slice());
        if claims != (at.generation, at.seq, at.head_hash.as_slice()) {
            return Err(at.fail(format!(
                "signature over a head that does not match the chain: it signs generation {} txn {} head {}, the chain's head here is txn {} {}",
                sig.generation, sig.seq, hex(&sig.head_hash), at.seq, hex(at.head_hash)
            )));
        }
        let mut problem = None;
        for key in self.keys {
            match key.check(sig) {
                Ok(()) => return Ok(()),
                // Another listed key may have made it: report the other-key problem only if
                // none did.
                Err(p @ SignatureProblem::OtherKey { .. }) => problem = problem.or(Some(p)),
                Err(p) => return Err(at.fail(p.to_string())),
            }
        }
        let problem = match (problem, self.keys) {
            (Some(SignatureProblem::OtherKey { found, .. }), [_, _, ..]) => format!(
                "signed by another key ({found}); expected one of: {}",
                self.keys
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Some(p), _) => p.to_string(),
            (None, _) => "no public key to check the signature with".into(),
        };
        Err(at.fail(problem))
    }
}

impl Visitor for Progress<'_> {
    fn progress(&mut self, bytes: u64) {
        (self.report)(self.base + bytes)
    }

    fn head_signature(
        &mut self,
        sig: &pb::HeadSignature,
        at: &ChainPoint<'_>,
    ) -> Result<(), ReadError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        self.check(sig, at)?;
        self.covered = Some((at.key.to_string(), at.seq));
        self.signatures += 1;
        Ok(())
    }

    fn segment_sealed(&mut self, at: &ChainPoint<'_>) -> Result<(), ReadError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        match &self.covered {
            Some((key, seq)) if key == at.key && *seq == at.seq => Ok(()),
            _ => Err(at.fail(format!(
                "missing signature: the sealed segment holds no signature over the head it ends at (txn {})",
                at.seq
            ))),
        }
    }
}

fn integrity(generation: u64, key: String, problem: String) -> ReadError {
    ReadError::Integrity(Box::new(Integrity {
        generation,
        seq: None,
        pgno: None,
        key,
        offset: None,
        problem,
    }))
}

/// Verifies every generation in `target`; stops at the first failure. `progress` receives the
/// stored bytes checked so far (the total is the sum of the inventory's sizes).
pub fn verify(
    target: &dyn Target,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    verify_with(target, &VerifyOptions::default(), progress)
}

/// `verify`, also requiring what `opts` asks for.
pub fn verify_with(
    target: &dyn Target,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    let generations = reader::inventory(target)?;
    if generations.is_empty() {
        return Err(ReadError::Empty(target.describe()));
    }
    let mut done = Vec::new();
    let mut base = 0;
    let mut previous: Option<ReplaySummary> = None;
    let mut signatures = 0;
    let mut covered = None;
    for objects in &generations {
        let Some(snapshot) = &objects.snapshot else {
            let key = objects
                .segments
                .values()
                .next()
                .map(|s| s.key.clone())
                .unwrap_or_default();
            return Err(integrity(
                objects.generation,
                key,
                "segments without a snapshot (the snapshot is missing)".into(),
            ));
        };
        let mut visitor = Progress {
            base,
            report: progress,
            keys: &opts.public_keys,
            covered: None,
            signatures: 0,
        };
        let summary = reader::replay(target, objects, ReplayLimit::All, &mut visitor)?;
        signatures += visitor.signatures;
        covered = visitor.covered.map(|(_, seq)| (objects.generation, seq));
        if let Some(torn) = &summary.torn_tail {
            return Err(integrity(objects.generation, torn.clone(), "the stream ends with an incomplete record or transaction (a writer stopped mid-append, or the file was truncated)".into()));
        }
        if let Some(prev) = &previous {
            if prev.generation + 1 == objects.generation {
                let follows = summary.prev_generation_hash == Some(prev.head_hash);
                if !follows {
                    let recorded = summary
                        .prev_generation_hash
                        .map(|h| hex(&h))
                        .unwrap_or_else(|| "nothing".into());
                    return Err(integrity(
                        objects.generation,
                        snapshot.key.clone(),
                        format!(
                            "snapshot follows {recorded}, but generation {} ends at {}",
                            prev.generation,
                            hex(&prev.head_hash)
                        ),
                    ));
                }
                if !prev.ended {
                    return Err(integrity(
                        prev.generation,
                        snapshot.key.clone(),
                        format!(
                            "generation {} was not ended before generation {} began",
                            prev.generation, objects.generation
                        ),
                    ));
                }
            }
        }
        base += objects.bytes();
        previous = Some(summary.clone());
        done.push(summary);
    }
    if let (false, Some(last)) = (
        opts.public_keys.is_empty() || opts.allow_unsigned_tail,
        done.last(),
    ) {
        if covered != Some((last.generation, last.last_seq)) {
            let key = generations
                .last()
                .and_then(|g| g.segments.values().next_back())
                .map(|s| s.key.clone())
                .unwrap_or_default();
            return Err(ReadError::Integrity(Box::new(Integrity {
                generation: last.generation,
                seq: Some(last.last_seq),
                pgno: None,
                key,
                offset: None,
                problem: format!(
                    "missing signature: the stream's newest head (txn {}) is not covered by a signature yet (a live stream's active segment is signed when it is sealed or the database is closed; --allow-unsigned-tail accepts this)",
                    last.last_seq
                ),
            })));
        }
    }
    Ok(VerifyReport {
        generations: done,
        bytes: base,
        signatures,
    })
}
