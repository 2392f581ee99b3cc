//! Appending to the spool: new generations (snapshot plus first segment), transactions,
//! WAL-reset markers, and sealing segments.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};

use super::rebuild::rebuild_tree;
use super::scan::{list_generations, wal_to_pb, SegmentCodec, Tail};
use super::{io_err, SnapshotMeta, SpoolError, SpoolLock, APPEND_BUFFER_BYTES};
use crate::layout;
use crate::record::chain::{page_hash, SnapshotHasher, TxnHasher};
use crate::record::frame::encode_record;
use crate::record::pb::{self, record::Body, segment_end::Reason};
use crate::record::{FileKind, Hash, RecordWriter, FORMAT_VERSION};
use crate::state::{RootScheme, StateTree};
use crate::wal::WalCursor;

/// Pages per snapshot chunk record are limited to this many bytes (at least one page).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 256 << 10;

/// The sequence number that marks the cached state tree as holding part of a transaction.
const MID_TXN: u64 = u64::MAX;
/// Bytes a page record adds to its content at most (frame check and length, tags, page number,
/// hash, zstd frame header): bounds how far one record takes the append buffer.
const PAGE_RECORD_OVERHEAD_MAX: usize = 128;

/// Reads database page `pgno` (from 1) into the buffer: where a snapshot's pages come from.
pub type ReadPage<'a> = dyn FnMut(u32, &mut [u8]) -> Result<(), SpoolError> + 'a;

fn rec(body: Body) -> pb::Record {
    pb::Record { body: Some(body) }
}

