//! Reading a stream back from any [`Target`]: the inventory of generations, snapshots and
//! segments, and a validating replay that restore, verify and ls share.
//!
//! Replay checks everything it reads: every page against its BLAKE3 hash, every transaction's
//! chain hash against a recomputation, sequence numbers, segment boundaries and the snapshot
//! hash. The first failure is reported with the generation, transaction, page, object and
//! offset it concerns.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use crate::layout::{self, ObjectName};
use crate::record::chain::{SnapshotHasher, TxnHasher};
use crate::record::page::{PageDecoder, PAGE_BYTES_MAX};
use crate::record::pb::{self, record::Body, segment_end::Reason};
use crate::record::{hash_field, hex, FileKind, Hash, RecordError, RecordReader};
use crate::state::{RootScheme, StateTree};
use crate::target::{ObjectInfo, Target, TargetError};

mod page_hashes;
use page_hashes::{Hashed, PageHashes};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{key}: {source}")]
    Record { key: String, source: RecordError },
    #[error("{0}")]
    Integrity(Box<Integrity>),
    #[error("target {0} holds no complete generation")]
    Empty(String),
    #[error("generation {0} does not exist or has no snapshot")]
    NoSuchGeneration(u64),
    #[error("generation {generation} has no transaction {seq} (its last is {last})")]
    NoSuchTxn {
        generation: u64,
        seq: u64,
        last: u64,
    },
    #[error("output: {0}")]
    Output(std::io::Error),
    /// A state tree's scratch file failed (only trees told to spill have one).
    #[error("{0}")]
    StateTree(std::io::Error),
}

/// Where and what an integrity failure is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrity {
    pub generation: u64,
    pub seq: Option<u64>,
    pub pgno: Option<u32>,
    pub key: String,
    pub offset: Option<u64>,
    pub problem: String,
}

impl fmt::Display for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}", self.generation)?;
        if let Some(seq) = self.seq {
            write!(f, ", txn {seq}")?;
        }
        if let Some(pgno) = self.pgno {
            write!(f, ", page {pgno}")?;
        }
        write!(f, " ({}", self.key)?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(f, "): {}", self.problem)
    }
}

/// The objects of one generation.
#[derive(Debug, Clone, Default)]
pub struct GenerationObjects {
    pub generation: u64,
    pub snapshot: Option<ObjectInfo>,
    /// Segments by first sequence number.
    pub segments: BTreeMap<u64, ObjectInfo>,
}

impl GenerationObjects {
    /// Adds an object of this generation (the generation is set from it).
    fn add(&mut self, name: ObjectName, object: ObjectInfo) {
        self.generation = name.generation();
        match name {
            ObjectName::Snapshot { .. } => self.snapshot = Some(object),
            ObjectName::Segment { first_seq, .. } => {
                self.segments.insert(first_seq, object);
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.size)
            + self.segments.values().map(|s| s.size).sum::<u64>()
    }
}

/// Every generation in a target, oldest first.
pub fn inventory(target: &dyn Target) -> Result<Vec<GenerationObjects>, ReadError> {
    let mut map: BTreeMap<u64, GenerationObjects> = BTreeMap::new();
    for object in target.list()? {
        let Some(name) = layout::parse_key(&object.key) else {
            continue;
        };
        map.entry(name.generation()).or_default().add(name, object);
    }
    Ok(map.into_values().collect())
}

/// The newest generation that has a snapshot.
pub fn latest_generation(target: &dyn Target) -> Result<GenerationObjects, ReadError> {
    inventory(target)?
        .into_iter()
        .rev()
        .find(|g| g.snapshot.is_some())
        .ok_or_else(|| ReadError::Empty(target.describe()))
}

/// As `latest_generation`, listing only what sorts from the newest segment of `known` (this
/// generation as listed before) on, when given: that segment again (it may have grown, or
/// replaced a placeholder), the ones after it, and every newer generation, whose keys sort
/// after. A follower's round thus lists what is new, not the whole stream. Segments of `known`
/// before its newest stay as they were listed.
pub fn latest_generation_since(
    target: &dyn Target,
    known: Option<GenerationObjects>,
) -> Result<GenerationObjects, ReadError> {
    let Some(mut known) = known.filter(|k| k.snapshot.is_some()) else {
        return latest_generation(target);
    };
    let newest = known.segments.keys().next_back().copied();
    let start_after = match newest {
        // The newest segment's key without its suffix: it sorts just before that key.
        Some(first_seq) => format!(
            "{}/{first_seq:016x}",
            layout::generation_dir(known.generation)
        ),
        None => format!("{}/", layout::generation_dir(known.generation)),
    };
    if let Some(first_seq) = newest {
        known.segments.remove(&first_seq);
    }
    let mut newer: BTreeMap<u64, GenerationObjects> = BTreeMap::new();
    for object in target.list_after(&start_after)? {
        let Some(name) = layout::parse_key(&object.key) else {
            continue;
        };
        let generation = name.generation();
        if generation == known.generation {
            known.add(name, object);
        } else if generation > known.generation {
            newer.entry(generation).or_default().add(name, object);
        }
    }
    if let Some(g) = newer.into_values().rev().find(|g| g.snapshot.is_some()) {
        return Ok(g);
    }
    // The newest segment is gone (pruned, or the target replaced): list everything.
    if newest.is_some_and(|n| !known.segments.contains_key(&n)) {
        return latest_generation(target);
    }
    Ok(known)
}

/// One generation by number.
pub fn generation(target: &dyn Target, generation: u64) -> Result<GenerationObjects, ReadError> {
    inventory(target)?
        .into_iter()
        .find(|g| g.generation == generation && g.snapshot.is_some())
        .ok_or(ReadError::NoSuchGeneration(generation))
}

/// What replay reports to its consumer. Pages of a transaction arrive before its commit; a
/// consumer that must not apply an unfinished transaction uses `ReplayLimit` to stop at a
/// transaction known to be complete.
pub trait Visitor {
    fn snapshot_header(&mut self, _h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        Ok(())
    }
    fn snapshot_page(&mut self, _pgno: u32, _data: &[u8]) -> Result<(), ReadError> {
        Ok(())
    }
    fn txn_page(&mut self, _seq: u64, _pgno: u32, _data: &[u8]) -> Result<(), ReadError> {
        Ok(())
    }
    fn txn_commit(&mut self, _c: &pb::TxnCommit) -> Result<(), ReadError> {
        Ok(())
    }
    /// A `HeadSignature` record, with the chain head it follows (replay does not check
    /// signatures: a visitor that requires them does, see `verify::verify_with`).
    fn head_signature(
        &mut self,
        _sig: &pb::HeadSignature,
        _at: &ChainPoint<'_>,
    ) -> Result<(), ReadError> {
        Ok(())
    }
    /// A segment's `SegmentEnd` record, with the chain head the segment ends at.
    fn segment_sealed(&mut self, _at: &ChainPoint<'_>) -> Result<(), ReadError> {
        Ok(())
    }
    /// Bytes of stored objects consumed so far, for progress reports.
    fn progress(&mut self, _bytes: u64) {}
}

/// A place in a segment and the chain head there: the last complete transaction before it
/// (`seq`, 0 for the snapshot) and its chain hash.
#[derive(Debug, Clone, Copy)]
pub struct ChainPoint<'a> {
    pub generation: u64,
    pub seq: u64,
    pub head_hash: &'a Hash,
    /// The segment's object key and the record's offset in it.
    pub key: &'a str,
    pub offset: u64,
}

