//! Page content of format version 2 (docs/FORMAT.md, "Page content").
//!
//! A `Page` record stores the page image raw (`data`), as a zstd frame (`zstd`), or as a zstd
//! frame compressed with the page's *base* as a raw-content prefix (`zstd_delta`). The base is
//! the latest earlier version of the same page, in the same segment, whose record was marked
//! `kept`. Writer and reader keep the same table of kept versions, from the segment's first
//! record on, so a segment decodes alone; the table is bounded by `KEPT_BYTES_MAX`, which a
//! reader enforces, so hostile input cannot make it hold more. Format version 4 lets a segment
//! continue the table of the segment before it (a `KeptContinued` record): a writer that seals
//! small segments often, to ship them, then keeps its deltas.
//!
//! Hashes never depend on this: a `Page` record's `hash` is BLAKE3 of the page image, and a reader
//! compares it with the image it reconstructed.

use std::cell::RefCell;
use std::collections::HashMap;

use zstd_safe::{CCtx, DCtx};

use super::delta;
use super::frame::{encode_page_record_as, PageEncoding};
use super::pb;
use super::Hash;

/// Bytes of page images a segment keeps at most at any point: the sum of the sizes of each page's
/// current kept version. A reader refuses a segment that keeps more, so this bounds a reader's
/// memory per segment whatever its input. A writer stops marking new pages kept when it is
/// reached (replacing a page's kept version by a newer one of the same size still fits).
pub const KEPT_BYTES_MAX: usize = 4 << 20;
/// K: a page's chain of versions since its last version stored without a base holds at most this
/// many versions (so the first of every K versions of a page in a segment is standalone). A reader
/// refuses a longer chain. Readers keep reconstructed images, so neither a restore's time nor its
/// memory depends on K; a small K only costs bytes: on the order-book benchmark K = 32 stored
/// 31.7 KB per transaction, K = 256 24.9 KB, no limit at all 24.7 KB.
pub const DELTA_CHAIN_MAX: u32 = 256;
/// Bytes of kept page images a writer holds in memory at most. A reader holds every version a
/// segment marks kept (up to `KEPT_BYTES_MAX`), but a writer may let go of the images it used
/// least recently: it then stores the page's next version without a base (and keeps that one),
/// which costs bytes only for pages that are written again after a long time. The host process
/// so holds half of what a reader may.
pub const HELD_BYTES_MAX: usize = 2 << 20;
/// zstd level of page content. On the order-book benchmark (K = 256) levels 1, 2 and 3 stored
/// 24.9, 24.8 and 24.7 KB per transaction and level -1 25.4 KB: level 1, the cheapest positive
/// level, since the commit path pays for it.
pub const ZSTD_LEVEL: i32 = 1;
/// The largest page SQLite writes.
pub const PAGE_BYTES_MAX: usize = 65536;
/// zstd's dictionary magic number (0xEC30A437, little-endian). A base that starts with it would
/// be taken for a structured zstd dictionary by zstd's `usingDict` calls, so such a version is
/// never a base: writers store the next version without one and readers refuse a delta on it.
pub(super) const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

thread_local! {
    /// The compression context of the commit path, reused for every page of this thread.
    static CCTX: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
}

struct Kept {
    /// The image; empty once a writer let go of it (`KeptPages::let_go_beyond`).
    data: Vec<u8>,
    /// The image's size, which counts against the segment's `KEPT_BYTES_MAX` either way.
    len: usize,
    /// Versions in this page's chain up to and including this one (1: stored without a base).
    chain: u32,
    /// When it was kept (`KeptPages::clock`).
    kept_at: u64,
}

/// Kept page versions of one segment.
#[derive(Default)]
struct KeptPages {
    pages: HashMap<u32, Kept>,
    /// The sum of the kept versions' sizes: what a reader holds.
    bytes: usize,
    /// Bytes of images held (`bytes`, less what was let go of).
    held: usize,
    /// Counts `keep` calls.
    clock: u64,
}