impl SpoolLock<'_> {
    fn tail_mut(&mut self) -> &mut Tail {
        self.spool.tail.as_mut().expect("a generation is open")
    }

    /// Appends framed bytes to the active segment.
    fn append(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        let (generation, first_seq) = (tail.generation, tail.segment_first_seq);
        // The path is built only to open the segment or to name it in an error: building it on
        // every append showed in the commit path's profile.
        if self.spool.segment.is_none() {
            let path = self.segment_path(generation, first_seq);
            let f = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.spool.segment = Some(f);
        }
        let file = self.spool.segment.as_mut().expect("opened above");
        self.spool.unsynced = true;
        if let Err(source) = file.write_all(bytes) {
            return Err(SpoolError::Io {
                path: self.segment_path(generation, first_seq),
                source,
            });
        }
        self.tail_mut().segment_len += bytes.len() as u64;
        Ok(())
    }

    fn append_record(&mut self, body: Body) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        encode_record(&rec(body), self.tail_mut().segment_version, &mut buf);
        self.append(&buf)
    }

    /// Cuts the active segment back to `len` bytes after a failed append.
    fn cut_back(&mut self, len: u64) -> Result<(), SpoolError> {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        let path = self.segment_path(tail.generation, tail.segment_first_seq);
        self.spool.segment = None;
        // Pages kept by the records cut off are never seen by a reader.
        self.tail_mut().codec.0.stop_deltas();
        let result = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len));
        match result {
            Ok(()) => {
                self.tail_mut().segment_len = len;
                Ok(())
            }
            Err(e) => {
                // Forget the cache: the next lock re-reads the segment and repairs it.
                self.spool.tail = None;
                Err(SpoolError::Io { path, source: e })
            }
        }
    }

    /// Starts the segment whose first transaction is `first_seq`, after the current tail.
    pub(crate) fn create_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        let tail = self.spool.tail.clone().expect("a generation is open");
        // One generation never mixes root schemes: a generation begun by an older writer goes
        // on in the newest format version of its scheme.
        let version = RootScheme::of_version(tail.segment_version).newest_version();
        // The sealed segment's kept versions go on into this one when this writer wrote all of
        // it (record::page).
        // (`tail` is a clone, whose codec kept nothing: ask the tail's own.)
        let own_codec = &self.spool.tail.as_ref().expect("checked above").codec.0;
        let continues_kept = first_seq > 1
            && tail.segment_first_seq < first_seq
            && own_codec.can_continue(version, tail.segment_len, self.spool.kept_chain);
        let path = self.segment_path(tail.generation, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut w = RecordWriter::with_version(BufWriter::new(file), FileKind::Segment, version)
            .map_err(io_err(&path))?;
        w.write(&rec(Body::SegmentHeader(pb::SegmentHeader {
            generation: tail.generation,
            first_seq,
            prev_hash: tail.head_hash.to_vec(),
            wal: tail.wal.as_ref().map(wal_to_pb),
            prev_commit_time_ms: tail.last_commit_ms,
        })))
        .map_err(io_err(&path))?;
        let len = w.offset();
        w.into_inner().flush().map_err(io_err(&path))?;
        self.spool.segment = None;
        self.spool.unsynced = true;
        let t = self.tail_mut();
        t.segment_first_seq = first_seq;
        t.segment_len = len;
        t.head_signed = false;
        t.segment_version = version;
        if continues_kept {
            t.codec.0.continue_segment(tail.segment_len, false);
        } else {
            t.codec.0.start_segment();
        }
        Ok(())
    }

    /// Starts a new generation: ends the current one, writes a snapshot of the database (pages
    /// come from `read_page(pgno, buf)`), makes it durable, and opens the first segment.
    pub fn start_generation(
        &mut self,
        meta: &SnapshotMeta,
        read_page: &mut ReadPage<'_>,
    ) -> Result<u64, SpoolError> {
        let dir = self.spool.dir.clone();
        let prev = self.spool.tail.clone();
        let mut generation = list_generations(&dir)?.into_iter().max().unwrap_or(0) + 1;
        if let Some(max) = generation.checked_sub(1).filter(|g| *g > 0) {
            let incomplete = !dir.join(layout::snapshot_key(max)).exists();
            if incomplete && prev.as_ref().is_none_or(|t| t.generation != max) {
                let stale = dir.join(layout::generation_dir(max));
                fs::remove_dir_all(&stale).map_err(io_err(&stale))?;
                generation = max;
            }
        }
        if let Some(t) = prev.as_ref().filter(|t| !t.ended) {
            self.sign_head()?;
            let end = pb::SegmentEnd {
                reason: Reason::NewGeneration as i32,
                next_seq: t.last_seq + 1,
            };
            self.append_record(Body::SegmentEnd(end))?;
            self.tail_mut().ended = true;
        }
        let gen_dir = dir.join(layout::generation_dir(generation));
        fs::create_dir_all(&gen_dir).map_err(io_err(&gen_dir))?;
        let prev_hash = prev.as_ref().map(|t| t.head_hash);
        let spill = self.spool.tree_spill_leaves;
        let (hash, tree) =
            write_snapshot(&dir, spill, generation, meta, prev_hash.as_ref(), read_page)?;
        self.spool.tree = Some((generation, 0, tree));
        self.spool.tail = Some(Tail {
            generation,
            page_size: meta.page_size,
            last_seq: 0,
            head_hash: hash,
            last_commit_ms: crate::now_ms(),
            wal: meta.wal,
            reset: None,
            last_commit_page: None,
            ended: false,
            segment_first_seq: 1,
            segment_len: 0,
            head_signed: false,
            segment_version: FORMAT_VERSION,
            codec: SegmentCodec::found(FORMAT_VERSION),
        });
        self.create_segment(1)?;
        self.sync()?;
        Ok(generation)
    }

    /// Starts appending the next transaction. Nothing is written until pages arrive; the
    /// caller must end it with `commit_txn` or `abort_txn`.
    pub fn begin_txn(&self) -> TxnAppender {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        assert!(!tail.ended, "appending to an ended generation");
        let seq = tail.last_seq + 1;
        let hasher = TxnHasher::new(tail.generation, seq, &tail.head_hash);
        // Grows as pages arrive (up to APPEND_BUFFER_BYTES, then flushed): a 1-row transaction
        // does not pay for a 1 MiB allocation.
        let mut buf = Vec::with_capacity(8 << 10);
        if tail.codec.0.marker_pending() {
            encode_record(
                &rec(Body::KeptContinued(pb::KeptContinued {})),
                tail.segment_version,
                &mut buf,
            );
        }
        encode_record(
            &rec(Body::TxnBegin(pb::TxnBegin { seq })),
            tail.segment_version,
            &mut buf,
        );
        TxnAppender {
            seq,
            hasher,
            buf,
            start_len: tail.segment_len,
            last_page: None,
            page_size: 0,
        }
    }

    /// Appends one page image (as found in the WAL frame) to `txn`.
    pub fn txn_page(
        &mut self,
        txn: &mut TxnAppender,
        pgno: u32,
        data: &[u8],
    ) -> Result<(), SpoolError> {
        self.txn_page_hashed(txn, pgno, data, page_hash(data))
    }

    /// As `txn_page`, for a caller that already computed `hash = page_hash(data)`.
    pub fn txn_page_hashed(
        &mut self,
        txn: &mut TxnAppender,
        pgno: u32,
        data: &[u8],
        hash: Hash,
    ) -> Result<(), SpoolError> {
        let first_page = txn.page_size == 0;
        if first_page {
            txn.page_size = data.len() as u32;
        }
        txn.hasher.page(pgno, &hash);
        txn.last_page = Some((pgno, hash));
        // The state tree takes the page now rather than at commit, so that appending a
        // transaction needs no memory in proportion to its size (guarantee 5).
        self.txn_tree(first_page, txn.page_size)?
            .set_page(pgno, hash);
        let tail = self.spool.tail.as_mut().expect("a generation is open");
        if first_page && tail.codec.0.txn_open() {
            // A transaction begun earlier was dropped, neither committed nor aborted: pages it
            // kept are in no segment.
            tail.codec.0.stop_deltas();
        }
        // Flushed before the record that would take the buffer past its size, so the buffer
        // never grows beyond APPEND_BUFFER_BYTES (plus one page record, for a huge page).
        if !txn.buf.is_empty()
            && txn.buf.len() + data.len() + PAGE_RECORD_OVERHEAD_MAX > APPEND_BUFFER_BYTES
        {
            self.append(&txn.buf)?;
            txn.buf.clear();
        }
        let tail = self.spool.tail.as_mut().expect("a generation is open");
        tail.codec
            .0
            .encode(pgno, data, &hash, tail.segment_version, &mut txn.buf);
        Ok(())
    }

    /// The state tree that the pages of the transaction being appended go into: at its first
    /// page, the tail's tree (rebuilt if needed), from then on marked as mid-transaction until
    /// `commit_txn` names its new point (an aborted or dropped transaction leaves it marked, so
    /// it is rebuilt before its next use).
    fn txn_tree(&mut self, first_page: bool, page_size: u32) -> Result<&mut StateTree, SpoolError> {
        if first_page {
            let tree = self.tail_tree()?;
            if tree.page_size() == 0 {
                tree.set_page_size(page_size);
            }
            if let Some(t) = self.spool.tree.as_mut() {
                t.1 = MID_TXN;
            }
        }
        match self.spool.tree.as_mut() {
            Some((_, MID_TXN, tree)) => Ok(tree),
            _ => Err(SpoolError::Corrupt {
                path: self.spool.dir.clone(),
                problem: "the state tree was replaced in the middle of a transaction".into(),
            }),
        }
    }

    /// Completes `txn`; returns its chain hash.
    pub fn commit_txn(
        &mut self,
        mut txn: TxnAppender,
        db_size_pages: u32,
        commit_time_ms: i64,
        wal: &WalCursor,
    ) -> Result<Hash, SpoolError> {
        let page_count = txn.hasher.pages();
        let state_root = match self.next_state_root(&txn, db_size_pages) {
            Ok(root) => root,
            Err(e) => {
                // Records of the transaction may already be in the segment (a large one is
                // flushed as it goes): cut them off, so that a retry starts it afresh.
                self.spool.tree = None;
                let _ = self.abort_txn(txn);
                return Err(e);
            }
        };
        let hash = txn
            .hasher
            .finish(db_size_pages, commit_time_ms, &state_root);
        let commit = pb::TxnCommit {
            seq: txn.seq,
            page_count,
            db_size_pages,
            commit_time_ms,
            hash: hash.to_vec(),
            wal: Some(wal_to_pb(wal)),
            state_root: state_root.to_vec(),
        };
        let version = self.tail_mut().segment_version;
        encode_record(&rec(Body::TxnCommit(commit)), version, &mut txn.buf);
        if let Err(e) = self.append(&txn.buf) {
            // The tree already holds this transaction: forget it, it is rebuilt when needed.
            self.spool.tree = None;
            let _ = self.cut_back(txn.start_len);
            return Err(e);
        }
        if let Some(t) = self.spool.tree.as_mut() {
            t.1 = txn.seq;
        }
        let tail = self.tail_mut();
        tail.codec.0.txn_done();
        tail.last_seq = txn.seq;
        tail.head_hash = hash;
        tail.last_commit_ms = commit_time_ms;
        tail.wal = Some(*wal);
        tail.reset = None;
        tail.last_commit_page = txn.last_page.map(|(pgno, h)| (pgno, db_size_pages, h));
        tail.head_signed = false;
        self.roll_if_full()?;
        Ok(hash)
    }

    /// The state root after `txn`, whose pages the tree took as they came (`txn_tree`).
    fn next_state_root(
        &mut self,
        txn: &TxnAppender,
        db_size_pages: u32,
    ) -> Result<Hash, SpoolError> {
        let scheme = self.tail_scheme();
        let tree = self.txn_tree(txn.page_size == 0, txn.page_size)?;
        tree.set_scheme(scheme);
        tree.resize(db_size_pages);
        let root = tree.root();
        self.tree_root(root)
    }

    /// `root`, the result of the cached tree's `root`; on an error (its scratch file failed) the
    /// tree is dropped, to be rebuilt from the spool when needed.
    fn tree_root(&mut self, root: std::io::Result<Hash>) -> Result<Hash, SpoolError> {
        root.map_err(|e| {
            self.spool.tree = None;
            io_err(&self.spool.dir)(e)
        })
    }

    /// The state tree of the tail's database image, rebuilt from the spool if the cached one
    /// describes another point.
    fn tail_tree(&mut self) -> Result<&mut StateTree, SpoolError> {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        let (generation, seq, head) = (tail.generation, tail.last_seq, tail.head_hash);
        let current = self
            .spool
            .tree
            .as_ref()
            .is_some_and(|(g, s, t)| (*g, *s) == (generation, seq) && !t.failed());
        if !current {
            let tree = rebuild_tree(
                &self.spool.dir,
                self.spool.tree_spill_leaves,
                generation,
                seq,
                &head,
            )?;
            self.spool.tree = Some((generation, seq, tree));
        }
        Ok(&mut self.spool.tree.as_mut().expect("set above").2)
    }

    /// The state root of the database image after the tail's last transaction.
    pub fn tail_state_root(&mut self) -> Result<Hash, SpoolError> {
        let scheme = self.tail_scheme();
        let tree = self.tail_tree()?;
        tree.set_scheme(scheme);
        let root = tree.root();
        if let Ok(root) = self.tree_root(root) {
            return Ok(root);
        }
        // The tree's scratch file failed: it was dropped, and is rebuilt once.
        let tree = self.tail_tree()?;
        tree.set_scheme(scheme);
        let root = tree.root();
        self.tree_root(root)
    }

    /// The root scheme of the tail segment: the one its next commit records.
    fn tail_scheme(&self) -> RootScheme {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        RootScheme::of_version(tail.segment_version)
    }

    /// An empty state tree for a database image of pages of `page_size`, spilling as this
    /// spool's trees do, with the tail segment's root scheme.
    pub fn new_tree(&self, page_size: u32) -> StateTree {
        let mut tree = StateTree::new(page_size, self.tail_scheme());
        tree.spill_to(&self.spool.dir, self.spool.tree_spill_leaves);
        tree
    }

    /// Cuts off whatever of `txn` was already written.
    pub fn abort_txn(&mut self, txn: TxnAppender) -> Result<(), SpoolError> {
        if let Some(t) = self.spool.tail.as_mut() {
            // Its pages may have been kept: a reader never sees them.
            if t.codec.0.txn_open() {
                t.codec.0.stop_deltas();
            }
        }
        let written = self
            .spool
            .tail
            .as_ref()
            .is_some_and(|t| t.segment_len != txn.start_len);
        if written {
            self.cut_back(txn.start_len)?;
        }
        Ok(())
    }

    /// Records that the WAL the stream follows is about to be reset (see `pb::WalReset`).
    pub fn mark_reset(&mut self, reset: pb::WalReset) -> Result<(), SpoolError> {
        self.append_record(Body::WalReset(reset))?;
        self.tail_mut().reset = Some(reset);
        Ok(())
    }

    /// Seals the active segment once it is large enough and starts the next one.
    fn roll_if_full(&mut self) -> Result<(), SpoolError> {
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        if tail.segment_len < self.spool.segment_bytes_max {
            return Ok(());
        }
        let next_seq = tail.last_seq + 1;
        self.sign_head()?;
        let end = pb::SegmentEnd {
            reason: Reason::Rolled as i32,
            next_seq,
        };
        self.append_record(Body::SegmentEnd(end))?;
        // The sealed segment must be durable before the next one exists: after a power cut the
        // next segment could survive while this one's last transactions and its SegmentEnd do
        // not, a hole in the middle of the stream.
        if let Some(f) = &self.spool.segment {
            let t = self.spool.tail.as_ref().expect("a generation is open");
            let path = self.segment_path(t.generation, t.segment_first_seq);
            f.sync_data().map_err(io_err(&path))?;
        }
        self.create_segment(next_seq)
    }

    /// Appends a signature over the chain head (the last transaction, or what the active
    /// segment follows) when a signing key is configured, unless the active segment already
    /// holds one over this head. Every `SegmentEnd` is preceded by one.
    pub fn sign_head(&mut self) -> Result<(), SpoolError> {
        let Some(signer) = self.spool.signer.clone() else {
            return Ok(());
        };
        let tail = self.spool.tail.as_ref().expect("a generation is open");
        if tail.head_signed || tail.ended {
            return Ok(());
        }
        let signature = signer.sign_head(tail.generation, tail.last_seq, &tail.head_hash);
        self.append_record(Body::HeadSignature(signature))?;
        self.tail_mut().head_signed = true;
        Ok(())
    }

    /// Seals the active segment if it holds at least one transaction and starts the next one
    /// (used by the S3 shipper, which uploads only sealed segments). A WAL-reset marker after
    /// the last transaction is repeated in the new segment, so the next writer still sees it.
    /// Returns whether a segment was sealed.
    pub fn seal_active(&mut self) -> Result<bool, SpoolError> {
        let Some(tail) = self.spool.tail.as_ref() else {
            return Ok(false);
        };
        if tail.ended || tail.last_seq < tail.segment_first_seq {
            return Ok(false);
        }
        let (next_seq, reset) = (tail.last_seq + 1, tail.reset);
        self.sign_head()?;
        let end = pb::SegmentEnd {
            reason: Reason::Rolled as i32,
            next_seq,
        };
        self.append_record(Body::SegmentEnd(end))?;
        self.create_segment(next_seq)?;
        if let Some(reset) = reset {
            self.mark_reset(reset)?;
        }
        Ok(true)
    }
}