impl ChainPoint<'_> {
    /// An integrity failure at this place.
    pub fn fail(&self, problem: String) -> ReadError {
        ReadError::Integrity(Box::new(Integrity {
            generation: self.generation,
            seq: Some(self.seq),
            pgno: None,
            key: self.key.to_string(),
            offset: Some(self.offset),
            problem,
        }))
    }
}

/// Summary of a replayed generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub generation: u64,
    pub page_size: u32,
    pub snapshot_pages: u32,
    pub snapshot_hash: Hash,
    pub prev_generation_hash: Option<Hash>,
    pub reason: String,
    pub created_ms: i64,
    /// Last complete transaction replayed (0: none) and its hash, time and database size.
    pub last_seq: u64,
    pub head_hash: Hash,
    pub last_commit_ms: i64,
    pub db_size_pages: u32,
    /// The stream ends with an incomplete record or transaction (a writer stopped mid-append).
    pub torn_tail: Option<String>,
    /// The generation was ended by a newer one.
    pub ended: bool,
    /// State root of the image after `last_seq` (recomputed and checked against the record).
    pub state_root: Hash,
}

/// How far to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayLimit {
    All,
    /// Stop after this transaction (0: only the snapshot).
    Txn(u64),
}

struct Ctx<'a> {
    generation: u64,
    key: &'a str,
}

impl<'a> Ctx<'a> {
    /// The chain head `summary` has reached, at `offset` in this object.
    fn chain_point<'s>(&self, summary: &'s ReplaySummary, offset: u64) -> ChainPoint<'s>
    where
        'a: 's,
    {
        ChainPoint {
            generation: self.generation,
            seq: summary.last_seq,
            head_hash: &summary.head_hash,
            key: self.key,
            offset,
        }
    }

    fn fail(
        &self,
        seq: Option<u64>,
        pgno: Option<u32>,
        offset: Option<u64>,
        problem: String,
    ) -> ReadError {
        ReadError::Integrity(Box::new(Integrity {
            generation: self.generation,
            seq,
            pgno,
            key: self.key.to_string(),
            offset,
            problem,
        }))
    }
}

fn open_records(
    target: &dyn Target,
    key: &str,
    kind: FileKind,
) -> Result<RecordReader<Box<dyn Read + Send>>, ReadError> {
    RecordReader::new(target.get(key)?)
        .and_then(|r| r.expect_kind(kind))
        .map_err(|source| ReadError::Record {
            key: key.to_string(),
            source,
        })
}

/// True for a segment cut inside its file header: the newest segment after a power cut right
/// after it was created. Like a torn record, it reads as the end of the stream.
fn torn_header(e: &ReadError) -> bool {
    matches!(
        e,
        ReadError::Record {
            source: RecordError::TruncatedHeader,
            ..
        }
    )
}

fn hash32(
    ctx: &Ctx,
    bytes: &[u8],
    seq: Option<u64>,
    pgno: Option<u32>,
    offset: u64,
    what: &str,
) -> Result<Hash, ReadError> {
    hash_field(bytes).ok_or_else(|| {
        ctx.fail(
            seq,
            pgno,
            Some(offset),
            format!("{what} is {} bytes, not 32", bytes.len()),
        )
    })
}

/// A page's computed hash, checked against the hash recorded with it (snapshot chunk or
/// transaction).
fn check_page_hash(ctx: &Ctx, seq: Option<u64>, h: &Hashed) -> Result<Hash, ReadError> {
    if h.recorded[..] != h.actual[..] {
        return Err(ctx.fail(
            seq,
            Some(h.pgno),
            Some(h.offset),
            format!(
                "page hash mismatch: recorded {}, computed {}",
                hex(&h.recorded),
                hex(&h.actual)
            ),
        ));
    }
    Ok(h.actual)
}

/// Takes a snapshot page's checked hash into the snapshot hash and the state tree.
fn snapshot_page_hashed(
    ctx: &Ctx,
    hasher: &mut SnapshotHasher,
    tree: &mut StateTree,
    h: Hashed,
) -> Result<(), ReadError> {
    let actual = check_page_hash(ctx, None, &h)?;
    hasher.page(h.pgno, &actual);
    tree.set_page(h.pgno, actual);
    Ok(())
}

/// Checks a commit record's chain hash against the one computed for its transaction.
fn check_chain_hash(
    ctx: &Ctx,
    seq: u64,
    offset: u64,
    recorded: &[u8],
    computed: &Hash,
) -> Result<(), ReadError> {
    if recorded != computed {
        return Err(ctx.fail(
            Some(seq),
            None,
            Some(offset),
            format!(
                "chain hash mismatch: recorded {}, computed {}",
                hex(recorded),
                hex(computed)
            ),
        ));
    }
    Ok(())
}

/// Replays one generation: the snapshot, then its transactions in order, validating all.
pub fn replay(
    target: &dyn Target,
    objects: &GenerationObjects,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
) -> Result<ReplaySummary, ReadError> {
    replay_with_tree(target, objects, limit, visitor).map(|(summary, _)| summary)
}

/// `replay`, also returning the state tree of the last replayed image (to resume from).
pub fn replay_with_tree(
    target: &dyn Target,
    objects: &GenerationObjects,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
) -> Result<(ReplaySummary, StateTree), ReadError> {
    replay_with_tree_spilling(target, objects, limit, visitor, None)
}