impl KeptPages {
    /// The kept version of `pgno` if a new version may be stored as a delta against it.
    fn base(&self, pgno: u32) -> Option<&Kept> {
        self.pages.get(&pgno).filter(|k| {
            k.chain < DELTA_CHAIN_MAX && !k.data.is_empty() && !k.data.starts_with(&ZSTD_DICT_MAGIC)
        })
    }

    /// Bytes kept once `pgno`'s kept version is replaced by one of `len` bytes.
    fn bytes_after(&self, pgno: u32, len: usize) -> usize {
        self.bytes - self.pages.get(&pgno).map_or(0, |k| k.len) + len
    }

    fn keep(&mut self, pgno: u32, data: &[u8], chain: u32) {
        self.bytes = self.bytes_after(pgno, data.len());
        self.clock += 1;
        let kept = self.pages.entry(pgno).or_insert_with(|| Kept {
            data: Vec::new(),
            len: 0,
            chain,
            kept_at: 0,
        });
        self.held = self.held - kept.data.len() + data.len();
        kept.data.clear();
        kept.data.extend_from_slice(data);
        kept.len = data.len();
        kept.chain = chain;
        kept.kept_at = self.clock;
    }

    /// A writer's side only: when more than `held_max` bytes of images are held, lets go of the
    /// least recently kept ones until three quarters of it are (sorting once per many pages).
    fn let_go_beyond(&mut self, held_max: usize) {
        if self.held <= held_max {
            return;
        }
        let mut by_age: Vec<(u64, u32)> = self
            .pages
            .iter()
            .filter(|(_, k)| !k.data.is_empty())
            .map(|(&pgno, k)| (k.kept_at, pgno))
            .collect();
        by_age.sort_unstable();
        for (_, pgno) in by_age {
            if self.held <= held_max / 4 * 3 {
                break;
            }
            let kept = self.pages.get_mut(&pgno).expect("listed above");
            self.held -= kept.data.len();
            kept.data = Vec::new();
        }
    }

    fn clear(&mut self) {
        self.pages = HashMap::new();
        self.bytes = 0;
        self.held = 0;
    }
}

/// How a writer may store pages in the segment it appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderMode {
    /// A version 1 segment: raw pages only.
    Raw,
    /// Standalone zstd frames, nothing kept: the writer did not see all of the segment itself.
    Standalone,
    /// Deltas against kept versions: the writer wrote (and so saw) all of the segment.
    Delta,
}

/// How long a chain of segments that continue each other's kept versions (format version 4,
/// `KeptContinued`) may grow: a writer's policy (`spool::KEPT_CHAIN`), which bounds what a
/// consumer resuming inside a chain reads again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimit {
    /// Bytes of the chain's segments before the newest one.
    pub bytes: u64,
    /// Segments in the chain, the newest one included.
    pub segments: u32,
}

/// A writer's side of the page codec, for the segment it appends to.
pub struct PageEncoder {
    mode: EncoderMode,
    kept: KeptPages,
    kept_bytes_max: usize,
    /// Bytes of kept images held at most (`HELD_BYTES_MAX`).
    held_bytes_max: usize,
    scratch: Vec<u8>,
    /// Pages were encoded since the last `txn_done`: a transaction is being appended.
    open: bool,
    /// Bytes of the earlier segments whose kept versions the current one continues.
    chain_bytes: u64,
    /// How many earlier segments the current one continues.
    chain_segments: u32,
    /// The segment continues kept versions, but its `KeptContinued` record is not written yet:
    /// the next transaction starts with it.
    marker_pending: bool,
}

impl std::fmt::Debug for PageEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PageEncoder({:?}, {} pages, {} bytes kept)",
            self.mode,
            self.kept.pages.len(),
            self.kept.bytes
        )
    }
}

