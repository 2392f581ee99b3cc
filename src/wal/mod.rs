//! SQLite's write-ahead log as it lies on disk and in the wal-index: the WAL header, frame
//! headers, the cumulative checksum, and the wal-index (`-shm`) header.
//!
//! This is the only module that decodes big-endian integers: the WAL file is big-endian by
//! definition, and its checksum words follow the byte order named by the magic number. The
//! wal-index header is in the host's native byte order. See docs/SQLITE_WAL.md.

use std::io;

/// Size of the WAL file header.
pub const WAL_HEADER_BYTES: usize = 32;
/// Size of a frame header; the page image follows it.
pub const FRAME_HEADER_BYTES: usize = 24;
/// The only WAL format version SQLite has ever written.
pub const WAL_FORMAT_VERSION: u32 = 3_007_000;
const WAL_MAGIC_LE: u32 = 0x377f_0682;
const WAL_MAGIC_BE: u32 = 0x377f_0683;

/// Byte size of one wal-index header copy; region 0 holds two copies back to back.
pub const SHM_HEADER_COPY_BYTES: usize = 48;
/// Bytes of region 0 that `ShmHeader::parse` needs: both header copies and the checkpoint info.
pub const SHM_PREFIX_BYTES: usize = 136;
const SHM_INDEX_VERSION: u32 = 3_007_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("WAL I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("WAL header: bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("WAL header: unsupported format version {0}")]
    BadVersion(u32),
    #[error("WAL header: invalid page size {0}")]
    BadPageSize(u32),
    #[error("WAL header: checksum mismatch")]
    HeaderChecksum,
}