/// `replay_with_tree`, with a tree that spills its page hashes past `spill.1` pages to a scratch
/// file in `spill.0` (`StateTree::spill_to`): how a writer rebuilds its own tree.
pub fn replay_with_tree_spilling(
    target: &dyn Target,
    objects: &GenerationObjects,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
    spill: Option<(&std::path::Path, usize)>,
) -> Result<(ReplaySummary, StateTree), ReadError> {
    let snapshot = objects
        .snapshot
        .as_ref()
        .ok_or(ReadError::NoSuchGeneration(objects.generation))?;
    let mut tree = StateTree::default();
    if let Some((dir, spill_at)) = spill {
        tree.spill_to(dir, spill_at);
    }
    let mut summary = replay_snapshot(
        target,
        objects.generation,
        &snapshot.key,
        visitor,
        &mut tree,
    )?;
    visitor.progress(snapshot.size);
    let resume = Resume {
        after_seq: 0,
        head_hash: summary.head_hash,
    };
    replay_segments(
        target,
        objects,
        &resume,
        &mut summary,
        &mut tree,
        limit,
        visitor,
        snapshot.size,
        (None, &mut None),
    )?;
    Ok((summary, tree))
}

/// Where a consumer already is in a generation: the state after `after_seq`, whose chain hash
/// is `head_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub after_seq: u64,
    pub head_hash: Hash,
}

/// Replays the transactions after `resume.after_seq` onto `tree` (the state tree after it),
/// reading only the segments from the one that holds `after_seq + 1`. The transactions before
/// it in that segment are checked to chain up to `resume.head_hash`, so a stream that changed
/// under the consumer is detected. Returns the summary of the last transaction replayed.
pub fn replay_after(
    target: &dyn Target,
    objects: &GenerationObjects,
    resume: &Resume,
    tree: &mut StateTree,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
) -> Result<ReplaySummary, ReadError> {
    replay_after_at(target, objects, resume, tree, limit, visitor, &mut None)
}

/// Where a replay that stopped inside a segment, after a whole transaction, can read on from:
/// the offset after that transaction's commit record and the segment's kept page versions
/// there. A consumer that keeps it (a follower, between rounds) reads each record once,
/// instead of the segment (and the segments whose kept versions it continues) from the start.
pub struct ReadPosition {
    generation: u64,
    first_seq: u64,
    key: String,
    offset: u64,
    pages: PageDecoder,
    /// The transaction it is after, and its chain hash.
    seq: u64,
    head_hash: Hash,
    /// Its segment's bytes from `offset` on, as `last_committed_seq_after` read them, for the
    /// replay that follows to read them from memory instead of asking the target again (at most
    /// `PREFETCH_BYTES_MAX`).
    prefetched: Option<Vec<u8>>,
}

/// The most of a segment's tail a position keeps in memory between finding the last committed
/// transaction and replaying to it. A follower's round usually reads a few transactions; one
/// that starts far behind reads longer tails twice rather than hold them.
const PREFETCH_BYTES_MAX: usize = 4 << 20;

impl ReadPosition {
    /// The first transaction of the segment it is in (the segment's key in a listing).
    pub fn segment(&self) -> u64 {
        self.first_seq
    }

    /// The transaction it is after.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether `objects` still hold the segment it is in, at least as long as its offset.
    pub fn still_in(&self, objects: &GenerationObjects) -> bool {
        self.generation == objects.generation
            && objects
                .segments
                .get(&self.first_seq)
                .is_some_and(|o| o.key == self.key && o.size >= self.offset)
    }

    /// Whether `objects` show nothing after it: its segment is the newest and ends at its
    /// offset. A follower polling a stream that did not change need not read anything.
    pub fn at_end_of(&self, objects: &GenerationObjects) -> bool {
        self.still_in(objects)
            && objects
                .segments
                .last_key_value()
                .is_some_and(|(first, o)| *first == self.first_seq && o.size == self.offset)
    }

    /// The records of its segment from its offset on (the bytes prefetched, if there are).
    fn records(
        &mut self,
        target: &dyn Target,
    ) -> Result<RecordReader<Box<dyn Read + Send>>, ReadError> {
        let inner: Box<dyn Read + Send> = match self.prefetched.take() {
            Some(tail) => Box::new(std::io::Cursor::new(tail)),
            None => target.get_from(&self.key, self.offset)?,
        };
        let version = self.pages.version();
        Ok(RecordReader::resume(
            inner,
            FileKind::Segment,
            version,
            self.offset,
        ))
    }

    /// Whether a replay resuming at `resume` in `objects` may start here.
    fn serves(&self, objects: &GenerationObjects, resume: &Resume) -> bool {
        self.seq == resume.after_seq && self.head_hash == resume.head_hash && self.still_in(objects)
    }
}