impl PageEncoder {
    pub fn new(mode: EncoderMode) -> Self {
        Self::with_kept_bytes_max(mode, KEPT_BYTES_MAX)
    }

    /// An encoder that keeps at most `kept_bytes_max` (at most `KEPT_BYTES_MAX`) bytes of pages.
    pub fn with_kept_bytes_max(mode: EncoderMode, kept_bytes_max: usize) -> Self {
        Self::with_limits(mode, kept_bytes_max, HELD_BYTES_MAX)
    }

    /// An encoder that keeps at most `kept_bytes_max` bytes of pages (at most `KEPT_BYTES_MAX`)
    /// and holds at most `held_bytes_max` of them.
    pub fn with_limits(mode: EncoderMode, kept_bytes_max: usize, held_bytes_max: usize) -> Self {
        assert!(
            kept_bytes_max <= KEPT_BYTES_MAX,
            "{kept_bytes_max} > KEPT_BYTES_MAX"
        );
        Self {
            mode,
            kept: KeptPages::default(),
            kept_bytes_max,
            held_bytes_max,
            scratch: Vec::new(),
            open: false,
            chain_bytes: 0,
            chain_segments: 0,
            marker_pending: false,
        }
    }

    pub fn mode(&self) -> EncoderMode {
        self.mode
    }

    /// Bytes of page images kept for the current segment (what a reader holds).
    pub fn kept_bytes(&self) -> usize {
        self.kept.bytes
    }

    /// Bytes of kept page images this encoder holds.
    pub fn held_bytes(&self) -> usize {
        self.kept.held
    }

    /// A segment this encoder writes from its header on: deltas are allowed.
    pub fn start_segment(&mut self) {
        self.kept.clear();
        self.open = false;
        self.mode = EncoderMode::Delta;
        self.chain_bytes = 0;
        self.chain_segments = 0;
        self.marker_pending = false;
    }

    /// Whether the next segment, of format `version`, after the current one sealed at
    /// `sealed_len` bytes, may go on with this encoder's kept versions (a `KeptContinued`
    /// record, version 4 on): this encoder wrote all of the current segment (so a reader's kept
    /// versions at its end are this encoder's), no transaction is half-appended, and the chain
    /// of segments stays within `limit`.
    pub fn can_continue(&self, version: u32, sealed_len: u64, limit: ChainLimit) -> bool {
        version >= 4
            && self.mode == EncoderMode::Delta
            && !self.open
            && self.chain_bytes + sealed_len <= limit.bytes
            && self.chain_segments + 2 <= limit.segments
    }

    /// Goes on into the next segment with the kept versions (`can_continue` said so); unless
    /// `marked` (the segment already holds a `KeptContinued`), the next transaction must start
    /// with one (`marker_pending`).
    pub fn continue_segment(&mut self, sealed_len: u64, marked: bool) {
        debug_assert!(self.mode == EncoderMode::Delta && !self.open);
        self.chain_bytes += sealed_len;
        self.chain_segments += 1;
        self.marker_pending = !marked;
    }

    /// Whether the next transaction must start with a `KeptContinued` record.
    pub fn marker_pending(&self) -> bool {
        self.marker_pending
    }

    /// For the rest of the segment, no deltas and nothing kept: someone else appended to it, or
    /// a cut-back removed records whose kept versions a reader will never see.
    pub fn stop_deltas(&mut self) {
        self.kept.clear();
        self.open = false;
        self.chain_bytes = 0;
        self.chain_segments = 0;
        self.marker_pending = false;
        if self.mode == EncoderMode::Delta {
            self.mode = EncoderMode::Standalone;
        }
    }

    /// Whether pages were encoded since the last `txn_done` (or segment start).
    pub fn txn_open(&self) -> bool {
        self.open
    }

    /// The pages encoded so far are in the segment for good (their transaction committed, and
    /// with it the `KeptContinued` it started with).
    pub fn txn_done(&mut self) {
        self.open = false;
        self.marker_pending = false;
    }