/// Positioned reads from a file (the WAL, or the main database through SQLite's own handle).
pub trait ReadAt {
    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Current size of the file in bytes.
    fn size(&mut self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a big-endian u32 (for page numbers and sizes in SQLite's database header).
pub fn read_be32(b: &[u8], at: usize) -> u32 {
    be32(b, at)
}

/// SQLite's WAL checksum: Fletcher-like sums over pairs of 32-bit words, continued from `seed`.
/// `big_endian` selects the word byte order (the low bit of the WAL magic).
pub fn checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    assert!(
        data.len().is_multiple_of(8),
        "WAL checksum input must be a multiple of 8 bytes"
    );
    let (mut s1, mut s2) = seed;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(pair, 0), be32(pair, 4))
        } else {
            let w = |i: usize| u32::from_le_bytes([pair[i], pair[i + 1], pair[i + 2], pair[i + 3]]);
            (w(0), w(4))
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// Page sizes SQLite allows: powers of two from 512 to 65536.
pub fn is_valid_page_size(size: u32) -> bool {
    (512..=65536).contains(&size) && size.is_power_of_two()
}

/// The 32-byte WAL file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_checksum: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Decodes and validates a header (magic, version, page size, checksum).
    pub fn parse(b: &[u8; WAL_HEADER_BYTES]) -> Result<Self, WalError> {
        let magic = be32(b, 0);
        let big_endian_checksum = match magic {
            WAL_MAGIC_LE => false,
            WAL_MAGIC_BE => true,
            other => return Err(WalError::BadMagic(other)),
        };
        let version = be32(b, 4);
        if version != WAL_FORMAT_VERSION {
            return Err(WalError::BadVersion(version));
        }
        let page_size = be32(b, 8);
        if !is_valid_page_size(page_size) {
            return Err(WalError::BadPageSize(page_size));
        }
        let stored = (be32(b, 24), be32(b, 28));
        if checksum(big_endian_checksum, (0, 0), &b[..24]) != stored {
            return Err(WalError::HeaderChecksum);
        }
        Ok(Self {
            big_endian_checksum,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: stored,
        })
    }

    /// Reads the header at offset 0; `Ok(None)` when the file is shorter than a header.
    pub fn read(src: &mut dyn ReadAt) -> Result<Option<Self>, WalError> {
        let mut b = [0u8; WAL_HEADER_BYTES];
        match src.read_exact_at(&mut b, 0) {
            Ok(()) => Self::parse(&b).map(Some),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Encodes a header (used by tests and the simulator to build WAL files).
    pub fn encode(&self) -> [u8; WAL_HEADER_BYTES] {
        let mut b = [0u8; WAL_HEADER_BYTES];
        let magic = if self.big_endian_checksum {
            WAL_MAGIC_BE
        } else {
            WAL_MAGIC_LE
        };
        b[0..4].copy_from_slice(&magic.to_be_bytes());
        b[4..8].copy_from_slice(&WAL_FORMAT_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.checkpoint_seq.to_be_bytes());
        b[16..20].copy_from_slice(&self.salt1.to_be_bytes());
        b[20..24].copy_from_slice(&self.salt2.to_be_bytes());
        let sum = checksum(self.big_endian_checksum, (0, 0), &b[..24]);
        b[24..28].copy_from_slice(&sum.0.to_be_bytes());
        b[28..32].copy_from_slice(&sum.1.to_be_bytes());
        b
    }
}

/// Byte offset of frame `index` (1-based) in a WAL with `page_size`-byte pages.
pub fn frame_offset(index: u32, page_size: u32) -> u64 {
    assert!(index >= 1, "WAL frames are numbered from 1");
    WAL_HEADER_BYTES as u64
        + u64::from(index - 1) * (FRAME_HEADER_BYTES as u64 + u64::from(page_size))
}

/// A decoded, validated frame: `buf[FRAME_HEADER_BYTES..]` is its page image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// For a commit frame, the database size in pages after the commit; otherwise 0.
    pub db_size_after_commit: u32,
}

impl FrameHeader {
    pub fn is_commit(&self) -> bool {
        self.db_size_after_commit != 0
    }
}

/// A position in one WAL: the salts that identify it, the last frame read, and the running
/// checksum after that frame. Advancing it validates each frame the way SQLite's recovery does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCursor {
    pub salt1: u32,
    pub salt2: u32,
    pub page_size: u32,
    pub big_endian_checksum: bool,
    /// Last frame covered (0 = none yet).
    pub frame: u32,
    pub checksum: (u32, u32),
}

impl WalCursor {
    /// The position before frame 1 of the WAL whose header is `h`.
    pub fn at_start(h: &WalHeader) -> Self {
        Self {
            salt1: h.salt1,
            salt2: h.salt2,
            page_size: h.page_size,
            big_endian_checksum: h.big_endian_checksum,
            frame: 0,
            checksum: h.checksum,
        }
    }

    pub fn same_wal(&self, h: &WalHeader) -> bool {
        self.salt1 == h.salt1 && self.salt2 == h.salt2 && self.page_size == h.page_size
    }

    /// Bytes one frame occupies (header and page).
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.page_size as usize
    }

