//! File header and record framing.
//!
//! ```text
//! file   := header record*
//! header := magic "WALSTRM\0" (8) | format version u32 LE (4) | file kind u32 LE (4)
//! record := body length u32 LE (4) | body (protobuf `Record`) | check (8)
//! check  := XXH3-64(body) as u64 LE          (format versions 3 and 4)
//!         | BLAKE3(body)[0..8]                (format versions 1 and 2)
//! ```
//! The per-record checksum catches torn writes and corruption of any record; tampering is caught
//! by the page hashes and the chain, which do not depend on this framing. So version 3 checks
//! records with a non-cryptographic hash: BLAKE3 here hashed every stored page a second time,
//! on the commit path and in every replay (22% of a restore's main thread).

use std::io::{self, Read, Write};

use prost::Message;

use super::pb;

pub const MAGIC: [u8; 8] = *b"WALSTRM\0";
/// The format version this build writes (a generation begun in versions 1 to 3 goes on in
/// version 3: `state::RootScheme::newest_version`).
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format version this build reads. Version 1 differs from 2 only in its `Page`
/// records, which hold raw `data` only; 2 from 3 only in its record checksum; 3 from 4 only in
/// how state roots are computed (docs/FORMAT.md, "Version history").
pub const FORMAT_VERSION_MIN: u32 = 1;
pub const FILE_HEADER_BYTES: usize = 16;
const LEN_BYTES: usize = 4;
const CHECK_BYTES: usize = 8;
/// Largest record body accepted. The largest legitimate record is a snapshot chunk
/// (`SNAPSHOT_CHUNK_BYTES_MAX` plus hashes) or a 64 KiB page; anything bigger is corruption, and
/// refusing it keeps a corrupt length from making a reader allocate gigabytes.
pub const RECORD_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment = 1,
    Snapshot = 2,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a walstream file (bad magic)")]
    BadMagic,
    #[error("unknown format version {found} (this build reads versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("unknown file kind {0}")]
    UnknownKind(u32),
    #[error("wrong file kind: expected {expected:?}, found {found:?}")]
    WrongKind { expected: FileKind, found: FileKind },
    #[error("file truncated inside its header")]
    TruncatedHeader,
    #[error("record at offset {offset} truncated (file ends inside it)")]
    Truncated { offset: u64 },
    #[error("record at offset {offset} has length {len}, more than the limit {RECORD_BYTES_MAX}")]
    TooLarge { offset: u64, len: u64 },
    #[error("record at offset {offset}: checksum mismatch (corrupt record)")]
    Checksum { offset: u64 },
    #[error("record at offset {offset}: undecodable protobuf: {source}")]
    Decode {
        offset: u64,
        source: prost::DecodeError,
    },
    #[error("record at offset {offset}: empty record")]
    Empty { offset: u64 },
}

impl RecordError {
    /// True when the error is an incomplete write at the end of a file, which a crashed writer
    /// leaves behind and the next writer repairs; false for corruption.
    pub fn is_torn_tail(&self) -> bool {
        matches!(
            self,
            RecordError::Truncated { .. } | RecordError::TruncatedHeader
        )
    }
}

pub fn encode_file_header(kind: FileKind) -> [u8; FILE_HEADER_BYTES] {
    encode_file_header_version(kind, FORMAT_VERSION)
}

/// The header of a file in an explicit format version (tests write version 1 files with it).
pub fn encode_file_header_version(kind: FileKind, version: u32) -> [u8; FILE_HEADER_BYTES] {
    assert!(
        (FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version),
        "format version {version}"
    );
    let mut b = [0u8; FILE_HEADER_BYTES];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    b[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    b
}

/// The kind and format version of a file.
pub fn decode_file_header(b: &[u8]) -> Result<(FileKind, u32), RecordError> {
    if b.len() < FILE_HEADER_BYTES {
        return Err(RecordError::TruncatedHeader);
    }
    if b[..8] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(RecordError::UnsupportedVersion { found: version });
    }
    match u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) {
        1 => Ok((FileKind::Segment, version)),
        2 => Ok((FileKind::Snapshot, version)),
        other => Err(RecordError::UnknownKind(other)),
    }
}