    /// Appends one framed `Page` record of `data` (whose hash is `hash`) to `out`, framed for a
    /// segment of format `version`.
    pub fn encode(&mut self, pgno: u32, data: &[u8], hash: &Hash, version: u32, out: &mut Vec<u8>) {
        self.open = true;
        let Self {
            mode,
            kept,
            scratch,
            kept_bytes_max,
            held_bytes_max,
            ..
        } = self;
        if *mode == EncoderMode::Raw {
            encode_page_record_as(pgno, PageEncoding::Raw, data, hash, false, version, out);
            return;
        }
        let base = match *mode {
            EncoderMode::Delta => kept.base(pgno).filter(|k| k.data.len() == data.len()),
            _ => None,
        };
        scratch.clear();
        scratch.reserve(zstd_safe::compress_bound(data.len()));
        // A page that differs little from its base is written by `delta`, for a fraction of
        // libzstd's cost; libzstd takes the rest.
        let direct = base.and_then(|b| delta::encode(data, &b.data, scratch));
        let compressed = direct.map(Ok).unwrap_or_else(|| {
            CCTX.with(|c| {
                let mut c = c.borrow_mut();
                match base {
                    Some(b) => c.compress_using_dict(scratch, data, &b.data, ZSTD_LEVEL),
                    None => c.compress(scratch, data, ZSTD_LEVEL),
                }
            })
        });
        let (encoding, content, chain) = match (compressed, base) {
            (Ok(n), Some(b)) if n < data.len() => {
                (PageEncoding::ZstdDelta, &scratch[..], b.chain + 1)
            }
            (Ok(n), None) if n < data.len() => (PageEncoding::Zstd, &scratch[..], 1),
            _ => (PageEncoding::Raw, data, 1),
        };
        let keep =
            *mode == EncoderMode::Delta && kept.bytes_after(pgno, data.len()) <= *kept_bytes_max;
        encode_page_record_as(pgno, encoding, content, hash, keep, version, out);
        if keep {
            kept.keep(pgno, data, chain);
            kept.let_go_beyond(*held_bytes_max);
        }
    }
}

/// A reader's side of the page codec, for one segment read from its start (and, format version
/// 4, the segments that continue its kept versions).
pub struct PageDecoder {
    version: u32,
    kept: KeptPages,
    kept_bytes_max: usize,
    dctx: DCtx<'static>,
    out: Vec<u8>,
}

impl PageDecoder {
    /// A decoder for a segment of format `version`.
    pub fn new(version: u32) -> Self {
        Self::with_kept_bytes_max(version, KEPT_BYTES_MAX)
    }

    /// A decoder that refuses to keep more than `kept_bytes_max` bytes (tests use small limits).
    pub fn with_kept_bytes_max(version: u32, kept_bytes_max: usize) -> Self {
        Self {
            version,
            kept: KeptPages::default(),
            kept_bytes_max,
            dctx: DCtx::create(),
            out: vec![0; PAGE_BYTES_MAX],
        }
    }

    /// Bytes of page images kept for the segment so far.
    pub fn kept_bytes(&self) -> usize {
        self.kept.bytes
    }