    /// Reads frame `self.frame + 1` into `buf` (resized to one frame), or `false` when the frame
    /// lies past `file_size` (`u64::MAX` when not known) or past the end of the file.
    fn read_next(
        &self,
        src: &mut dyn ReadAt,
        file_size: u64,
        buf: &mut Vec<u8>,
    ) -> Result<bool, WalError> {
        let offset = frame_offset(self.frame + 1, self.page_size);
        let len = self.frame_bytes();
        if offset + len as u64 > file_size {
            return Ok(false);
        }
        buf.resize(len, 0);
        match src.read_exact_at(buf, offset) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads frame `self.frame + 1` into `buf` (resized to one frame) and validates it.
    /// Returns `Ok(None)` when that frame is not a valid continuation of the log (past the end of
    /// the file, other salts, or a broken checksum chain); the cursor then does not move.
    /// `file_size` may be `u64::MAX`: the end of the file then shows as a short read.
    pub fn next_frame(
        &mut self,
        src: &mut dyn ReadAt,
        file_size: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Option<FrameHeader>, WalError> {
        self.advance(src, file_size, buf, Self::validate)
    }

    /// Like `next_frame`, for a frame known to be committed because it is at or below the
    /// wal-index's `mxFrame` (read under the write lock, which makes it authoritative): the
    /// salts must match, but the checksum is not recomputed; the cursor takes the frame's stored
    /// checksum. SQLite 3.40 can commit frames whose salt and checksum fields are still zero
    /// (checksums deferred by `ROLLBACK TO` after a cache spill, then never rewritten), and the
    /// frames after them chain from state a reader cannot reproduce; such zeroed frames are
    /// accepted here too.
    pub fn next_committed_frame(
        &mut self,
        src: &mut dyn ReadAt,
        file_size: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Option<FrameHeader>, WalError> {
        self.advance(src, file_size, buf, Self::check_committed)
    }

    /// What `next_frame` and `next_committed_frame` share: reads frame `self.frame + 1` into
    /// `buf` (one read, see `read_next`) and, when `check` accepts it, moves the cursor past it
    /// with the checksum `check` returns. The cursor does not move otherwise.
    fn advance(
        &mut self,
        src: &mut dyn ReadAt,
        file_size: u64,
        buf: &mut Vec<u8>,
        check: impl FnOnce(&Self, &[u8]) -> Option<(FrameHeader, (u32, u32))>,
    ) -> Result<Option<FrameHeader>, WalError> {
        if !self.read_next(src, file_size, buf)? {
            return Ok(None);
        }
        match check(self, buf) {
            Some((header, sum)) => {
                self.frame += 1;
                self.checksum = sum;
                Ok(Some(header))
            }
            None => Ok(None),
        }
    }

    /// `next_committed_frame`'s check: the salts match (or the frame is zeroed, see there) and
    /// the page number is not 0; the new checksum is the frame's stored one.
    fn check_committed(&self, frame: &[u8]) -> Option<(FrameHeader, (u32, u32))> {
        let salts = (be32(frame, 8), be32(frame, 12));
        let stored = (be32(frame, 16), be32(frame, 20));
        let deferred = salts == (0, 0) && stored == (0, 0);
        let header = FrameHeader {
            pgno: be32(frame, 0),
            db_size_after_commit: be32(frame, 4),
        };
        if header.pgno == 0 || (salts != (self.salt1, self.salt2) && !deferred) {
            return None;
        }
        Some((header, stored))
    }

    /// Checks a frame (header and page) against this position; returns it and the new checksum.
    pub fn validate(&self, frame: &[u8]) -> Option<(FrameHeader, (u32, u32))> {
        assert_eq!(frame.len(), self.frame_bytes());
        if be32(frame, 8) != self.salt1 || be32(frame, 12) != self.salt2 {
            return None;
        }
        let sum = checksum(self.big_endian_checksum, self.checksum, &frame[..8]);
        let sum = checksum(self.big_endian_checksum, sum, &frame[FRAME_HEADER_BYTES..]);
        if sum != (be32(frame, 16), be32(frame, 20)) {
            return None;
        }
        let header = FrameHeader {
            pgno: be32(frame, 0),
            db_size_after_commit: be32(frame, 4),
        };
        if header.pgno == 0 {
            return None;
        }
        Some((header, sum))
    }

    /// Encodes a valid frame after this position and advances (for tests and the simulator).
    pub fn encode_frame(&mut self, pgno: u32, db_size_after_commit: u32, page: &[u8]) -> Vec<u8> {
        assert_eq!(page.len(), self.page_size as usize);
        let mut f = vec![0u8; FRAME_HEADER_BYTES];
        f[0..4].copy_from_slice(&pgno.to_be_bytes());
        f[4..8].copy_from_slice(&db_size_after_commit.to_be_bytes());
        f[8..12].copy_from_slice(&self.salt1.to_be_bytes());
        f[12..16].copy_from_slice(&self.salt2.to_be_bytes());
        let sum = checksum(self.big_endian_checksum, self.checksum, &f[..8]);
        let sum = checksum(self.big_endian_checksum, sum, page);
        f[16..20].copy_from_slice(&sum.0.to_be_bytes());
        f[20..24].copy_from_slice(&sum.1.to_be_bytes());
        f.extend_from_slice(page);
        self.frame += 1;
        self.checksum = sum;
        f
    }
}

/// Bytes `ReadAhead` reads at once: 64 frames of 4 KiB pages. Bounds the buffer capture keeps
/// for it, whatever the size of a transaction.
pub const READ_AHEAD_BYTES_MAX: usize = 256 << 10;

/// A [`ReadAt`] that serves reads from one larger read of what follows, up to `end`: the frames
/// of a commit lie back to back in the WAL, and reading them one `pread` at a time cost one
/// system call per page.
pub struct ReadAhead<'a> {
    inner: &'a mut dyn ReadAt,
    window: &'a mut Vec<u8>,
    /// File offset of `window[0]`; `valid` bytes from there were read.
    start: u64,
    valid: usize,
    /// Reads ahead stop here (the end of the last frame known to be committed).
    end: u64,
}

impl<'a> ReadAhead<'a> {
    /// Reads from `inner` ahead up to offset `end`, into `window` (kept by the caller between
    /// uses so that it is allocated once).
    pub fn new(inner: &'a mut dyn ReadAt, window: &'a mut Vec<u8>, end: u64) -> Self {
        Self {
            inner,
            window,
            start: 0,
            valid: 0,
            end,
        }
    }
}

impl ReadAt for ReadAhead<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        if offset >= self.start && offset + len <= self.start + self.valid as u64 {
            let at = (offset - self.start) as usize;
            buf.copy_from_slice(&self.window[at..at + buf.len()]);
            return Ok(());
        }
        let ahead = self
            .end
            .saturating_sub(offset)
            .min(READ_AHEAD_BYTES_MAX as u64) as usize;
        if ahead as u64 <= len {
            return self.inner.read_exact_at(buf, offset);
        }
        if self.window.len() < ahead {
            self.window.resize(ahead, 0);
        }
        self.valid = 0;
        if self
            .inner
            .read_exact_at(&mut self.window[..ahead], offset)
            .is_err()
        {
            // A file shorter than expected: what was asked for decides.
            return self.inner.read_exact_at(buf, offset);
        }
        (self.start, self.valid) = (offset, ahead);
        buf.copy_from_slice(&self.window[..buf.len()]);
        Ok(())
    }

