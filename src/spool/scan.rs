//! Reading the spool's own tail back: where the stream ends, so that capture continues it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{io_err, SpoolError, SpoolLock};
use crate::layout;
use crate::record::page::{stored_page_len, ChainLimit, EncoderMode, PageEncoder};
use crate::record::pb::{self, record::Body, segment_end::Reason};
use crate::record::{hash_field, FileKind, Hash, RecordReader, FORMAT_VERSION};
use crate::state::{RootScheme, StateTree};
use crate::wal::WalCursor;

/// Where the stream in the spool ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    pub generation: u64,
    pub page_size: u32,
    /// Sequence number of the last complete transaction (0: only the snapshot).
    pub last_seq: u64,
    /// Chain hash of that transaction (the snapshot hash when `last_seq` is 0).
    pub head_hash: Hash,
    pub last_commit_ms: i64,
    /// The WAL position captured through, if known.
    pub wal: Option<WalCursor>,
    /// Set when the WAL at `wal` was announced as reset after the last transaction.
    pub reset: Option<pb::WalReset>,
    /// The last transaction's commit frame: page number, database size and page hash. A WAL
    /// frame repeating it exactly is sector padding, not a transaction.
    pub last_commit_page: Option<(u32, u32, Hash)>,
    /// The generation was ended (a newer one was being started when its writer stopped).
    pub ended: bool,
    pub segment_first_seq: u64,
    /// Length of the active segment up to the end of its last complete record.
    pub segment_len: u64,
    /// The active segment holds a `HeadSignature` over the current head.
    pub head_signed: bool,
    /// Format version of the active segment (appends follow it).
    pub segment_version: u32,
    /// How this process stores pages in the active segment.
    pub(crate) codec: SegmentCodec,
}

/// The writer's page codec for the active segment (`record::page`). It is not part of where the
/// stream ends: tails compare equal whatever it holds. A clone describes a writer that did not
/// see the segment itself, so it stores no deltas (cloning the kept pages would also cost a
/// copy of up to `KEPT_BYTES_MAX` on every lock).
pub(crate) struct SegmentCodec(pub(crate) PageEncoder);

impl SegmentCodec {
    /// The codec for a segment of format `version` that this process did not write itself.
    pub(crate) fn found(version: u32) -> Self {
        let mode = if version < 2 {
            EncoderMode::Raw
        } else {
            EncoderMode::Standalone
        };
        SegmentCodec(PageEncoder::new(mode))
    }
}

impl Clone for SegmentCodec {
    fn clone(&self) -> Self {
        let mode = match self.0.mode() {
            EncoderMode::Raw => EncoderMode::Raw,
            _ => EncoderMode::Standalone,
        };
        SegmentCodec(PageEncoder::new(mode))
    }
}

impl PartialEq for SegmentCodec {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for SegmentCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub(crate) fn wal_from_pb(p: &pb::WalPosition) -> WalCursor {
    WalCursor {
        salt1: p.salt1,
        salt2: p.salt2,
        page_size: p.page_size,
        big_endian_checksum: p.big_endian_checksum,
        frame: p.frame,
        checksum: (p.checksum1, p.checksum2),
    }
}

pub(crate) fn wal_to_pb(c: &WalCursor) -> pb::WalPosition {
    pb::WalPosition {
        salt1: c.salt1,
        salt2: c.salt2,
        frame: c.frame,
        checksum1: c.checksum.0,
        checksum2: c.checksum.1,
        page_size: c.page_size,
        big_endian_checksum: c.big_endian_checksum,
    }
}

/// How a scanned segment ends.
pub(crate) enum SegmentEnd {
    Open,
    Rolled { next_seq: u64 },
    NewGeneration,
}

impl SpoolLock<'_> {
    pub(crate) fn segment_path(&self, generation: u64, first_seq: u64) -> PathBuf {
        self.spool
            .dir
            .join(layout::segment_key(generation, first_seq))
    }