    /// The format version of the segment it decodes.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The page image of `p`, at most `limit` bytes (the generation's page size when known),
    /// keeping it when the record says so. The caller checks it against `p.hash`. Errors name the
    /// problem; the caller says where.
    pub fn decode<'a>(&'a mut self, p: &'a pb::Page, limit: usize) -> Result<&'a [u8], String> {
        let Self {
            version,
            kept,
            kept_bytes_max,
            dctx,
            out,
        } = self;
        if *version < 2 {
            if !p.zstd.is_empty() || !p.zstd_delta.is_empty() || p.kept {
                return Err("version 2 page fields in a version 1 file".into());
            }
            return Ok(&p.data);
        }
        let contents = [&p.data, &p.zstd, &p.zstd_delta]
            .iter()
            .filter(|c| !c.is_empty())
            .count();
        if contents != 1 {
            return Err(format!(
                "page record holds {contents} contents (exactly one of data, zstd, zstd_delta)"
            ));
        }
        let limit = limit.min(PAGE_BYTES_MAX);
        let (content, chain): (&[u8], u32) = if !p.data.is_empty() {
            (&p.data, 1)
        } else if !p.zstd.is_empty() {
            let n = dctx
                .decompress(&mut out[..limit], &p.zstd)
                .map_err(|code| {
                    format!(
                        "zstd page content does not decode: {}",
                        zstd_safe::get_error_name(code)
                    )
                })?;
            (&out[..n], 1)
        } else {
            let Some(b) = kept.pages.get(&p.pgno) else {
                return Err(
                    "delta page with no kept version of the page earlier in the segment (or the \
                     segments it continues)"
                        .into(),
                );
            };
            if b.chain >= DELTA_CHAIN_MAX {
                return Err(format!(
                    "delta chain longer than {DELTA_CHAIN_MAX} versions"
                ));
            }
            if b.data.starts_with(&ZSTD_DICT_MAGIC) {
                return Err(
                    "delta against a version that starts with zstd's dictionary magic".into(),
                );
            }
            let n = dctx
                .decompress_using_dict(&mut out[..limit], &p.zstd_delta, &b.data)
                .map_err(|code| {
                    format!(
                        "zstd delta page content does not decode: {}",
                        zstd_safe::get_error_name(code)
                    )
                })?;
            (&out[..n], b.chain + 1)
        };
        // Checked here, not only by the caller, so that no kept entry is smaller than a page.
        if !crate::wal::is_valid_page_size(content.len() as u32) {
            return Err(format!(
                "page content of {} bytes (not a page size)",
                content.len()
            ));
        }
        if p.kept {
            let after = kept.bytes_after(p.pgno, content.len());
            if after > *kept_bytes_max {
                return Err(format!(
                    "the segment keeps {after} bytes of pages, more than the limit of {kept_bytes_max}"
                ));
            }
            kept.keep(p.pgno, content, chain);
        }
        Ok(content)
    }
}