/// As `replay_after`, starting at `position` when it is where `resume` is (else as
/// `replay_after` does), and leaving in `position` where this replay stopped, if it stopped
/// after a whole transaction inside a segment (`None` otherwise).
pub fn replay_after_at(
    target: &dyn Target,
    objects: &GenerationObjects,
    resume: &Resume,
    tree: &mut StateTree,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
    position: &mut Option<ReadPosition>,
) -> Result<ReplaySummary, ReadError> {
    let start_at = position.take().filter(|p| p.serves(objects, resume));
    let mut summary = ReplaySummary {
        generation: objects.generation,
        page_size: tree.page_size(),
        snapshot_pages: 0,
        snapshot_hash: [0; 32],
        prev_generation_hash: None,
        reason: String::new(),
        created_ms: 0,
        last_seq: resume.after_seq,
        head_hash: resume.head_hash,
        last_commit_ms: 0,
        db_size_pages: tree.page_count(),
        torn_tail: None,
        ended: false,
        state_root: tree.root().map_err(ReadError::StateTree)?,
    };
    replay_segments(
        target,
        objects,
        resume,
        &mut summary,
        tree,
        limit,
        visitor,
        0,
        (start_at, position),
    )?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn replay_segments(
    target: &dyn Target,
    objects: &GenerationObjects,
    resume: &Resume,
    summary: &mut ReplaySummary,
    tree: &mut StateTree,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
    mut consumed: u64,
    (mut start_at, position): (Option<ReadPosition>, &mut Option<ReadPosition>),
) -> Result<(), ReadError> {
    // The segment holding the first transaction to replay, and every later one; if it continues
    // the kept page versions of earlier segments, from the first of that chain (the writer
    // bounds chains: spool::KEPT_CHAIN). A position kept from an earlier replay says where.
    let mut start = match &start_at {
        Some(p) => p.first_seq,
        None => objects
            .segments
            .range(..=resume.after_seq + 1)
            .next_back()
            .map_or(1, |(k, _)| *k),
    };
    while let Some((&earlier, _)) = objects
        .segments
        .range(..start)
        .next_back()
        .filter(|_| start_at.is_none())
    {
        let continues = objects
            .segments
            .get(&start)
            .is_some_and(|o| continues_kept(target, &o.key));
        if !continues {
            break;
        }
        start = earlier;
    }
    let segments: Vec<(u64, &ObjectInfo)> = objects
        .segments
        .range(start..)
        .map(|(k, v)| (*k, v))
        .collect();
    let mut expected_first = start;
    let mut dangling: Option<u64> = None;
    let mut skip = SkipTo::new(resume, start).filter(|_| start_at.is_none());
    let mut hashes = PageHashes::new();
    let mut handed_on: Option<PageDecoder> = None;
    if skip.is_some() {
        summary.last_seq = start - 1;
    }
    for (i, (first_seq, object)) in segments.iter().enumerate() {
        if limit == ReplayLimit::Txn(summary.last_seq) && skip.is_none() {
            break;
        }
        let ctx = Ctx {
            generation: objects.generation,
            key: &object.key,
        };
        if *first_seq != expected_first {
            return Err(ctx.fail(Some(expected_first), None, None, format!(
                "segment starts at txn {first_seq} but txn {expected_first} comes next (a segment is missing or extra)"
            )));
        }
        let is_last = i + 1 == segments.len();
        let end = replay_segment(
            target,
            &ctx,
            *first_seq,
            summary,
            tree,
            &mut skip,
            limit,
            visitor,
            is_last,
            &mut hashes,
            &mut handed_on,
            (start_at.take(), position),
        )?;
        consumed += object.size;
        visitor.progress(consumed);
        dangling = None;
        match end {
            SegEnd::Rolled { next_seq } => {
                expected_first = next_seq;
                dangling = Some(next_seq);
            }
            SegEnd::Stopped { .. } => break,
            SegEnd::Open | SegEnd::NewGeneration if !is_last && limit == ReplayLimit::All => {
                return Err(ctx.fail(
                    None,
                    None,
                    None,
                    "segment is not sealed but later segments exist".into(),
                ));
            }
            SegEnd::Open | SegEnd::NewGeneration => break,
        }
    }
    if let Some(skip) = skip {
        return Err(ReadError::Integrity(Box::new(Integrity {
            generation: objects.generation,
            seq: Some(skip.through),
            pgno: None,
            key: layout::generation_dir(objects.generation),
            offset: None,
            problem: "the stream no longer holds this transaction (it was resumed from)".into(),
        })));
    }
    if let (Some(next_seq), ReplayLimit::All) = (dangling, limit) {
        return Err(ReadError::Integrity(Box::new(Integrity {
            generation: objects.generation,
            seq: Some(next_seq),
            pgno: None,
            key: layout::segment_key(objects.generation, next_seq),
            offset: None,
            problem: "a sealed segment names this segment as next, but it is missing".into(),
        })));
    }
    if let ReplayLimit::Txn(n) = limit {
        if summary.last_seq != n {
            return Err(ReadError::NoSuchTxn {
                generation: objects.generation,
                seq: n,
                last: summary.last_seq,
            });
        }
    }
    Ok(())
}

/// Whether the segment `key` continues the kept page versions of the one before it (a
/// `KeptContinued` record before its first transaction). Anything unreadable says no: the
/// replay that follows reports it.
fn continues_kept(target: &dyn Target, key: &str) -> bool {
    let Ok(mut reader) = open_records(target, key, FileKind::Segment) else {
        return false;
    };
    if reader.version() < 4 {
        return false;
    }
    while let Ok(Some((_, record))) = reader.next_record() {
        match record.body {
            Some(Body::KeptContinued(_)) => return true,
            Some(Body::TxnBegin(_) | Body::SegmentEnd(_)) => return false,
            _ => {}
        }
    }
    false
}

/// Transactions already applied by a resuming consumer: their chain is checked up to `head`,
/// but their pages are neither applied nor reported.
struct SkipTo {
    through: u64,
    head: Hash,
}

impl SkipTo {
    fn new(resume: &Resume, first_segment_seq: u64) -> Option<Self> {
        (resume.after_seq >= first_segment_seq).then_some(SkipTo {
            through: resume.after_seq,
            head: resume.head_hash,
        })
    }
}

/// Replays the snapshot into `tree` (empty: only its spilling may be set).
fn replay_snapshot(
    target: &dyn Target,
    generation: u64,
    key: &str,
    visitor: &mut dyn Visitor,
    tree: &mut StateTree,
) -> Result<ReplaySummary, ReadError> {
    let ctx = Ctx { generation, key };
    let mut reader = open_records(target, key, FileKind::Snapshot)?;
    // Every root is computed by the scheme of the file that records it.
    tree.set_scheme(RootScheme::of_version(reader.version()));
    let rec_err = |source| ReadError::Record {
        key: key.to_string(),
        source,
    };
    let header = match reader.next_record().map_err(rec_err)? {
        Some((
            _,
            pb::Record {
                body: Some(Body::SnapshotHeader(h)),
            },
        )) => h,
        _ => {
            return Err(ctx.fail(
                None,
                None,
                Some(16),
                "snapshot does not start with its header".into(),
            ))
        }
    };
    if header.generation != generation {
        return Err(ctx.fail(
            None,
            None,
            Some(16),
            format!("snapshot says generation {}", header.generation),
        ));
    }
    let page_size = header.page_size;
    if header.page_count > 0 && !crate::wal::is_valid_page_size(page_size) {
        return Err(ctx.fail(
            None,
            None,
            Some(16),
            format!("invalid page size {page_size}"),
        ));
    }
    let prev = match header.prev_generation_hash.len() {
        0 => None,
        _ => Some(hash32(
            &ctx,
            &header.prev_generation_hash,
            None,
            None,
            16,
            "previous generation hash",
        )?),
    };
    visitor.snapshot_header(&header)?;
    let mut hasher = SnapshotHasher::new(generation, page_size, prev.as_ref());
    tree.set_page_size(page_size);
    tree.resize(header.page_count);
    let mut next_pgno = 1u32;
    let mut pages = Vec::new();
    let mut hashes = PageHashes::new();
    let ended = (|| -> Result<(u64, pb::SnapshotEnd), ReadError> {
        loop {
            let Some((offset, record)) = reader.next_record().map_err(rec_err)? else {
                return Err(ctx.fail(
                    None,
                    None,
                    Some(reader.offset()),
                    "snapshot ends without its end record".into(),
                ));
            };
            match record.body {
                Some(Body::SnapshotChunk(c)) => {
                    if c.first_pgno != next_pgno {
                        return Err(ctx.fail(
                            None,
                            Some(c.first_pgno),
                            Some(offset),
                            format!(
                                "chunk starts at page {} but page {next_pgno} comes next",
                                c.first_pgno
                            ),
                        ));
                    }
                    let data = if c.zstd.is_empty() {
                        &c.data
                    } else if reader.version() < 2 || !c.data.is_empty() {
                        let problem = if c.data.is_empty() {
                            "version 2 chunk fields in a version 1 file"
                        } else {
                            "chunk holds both data and zstd"
                        };
                        return Err(ctx.fail(
                            None,
                            Some(c.first_pgno),
                            Some(offset),
                            problem.into(),
                        ));
                    } else {
                        let len = c.hashes.len().saturating_mul(page_size as usize);
                        crate::record::page::decompress_chunk(&c.zstd, len, &mut pages).map_err(
                            |problem| ctx.fail(None, Some(c.first_pgno), Some(offset), problem),
                        )?;
                        &pages
                    };
                    if data.len() != c.hashes.len() * page_size as usize {
                        return Err(ctx.fail(
                            None,
                            Some(c.first_pgno),
                            Some(offset),
                            "chunk size does not match its page count".into(),
                        ));
                    }
                    let count = c.hashes.len() as u32;
                    for (i, recorded) in c.hashes.into_iter().enumerate() {
                        let pgno = c.first_pgno + i as u32;
                        let data = &data[i * page_size as usize..(i + 1) * page_size as usize];
                        hashes.push(pgno, offset, recorded.into(), data, &mut |h| {
                            snapshot_page_hashed(&ctx, &mut hasher, tree, h)
                        })?;
                        if pgno == header.page_count {
                            // Every page's hash is checked before the last page is handed
                            // over (a validator runs its checks on the image then).
                            hashes.finish(&mut |h| {
                                snapshot_page_hashed(&ctx, &mut hasher, tree, h)
                            })?;
                        }
                        visitor.snapshot_page(pgno, data)?;
                    }
                    next_pgno += count;
                }
                Some(Body::SnapshotEnd(end)) => return Ok((offset, end)),
                other => {
                    return Err(ctx.fail(
                        None,
                        None,
                        Some(offset),
                        format!("unexpected record in snapshot: {}", kind_name(&other)),
                    ))
                }
            }
        }
    })();
    // The hashes still outstanding are checked first, so that a page hash mismatch in an
    // earlier chunk is reported before whatever failed later.
    hashes.finish(&mut |h| snapshot_page_hashed(&ctx, &mut hasher, tree, h))?;
    let (offset, end) = ended?;
    let hash = hasher.finish();
    if end.hash.as_slice() != hash {
        return Err(ctx.fail(
            None,
            None,
            Some(offset),
            format!(
                "snapshot hash mismatch: recorded {}, computed {}",
                hex(&end.hash),
                hex(&hash)
            ),
        ));
    }
    let state_root = tree.root().map_err(ReadError::StateTree)?;
    if end.state_root.as_slice() != state_root {
        return Err(ctx.fail(
            None,
            None,
            Some(offset),
            format!(
                "state root mismatch: recorded {}, computed {}",
                hex(&end.state_root),
                hex(&state_root)
            ),
        ));
    }
    if next_pgno - 1 != header.page_count {
        return Err(ctx.fail(
            None,
            None,
            None,
            format!(
                "snapshot holds {} pages, its header says {}",
                next_pgno - 1,
                header.page_count
            ),
        ));
    }
    if reader.next_record().map_err(rec_err)?.is_some() {
        return Err(ctx.fail(
            None,
            None,
            Some(reader.offset()),
            "records after the snapshot's end".into(),
        ));
    }
    let summary = ReplaySummary {
        generation,
        page_size,
        snapshot_pages: header.page_count,
        snapshot_hash: hash,
        prev_generation_hash: prev,
        reason: header.reason,
        created_ms: header.created_ms,
        last_seq: 0,
        head_hash: hash,
        last_commit_ms: header.created_ms,
        db_size_pages: header.page_count,
        torn_tail: None,
        ended: false,
        state_root,
    };
    Ok(summary)
}

/// The name of a record's kind, for messages.
pub fn kind_name(body: &Option<Body>) -> &'static str {
    match body {
        Some(Body::SegmentHeader(_)) => "segment header",
        Some(Body::TxnBegin(_)) => "txn begin",
        Some(Body::Page(_)) => "page",
        Some(Body::TxnCommit(_)) => "txn commit",
        Some(Body::SegmentEnd(_)) => "segment end",
        Some(Body::WalReset(_)) => "WAL reset",
        Some(Body::SnapshotHeader(_)) => "snapshot header",
        Some(Body::SnapshotChunk(_)) => "snapshot chunk",
        Some(Body::SnapshotEnd(_)) => "snapshot end",
        Some(Body::HeadSignature(_)) => "head signature",
        Some(Body::KeptContinued(_)) => "kept-continued",
        None => "empty",
    }
}