    /// Brings the cached tail up to date: re-reads only what was appended since it was cached,
    /// or everything if the spool changed in another way.
    pub(super) fn refresh(&mut self) -> Result<(), SpoolError> {
        let Some(tail) = self.spool.tail.as_ref() else {
            return self.reload();
        };
        if tail.ended {
            return self.reload();
        }
        let (from, path) = (
            tail.segment_len,
            self.segment_path(tail.generation, tail.segment_first_seq),
        );
        let len = match crate::file_size::len_at(&path) {
            Ok(len) => len,
            Err(_) => return self.reload(),
        };
        if len == from {
            return Ok(());
        }
        if len < from {
            return self.reload();
        }
        self.spool.segment = None;
        // Another process appended: its writes are durable only once someone syncs them.
        self.spool.unsynced = true;
        let end = self.scan_own_tail(&path, Some(from))?;
        self.follow(end)
    }

    /// `scan_continuing` with the tail itself, codec included (a clone's codec keeps nothing):
    /// what was appended by someone else may leave this writer's kept versions usable. On an
    /// error the tail is put back with a codec that keeps nothing.
    fn scan_own_tail(&mut self, path: &Path, from: Option<u64>) -> Result<SegmentEnd, SpoolError> {
        let tail = self.spool.tail.take().expect("a tail to scan from");
        let backup = tail.clone();
        self.scan_continuing(path, from, tail).inspect_err(|_| {
            self.spool.tail = Some(backup);
        })
    }