fn write_snapshot(
    dir: &std::path::Path,
    spill: usize,
    generation: u64,
    meta: &SnapshotMeta,
    prev_generation: Option<&Hash>,
    read_page: &mut ReadPage<'_>,
) -> Result<(Hash, StateTree), SpoolError> {
    let path = dir.join(layout::snapshot_key(generation));
    let tmp = path.with_extension("wsnap.tmp");
    let file = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut w = RecordWriter::new(BufWriter::with_capacity(1 << 20, file), FileKind::Snapshot)
        .map_err(io_err(&tmp))?;
    w.write(&rec(Body::SnapshotHeader(pb::SnapshotHeader {
        generation,
        page_size: meta.page_size,
        page_count: meta.page_count,
        reason: meta.reason.clone(),
        created_ms: crate::now_ms(),
        prev_generation_hash: prev_generation.map(|h| h.to_vec()).unwrap_or_default(),
        wal: meta.wal.as_ref().map(wal_to_pb),
    })))
    .map_err(io_err(&tmp))?;
    let page_size = meta.page_size as usize;
    let per_chunk = (SNAPSHOT_CHUNK_BYTES_MAX / page_size.max(1)).max(1) as u32;
    let mut hasher = SnapshotHasher::new(generation, meta.page_size, prev_generation);
    let mut tree = StateTree::new(meta.page_size, RootScheme::of_version(FORMAT_VERSION));
    tree.spill_to(dir, spill);
    tree.resize(meta.page_count);
    let mut page = vec![0u8; page_size];
    let mut compressed = Vec::new();
    let mut first = 1u32;
    while first <= meta.page_count {
        let last = meta.page_count.min(first + per_chunk - 1);
        let mut chunk = pb::SnapshotChunk {
            first_pgno: first,
            ..Default::default()
        };
        for pgno in first..=last {
            read_page(pgno, &mut page)?;
            let h = page_hash(&page);
            hasher.page(pgno, &h);
            tree.set_page(pgno, h);
            chunk.data.extend_from_slice(&page);
            chunk.hashes.push(h.to_vec());
        }
        if crate::record::page::compress_chunk(&chunk.data, &mut compressed) {
            chunk.data.clear();
            std::mem::swap(&mut chunk.zstd, &mut compressed);
        }
        w.write(&rec(Body::SnapshotChunk(chunk)))
            .map_err(io_err(&tmp))?;
        first = last + 1;
    }
    let hash = hasher.finish();
    let state_root = tree.root().map_err(io_err(dir))?;
    let end = pb::SnapshotEnd {
        hash: hash.to_vec(),
        state_root: state_root.to_vec(),
    };
    w.write(&rec(Body::SnapshotEnd(end)))
        .map_err(io_err(&tmp))?;
    let file = w.into_inner().into_inner().map_err(|e| SpoolError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok((hash, tree))
}

/// One transaction being appended (see `SpoolLock::begin_txn`).
pub struct TxnAppender {
    seq: u64,
    hasher: TxnHasher,
    buf: Vec<u8>,
    start_len: u64,
    last_page: Option<(u32, Hash)>,
    page_size: u32,
}

impl TxnAppender {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FileKind, RecordReader};
    use crate::spool::{SnapshotMeta, Spool};

    const PAGE: usize = 1024;

    fn cursor(frame: u32) -> WalCursor {
        WalCursor {
            salt1: 1,
            salt2: 2,
            page_size: PAGE as u32,
            big_endian_checksum: false,
            frame,
            checksum: (0, 0),
        }
    }

    fn page(pgno: u32, version: u32) -> Vec<u8> {
        let mut p = vec![(pgno as u8).wrapping_mul(31); PAGE];
        for (i, b) in p.iter_mut().enumerate().take(64) {
            *b = (i as u32 * 7 + pgno) as u8;
        }
        p[100..104].copy_from_slice(&version.to_le_bytes());
        p
    }

    fn start(dir: &std::path::Path) -> Spool {
        start_spilling_past(dir, crate::state::SPILL_LEAVES)
    }

    /// `start`, with a state tree that spills past `spill` pages.
    fn start_spilling_past(dir: &std::path::Path, spill: usize) -> Spool {
        let mut spool = Spool::open(dir).unwrap();
        spool.tree_spill_leaves = spill;
        let meta = SnapshotMeta {
            page_size: PAGE as u32,
            page_count: 4,
            reason: "test".into(),
            wal: None,
        };
        let mut lock = spool.lock().unwrap();
        lock.start_generation(&meta, &mut |pgno, buf| {
            buf.copy_from_slice(&page(pgno, 0));
            Ok(())
        })
        .unwrap();
        drop(lock);
        spool
    }

    /// Appends a transaction writing pages 1..=4 at `version`.
    fn commit(spool: &mut Spool, version: u32) {
        let mut lock = spool.lock().unwrap();
        let mut txn = lock.begin_txn();
        for pgno in 1..=4 {
            lock.txn_page(&mut txn, pgno, &page(pgno, version)).unwrap();
        }
        lock.commit_txn(txn, 4, i64::from(version), &cursor(version))
            .unwrap();
    }

    /// (encoding, kept) of every page record of the generation's first segment, by txn.
    fn encodings(dir: &std::path::Path) -> Vec<Vec<(&'static str, bool)>> {
        encodings_of(dir, 1)
    }

    /// As `encodings`, for generation 1's segment that starts at transaction `first_seq`.
    fn encodings_of(dir: &std::path::Path, first_seq: u64) -> Vec<Vec<(&'static str, bool)>> {
        let path = dir.join(layout::segment_key(1, first_seq));
        let mut r = RecordReader::new(File::open(path).unwrap())
            .unwrap()
            .expect_kind(FileKind::Segment)
            .unwrap();
        let mut out: Vec<Vec<(&'static str, bool)>> = Vec::new();
        while let Some((_, rec)) = r.next_record().unwrap() {
            match rec.body {
                Some(Body::TxnBegin(_)) => out.push(Vec::new()),
                Some(Body::Page(p)) => {
                    let how = if !p.zstd_delta.is_empty() {
                        "delta"
                    } else if !p.zstd.is_empty() {
                        "zstd"
                    } else {
                        "raw"
                    };
                    out.last_mut().unwrap().push((how, p.kept));
                }
                _ => {}
            }
        }
        out
    }

    fn verify_all(dir: &std::path::Path) -> u64 {
        let report = crate::verify::verify(
            &crate::target::LocalTarget::new(dir.to_path_buf()),
            &mut |_| {},
        )
        .unwrap();
        report.generations.last().unwrap().last_seq
    }

    /// The format version in a file's header.
    fn file_version(path: &std::path::Path) -> u32 {
        let bytes = std::fs::read(path).unwrap();
        u32::from_le_bytes(bytes[8..12].try_into().unwrap())
    }

    #[test]
    fn a_generation_begun_in_version_3_goes_on_in_version_3_and_a_new_one_is_version_4() {
        // The golden version 3 stream (page size 512, txns 1 to 4, its last segment open) as
        // the spool of a writer of this build: one generation never mixes root schemes.
        let tmp = tempfile::tempdir().unwrap();
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v3");
        let copy = |from: &std::path::Path, to: &std::path::Path| {
            let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
            while let Some((from, to)) = stack.pop() {
                std::fs::create_dir_all(&to).unwrap();
                for e in std::fs::read_dir(&from).unwrap() {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        stack.push((e.path(), to.join(e.file_name())));
                    } else {
                        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                    }
                }
            }
        };
        copy(&golden.join("generations"), &tmp.path().join("generations"));
        let wal = WalCursor {
            page_size: 512,
            ..cursor(1)
        };
        let mut spool = Spool::open(tmp.path()).unwrap();
        let append = |spool: &mut Spool, seed: u8| {
            let mut lock = spool.lock().unwrap();
            let mut txn = lock.begin_txn();
            lock.txn_page(&mut txn, 2, &[seed; 512]).unwrap();
            lock.txn_page(&mut txn, 9, &[seed ^ 1; 512]).unwrap();
            lock.commit_txn(txn, 9, 1_700_000_100_000, &wal).unwrap();
        };
        append(&mut spool, 1);
        assert!(spool.lock().unwrap().seal_active().unwrap());
        append(&mut spool, 2);
        let generation_1 = |first_seq| tmp.path().join(layout::segment_key(1, first_seq));
        assert_eq!(
            file_version(&generation_1(4)),
            3,
            "appended to in its version"
        );
        assert_eq!(
            file_version(&generation_1(6)),
            3,
            "a new segment of a v3 generation"
        );
        // Every root the writer recorded is version 1's scheme: verify recomputes them.
        assert_eq!(verify_all(tmp.path()), 6);

        let meta = SnapshotMeta {
            page_size: 512,
            page_count: 2,
            reason: "test".into(),
            wal: None,
        };
        let mut lock = spool.lock().unwrap();
        let generation = lock
            .start_generation(&meta, &mut |_, buf| {
                buf.fill(7);
                Ok(())
            })
            .unwrap();
        drop(lock);
        append(&mut spool, 3);
        let dir = tmp.path();
        assert_eq!(file_version(&dir.join(layout::snapshot_key(generation))), 4);
        assert_eq!(
            file_version(&dir.join(layout::segment_key(generation, 1))),
            4
        );
        assert_eq!(verify_all(dir), 1);
    }

    #[test]
    fn a_writer_stops_deltas_once_another_appended_to_its_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start(tmp.path());
        commit(&mut a, 1);
        commit(&mut a, 2);
        let mut b = Spool::open(tmp.path()).unwrap();
        commit(&mut b, 3);
        commit(&mut b, 4);
        commit(&mut a, 5);
        let all = |how: &'static str, kept: bool| vec![(how, kept); 4];
        assert_eq!(
            encodings(tmp.path()),
            vec![
                all("zstd", true),
                all("delta", true),
                // B did not write the segment's start: standalone pages, nothing kept.
                all("zstd", false),
                all("zstd", false),
                // A saw B's appends: it refers to nothing kept any more.
                all("zstd", false),
            ]
        );
        assert_eq!(verify_all(tmp.path()), 5);
    }

    /// A spool after txn 1 and a transaction that encoded a page but was aborted (or, when
    /// `abort` is false, dropped: neither committed nor aborted).
    fn after_unfinished_txn(dir: &std::path::Path, abort: bool) -> Spool {
        let mut a = start(dir);
        commit(&mut a, 1);
        let mut lock = a.lock().unwrap();
        let mut txn = lock.begin_txn();
        lock.txn_page(&mut txn, 1, &page(1, 99)).unwrap();
        if abort {
            lock.abort_txn(txn).unwrap();
        }
        drop(lock);
        a
    }

    #[test]
    fn an_aborted_transaction_stops_deltas_until_the_next_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = after_unfinished_txn(tmp.path(), true);
        commit(&mut a, 2);
        assert_eq!(
            encodings(tmp.path()),
            vec![vec![("zstd", true); 4], vec![("zstd", false); 4]]
        );
        assert_eq!(verify_all(tmp.path()), 2);
        // A new segment starts with deltas allowed again.
        a.lock().unwrap().seal_active().unwrap();
        commit(&mut a, 3);
        commit(&mut a, 4);
        assert_eq!(verify_all(tmp.path()), 4);
    }

    #[test]
    fn a_dropped_transaction_stops_deltas() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = after_unfinished_txn(tmp.path(), false);
        commit(&mut a, 2);
        commit(&mut a, 3);
        let found = encodings(tmp.path());
        assert_eq!(found[1], vec![("zstd", false); 4]);
        assert_eq!(verify_all(tmp.path()), 3);
    }

    /// A transaction writing only page 2 at `version`.
    fn commit_page_2(spool: &mut Spool, version: u32) {
        let mut lock = spool.lock().unwrap();
        let mut txn = lock.begin_txn();
        lock.txn_page(&mut txn, 2, &page(2, version)).unwrap();
        lock.commit_txn(txn, 4, i64::from(version), &cursor(version))
            .unwrap();
    }

    #[test]
    fn pages_of_an_unfinished_transaction_never_reach_the_state_root() {
        for abort in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            // The unfinished transaction wrote page 1; the next one does not write it, so a
            // state root that still held page 1's unfinished version would fail verification.
            let mut a = after_unfinished_txn(tmp.path(), abort);
            commit_page_2(&mut a, 2);
            commit_page_2(&mut a, 3);
            assert_eq!(verify_all(tmp.path()), 3, "abort: {abort}");
        }
    }

    #[test]
    fn a_writer_whose_tree_spills_writes_the_same_state_roots() {
        // The tree spills past 2 pages: the snapshot's 4 pages already do, then transactions
        // grow the database past a block of leaves and shrink it; the verifier, whose tree is
        // in memory, checks every state root. A second writer rebuilds its tree, spilled.
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start_spilling_past(tmp.path(), 2);
        let txn = |spool: &mut Spool, pages: std::ops::RangeInclusive<u32>, size: u32, v: u32| {
            let mut lock = spool.lock().unwrap();
            let mut txn = lock.begin_txn();
            for pgno in pages {
                lock.txn_page(&mut txn, pgno, &page(pgno, v)).unwrap();
            }
            lock.commit_txn(txn, size, i64::from(v), &cursor(v))
                .unwrap();
        };
        commit(&mut a, 1);
        txn(&mut a, 60..=150, 150, 2);
        txn(&mut a, 2..=3, 70, 3);
        txn(&mut a, 140..=141, 141, 4);
        assert!(a.tree.as_ref().unwrap().2.spilled());
        let mut b = Spool::open(tmp.path()).unwrap();
        b.tree_spill_leaves = 2;
        txn(&mut b, 100..=100, 141, 5);
        assert!(b.tree.as_ref().unwrap().2.spilled());
        assert_eq!(verify_all(tmp.path()), 5);
        // The scratch files are unlinked: the spool holds only its own files.
        let stray: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn a_tree_that_fails_in_a_large_transaction_fails_only_that_commit() {
        // The tree's scratch file fails (as in a fork child) while a transaction larger than
        // the append buffer is being appended: the commit fails and cuts off what was written,
        // and the same transaction then commits on a rebuilt tree.
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start_spilling_past(tmp.path(), 2);
        commit(&mut a, 1);
        a.tree.as_mut().unwrap().2.pretend_forked();
        let pages = (APPEND_BUFFER_BYTES / PAGE) as u32 * 3;
        let big_txn = |spool: &mut Spool| {
            let mut lock = spool.lock().unwrap();
            let mut txn = lock.begin_txn();
            for (pgno, data) in (1..=pages).zip(noise_pages()) {
                lock.txn_page(&mut txn, pgno, &data).unwrap();
            }
            lock.commit_txn(txn, pages, 2, &cursor(2))
        };
        let e = big_txn(&mut a).unwrap_err();
        assert!(e.to_string().contains("forked"), "{e}");
        assert_eq!(verify_all(tmp.path()), 1);
        big_txn(&mut a).unwrap();
        assert_eq!(verify_all(tmp.path()), 2);
    }

    /// Pages that do not compress, so that each record holds a whole page.
    fn noise_pages() -> impl Iterator<Item = Vec<u8>> {
        let mut x = 1u64;
        std::iter::repeat_with(move || {
            (0..PAGE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
    }

    #[test]
    fn a_huge_transaction_never_grows_the_append_buffer_past_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start(tmp.path());
        let mut lock = a.lock().unwrap();
        let mut txn = lock.begin_txn();
        let pages = (APPEND_BUFFER_BYTES / PAGE) as u32 * 3;
        for (pgno, data) in (1..=pages).zip(noise_pages()) {
            lock.txn_page(&mut txn, pgno, &data).unwrap();
            assert!(txn.buf.capacity() <= APPEND_BUFFER_BYTES, "page {pgno}");
        }
        lock.commit_txn(txn, pages, 1, &cursor(pages)).unwrap();
        drop(lock);
        assert_eq!(verify_all(tmp.path()), 1);
    }

    #[test]
    fn a_writer_keeps_deltas_in_a_segment_another_spool_rolled_for_it() {
        // The S3 shipper seals and rolls the active segment through its own `Spool`: the
        // capture then finds a segment it did not start, but one with no page in it yet.
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start(tmp.path());
        commit(&mut a, 1);
        let mut shipper = Spool::open(tmp.path()).unwrap();
        shipper.lock().unwrap().seal_active().unwrap();
        commit(&mut a, 2);
        commit(&mut a, 3);
        let all = |how: &'static str, kept: bool| vec![(how, kept); 4];
        // Format v4: the segment goes on with the kept versions of the one the shipper sealed,
        // so even its first transaction is stored as deltas.
        assert_eq!(
            encodings_of(tmp.path(), 2),
            vec![all("delta", true), all("delta", true)]
        );
        assert_eq!(markers(tmp.path(), 2), 1);
        assert_eq!(verify_all(tmp.path()), 3);
    }

    #[test]
    fn a_writer_keeps_nothing_in_a_segment_another_marked_as_continued() {
        // Writer a sealed its segment and began the next one with a `KeptContinued`, then
        // stopped before its transaction committed. Readers carry the sealed segment's kept
        // versions into that segment; writer b does not know them, so it keeps nothing there.
        let tmp = tempfile::tempdir().unwrap();
        let mut a = start(tmp.path());
        commit(&mut a, 1);
        assert!(a.lock().unwrap().seal_active().unwrap());
        drop(a);
        let path = tmp.path().join(layout::segment_key(1, 2));
        let mut marker = Vec::new();
        encode_record(
            &rec(Body::KeptContinued(pb::KeptContinued {})),
            4,
            &mut marker,
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &marker).unwrap();
        drop(f);
        let mut b = Spool::open(tmp.path()).unwrap();
        commit(&mut b, 2);
        commit(&mut b, 3);
        assert_eq!(
            encodings_of(tmp.path(), 2),
            vec![vec![("zstd", false); 4]; 2]
        );
        assert_eq!(markers(tmp.path(), 2), 1);
        assert_eq!(verify_all(tmp.path()), 3);
    }

    /// `KeptContinued` records in generation 1's segment that starts at `first_seq`.
    fn markers(dir: &std::path::Path, first_seq: u64) -> usize {
        let path = dir.join(layout::segment_key(1, first_seq));
        let mut r = RecordReader::new(File::open(path).unwrap()).unwrap();
        let mut n = 0;
        while let Some((_, rec)) = r.next_record().unwrap() {
            n += usize::from(matches!(rec.body, Some(Body::KeptContinued(_))));
        }
        n
    }

    #[test]
    fn kept_versions_go_on_across_rolled_segments_within_the_chain_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = start(tmp.path());
        // Every transaction (4 pages of 1 KiB, ~300 bytes as deltas) fills a segment; a chain
        // holds at most ~2.5 KB of earlier segments.
        spool.segment_bytes_max = 1;
        spool.kept_chain.bytes = 2500;
        for version in 1..=8 {
            commit(&mut spool, version);
        }
        let segments: Vec<_> = (1..=8)
            .map(|first_seq| {
                let marked = markers(tmp.path(), first_seq);
                (first_seq, marked, encodings_of(tmp.path(), first_seq))
            })
            .collect();
        // Each segment either continues the one before (marked, all deltas) or starts a chain
        // (its pages whole); chains restart, so both happen, and the first segment starts one.
        assert_eq!(segments[0].1, 0);
        let starts: Vec<u64> = segments
            .iter()
            .filter(|(_, marked, _)| *marked == 0)
            .map(|(s, _, _)| *s)
            .collect();
        assert!(
            starts.len() >= 2 && starts.len() < 8,
            "chains start at {starts:?}"
        );
        for (first_seq, marked, enc) in &segments {
            let how = if *marked == 1 { "delta" } else { "zstd" };
            assert_eq!(enc, &vec![vec![(how, true); 4]], "segment {first_seq}");
        }
        assert_eq!(verify_all(tmp.path()), 8);
        // A consumer resuming inside a chain reads it from its first segment.
        let target = crate::target::LocalTarget::new(tmp.path().to_path_buf());
        let objects = crate::reader::latest_generation(&target).unwrap();
        for after in 1..8u64 {
            let (full, mut tree) = crate::reader::replay_with_tree(
                &target,
                &objects,
                crate::reader::ReplayLimit::Txn(after),
                &mut NoVisit,
            )
            .unwrap();
            let resume = crate::reader::Resume {
                after_seq: after,
                head_hash: full.head_hash,
            };
            let to = crate::reader::replay_after(
                &target,
                &objects,
                &resume,
                &mut tree,
                crate::reader::ReplayLimit::All,
                &mut NoVisit,
            )
            .unwrap_or_else(|e| panic!("resuming after {after}: {e}"));
            assert_eq!(to.last_seq, 8, "resuming after {after}");
        }
    }

    #[test]
    fn a_chain_of_continued_segments_holds_at_most_the_limits_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = start(tmp.path());
        spool.segment_bytes_max = 1;
        spool.kept_chain = crate::record::page::ChainLimit {
            bytes: u64::MAX,
            segments: 3,
        };
        for version in 1..=8 {
            commit(&mut spool, version);
        }
        let starts: Vec<u64> = (1..=8)
            .filter(|&first_seq| markers(tmp.path(), first_seq) == 0)
            .collect();
        assert_eq!(starts, [1, 4, 7]);
        assert_eq!(verify_all(tmp.path()), 8);
    }

    struct NoVisit;
    impl crate::reader::Visitor for NoVisit {}
}