enum SegEnd {
    Open,
    Rolled {
        next_seq: u64,
    },
    NewGeneration,
    /// At the replay's limit: the commit record of its last transaction ends before `offset`.
    Stopped {
        offset: u64,
    },
}

struct OpenTxn {
    seq: u64,
    hasher: TxnHasher,
    pages: Vec<(u32, Hash)>,
}

/// Takes a transaction page's checked hash into the transaction's hash and, unless the
/// transaction is only being checked (`keep` false), its list of pages for the state tree.
fn txn_page_hashed(ctx: &Ctx, t: &mut OpenTxn, keep: bool, h: Hashed) -> Result<(), ReadError> {
    let actual = check_page_hash(ctx, Some(t.seq), &h)?;
    t.hasher.page(h.pgno, &actual);
    if keep {
        t.pages.push((h.pgno, actual));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn replay_segment(
    target: &dyn Target,
    ctx: &Ctx,
    first_seq: u64,
    summary: &mut ReplaySummary,
    tree: &mut StateTree,
    skip: &mut Option<SkipTo>,
    limit: ReplayLimit,
    visitor: &mut dyn Visitor,
    is_last: bool,
    hashes: &mut PageHashes,
    handed_on: &mut Option<PageDecoder>,
    (start_at, position): (Option<ReadPosition>, &mut Option<ReadPosition>),
) -> Result<SegEnd, ReadError> {
    // The previous segment's kept versions, for a `KeptContinued` here; this segment's are
    // handed on in their place if it is sealed.
    let mut carried = handed_on.take();
    let resumed = start_at.is_some();
    let (mut reader, mut pages) = match start_at {
        // Reading on after a transaction of this segment: its header, any `KeptContinued` and
        // the transactions before were read (and checked) by the replay that kept the position.
        Some(mut p) => (p.records(target)?, p.pages),
        None => match open_records(target, ctx.key, FileKind::Segment) {
            Ok(r) => {
                // Kept page versions, from this segment's first record on (record::page), or
                // from the previous segment's (`KeptContinued`).
                let pages = PageDecoder::new(r.version());
                (r, pages)
            }
            Err(e) if is_last && torn_header(&e) => {
                summary.torn_tail = Some(e.to_string());
                return Ok(SegEnd::Open);
            }
            Err(e) => return Err(e),
        },
    };
    let mut txn: Option<OpenTxn> = None;
    let version = reader.version();
    let result = (|| -> Result<SegEnd, ReadError> {
        let mut first = !resumed;
        let (mut saw_txn, mut saw_marker) = (resumed, resumed);
        tree.set_scheme(RootScheme::of_version(version));
        loop {
            let (offset, record) = match reader.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) if e.is_torn_tail() && is_last => {
                    summary.torn_tail = Some(format!("{}: {e}", ctx.key));
                    return Ok(SegEnd::Open);
                }
                Err(source) => {
                    return Err(ReadError::Record {
                        key: ctx.key.to_string(),
                        source,
                    })
                }
            };
            let body = record.body;
            if first {
                let Some(Body::SegmentHeader(h)) = &body else {
                    return Err(ctx.fail(
                        None,
                        None,
                        Some(offset),
                        "segment does not start with its header".into(),
                    ));
                };
                if skip.is_some() && h.first_seq == first_seq {
                    // Resuming inside this segment: its own header says where the chain stood.
                    summary.head_hash =
                        hash32(ctx, &h.prev_hash, None, None, offset, "segment prev_hash")?;
                }
                check_segment_header(ctx, h, first_seq, summary, offset)?;
                first = false;
                continue;
            }
            match (body, txn.as_mut()) {
                (Some(Body::KeptContinued(_)), None) => {
                    if version < 4 {
                        return Err(ctx.fail(
                            None,
                            None,
                            Some(offset),
                            format!(
                                "a kept-continued record (version 4) in a version {version} file"
                            ),
                        ));
                    }
                    if saw_txn || saw_marker {
                        return Err(ctx.fail(None, None, Some(offset),
                            "a kept-continued record after the segment's first transaction, or twice".into()));
                    }
                    saw_marker = true;
                    match carried.take().filter(|d| d.version() == version) {
                        Some(previous) => pages = previous,
                        None => {
                            return Err(ctx.fail(None, None, Some(offset), format!(
                                "the segment continues the kept page versions of the one before it, \
                                 which {} (a generation's first segment has none)",
                                if first_seq == 1 { "does not exist" } else { "was not read with it" }
                            )))
                        }
                    }
                }
                (Some(Body::TxnBegin(b)), None) => {
                    saw_txn = true;
                    // Not continued: the previous segment's kept versions (up to 4 MiB) go now,
                    // not at the end of this segment.
                    carried = None;
                    if b.seq != summary.last_seq + 1 {
                        return Err(ctx.fail(
                            Some(b.seq),
                            None,
                            Some(offset),
                            format!(
                                "txn {} follows txn {} (sequence gap or reordering)",
                                b.seq, summary.last_seq
                            ),
                        ));
                    }
                    hashes.discard();
                    txn = Some(OpenTxn {
                        seq: b.seq,
                        hasher: TxnHasher::new(ctx.generation, b.seq, &summary.head_hash),
                        pages: Vec::new(),
                    });
                }
                (Some(Body::Page(p)), Some(t)) => {
                    if p.pgno == 0 {
                        return Err(ctx.fail(
                            Some(t.seq),
                            None,
                            Some(offset),
                            "page number 0".into(),
                        ));
                    }
                    let limit = if summary.page_size == 0 {
                        PAGE_BYTES_MAX
                    } else {
                        summary.page_size as usize
                    };
                    let data = pages.decode(&p, limit).map_err(|problem| {
                        ctx.fail(Some(t.seq), Some(p.pgno), Some(offset), problem)
                    })?;
                    if data.len() != summary.page_size as usize && summary.page_size != 0 {
                        return Err(ctx.fail(
                            Some(t.seq),
                            Some(p.pgno),
                            Some(offset),
                            format!(
                                "page is {} bytes, the generation's pages are {}",
                                data.len(),
                                summary.page_size
                            ),
                        ));
                    }
                    let keep = skip.is_none();
                    hashes.push(p.pgno, offset, p.hash.clone(), data, &mut |h| {
                        txn_page_hashed(ctx, t, keep, h)
                    })?;
                    if !keep {
                        continue;
                    }
                    if summary.page_size == 0 {
                        summary.page_size = data.len() as u32;
                        tree.set_page_size(summary.page_size);
                    }
                    visitor.txn_page(t.seq, p.pgno, data)?;
                }
                (Some(Body::TxnCommit(c)), Some(_)) => {
                    let mut t = txn.take().expect("matched Some");
                    let keep = skip.is_none();
                    hashes.finish(&mut |h| txn_page_hashed(ctx, &mut t, keep, h))?;
                    if c.seq != t.seq {
                        return Err(ctx.fail(
                            Some(t.seq),
                            None,
                            Some(offset),
                            format!("commit record says txn {}", c.seq),
                        ));
                    }
                    if c.page_count != t.hasher.pages() {
                        return Err(ctx.fail(
                            Some(t.seq),
                            None,
                            Some(offset),
                            format!(
                                "commit counts {} pages, the stream holds {}",
                                c.page_count,
                                t.hasher.pages()
                            ),
                        ));
                    }
                    if let Some(s) = skip.as_ref() {
                        let recorded =
                            hash32(ctx, &c.state_root, Some(t.seq), None, offset, "state root")?;
                        let computed =
                            t.hasher
                                .finish(c.db_size_pages, c.commit_time_ms, &recorded);
                        check_chain_hash(ctx, t.seq, offset, &c.hash, &computed)?;
                        summary.last_seq = c.seq;
                        summary.head_hash = computed;
                        if c.seq == s.through {
                            if computed != s.head {
                                return Err(ctx.fail(Some(t.seq), None, Some(offset), format!(
                                    "the stream changed: this transaction's hash is {}, it was {} when last read",
                                    hex(&computed), hex(&s.head)
                                )));
                            }
                            summary.state_root = recorded;
                            summary.last_commit_ms = c.commit_time_ms;
                            summary.db_size_pages = c.db_size_pages;
                            *skip = None;
                        }
                        continue;
                    }
                    for &(pgno, hash) in &t.pages {
                        tree.set_page(pgno, hash);
                    }
                    tree.resize(c.db_size_pages);
                    let state_root = tree.root().map_err(ReadError::StateTree)?;
                    if c.state_root.as_slice() != state_root {
                        return Err(ctx.fail(
                            Some(t.seq),
                            None,
                            Some(offset),
                            format!(
                                "state root mismatch: recorded {}, computed {}",
                                hex(&c.state_root),
                                hex(&state_root)
                            ),
                        ));
                    }
                    let computed = t
                        .hasher
                        .finish(c.db_size_pages, c.commit_time_ms, &state_root);
                    check_chain_hash(ctx, t.seq, offset, &c.hash, &computed)?;
                    visitor.txn_commit(&c)?;
                    summary.last_seq = c.seq;
                    summary.head_hash = computed;
                    summary.last_commit_ms = c.commit_time_ms;
                    summary.db_size_pages = c.db_size_pages;
                    summary.state_root = state_root;
                    if limit == ReplayLimit::Txn(c.seq) {
                        return Ok(SegEnd::Stopped {
                            offset: reader.offset(),
                        });
                    }
                }
                (Some(Body::WalReset(_)), None) => {}
                (Some(Body::HeadSignature(sig)), None) => {
                    if skip.is_none() {
                        let at = ctx.chain_point(summary, offset);
                        visitor.head_signature(&sig, &at)?;
                    }
                }
                (Some(Body::SegmentEnd(e)), None) => {
                    if e.next_seq != summary.last_seq + 1 {
                        return Err(ctx.fail(
                            None,
                            None,
                            Some(offset),
                            format!(
                                "segment end names txn {} as next, expected {}",
                                e.next_seq,
                                summary.last_seq + 1
                            ),
                        ));
                    }
                    if reader
                        .next_record()
                        .map_err(|source| ReadError::Record {
                            key: ctx.key.to_string(),
                            source,
                        })?
                        .is_some()
                    {
                        return Err(ctx.fail(
                            None,
                            None,
                            Some(reader.offset()),
                            "records after the segment's end".into(),
                        ));
                    }
                    if skip.is_none() {
                        let at = ctx.chain_point(summary, offset);
                        visitor.segment_sealed(&at)?;
                    }
                    return Ok(match e.reason() {
                        Reason::Rolled => SegEnd::Rolled {
                            next_seq: e.next_seq,
                        },
                        _ => {
                            summary.ended = true;
                            SegEnd::NewGeneration
                        }
                    });
                }
                (other, open) => {
                    return Err(ctx.fail(
                        open.map(|t| t.seq),
                        None,
                        Some(offset),
                        format!("unexpected {} record here", kind_name(&other)),
                    ));
                }
            }
        }
        if first {
            return Err(ctx.fail(None, None, None, "segment holds no header".into()));
        }
        if let Some(t) = &txn {
            if !is_last {
                return Err(ctx.fail(
                    Some(t.seq),
                    None,
                    None,
                    "transaction has no commit record".into(),
                ));
            }
            summary.torn_tail = Some(format!(
                "{}: txn {} is incomplete (a writer stopped mid-append)",
                ctx.key, t.seq
            ));
        }
        Ok(SegEnd::Open)
    })();
    // The hashes still outstanding for a transaction left open (whatever ended the segment: a
    // later record that does not decode, a torn tail, a missing commit) are checked first, so
    // that a page hash mismatch earlier in it is the failure reported, as it was found first.
    if let Some(t) = txn.as_mut() {
        let keep = skip.is_none();
        hashes.finish(&mut |h| txn_page_hashed(ctx, t, keep, h))?;
    }
    match &result {
        // A sealed segment hands its kept versions on: the next one may continue them.
        Ok(SegEnd::Rolled { .. }) => *handed_on = Some(pages),
        // Stopped after a whole transaction: a later replay may read on from here.
        Ok(SegEnd::Stopped { offset }) => {
            *position = Some(ReadPosition {
                generation: ctx.generation,
                first_seq,
                key: ctx.key.to_string(),
                offset: *offset,
                pages,
                seq: summary.last_seq,
                head_hash: summary.head_hash,
                prefetched: None,
            })
        }
        _ => {}
    }
    result
}