    /// Acts on how the active segment ended: continue in the next segment, or start over.
    fn follow(&mut self, end: SegmentEnd) -> Result<(), SpoolError> {
        match end {
            SegmentEnd::Open => Ok(()),
            SegmentEnd::NewGeneration => {
                // Go on in the newer generation when its snapshot is complete. Otherwise (the
                // writer that ended this one failed or died before its successor's snapshot was
                // in place) the ended generation is the tail: the next capture starts a new one.
                // Reloading again would find this same generation forever.
                let ended = self.spool.tail.as_ref().map(|t| t.generation);
                match newest_complete_generation(&self.spool.dir)? {
                    Some(newest) if Some(newest) != ended => self.reload(),
                    _ => Ok(()),
                }
            }
            SegmentEnd::Rolled { next_seq } => {
                let tail = self.spool.tail.as_ref().expect("scanned a segment");
                let path = self.segment_path(tail.generation, next_seq);
                if path.exists() {
                    match self.scan_own_tail(&path, None) {
                        Ok(end) => self.follow(end),
                        // The next segment was never completely started (a power cut right
                        // after it was created): start it again.
                        Err(SpoolError::Record { source, .. }) if source.is_torn_tail() => {
                            self.create_segment(next_seq)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    // The writer stopped between sealing a segment and starting the next.
                    self.create_segment(next_seq)
                }
            }
        }
    }

    /// Scans a segment that continues `tail`, keeping the state tree in step if it matches.
    fn scan_continuing(
        &mut self,
        path: &Path,
        from: Option<u64>,
        mut tail: Tail,
    ) -> Result<SegmentEnd, SpoolError> {
        let mut tree = self
            .spool
            .tree
            .take()
            .filter(|(g, s, _)| (*g, *s) == (tail.generation, tail.last_seq));
        let chain_max = self.spool.kept_chain;
        let tree_of = tree.as_mut().map(|t| &mut t.2);
        let end = scan_segment(path, from, &mut tail, tree_of, chain_max)?;
        if let Some(t) = tree.as_mut() {
            (t.0, t.1) = (tail.generation, tail.last_seq);
        }
        self.spool.tree = tree;
        self.spool.tail = Some(tail);
        Ok(end)
    }

    /// Reads the tail from scratch: the newest generation that has a snapshot, and its last
    /// segment.
    fn reload(&mut self) -> Result<(), SpoolError> {
        self.spool.segment = None;
        // What this process finds was written by others, maybe never synced (a writer that died).
        self.spool.unsynced = true;
        self.spool.tail = None;
        self.spool.tree = None;
        let Some(generation) = newest_complete_generation(&self.spool.dir)? else {
            return Ok(());
        };
        let gen_dir = self.spool.dir.join(layout::generation_dir(generation));
        let mut segments = list_segments(&gen_dir)?;
        loop {
            let Some(first_seq) = segments.pop() else {
                return self.tail_from_snapshot(generation);
            };
            let path = self.segment_path(generation, first_seq);
            let mut tail = Tail {
                generation,
                page_size: snapshot_page_size(&self.spool.dir, generation)?,
                last_seq: 0,
                head_hash: [0; 32],
                last_commit_ms: 0,
                wal: None,
                reset: None,
                last_commit_page: None,
                ended: false,
                segment_first_seq: first_seq,
                segment_len: 0,
                head_signed: false,
                segment_version: FORMAT_VERSION,
                codec: SegmentCodec::found(FORMAT_VERSION),
            };
            match scan_segment(&path, None, &mut tail, None, crate::spool::KEPT_CHAIN) {
                Ok(end) => {
                    self.spool.tail = Some(tail);
                    return self.follow(end);
                }
                Err(SpoolError::Record { source, .. }) if source.is_torn_tail() => {
                    // A segment whose header was never completely written holds nothing.
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A generation whose writer stopped after the snapshot but before its first segment.
    fn tail_from_snapshot(&mut self, generation: u64) -> Result<(), SpoolError> {
        let path = self.spool.dir.join(layout::snapshot_key(generation));
        let summary = read_snapshot_summary(&path)?;
        self.spool.tail = Some(Tail {
            generation,
            page_size: summary.header.page_size,
            last_seq: 0,
            head_hash: summary.hash,
            last_commit_ms: summary.header.created_ms,
            wal: summary.header.wal.as_ref().map(wal_from_pb),
            reset: None,
            last_commit_page: None,
            ended: false,
            segment_first_seq: 1,
            segment_len: 0,
            head_signed: false,
            // The first segment takes the snapshot's root scheme (`create_segment`).
            segment_version: summary.version,
            codec: SegmentCodec::found(summary.version),
        });
        self.create_segment(1)
    }
}

/// Generations in the spool directory that have a complete snapshot, newest first.
fn newest_complete_generation(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let mut generations = list_generations(dir)?;
    generations.sort_unstable();
    Ok(generations
        .into_iter()
        .rev()
        .find(|g| dir.join(layout::snapshot_key(*g)).exists()))
}

/// Every generation directory, complete or not.
pub(crate) fn list_generations(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let root = dir.join(layout::GENERATIONS_DIR);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(SpoolError::Io {
                path: root,
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(generation) = layout::parse_hex16(&name) {
            out.push(generation);
        }
    }
    Ok(out)
}

fn list_segments(gen_dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(gen_dir).map_err(io_err(gen_dir))? {
        let entry = entry.map_err(io_err(gen_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first_seq) = name
            .strip_suffix(layout::SEGMENT_SUFFIX)
            .and_then(layout::parse_hex16)
        {
            out.push(first_seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn record_err(path: &Path) -> impl FnOnce(crate::record::RecordError) -> SpoolError + '_ {
    move |source| SpoolError::Record {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, problem: String) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        problem,
    }
}

fn snapshot_page_size(dir: &Path, generation: u64) -> Result<u32, SpoolError> {
    let path = dir.join(layout::snapshot_key(generation));
    let file = File::open(&path).map_err(io_err(&path))?;
    let mut reader = RecordReader::new(BufReader::new(file))
        .and_then(|r| r.expect_kind(FileKind::Snapshot))
        .map_err(record_err(&path))?;
    match reader.next_record().map_err(record_err(&path))? {
        Some((
            _,
            pb::Record {
                body: Some(Body::SnapshotHeader(h)),
            },
        )) => Ok(h.page_size),
        _ => Err(corrupt(
            &path,
            "does not start with a snapshot header".into(),
        )),
    }
}

/// A snapshot's header and hash, read through the whole file.
pub(crate) struct SnapshotSummary {
    pub header: pb::SnapshotHeader,
    pub hash: Hash,
    /// The snapshot file's format version.
    pub version: u32,
}

pub(crate) fn read_snapshot_summary(path: &Path) -> Result<SnapshotSummary, SpoolError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = RecordReader::new(BufReader::new(file))
        .and_then(|r| r.expect_kind(FileKind::Snapshot))
        .map_err(record_err(path))?;
    let mut header = None;
    while let Some((_, record)) = reader.next_record().map_err(record_err(path))? {
        match record.body {
            Some(Body::SnapshotHeader(h)) => header = Some(h),
            Some(Body::SnapshotEnd(end)) => {
                let hash = hash_field(&end.hash)
                    .ok_or_else(|| corrupt(path, "snapshot hash is not 32 bytes".into()))?;
                let header =
                    header.ok_or_else(|| corrupt(path, "snapshot has no header".into()))?;
                let version = reader.version();
                return Ok(SnapshotSummary {
                    header,
                    hash,
                    version,
                });
            }
            _ => {}
        }
    }
    Err(corrupt(path, "snapshot has no end record".into()))
}

/// Applies the records of a segment to `tail`, from the start (`from = None`, which also reads
/// the segment header) or from a record boundary. A torn record or an unfinished transaction at
/// the end is cut off: the caller holds the spool lock, so the writer that left it has stopped.
/// A segment read from the start whose kept versions may continue those of `tail.codec` (the
/// segment before it) does so while the chain stays within `chain_limit`.
pub(crate) fn scan_segment(
    path: &Path,
    from: Option<u64>,
    tail: &mut Tail,
    mut tree: Option<&mut StateTree>,
    chain_limit: ChainLimit,
) -> Result<SegmentEnd, SpoolError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut reader = match from {
        None => RecordReader::new(BufReader::new(file))
            .and_then(|r| r.expect_kind(FileKind::Segment))
            .map_err(record_err(path))?,
        Some(offset) => {
            file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
            RecordReader::resume(
                BufReader::new(file),
                FileKind::Segment,
                tail.segment_version,
                offset,
            )
        }
    };
    // What this scan reads was not written by this process's codec (or is read from scratch):
    // from here on, this writer refers to nothing kept in the segment, unless what it reads
    // holds no transaction (below). `prior` is the codec of the segment this one follows.
    let (prior, prior_len) = match from {
        None => {
            tail.segment_version = reader.version();
            let found = SegmentCodec::found(reader.version());
            (
                Some(std::mem::replace(&mut tail.codec, found)),
                tail.segment_len,
            )
        }
        Some(_) => (None, 0),
    };
    if let Some(tree) = tree.as_deref_mut() {
        tree.set_scheme(RootScheme::of_version(tail.segment_version));
    }
    let mut good_end = reader.offset();
    let mut open_txn: Option<u64> = None;
    let mut last_page: Option<(u32, Hash)> = None;
    let mut pages: Vec<(u32, Hash)> = Vec::new();
    let mut end = SegmentEnd::Open;
    let mut saw_header = from.is_some();
    // Page records of committed transactions in what was read, and in the open transaction.
    let (mut committed_pages, mut open_pages) = (false, false);
    // A transaction began in what was read; a `KeptContinued` was read.
    let (mut saw_txn, mut saw_marker) = (false, false);
    loop {
        let (offset, record) = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) if e.is_torn_tail() => break,
            Err(e) => return Err(record_err(path)(e)),
        };
        let body = record.body.expect("reader rejects empty records");
        match (body, open_txn) {
            (Body::SegmentHeader(h), None)
                if offset == crate::record::frame::FILE_HEADER_BYTES as u64 =>
            {
                saw_header = true;
                tail.generation = h.generation;
                tail.segment_first_seq = h.first_seq;
                tail.last_seq = h.first_seq.saturating_sub(1);
                tail.head_hash = hash_field(&h.prev_hash)
                    .ok_or_else(|| corrupt(path, "segment prev_hash is not 32 bytes".into()))?;
                tail.wal = h.wal.as_ref().map(wal_from_pb);
                tail.last_commit_ms = h.prev_commit_time_ms;
                tail.reset = None;
                tail.last_commit_page = None;
                tail.head_signed = false;
            }
            (Body::TxnBegin(b), None) if b.seq == tail.last_seq + 1 => {
                saw_txn = true;
                pages.clear();
                open_txn = Some(b.seq);
            }
            (Body::Page(p), Some(_)) => {
                open_pages = true;
                let hash = hash_field(&p.hash).ok_or_else(|| {
                    corrupt(path, format!("page {}: hash is not 32 bytes", p.pgno))
                })?;
                if p.pgno == 0 {
                    return Err(corrupt(
                        path,
                        format!("page record at offset {offset}: page 0"),
                    ));
                }
                last_page = Some((p.pgno, hash));
                if let Some(tree) = tree.as_deref_mut() {
                    if tree.page_size() == 0 {
                        let len = stored_page_len(&p)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|&n| crate::wal::is_valid_page_size(n))
                            .ok_or_else(|| {
                                corrupt(path, format!("page {}: size unknown or invalid", p.pgno))
                            })?;
                        tree.set_page_size(len);
                    }
                    pages.push((p.pgno, hash));
                }
            }
            (Body::TxnCommit(c), Some(seq)) if c.seq == seq => {
                tail.last_seq = seq;
                tail.head_hash = hash_field(&c.hash)
                    .ok_or_else(|| corrupt(path, format!("txn {seq}: hash is not 32 bytes")))?;
                tail.last_commit_ms = c.commit_time_ms;
                tail.wal = c.wal.as_ref().map(wal_from_pb);
                tail.reset = None;
                tail.last_commit_page = last_page.map(|(pgno, h)| (pgno, c.db_size_pages, h));
                tail.head_signed = false;
                committed_pages |= std::mem::take(&mut open_pages);
                if let Some(tree) = tree.as_deref_mut() {
                    for (pgno, hash) in pages.drain(..) {
                        tree.set_page(pgno, hash);
                    }
                    tree.resize(c.db_size_pages);
                }
                open_txn = None;
            }
            (Body::WalReset(r), None) => tail.reset = Some(r),
            (Body::KeptContinued(_), None) => saw_marker = true,
            (Body::HeadSignature(sig), None) => {
                let head = (tail.generation, tail.last_seq, tail.head_hash.as_slice());
                tail.head_signed |= (sig.generation, sig.seq, sig.head_hash.as_slice()) == head;
            }
            (Body::SegmentEnd(e), None) => {
                end = match e.reason() {
                    Reason::Rolled => SegmentEnd::Rolled {
                        next_seq: e.next_seq,
                    },
                    _ => {
                        tail.ended = true;
                        SegmentEnd::NewGeneration
                    }
                };
                good_end = reader.offset();
                break;
            }
            (other, _) => {
                return Err(corrupt(
                    path,
                    format!("unexpected record at offset {offset}: {other:?}"),
                ))
            }
        }
        if open_txn.is_none() {
            good_end = reader.offset();
        }
    }
    if !saw_header {
        // The file header is complete but the SegmentHeader record is not: as torn as a file
        // cut inside its header, and repaired the same way (by the callers).
        return Err(record_err(path)(
            crate::record::RecordError::TruncatedHeader,
        ));
    }
    let file_len = fs::metadata(path).map_err(io_err(path))?.len();
    if file_len > good_end {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(good_end).map_err(io_err(path))?;
    }
    let cut = file_len > good_end;
    tail.segment_len = good_end;
    if from.is_some() && (saw_txn || cut) {
        tail.codec.0.stop_deltas();
    }
    let no_txn = tail.last_seq + 1 == tail.segment_first_seq;
    if from.is_none() && no_txn && !committed_pages && matches!(end, SegmentEnd::Open) {
        // A segment with no transaction yet (a header, perhaps markers; a torn transaction was
        // just cut off): nothing in it is kept, so this writer may keep pages and store deltas,
        // as if it had written the segment itself; and if it wrote all of the segment before,
        // which someone else only sealed, it goes on with its kept versions there (version 4).
        // A segment the S3 shipper sealed and rolled in this process's spool is the common
        // case: without this, capture would store every page of it standalone, or without the
        // bases it kept.
        let version = tail.segment_version;
        match prior {
            Some(mut own) if own.0.can_continue(version, prior_len, chain_limit) => {
                own.0.continue_segment(prior_len, saw_marker);
                tail.codec = own;
            }
            // Readers carry the previous segment's kept versions into a segment that holds a
            // `KeptContinued` (a writer put it there and stopped before its first transaction
            // committed): this writer does not know them, so it keeps nothing here (the reader's
            // kept bytes would not be what it counts).
            _ if tail.segment_version >= 2 && !saw_marker => tail.codec.0.start_segment(),
            _ => {}
        }
    }
    Ok(end)
}