/// The checksum of a record body in a file of format `version`.
fn record_check(version: u32, body: &[u8]) -> [u8; CHECK_BYTES] {
    if version >= 3 {
        xxhash_rust::xxh3::xxh3_64(body).to_le_bytes()
    } else {
        let h = blake3::hash(body);
        h.as_bytes()[..CHECK_BYTES].try_into().expect("8 bytes")
    }
}

/// Appends one framed record to `out`, for a file of format `version`.
pub fn encode_record(record: &pb::Record, version: u32, out: &mut Vec<u8>) {
    let len = record.encoded_len();
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds RECORD_BYTES_MAX"
    );
    out.reserve(LEN_BYTES + len + CHECK_BYTES);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let start = out.len();
    record.encode(out).expect("Vec grows as needed");
    let check = record_check(version, &out[start..]);
    out.extend_from_slice(&check);
}

/// Which field of a `Page` record holds the page's content (docs/FORMAT.md, "Page content").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEncoding {
    /// `data`: the page image itself (the only encoding of version 1).
    Raw = 2,
    /// `zstd`: a zstd frame of the page image.
    Zstd = 4,
    /// `zstd_delta`: a zstd frame of the page image against the page's kept base.
    ZstdDelta = 5,
}

/// Appends one framed `Record { page: Page { pgno, data, hash } }` to `out`, for a file of format
/// `version`, byte for byte what `encode_record` writes for it, without copying the page into a
/// `pb::Page` first (the commit path appends every WAL page this way).
pub fn encode_page_record(
    pgno: u32,
    data: &[u8],
    hash: &[u8; 32],
    version: u32,
    out: &mut Vec<u8>,
) {
    encode_page_record_as(pgno, PageEncoding::Raw, data, hash, false, version, out);
}

/// As `encode_page_record`, with the content in the field of `encoding` and the `kept` flag.
pub fn encode_page_record_as(
    pgno: u32,
    encoding: PageEncoding,
    content: &[u8],
    hash: &[u8; 32],
    kept: bool,
    version: u32,
    out: &mut Vec<u8>,
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    // Page: pgno = 1 (omitted when 0, as proto3 does), content = 2, 4 or 5, hash = 3 (never
    // empty here), kept = 6 (omitted when false). Prost writes fields in field-number order.
    let pgno_len = if pgno == 0 {
        0
    } else {
        1 + encoded_len_varint(u64::from(pgno))
    };
    let content_len = if content.is_empty() {
        0
    } else {
        1 + encoded_len_varint(content.len() as u64) + content.len()
    };
    let page_len =
        pgno_len + content_len + 1 + encoded_len_varint(32) + 32 + if kept { 2 } else { 0 };
    // Record: page = 3.
    let len = 1 + encoded_len_varint(page_len as u64) + page_len;
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds RECORD_BYTES_MAX"
    );
    out.reserve(LEN_BYTES + len + CHECK_BYTES);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let start = out.len();
    encode_key(3, WireType::LengthDelimited, out);
    encode_varint(page_len as u64, out);
    if pgno != 0 {
        encode_key(1, WireType::Varint, out);
        encode_varint(u64::from(pgno), out);
    }
    let put_content = |out: &mut Vec<u8>| {
        if !content.is_empty() {
            encode_key(encoding as u32, WireType::LengthDelimited, out);
            encode_varint(content.len() as u64, out);
            out.extend_from_slice(content);
        }
    };
    if encoding == PageEncoding::Raw {
        put_content(out);
    }
    encode_key(3, WireType::LengthDelimited, out);
    encode_varint(32, out);
    out.extend_from_slice(hash);
    if encoding != PageEncoding::Raw {
        put_content(out);
    }
    if kept {
        encode_key(6, WireType::Varint, out);
        encode_varint(1, out);
    }
    debug_assert_eq!(out.len() - start, len);
    let check = record_check(version, &out[start..]);
    out.extend_from_slice(&check);
}

/// Writes framed records to any `Write`, tracking the byte offset.
pub struct RecordWriter<W: Write> {
    inner: W,
    offset: u64,
    version: u32,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Starts a new file: writes the file header.
    pub fn new(inner: W, kind: FileKind) -> io::Result<Self> {
        Self::with_version(inner, kind, FORMAT_VERSION)
    }