fn check_segment_header(
    ctx: &Ctx,
    h: &pb::SegmentHeader,
    first_seq: u64,
    summary: &ReplaySummary,
    offset: u64,
) -> Result<(), ReadError> {
    if h.generation != ctx.generation {
        return Err(ctx.fail(
            None,
            None,
            Some(offset),
            format!("segment says generation {}", h.generation),
        ));
    }
    if h.first_seq != first_seq {
        return Err(ctx.fail(
            None,
            None,
            Some(offset),
            format!(
                "segment header says it starts at txn {}, its name says {first_seq}",
                h.first_seq
            ),
        ));
    }
    if h.prev_hash.as_slice() != summary.head_hash {
        return Err(ctx.fail(
            Some(first_seq),
            None,
            Some(offset),
            format!(
                "segment does not chain: it follows hash {}, the stream's head is {}",
                hex(&h.prev_hash),
                hex(&summary.head_hash)
            ),
        ));
    }
    Ok(())
}

/// The last complete transaction of a generation (reads only its last segment).
pub fn last_committed_seq(
    target: &dyn Target,
    objects: &GenerationObjects,
) -> Result<u64, ReadError> {
    last_committed_seq_after(target, objects, None)
}

/// As `last_committed_seq`, reading the newest segment from `position` on when it is in it;
/// what it read there is kept in the position (up to `PREFETCH_BYTES_MAX`) for a replay from it.
pub fn last_committed_seq_after(
    target: &dyn Target,
    objects: &GenerationObjects,
    position: Option<&mut ReadPosition>,
) -> Result<u64, ReadError> {
    let Some((&first_seq, object)) = objects.segments.iter().next_back() else {
        return Ok(0);
    };
    let record_err = |source: RecordError| ReadError::Record {
        key: object.key.clone(),
        source,
    };
    // What an earlier call kept was for the replay that followed it, which may not have run: a
    // replay after this call must read what is there now.
    let mut position = position;
    if let Some(p) = position.as_deref_mut() {
        p.prefetched = None;
    }
    match position.filter(|p| p.first_seq == first_seq && p.still_in(objects)) {
        Some(p) => {
            let mut from = target.get_from(&p.key, p.offset)?;
            let expected = object.size.saturating_sub(p.offset) as usize;
            let mut tail = Vec::with_capacity(expected.min(PREFETCH_BYTES_MAX + 1));
            (&mut from)
                .take(PREFETCH_BYTES_MAX as u64 + 1)
                .read_to_end(&mut tail)
                .map_err(|e| record_err(e.into()))?;
            let version = p.pages.version();
            if tail.len() <= PREFETCH_BYTES_MAX {
                let reader = RecordReader::resume(&tail[..], FileKind::Segment, version, p.offset);
                let last = last_commit_in(reader, p.seq).map_err(record_err)?;
                p.prefetched = Some(tail);
                Ok(last)
            } else {
                let rest = std::io::Cursor::new(tail).chain(from);
                let reader = RecordReader::resume(rest, FileKind::Segment, version, p.offset);
                last_commit_in(reader, p.seq).map_err(record_err)
            }
        }
        None => match open_records(target, &object.key, FileKind::Segment) {
            Ok(r) => last_commit_in(r, first_seq.saturating_sub(1)).map_err(record_err),
            Err(e) if torn_header(&e) => Ok(first_seq.saturating_sub(1)),
            Err(e) => Err(e),
        },
    }
}