    fn size(&mut self) -> io::Result<u64> {
        self.inner.size()
    }
}

/// The wal-index header as published by the last writer (copy 0, checked against copy 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmHeader {
    /// Index of the last valid commit frame in the WAL.
    pub mx_frame: u32,
    /// Database size in pages after that commit.
    pub n_page: u32,
    pub page_size: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Frames already copied into the database by checkpoints.
    pub n_backfill: u32,
}

impl ShmHeader {
    /// Decodes the first bytes of wal-index region 0. `None` when the header is not usable: not
    /// initialised (a fresh or reset `-shm`), an unknown version, or two copies that disagree
    /// (a writer is mid-update, which cannot happen while the caller holds the write lock).
    pub fn parse(region0: &[u8; SHM_PREFIX_BYTES]) -> Option<Self> {
        let (copy0, copy1) = region0[..2 * SHM_HEADER_COPY_BYTES].split_at(SHM_HEADER_COPY_BYTES);
        if copy0 != copy1 || ne32(copy0, 0) != SHM_INDEX_VERSION || copy0[12] == 0 {
            return None;
        }
        let raw_size = u32::from(u16::from_ne_bytes([copy0[14], copy0[15]]));
        Some(Self {
            mx_frame: ne32(copy0, 16),
            n_page: ne32(copy0, 20),
            page_size: (raw_size & 0xfe00) + ((raw_size & 1) << 16),
            // The salts are copied byte for byte from the WAL header, so they are big-endian.
            salt1: be32(copy0, 32),
            salt2: be32(copy0, 36),
            n_backfill: ne32(region0, 96),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(big_endian: bool) -> WalHeader {
        WalHeader {
            big_endian_checksum: big_endian,
            page_size: 512,
            checkpoint_seq: 7,
            salt1: 0x1234_5678,
            salt2: 0x9abc_def0,
            checksum: (0, 0),
        }
    }

    #[test]
    fn header_roundtrips_in_both_checksum_orders() {
        for be in [false, true] {
            let b = header(be).encode();
            let parsed = WalHeader::parse(&b).unwrap();
            assert_eq!(parsed.salt1, 0x1234_5678);
            assert_eq!(parsed.big_endian_checksum, be);
        }
    }

    #[test]
    fn header_with_flipped_byte_is_rejected() {
        let mut b = header(false).encode();
        b[17] ^= 1;
        assert!(matches!(
            WalHeader::parse(&b),
            Err(WalError::HeaderChecksum)
        ));
    }

    #[test]
    fn frames_chain_and_a_changed_page_breaks_the_chain() {
        let h = WalHeader::parse(&header(false).encode()).unwrap();
        let mut writer = WalCursor::at_start(&h);
        let f1 = writer.encode_frame(1, 0, &[1u8; 512]);
        let f2 = writer.encode_frame(2, 2, &[2u8; 512]);
        let reader = WalCursor::at_start(&h);
        let (fh, sum) = reader.validate(&f1).unwrap();
        assert_eq!(fh.pgno, 1);
        let next = WalCursor {
            frame: 1,
            checksum: sum,
            ..reader
        };
        assert!(next.validate(&f2).unwrap().0.is_commit());
        let mut bad = f2.clone();
        bad[100] ^= 0xff;
        assert!(next.validate(&bad).is_none());
        // Frame 2 does not validate at frame 1's position.
        assert!(reader.validate(&f2).is_none());
    }

    /// Counts the reads that reach the file.
    struct Counted(Vec<u8>, usize);

    impl ReadAt for Counted {
        fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.1 += 1;
            let start = offset as usize;
            let src = self
                .0
                .get(start..start + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn size(&mut self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
    }

    #[test]
    fn read_ahead_reads_a_run_of_frames_once_and_stops_at_its_end() {
        let h = WalHeader::parse(&header(false).encode()).unwrap();
        let mut writer = WalCursor::at_start(&h);
        let mut file = Counted(h.encode().to_vec(), 0);
        for i in 1..=5u8 {
            file.0
                .extend(writer.encode_frame(u32::from(i), u32::from(i == 5) * 5, &[i; 512]));
        }
        let end = frame_offset(4, 512);
        let mut window = Vec::new();
        let mut ahead = ReadAhead::new(&mut file, &mut window, end);
        let mut cursor = WalCursor::at_start(&h);
        let mut buf = Vec::new();
        for i in 1..=5u32 {
            let f = cursor
                .next_committed_frame(&mut ahead, u64::MAX, &mut buf)
                .unwrap()
                .unwrap();
            assert_eq!(f.pgno, i);
            assert_eq!(buf[FRAME_HEADER_BYTES], i as u8);
        }
        assert_eq!(
            cursor
                .next_committed_frame(&mut ahead, u64::MAX, &mut buf)
                .unwrap(),
            None
        );
        // Frames 1-3 in one read (up to `end`), then frames 4 and 5 and the end one each.
        assert_eq!(file.1, 4);
    }

    #[test]
    fn shm_header_needs_matching_copies_and_init() {
        let mut r = [0u8; SHM_PREFIX_BYTES];
        r[0..4].copy_from_slice(&SHM_INDEX_VERSION.to_ne_bytes());
        r[12] = 1;
        r[14..16].copy_from_slice(&1u16.to_ne_bytes()); // 65536-byte pages
        r[16..20].copy_from_slice(&9u32.to_ne_bytes());
        let copy: Vec<u8> = r[..48].to_vec();
        r[48..96].copy_from_slice(&copy);
        let h = ShmHeader::parse(&r).unwrap();
        assert_eq!((h.mx_frame, h.page_size), (9, 65536));
        r[60] ^= 1;
        assert!(ShmHeader::parse(&r).is_none());
    }
}