thread_local! {
    /// The decompression context of snapshot chunks, reused for every chunk of this thread.
    static DCTX: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// Largest uncompressed snapshot chunk a reader accepts (a writer's are at most 256 KiB, or one
/// page): the buffer a compressed chunk decompresses into is bounded by it.
pub const CHUNK_BYTES_MAX: usize = 4 << 20;

/// Compresses a snapshot chunk's pages into `out` (cleared first); false when that is not
/// smaller than the pages (then the chunk is stored raw).
pub fn compress_chunk(pages: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    out.reserve(zstd_safe::compress_bound(pages.len()));
    CCTX.with(|c| c.borrow_mut().compress(out, pages, ZSTD_LEVEL))
        .is_ok_and(|n| n < pages.len())
}

/// Decompresses a snapshot chunk that must hold exactly `len` bytes of pages into `out`.
pub fn decompress_chunk(frame: &[u8], len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    if len > CHUNK_BYTES_MAX {
        return Err(format!(
            "chunk of {len} bytes of pages, more than the limit of {CHUNK_BYTES_MAX}"
        ));
    }
    out.clear();
    out.resize(len, 0);
    let n = DCTX
        .with(|d| d.borrow_mut().decompress(&mut out[..], frame))
        .map_err(|code| {
            format!(
                "zstd chunk does not decode: {}",
                zstd_safe::get_error_name(code)
            )
        })?;
    if n != len {
        return Err(format!(
            "chunk decompresses to {n} bytes, its {len} bytes of pages expected"
        ));
    }
    Ok(())
}

/// The size of `p`'s page image when it can be told without decoding: the length of `data`, or
/// the content size a zstd frame declares (writers always declare it).
pub fn stored_page_len(p: &pb::Page) -> Option<usize> {
    if !p.data.is_empty() {
        return Some(p.data.len());
    }
    let frame = if p.zstd.is_empty() {
        &p.zstd_delta
    } else {
        &p.zstd
    };
    zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::frame::{RecordReader, FORMAT_VERSION};
    use crate::record::pb::record::Body;
    use crate::record::FileKind;
    use proptest::prelude::*;

    const PAGE: usize = 512;

    /// The `Page` records of bytes framed for a segment of format `version`.
    fn pages(framed: &[u8], version: u32) -> Vec<pb::Page> {
        let mut r = RecordReader::resume(framed, FileKind::Segment, version, 0);
        let mut out = Vec::new();
        while let Some((_, rec)) = r.next_record().unwrap() {
            let Some(Body::Page(p)) = rec.body else {
                panic!("not a page")
            };
            out.push(p);
        }
        out
    }

    fn encode(e: &mut PageEncoder, pgno: u32, data: &[u8]) -> pb::Page {
        let mut framed = Vec::new();
        // A raw encoder writes version 1 segments; the others this build's version.
        let version = if e.mode() == EncoderMode::Raw {
            1
        } else {
            FORMAT_VERSION
        };
        e.encode(
            pgno,
            data,
            blake3::hash(data).as_bytes(),
            version,
            &mut framed,
        );
        pages(&framed, version).pop().unwrap()
    }

    fn version(seed: u64, n: usize) -> Vec<u8> {
        let mut page = vec![0u8; PAGE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = ((i as u64 / 16) ^ seed).wrapping_mul(n as u64 + 1) as u8;
        }
        page
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Page `pgno`'s next version: the previous one with `edits` bytes changed, or random
        /// bytes (incompressible) when `random`.
        Write {
            pgno: u32,
            edits: Vec<(usize, u8)>,
            random: Option<u64>,
        },
        /// A new segment: both sides forget what they kept.
        NewSegment,
        /// A new segment that continues the kept versions when the writer may (format v4's
        /// `KeptContinued`): the reader carries its table over.
        ContinueSegment,
        /// Another writer appended: no more deltas in this segment.
        StopDeltas,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => (1u32..24, proptest::collection::vec((0..PAGE, any::<u8>()), 0..8), proptest::option::weighted(0.1, any::<u64>()))
                .prop_map(|(pgno, edits, random)| Op::Write { pgno, edits, random }),
            1 => Just(Op::NewSegment),
            1 => Just(Op::ContinueSegment),
            1 => Just(Op::StopDeltas),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_page_histories_round_trip(ops in proptest::collection::vec(op(), 1..400), cap_pages in 0usize..12, held_pages in proptest::option::of(0usize..8)) {
            let cap = cap_pages * PAGE;
            // The writer may hold fewer kept images than the reader (it lets go of the oldest).
            let held = held_pages.map_or(HELD_BYTES_MAX, |n| n * PAGE);
            let mut enc = PageEncoder::with_limits(EncoderMode::Delta, cap, held);
            let mut dec = PageDecoder::with_kept_bytes_max(2, cap);
            let mut current: HashMap<u32, Vec<u8>> = HashMap::new();
            let mut chain: HashMap<u32, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::NewSegment => {
                        enc.start_segment();
                        dec = PageDecoder::with_kept_bytes_max(2, cap);
                        chain.clear();
                    }
                    Op::ContinueSegment => {
                        // Segments are sealed between transactions.
                        enc.txn_done();
                        let unbounded = ChainLimit { bytes: u64::MAX, segments: u32::MAX };
                        if enc.can_continue(4, 0, unbounded) {
                            enc.continue_segment(0, false);
                            prop_assert!(enc.marker_pending());
                        } else {
                            enc.start_segment();
                            dec = PageDecoder::with_kept_bytes_max(2, cap);
                            chain.clear();
                        }
                    }
                    Op::StopDeltas => {
                        enc.stop_deltas();
                        chain.clear();
                    }
                    Op::Write { pgno, edits, random } => {
                        let data = match random {
                            Some(seed) => (0..PAGE as u64).map(|i| blake3::hash(&(seed ^ i).to_le_bytes()).as_bytes()[0]).collect(),
                            None => {
                                let mut d = current.get(&pgno).cloned().unwrap_or_else(|| version(u64::from(pgno), 0));
                                for (at, b) in edits { d[at] = b; }
                                d
                            }
                        };
                        let p = encode(&mut enc, pgno, &data);
                        prop_assert!(p.data.len() + p.zstd.len() + p.zstd_delta.len() <= PAGE);
                        let decoded = dec.decode(&p, PAGE).map_err(TestCaseError::fail)?;
                        prop_assert_eq!(decoded, &data[..]);
                        let h = blake3::hash(decoded);
                        prop_assert_eq!(&p.hash[..], h.as_bytes());
                        // K: a chain of versions holds at most DELTA_CHAIN_MAX of them.
                        let c = if p.zstd_delta.is_empty() { 1 } else { chain.get(&pgno).copied().unwrap_or(0) + 1 };
                        prop_assert!(c <= DELTA_CHAIN_MAX);
                        if p.kept { chain.insert(pgno, c); }
                        prop_assert!(dec.kept_bytes() <= cap);
                        prop_assert!(enc.held_bytes() <= held.max(PAGE));
                        if enc.mode() == EncoderMode::Delta {
                            // Once deltas stop, the reader still holds what was kept before.
                            prop_assert_eq!(dec.kept_bytes(), enc.kept_bytes());
                        }
                        current.insert(pgno, data);
                    }
                }
            }
        }
    }

    #[test]
    fn rewrites_of_one_page_are_deltas_with_a_full_page_every_k_versions() {
        let mut enc = PageEncoder::new(EncoderMode::Delta);
        let mut dec = PageDecoder::new(2);
        let mut data = version(7, 0);
        let mut standalone = Vec::new();
        for n in 0..600 {
            data[n * 5 % PAGE] ^= 0x5a;
            let p = encode(&mut enc, 3, &data);
            assert!(p.kept);
            if p.zstd_delta.is_empty() {
                standalone.push(n);
            } else {
                assert!(
                    p.zstd_delta.len() < PAGE / 4,
                    "a one-byte change costs {} bytes",
                    p.zstd_delta.len()
                );
            }
            assert_eq!(dec.decode(&p, PAGE).unwrap(), &data[..]);
        }
        assert_eq!(standalone, vec![0, 256, 512]);
    }

    #[test]
    fn a_writer_lets_go_of_the_oldest_images_and_stores_their_next_version_whole() {
        // It holds at most 4 pages' images; the reader keeps all 6 pages.
        let mut enc = PageEncoder::with_limits(EncoderMode::Delta, KEPT_BYTES_MAX, 4 * PAGE);
        let mut dec = PageDecoder::new(3);
        let mut how = Vec::new();
        for (round, pgno) in [1, 2, 3, 4, 5, 6, 6, 5, 1].into_iter().enumerate() {
            let mut data = version(u64::from(pgno), 0);
            data[round] ^= 0x77;
            let p = encode(&mut enc, pgno, &data);
            assert!(p.kept, "every version is kept (the reader has room)");
            assert_eq!(dec.decode(&p, PAGE).unwrap(), &data[..]);
            how.push(!p.zstd_delta.is_empty());
            assert!(enc.held_bytes() <= 4 * PAGE);
        }
        // Pages 6 and 5 were kept recently: deltas. Page 1 was let go of: whole.
        assert_eq!(
            how,
            [false, false, false, false, false, false, true, true, false]
        );
        assert_eq!(dec.kept_bytes(), 6 * PAGE);
        assert_eq!(enc.kept_bytes(), 6 * PAGE);
        // Page 2 was let go of too; an incompressible next version is stored raw, and kept.
        let noise: Vec<u8> = (0..PAGE as u64)
            .map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0])
            .collect();
        let p = encode(&mut enc, 2, &noise);
        assert!(p.kept && p.data.len() == PAGE);
        assert_eq!(dec.decode(&p, PAGE).unwrap(), &noise[..]);
        assert_eq!(dec.kept_bytes(), enc.kept_bytes());
    }

    #[test]
    fn reader_refuses_a_segment_that_keeps_more_than_its_limit() {
        let mut enc = PageEncoder::new(EncoderMode::Delta);
        let mut dec = PageDecoder::with_kept_bytes_max(2, 2 * PAGE);
        for pgno in 1..=2 {
            dec.decode(&encode(&mut enc, pgno, &version(1, pgno as usize)), PAGE)
                .unwrap();
        }
        let err = dec
            .decode(&encode(&mut enc, 3, &version(1, 3)), PAGE)
            .unwrap_err();
        assert_eq!(
            err,
            "the segment keeps 1536 bytes of pages, more than the limit of 1024"
        );
    }

    #[test]
    fn standalone_and_raw_encoders_keep_nothing() {
        for mode in [EncoderMode::Raw, EncoderMode::Standalone] {
            let mut enc = PageEncoder::new(mode);
            for _ in 0..3 {
                let p = encode(&mut enc, 1, &version(2, 0));
                assert!(!p.kept && p.zstd_delta.is_empty());
                assert_eq!(p.data.is_empty(), mode == EncoderMode::Standalone);
            }
        }
    }

    #[test]
    fn a_base_starting_with_the_dictionary_magic_is_never_used() {
        let mut enc = PageEncoder::new(EncoderMode::Delta);
        let mut data = version(3, 0);
        data[..4].copy_from_slice(&ZSTD_DICT_MAGIC);
        let first = encode(&mut enc, 1, &data);
        data[100] ^= 1;
        let second = encode(&mut enc, 1, &data);
        assert!(first.kept && second.zstd_delta.is_empty() && !second.zstd.is_empty());
    }

    #[test]
    fn snapshot_chunks_round_trip_and_must_have_their_size() {
        let pages: Vec<u8> = (0..4 * PAGE).map(|i| (i / 64) as u8).collect();
        let mut frame = Vec::new();
        assert!(compress_chunk(&pages, &mut frame));
        let mut out = Vec::new();
        decompress_chunk(&frame, pages.len(), &mut out).unwrap();
        assert_eq!(out, pages);
        let err = decompress_chunk(&frame, pages.len() + PAGE, &mut out).unwrap_err();
        assert_eq!(
            err,
            "chunk decompresses to 2048 bytes, its 2560 bytes of pages expected"
        );
        assert!(decompress_chunk(&frame, pages.len() - 1, &mut out).is_err());
        let err = decompress_chunk(&frame, CHUNK_BYTES_MAX + 1, &mut out).unwrap_err();
        assert!(err.contains("more than the limit"), "{err}");
    }

    #[test]
    fn oversized_zstd_content_is_refused_without_growing_the_buffer() {
        let big = vec![0u8; 2 * PAGE];
        let mut frame = Vec::with_capacity(zstd_safe::compress_bound(big.len()));
        CCtx::create().compress(&mut frame, &big, 1).unwrap();
        let p = pb::Page {
            pgno: 1,
            zstd: frame.into(),
            hash: vec![0; 32].into(),
            ..Default::default()
        };
        let err = PageDecoder::new(2).decode(&p, PAGE).unwrap_err();
        assert!(
            err.starts_with("zstd page content does not decode"),
            "{err}"
        );
    }
}