/// The last transaction whose commit record `reader` holds (`last` if none), up to its end or a
/// torn tail.
fn last_commit_in<R: Read>(mut reader: RecordReader<R>, mut last: u64) -> Result<u64, RecordError> {
    loop {
        match reader.next_record() {
            Ok(Some((
                _,
                pb::Record {
                    body: Some(Body::TxnCommit(c)),
                },
            ))) => last = c.seq,
            Ok(Some(_)) => {}
            Ok(None) => return Ok(last),
            Err(e) if e.is_torn_tail() => return Ok(last),
            Err(e) => return Err(e),
        }
    }
}

/// The last complete transaction committed at or before `time_ms` (0: the snapshot itself is
/// the newest state at that time). Reads segment headers and one segment.
pub fn seq_at_time(
    target: &dyn Target,
    objects: &GenerationObjects,
    time_ms: i64,
) -> Result<u64, ReadError> {
    let mut candidate: Option<(&u64, &ObjectInfo)> = None;
    for (i, (first_seq, object)) in objects.segments.iter().enumerate() {
        let mut reader = match open_records(target, &object.key, FileKind::Segment) {
            Ok(r) => r,
            Err(e) if i + 1 == objects.segments.len() && torn_header(&e) => break,
            Err(e) => return Err(e),
        };
        let prev_time = match reader.next_record() {
            Ok(Some((
                _,
                pb::Record {
                    body: Some(Body::SegmentHeader(h)),
                },
            ))) => h.prev_commit_time_ms,
            Ok(_) => break,
            Err(source) => {
                return Err(ReadError::Record {
                    key: object.key.clone(),
                    source,
                })
            }
        };
        if prev_time > time_ms && candidate.is_some() {
            break;
        }
        candidate = Some((first_seq, object));
    }
    let Some((first_seq, object)) = candidate else {
        return Ok(0);
    };
    let mut reader = open_records(target, &object.key, FileKind::Segment)?;
    let mut best = first_seq.saturating_sub(1);
    loop {
        match reader.next_record() {
            Ok(Some((
                _,
                pb::Record {
                    body: Some(Body::TxnCommit(c)),
                },
            ))) => {
                if c.commit_time_ms > time_ms {
                    break;
                }
                best = c.seq;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.is_torn_tail() => break,
            Err(source) => {
                return Err(ReadError::Record {
                    key: object.key.clone(),
                    source,
                })
            }
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::LocalTarget;

    fn put(dir: &std::path::Path, key: &str, bytes: usize) {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![0u8; bytes]).unwrap();
    }

    fn sizes(g: &GenerationObjects) -> Vec<(u64, u64)> {
        g.segments.iter().map(|(k, o)| (*k, o.size)).collect()
    }

    /// What a follower's listing from its newest segment on sees, against a full listing.
    #[test]
    fn listing_since_a_known_generation_sees_what_a_full_listing_sees() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTarget::new(dir.path().to_path_buf());
        put(dir.path(), &layout::snapshot_key(1), 10);
        for (seq, n) in [(1, 100), (5, 100), (9, 50)] {
            put(dir.path(), &layout::segment_key(1, seq), n);
        }
        let known = latest_generation_since(&t, None).unwrap();
        assert_eq!(sizes(&known), [(1, 100), (5, 100), (9, 50)]);

        // The newest segment grew, two more came, a newer generation has no snapshot yet.
        put(dir.path(), &layout::segment_key(1, 9), 80);
        put(dir.path(), &layout::segment_key(1, 0x10), 10);
        put(dir.path(), &layout::segment_key(1, 0x11), 10);
        put(dir.path(), &layout::segment_key(2, 1), 10);
        let mut trimmed = known;
        trimmed.segments = trimmed.segments.split_off(&5);
        let g = latest_generation_since(&t, Some(trimmed)).unwrap();
        assert_eq!(g.generation, 1);
        assert_eq!(sizes(&g), [(5, 100), (9, 80), (0x10, 10), (0x11, 10)]);
        assert_eq!(g.snapshot.as_ref().map(|s| s.size), Some(10));

        // The newer generation gets its snapshot: it is the newest, whole.
        put(dir.path(), &layout::snapshot_key(2), 10);
        let g2 = latest_generation_since(&t, Some(g)).unwrap();
        assert_eq!(g2.generation, 2);
        assert_eq!(sizes(&g2), [(1, 10)]);
        assert_eq!(
            sizes(&g2),
            sizes(&latest_generation(&t).unwrap()),
            "as a full listing"
        );

        // The known newest segment is gone (generation 1 pruned): a full listing.
        let mut known = latest_generation(&t).unwrap();
        known.generation = 1;
        known.segments.insert(
            0x11,
            ObjectInfo {
                key: layout::segment_key(1, 0x11),
                size: 10,
            },
        );
        std::fs::remove_dir_all(dir.path().join(layout::generation_dir(1))).unwrap();
        let g = latest_generation_since(&t, Some(known)).unwrap();
        assert_eq!((g.generation, sizes(&g)), (2, vec![(1, 10)]));
    }
}