    /// Starts a new file in format `version` (tests write version 1 files with it).
    pub fn with_version(mut inner: W, kind: FileKind, version: u32) -> io::Result<Self> {
        inner.write_all(&encode_file_header_version(kind, version))?;
        Ok(Self {
            inner,
            offset: FILE_HEADER_BYTES as u64,
            version,
            buf: Vec::new(),
        })
    }

    /// Appends bytes already framed (by `encode_record` or `encode_page_record`).
    pub fn write_framed(&mut self, framed: &[u8]) -> io::Result<()> {
        self.inner.write_all(framed)?;
        self.offset += framed.len() as u64;
        Ok(())
    }

    pub fn write(&mut self, record: &pb::Record) -> io::Result<()> {
        self.buf.clear();
        encode_record(record, self.version, &mut self.buf);
        self.inner.write_all(&self.buf)?;
        self.offset += self.buf.len() as u64;
        Ok(())
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads framed records one by one, never holding more than one record in memory.
pub struct RecordReader<R: Read> {
    inner: R,
    offset: u64,
    kind: FileKind,
    version: u32,
}

impl<R: Read> RecordReader<R> {
    /// Reads and checks the file header.
    pub fn new(mut inner: R) -> Result<Self, RecordError> {
        let mut header = [0u8; FILE_HEADER_BYTES];
        let n = read_full(&mut inner, &mut header)?;
        let (kind, version) = decode_file_header(&header[..n])?;
        Ok(Self {
            inner,
            offset: FILE_HEADER_BYTES as u64,
            kind,
            version,
        })
    }

    /// Starts reading in the middle of a file whose header was already checked, at `offset`
    /// (which must be a record boundary).
    pub fn resume(inner: R, kind: FileKind, version: u32, offset: u64) -> Self {
        Self {
            inner,
            offset,
            kind,
            version,
        }
    }

    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The file's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Checks that the file is of the expected kind.
    pub fn expect_kind(self, expected: FileKind) -> Result<Self, RecordError> {
        if self.kind != expected {
            return Err(RecordError::WrongKind {
                expected,
                found: self.kind,
            });
        }
        Ok(self)
    }

    /// Offset of the next record (equals the file size after the last record).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record and its offset, or `None` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<(u64, pb::Record)>, RecordError> {
        let offset = self.offset;
        let mut len_bytes = [0u8; LEN_BYTES];
        match read_full(&mut self.inner, &mut len_bytes)? {
            0 => return Ok(None),
            LEN_BYTES => {}
            _ => return Err(RecordError::Truncated { offset }),
        }
        let len = u64::from(u32::from_le_bytes(len_bytes));
        if len > RECORD_BYTES_MAX as u64 {
            return Err(RecordError::TooLarge { offset, len });
        }
        // A buffer per record: page content decodes as slices of it (`bytes::Bytes`), not as
        // copies.
        let total = len as usize + CHECK_BYTES;
        let mut buf = Vec::with_capacity(total);
        (&mut self.inner).take(total as u64).read_to_end(&mut buf)?;
        if buf.len() != total {
            return Err(RecordError::Truncated { offset });
        }
        let mut body = bytes::Bytes::from(buf);
        let check = body.split_off(len as usize);
        if record_check(self.version, &body) != check[..] {
            return Err(RecordError::Checksum { offset });
        }
        let record =
            pb::Record::decode(body).map_err(|source| RecordError::Decode { offset, source })?;
        if record.body.is_none() {
            return Err(RecordError::Empty { offset });
        }
        self.offset += (LEN_BYTES + total) as u64;
        Ok(Some((offset, record)))
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::record::Body;

    fn begin(seq: u64) -> pb::Record {
        pb::Record {
            body: Some(Body::TxnBegin(pb::TxnBegin { seq })),
        }
    }

    fn file_with(records: &[pb::Record]) -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new(), FileKind::Segment).unwrap();
        for r in records {
            w.write(r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn records_roundtrip_with_offsets() {
        let bytes = file_with(&[begin(1), begin(2)]);
        let mut r = RecordReader::new(&bytes[..]).unwrap();
        let (o1, r1) = r.next_record().unwrap().unwrap();
        let (o2, r2) = r.next_record().unwrap().unwrap();
        assert_eq!(o1, FILE_HEADER_BYTES as u64);
        assert!(o2 > o1);
        assert_eq!((r1, r2), (begin(1), begin(2)));
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(r.offset(), bytes.len() as u64);
    }

    #[test]
    fn every_truncation_is_reported_as_torn_tail() {
        let bytes = file_with(&[begin(1), begin(300)]);
        let first_end = file_with(&[begin(1)]).len();
        for cut in first_end + 1..bytes.len() {
            let mut r = RecordReader::new(&bytes[..cut]).unwrap();
            r.next_record().unwrap().unwrap();
            let err = r.next_record().unwrap_err();
            assert!(err.is_torn_tail(), "cut at {cut}: {err}");
        }
    }

    #[test]
    fn flipped_body_byte_is_a_checksum_error() {
        let mut bytes = file_with(&[begin(1)]);
        bytes[FILE_HEADER_BYTES + 5] ^= 0x40;
        let err = RecordReader::new(&bytes[..])
            .unwrap()
            .next_record()
            .unwrap_err();
        assert!(matches!(err, RecordError::Checksum { offset: 16 }), "{err}");
    }

    #[test]
    fn hand_encoded_page_record_matches_prost() {
        for (pgno, size) in [
            (1u32, 512usize),
            (127, 4096),
            (128, 4096),
            (300_000, 65536),
            (u32::MAX, 1024),
            (0, 0),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + pgno as usize) as u8).collect();
            let hash = *blake3::hash(&data).as_bytes();
            let record = pb::Record {
                body: Some(Body::Page(pb::Page {
                    pgno,
                    data: data.clone().into(),
                    hash: hash.to_vec().into(),
                    ..Default::default()
                })),
            };
            for version in FORMAT_VERSION_MIN..=FORMAT_VERSION {
                let mut by_prost = vec![0xaa];
                encode_record(&record, version, &mut by_prost);
                let mut by_hand = vec![0xaa];
                encode_page_record(pgno, &data, &hash, version, &mut by_hand);
                assert_eq!(by_hand, by_prost, "v{version} pgno {pgno}, {size} bytes");
            }
        }
    }

    #[test]
    fn hand_encoded_v2_page_record_matches_prost() {
        for encoding in [
            PageEncoding::Raw,
            PageEncoding::Zstd,
            PageEncoding::ZstdDelta,
        ] {
            for kept in [false, true] {
                for (pgno, size) in [(1u32, 37usize), (300_000, 65536), (0, 0)] {
                    let content: Vec<u8> = (0..size).map(|i| (i * 13) as u8).collect();
                    let hash = [7u8; 32];
                    let mut page = pb::Page {
                        pgno,
                        hash: hash.to_vec().into(),
                        kept,
                        ..Default::default()
                    };
                    match encoding {
                        PageEncoding::Raw => page.data = content.clone().into(),
                        PageEncoding::Zstd => page.zstd = content.clone().into(),
                        PageEncoding::ZstdDelta => page.zstd_delta = content.clone().into(),
                    }
                    let mut by_prost = Vec::new();
                    encode_record(
                        &pb::Record {
                            body: Some(Body::Page(page)),
                        },
                        FORMAT_VERSION,
                        &mut by_prost,
                    );
                    let mut by_hand = Vec::new();
                    encode_page_record_as(
                        pgno,
                        encoding,
                        &content,
                        &hash,
                        kept,
                        FORMAT_VERSION,
                        &mut by_hand,
                    );
                    assert_eq!(by_hand, by_prost, "{encoding:?} kept {kept} pgno {pgno}");
                }
            }
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = file_with(&[]);
        bytes[8] = 9;
        let err = RecordReader::new(&bytes[..]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown format version 9 (this build reads versions 1 to 4)"
        );
    }

    #[test]
    fn huge_length_is_refused_before_allocating() {
        let mut bytes = file_with(&[]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = RecordReader::new(&bytes[..])
            .unwrap()
            .next_record()
            .unwrap_err();
        assert!(matches!(err, RecordError::TooLarge { .. }));
    }
}
