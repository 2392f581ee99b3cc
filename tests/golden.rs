//! Golden test vectors: a tiny stream with fixed inputs, checked in under `tests/golden/v1/`,
//! that pins the on-disk format byte for byte (docs/FORMAT.md) and gives other implementations
//! files to validate against.
//!
//! The generator below writes the stream the way a validator reads it: protobuf records from
//! `record::pb`, framed by `record::frame::RecordWriter`, hashed with `record::chain`. Its
//! database images are computed independently, by applying pages to a `Vec<u8>` as FORMAT.md
//! ("Replaying") says, and `expected.json` records them with every hash.
//!
//! * `golden_files_are_reproduced_byte_for_byte`: today's code writes exactly the checked-in
//!   bytes. With `WALSTREAM_REGEN_GOLDEN=1` the files are rewritten instead (review the diff: a
//!   change to these bytes is a format change, see tests/golden/README.md).
//! * `golden_hashes_follow_the_documented_layout`: the checked-in files, decoded and re-hashed
//!   with the byte layouts of FORMAT.md spelled out by hand (no `record::chain`), give the
//!   hashes and images of `expected.json`.
//! * `golden_stream_verifies_and_replays`: `verify` accepts the stream and `restore` rebuilds the
//!   expected image after every transaction.
//! * the remaining tests damage a copy of the golden files and assert the exact error text.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Once;
use walstream::state::{root_of_image, RootScheme};

use walstream::reader::{Integrity, ReadError};
use walstream::record::chain::{page_hash, SnapshotHasher, TxnHasher};
use walstream::record::frame::RecordWriter;
use walstream::record::page::PageEncoder;
use walstream::record::pb::{self, record::Body, segment_end::Reason, wal_reset::Kind};
use walstream::record::{hex, FileKind, Hash, RecordReader};
use walstream::restore::{self, Point, RestoreOptions};
use walstream::target::LocalTarget;
use walstream::verify;

// ---------------------------------------------------------------------------------------------
// The fixed inputs.

const GENERATION: u64 = 1;
const PAGE_SIZE: u32 = 512;
const SNAPSHOT_PAGES: u32 = 3;
const CREATED_MS: i64 = 1_700_000_000_000;
/// The WAL salts of the (imaginary) WAL the stream was captured from; not hashed. After the
/// restart that follows txn 2, the WAL carries salt-1 plus one and `SALT2_AFTER_RESET`.
const SALT1: u32 = 0x5741_4c31;
const SALT2: u32 = 0x0000_0001;
const SALT2_AFTER_RESET: u32 = 0x0000_0002;

const SNAPSHOT_KEY: &str = "generations/0000000000000001/snapshot.wsnap";
const SEGMENT1_KEY: &str = "generations/0000000000000001/0000000000000001.wseg";
const SEGMENT4_KEY: &str = "generations/0000000000000001/0000000000000004.wseg";

/// One transaction of the golden stream: its pages as (pgno, content seed), in frame order.
struct TxnSpec {
    seq: u64,
    pages: &'static [(u32, u8)],
    db_size_pages: u32,
    commit_time_ms: i64,
}

/// Snapshot page n has seed 0x10 * n.
const SNAPSHOT_SEEDS: [u8; SNAPSHOT_PAGES as usize] = [0x10, 0x20, 0x30];

const TXNS: [TxnSpec; 4] = [
    // Grows the database to 4 pages.
    TxnSpec {
        seq: 1,
        pages: &[(2, 0x21), (4, 0x41)],
        db_size_pages: 4,
        commit_time_ms: CREATED_MS + 1_000,
    },
    // Page 1 appears twice: the last one wins.
    TxnSpec {
        seq: 2,
        pages: &[(1, 0x11), (3, 0x31), (1, 0x12)],
        db_size_pages: 4,
        commit_time_ms: CREATED_MS + 2_500,
    },
    // Shrinks the database to 2 pages (page 3 and 4 are cut off by the truncation).
    TxnSpec {
        seq: 3,
        pages: &[(2, 0x22)],
        db_size_pages: 2,
        commit_time_ms: CREATED_MS + 4_000,
    },
    // In the second segment: grows back to 3 pages.
    TxnSpec {
        seq: 4,
        pages: &[(3, 0x32)],
        db_size_pages: 3,
        commit_time_ms: CREATED_MS + 7_000,
    },
];

/// Transactions 1..=3 are in the first segment, which then rolls; 4 is in the second.
const FIRST_SEGMENT_TXNS: usize = 3;

/// A fixed page image: a readable label, then a pattern that depends on the seed.
fn page(seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..PAGE_SIZE as usize)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed.rotate_left((i % 8) as u32))
        .collect();
    let label = format!("walstream golden page, seed {seed:#04x}\n");
    p[..label.len()].copy_from_slice(label.as_bytes());
    p
}

/// A WAL position; not hashed (docs/FORMAT.md, "Determinism"), fixed here only for
/// reproducibility.
fn wal((salt1, salt2): (u32, u32), frame: u32) -> Option<pb::WalPosition> {
    Some(pb::WalPosition {
        salt1,
        salt2,
        frame,
        checksum1: 0x0101_0101u32.wrapping_mul(frame + 1),
        checksum2: 0x1010_1010u32.wrapping_mul(frame + 3),
        page_size: PAGE_SIZE,
        big_endian_checksum: false,
    })
}

// ---------------------------------------------------------------------------------------------
// The generator.

fn rec(body: Body) -> pb::Record {
    pb::Record { body: Some(body) }
}

fn file(kind: FileKind, version: u32, records: &[pb::Record]) -> Vec<u8> {
    let mut w = RecordWriter::with_version(Vec::new(), kind, version).unwrap();
    for r in records {
        w.write(r).unwrap();
    }
    w.into_inner()
}

/// Applies a page at `(pgno - 1) * page_size`, growing the image as needed.
fn apply_page(image: &mut Vec<u8>, pgno: u32, data: &[u8]) {
    let at = (pgno as usize - 1) * PAGE_SIZE as usize;
    if image.len() < at + data.len() {
        image.resize(at + data.len(), 0);
    }
    image[at..at + data.len()].copy_from_slice(data);
}

/// The image after a replay: the pages written so far, truncated (or extended with zeros) to
/// `db_size_pages`.
fn image_at(image: &[u8], db_size_pages: u32) -> Vec<u8> {
    let mut out = image.to_vec();
    out.resize(db_size_pages as usize * PAGE_SIZE as usize, 0);
    out
}

struct ExpectedTxn {
    seq: u64,
    key: &'static str,
    db_size_pages: u32,
    commit_time_ms: i64,
    chain_hash: Hash,
    image: Hash,
    state_root: Hash,
}

struct Golden {
    version: u32,
    /// (key relative to the target root, bytes)
    files: Vec<(&'static str, Vec<u8>)>,
    snapshot_hash: Hash,
    snapshot_image: Hash,
    snapshot_root: Hash,
    txns: Vec<ExpectedTxn>,
}

impl Golden {
    fn expected_json(&self) -> String {
        // Written by hand, not by serde_json, so that the bytes do not depend on its features.
        let mut s = String::new();
        s.push_str("{\n");
        s.push_str(&format!("  \"format_version\": {},\n", self.version));
        s.push_str(&format!("  \"generation\": {GENERATION},\n"));
        s.push_str(&format!("  \"page_size\": {PAGE_SIZE},\n"));
        s.push_str("  \"snapshot\": {\n");
        s.push_str(&format!("    \"key\": \"{SNAPSHOT_KEY}\",\n"));
        s.push_str(&format!("    \"page_count\": {SNAPSHOT_PAGES},\n"));
        s.push_str(&format!(
            "    \"hash\": \"{}\",\n",
            hex(&self.snapshot_hash)
        ));
        // Version 4 also lists the state roots: its own scheme, for other implementations to
        // check (versions 1 to 3 keep their files as they were).
        let with_roots = self.version >= 4;
        s.push_str(&format!(
            "    \"image_blake3\": \"{}\"{}\n",
            hex(&self.snapshot_image),
            if with_roots { "," } else { "" }
        ));
        if with_roots {
            s.push_str(&format!(
                "    \"state_root\": \"{}\"\n",
                hex(&self.snapshot_root)
            ));
        }
        s.push_str("  },\n");
        s.push_str("  \"txns\": [\n");
        for (i, t) in self.txns.iter().enumerate() {
            s.push_str("    {\n");
            s.push_str(&format!("      \"seq\": {},\n", t.seq));
            s.push_str(&format!("      \"segment\": \"{}\",\n", t.key));
            s.push_str(&format!("      \"db_size_pages\": {},\n", t.db_size_pages));
            s.push_str(&format!(
                "      \"commit_time_ms\": {},\n",
                t.commit_time_ms
            ));
            s.push_str(&format!(
                "      \"chain_hash\": \"{}\",\n",
                hex(&t.chain_hash)
            ));
            s.push_str(&format!(
                "      \"image_blake3\": \"{}\"{}\n",
                hex(&t.image),
                if with_roots { "," } else { "" }
            ));
            if with_roots {
                s.push_str(&format!(
                    "      \"state_root\": \"{}\"\n",
                    hex(&t.state_root)
                ));
            }
            s.push_str(if i + 1 == self.txns.len() {
                "    }\n"
            } else {
                "    },\n"
            });
        }
        s.push_str("  ]\n");
        s.push_str("}\n");
        s
    }

    /// The bytes of the file `key`.
    fn file(&self, key: &str) -> Vec<u8> {
        self.files
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
            .clone()
    }

    /// Every file of `tests/golden/v<version>/`, expected.json included.
    fn all_files(&self) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = self
            .files
            .iter()
            .map(|(k, b)| (k.to_string(), b.clone()))
            .collect();
        out.push(("expected.json".into(), self.expected_json().into_bytes()));
        out
    }
}

fn generate() -> Golden {
    generate_version(1)
}

/// The `Page` record of a page in format `version`: raw in version 1; in version 2 as the
/// spool's writer stores it (`record::page::PageEncoder`, which keeps the segment's page versions).
fn page_record(
    version: u32,
    encoder: &mut PageEncoder,
    pgno: u32,
    data: Vec<u8>,
    hash: Hash,
) -> pb::Record {
    if version == 1 {
        let page = pb::Page {
            pgno,
            data: data.into(),
            hash: hash.to_vec().into(),
            zstd: Default::default(),
            zstd_delta: Default::default(),
            kept: false,
        };
        return rec(Body::Page(page));
    }
    let mut framed = Vec::new();
    encoder.encode(pgno, &data, &hash, version, &mut framed);
    let mut r = RecordReader::resume(&framed[..], FileKind::Segment, version, 0);
    let (_, record) = r.next_record().unwrap().unwrap();
    assert!(r.next_record().unwrap().is_none());
    record
}

fn generate_version(version: u32) -> Golden {
    let scheme = RootScheme::of_version(version);
    let mut encoder = PageEncoder::new(walstream::record::page::EncoderMode::Delta);
    // Snapshot: header, a chunk of pages 1-2, a chunk of page 3, end.
    let snapshot_pages: Vec<Vec<u8>> = SNAPSHOT_SEEDS.iter().map(|&s| page(s)).collect();
    let mut snapshot_hasher = SnapshotHasher::new(GENERATION, PAGE_SIZE, None);
    let mut image = Vec::new();
    for (i, p) in snapshot_pages.iter().enumerate() {
        snapshot_hasher.page(i as u32 + 1, &page_hash(p));
        apply_page(&mut image, i as u32 + 1, p);
    }
    let snapshot_hash = snapshot_hasher.finish();
    let snapshot_image = *blake3::hash(&image_at(&image, SNAPSHOT_PAGES)).as_bytes();
    let snapshot_root = root_of_image(scheme, PAGE_SIZE, &image_at(&image, SNAPSHOT_PAGES));
    // Version 2 stores a chunk's pages as one zstd frame, as the spool's writer does.
    let chunk = |first: u32, pages: &[Vec<u8>]| {
        let mut c = pb::SnapshotChunk {
            first_pgno: first,
            data: pages.concat(),
            hashes: pages.iter().map(|p| page_hash(p).to_vec()).collect(),
            zstd: Vec::new(),
        };
        if version >= 2 {
            assert!(walstream::record::page::compress_chunk(
                &c.data,
                &mut c.zstd
            ));
            c.data.clear();
        }
        rec(Body::SnapshotChunk(c))
    };
    let snapshot = file(
        FileKind::Snapshot,
        version,
        &[
            rec(Body::SnapshotHeader(pb::SnapshotHeader {
                generation: GENERATION,
                page_size: PAGE_SIZE,
                page_count: SNAPSHOT_PAGES,
                reason: "new stream".into(),
                created_ms: CREATED_MS,
                prev_generation_hash: Vec::new(),
                wal: wal((SALT1, SALT2), 0),
            })),
            chunk(1, &snapshot_pages[..2]),
            chunk(3, &snapshot_pages[2..]),
            rec(Body::SnapshotEnd(pb::SnapshotEnd {
                hash: snapshot_hash.to_vec(),
                state_root: snapshot_root.to_vec(),
            })),
        ],
    );

    // Segments. WAL positions follow an imaginary WAL: frames counted from 1, and a restart
    // after txn 2 (salt-1 plus one, a new salt-2, frames from 1 again), announced by a WalReset
    // marker that names the next salts.
    let mut head = snapshot_hash;
    let mut prev_time = CREATED_MS;
    let mut salts = (SALT1, SALT2);
    let mut frame = 0u32;
    let mut segments: Vec<Vec<pb::Record>> = Vec::new();
    let mut expected = Vec::new();
    for (i, t) in TXNS.iter().enumerate() {
        let key = if i < FIRST_SEGMENT_TXNS {
            SEGMENT1_KEY
        } else {
            SEGMENT4_KEY
        };
        if i == 0 || i == FIRST_SEGMENT_TXNS {
            if let Some(last) = segments.last_mut() {
                last.push(rec(Body::SegmentEnd(pb::SegmentEnd {
                    reason: Reason::Rolled as i32,
                    next_seq: t.seq,
                })));
            }
            // Version 4: the second segment goes on with the first one's kept versions.
            let continues = version >= 4 && i > 0;
            if continues {
                encoder.continue_segment(0, false);
            } else {
                encoder.start_segment();
            }
            segments.push(vec![rec(Body::SegmentHeader(pb::SegmentHeader {
                generation: GENERATION,
                first_seq: t.seq,
                prev_hash: head.to_vec(),
                wal: wal(salts, frame),
                prev_commit_time_ms: prev_time,
            }))]);
            if continues {
                let records = segments.last_mut().unwrap();
                records.push(rec(Body::KeptContinued(pb::KeptContinued {})));
            }
        }
        let records = segments.last_mut().unwrap();
        records.push(rec(Body::TxnBegin(pb::TxnBegin { seq: t.seq })));
        let mut hasher = TxnHasher::new(GENERATION, t.seq, &head);
        for &(pgno, seed) in t.pages {
            let data = page(seed);
            let hash = page_hash(&data);
            hasher.page(pgno, &hash);
            apply_page(&mut image, pgno, &data);
            records.push(page_record(version, &mut encoder, pgno, data, hash));
        }
        frame += t.pages.len() as u32;
        let state_root = root_of_image(scheme, PAGE_SIZE, &image_at(&image, t.db_size_pages));
        let chain_hash = hasher.finish(t.db_size_pages, t.commit_time_ms, &state_root);
        records.push(rec(Body::TxnCommit(pb::TxnCommit {
            seq: t.seq,
            page_count: t.pages.len() as u32,
            db_size_pages: t.db_size_pages,
            commit_time_ms: t.commit_time_ms,
            hash: chain_hash.to_vec(),
            wal: wal(salts, frame),
            state_root: state_root.to_vec(),
        })));
        encoder.txn_done();
        if t.seq == 2 {
            records.push(rec(Body::WalReset(pb::WalReset {
                kind: Kind::Restart as i32,
                after_seq: t.seq,
                db_file_bytes: 0,
                db_file_mtime_ns: 0,
                next_salt1: salts.0 + 1,
                next_salt2: SALT2_AFTER_RESET,
                salt2_unknown: false,
            })));
            salts = (salts.0 + 1, SALT2_AFTER_RESET);
            frame = 0;
        }
        // FORMAT.md "Replaying": every page of txns 1..=N written, then one truncation to txn
        // N's size. `image` is never truncated, so this is that procedure for each N.
        expected.push(ExpectedTxn {
            seq: t.seq,
            key,
            db_size_pages: t.db_size_pages,
            commit_time_ms: t.commit_time_ms,
            chain_hash,
            image: *blake3::hash(&image_at(&image, t.db_size_pages)).as_bytes(),
            state_root,
        });
        head = chain_hash;
        prev_time = t.commit_time_ms;
    }
    // The second segment stays unsealed, as the live end of a stream is.
    assert_eq!(segments.len(), 2);
    Golden {
        version,
        files: vec![
            (SNAPSHOT_KEY, snapshot),
            (SEGMENT1_KEY, file(FileKind::Segment, version, &segments[0])),
            (SEGMENT4_KEY, file(FileKind::Segment, version, &segments[1])),
        ],
        snapshot_hash,
        snapshot_image,
        snapshot_root,
        txns: expected,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

const REGEN_ENV: &str = "WALSTREAM_REGEN_GOLDEN";

fn regen_requested() -> bool {
    std::env::var_os(REGEN_ENV).is_some_and(|v| v == "1")
}

/// `tests/golden/v1`. With `WALSTREAM_REGEN_GOLDEN=1`, the files are rewritten first (once per
/// process, before any test reads them).
fn golden_dir() -> PathBuf {
    golden_dir_version(1)
}

/// `tests/golden/v<version>`, regenerated first like `golden_dir`.
fn golden_dir_version(version: u32) -> PathBuf {
    static REGEN: [Once; 4] = [Once::new(), Once::new(), Once::new(), Once::new()];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/v{version}"));
    if regen_requested() {
        REGEN[version as usize - 1].call_once(|| {
            if dir.exists() {
                fs::remove_dir_all(&dir).unwrap();
            }
            for (key, bytes) in generate_version(version).all_files() {
                let path = dir.join(&key);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
            }
        });
    }
    dir
}

/// Every file below `dir`, as keys relative to it.
fn list_files(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &key, out);
            } else {
                out.push(key);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out);
    out.sort();
    out
}

struct ExpectedJson {
    snapshot_hash: String,
    snapshot_image: String,
    /// (seq, db_size_pages, chain hash, image hash)
    txns: Vec<(u64, u32, String, String)>,
}

fn expected_json() -> ExpectedJson {
    expected_json_version(1)
}

fn expected_json_version(version: u32) -> ExpectedJson {
    let text = fs::read_to_string(golden_dir_version(version).join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    assert_eq!(v["format_version"], version);
    assert_eq!(v["generation"], GENERATION);
    assert_eq!(v["page_size"], PAGE_SIZE);
    ExpectedJson {
        snapshot_hash: s(&v["snapshot"]["hash"]),
        snapshot_image: s(&v["snapshot"]["image_blake3"]),
        txns: v["txns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["seq"].as_u64().unwrap(),
                    t["db_size_pages"].as_u64().unwrap() as u32,
                    s(&t["chain_hash"]),
                    s(&t["image_blake3"]),
                )
            })
            .collect(),
    }
}

/// A copy of the golden target in a temporary directory, to damage.
fn golden_copy() -> (tempfile::TempDir, PathBuf) {
    golden_copy_version(1)
}

fn golden_copy_version(version: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("target");
    let src = golden_dir_version(version);
    for key in list_files(&src) {
        if key.starts_with("generations/") {
            let dest = root.join(&key);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(src.join(&key), dest).unwrap();
        }
    }
    (tmp, root)
}

fn records(path: &Path) -> Vec<(u64, pb::Record)> {
    let mut r = RecordReader::new(fs::File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        out.push(rec);
    }
    out
}

fn verify_error(root: &Path) -> ReadError {
    match verify::verify(&LocalTarget::new(root.to_path_buf()), &mut |_| {}) {
        Ok(report) => panic!("verify must fail, but accepted {:?}", report.generations),
        Err(e) => e,
    }
}

fn restore_to(
    root: &Path,
    out: &Path,
    point: Point,
) -> Result<restore::Restored, restore::RestoreError> {
    let opts = RestoreOptions {
        point,
        generation: None,
        force: true,
    };
    restore::restore(
        &LocalTarget::new(root.to_path_buf()),
        out,
        &opts,
        &mut |_| {},
    )
}

// ---------------------------------------------------------------------------------------------
// (a) The checked-in bytes are what today's code writes.

#[test]
fn golden_files_are_reproduced_byte_for_byte() {
    check_reproduced_byte_for_byte(1);
}

#[test]
fn golden_v2_files_are_reproduced_byte_for_byte() {
    check_reproduced_byte_for_byte(2);
}

#[test]
fn golden_v3_files_are_reproduced_byte_for_byte() {
    check_reproduced_byte_for_byte(3);
}

#[test]
fn golden_v4_files_are_reproduced_byte_for_byte() {
    check_reproduced_byte_for_byte(4);
}

fn check_reproduced_byte_for_byte(version: u32) {
    let dir = golden_dir_version(version);
    let golden = generate_version(version);
    let files = golden.all_files();
    let mut expected_keys: Vec<String> = files.iter().map(|(k, _)| k.clone()).collect();
    expected_keys.sort();
    assert!(
        dir.exists(),
        "{} is missing; run `{REGEN_ENV}=1 cargo test --test golden`",
        dir.display()
    );
    assert_eq!(
        list_files(&dir),
        expected_keys,
        "files under {}",
        dir.display()
    );
    for (key, bytes) in files {
        let on_disk = fs::read(dir.join(&key)).unwrap();
        if on_disk != bytes {
            let first = on_disk
                .iter()
                .zip(&bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(on_disk.len().min(bytes.len()));
            panic!(
                "tests/golden/v{version}/{key} differs from what this build writes: {} bytes checked in, {} \
                 generated, first difference at offset {first}. If the format change is intended, \
                 regenerate with `{REGEN_ENV}=1 cargo test --test golden`, review the diff, and \
                 update docs/FORMAT.md (see tests/golden/README.md).",
                on_disk.len(),
                bytes.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) An independent validator: FORMAT.md's byte layouts spelled out by hand.

fn hash_bytes(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

#[test]
fn golden_hashes_follow_the_documented_layout() {
    let dir = golden_dir();
    let expected = expected_json();

    // File headers: magic, version 1, kind.
    for (key, kind) in [(SNAPSHOT_KEY, 2u32), (SEGMENT1_KEY, 1), (SEGMENT4_KEY, 1)] {
        let bytes = fs::read(dir.join(key)).unwrap();
        assert_eq!(&bytes[..8], b"WALSTRM\0", "{key}");
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            1,
            "{key}"
        );
        assert_eq!(
            u32::from_le_bytes(bytes[12..16].try_into().unwrap()),
            kind,
            "{key}"
        );
    }

    // Snapshot hash.
    let mut snp = b"walstream/snp/v1".to_vec();
    snp.extend_from_slice(&GENERATION.to_le_bytes());
    snp.extend_from_slice(&PAGE_SIZE.to_le_bytes());
    snp.extend_from_slice(&[0u8; 32]);
    let mut image = Vec::new();
    let mut recorded_snapshot_hash = None;
    let mut pages = 0u32;
    for (_, r) in records(&dir.join(SNAPSHOT_KEY)) {
        match r.body.unwrap() {
            Body::SnapshotHeader(h) => {
                assert_eq!(
                    (h.generation, h.page_size, h.page_count),
                    (GENERATION, PAGE_SIZE, SNAPSHOT_PAGES)
                );
                assert!(h.prev_generation_hash.is_empty());
            }
            Body::SnapshotChunk(c) => {
                for (i, recorded) in c.hashes.iter().enumerate() {
                    let pgno = c.first_pgno + i as u32;
                    let data = &c.data[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
                    assert_eq!(
                        recorded.as_slice(),
                        hash_bytes(data),
                        "snapshot page {pgno}"
                    );
                    snp.extend_from_slice(&pgno.to_le_bytes());
                    snp.extend_from_slice(recorded);
                    apply_page(&mut image, pgno, data);
                    pages += 1;
                }
            }
            Body::SnapshotEnd(e) => recorded_snapshot_hash = Some(hex(&e.hash)),
            other => panic!("unexpected record in the snapshot: {other:?}"),
        }
    }
    snp.extend_from_slice(&pages.to_le_bytes());
    let snapshot_hash = hash_bytes(&snp);
    assert_eq!(hex(&snapshot_hash), expected.snapshot_hash);
    assert_eq!(
        recorded_snapshot_hash.as_deref(),
        Some(expected.snapshot_hash.as_str())
    );
    assert_eq!(
        hex(&hash_bytes(&image_at(&image, pages))),
        expected.snapshot_image
    );

    // Transaction hashes and the image after each.
    let mut prev = snapshot_hash;
    let mut txn: Option<(u64, Vec<u8>, u32)> = None;
    let mut seen = Vec::new();
    for key in [SEGMENT1_KEY, SEGMENT4_KEY] {
        for (_, r) in records(&dir.join(key)) {
            match r.body.unwrap() {
                Body::SegmentHeader(h) => assert_eq!(h.prev_hash, prev.to_vec(), "{key} chains"),
                Body::TxnBegin(b) => {
                    let mut bytes = b"walstream/txn/v1".to_vec();
                    bytes.extend_from_slice(&GENERATION.to_le_bytes());
                    bytes.extend_from_slice(&b.seq.to_le_bytes());
                    bytes.extend_from_slice(&prev);
                    txn = Some((b.seq, bytes, 0));
                }
                Body::Page(p) => {
                    let (_, bytes, n) = txn.as_mut().unwrap();
                    assert_eq!(p.hash, hash_bytes(&p.data).to_vec());
                    bytes.extend_from_slice(&p.pgno.to_le_bytes());
                    bytes.extend_from_slice(&p.hash);
                    *n += 1;
                    apply_page(&mut image, p.pgno, &p.data);
                }
                Body::TxnCommit(c) => {
                    let (seq, mut bytes, n) = txn.take().unwrap();
                    assert_eq!((c.seq, c.page_count), (seq, n));
                    bytes.extend_from_slice(&n.to_le_bytes());
                    bytes.extend_from_slice(&c.db_size_pages.to_le_bytes());
                    bytes.extend_from_slice(&c.commit_time_ms.to_le_bytes());
                    bytes.extend_from_slice(&c.state_root);
                    let hash = hash_bytes(&bytes);
                    assert_eq!(c.hash, hash.to_vec(), "recorded hash of txn {seq}");
                    // Truncate a copy only: replaying to txn N truncates once, at the end.
                    let at_n = image_at(&image, c.db_size_pages);
                    assert_eq!(
                        c.state_root,
                        root_of_image(RootScheme::V1, PAGE_SIZE, &at_n).to_vec(),
                        "root of txn {seq}"
                    );
                    seen.push((seq, c.db_size_pages, hex(&hash), hex(&hash_bytes(&at_n))));
                    prev = hash;
                }
                Body::WalReset(_) => {}
                Body::SegmentEnd(e) => {
                    assert_eq!(key, SEGMENT1_KEY);
                    assert_eq!((e.reason(), e.next_seq), (Reason::Rolled, 4));
                }
                other => panic!("unexpected record in {key}: {other:?}"),
            }
        }
    }
    assert_eq!(seen, expected.txns);
    assert_eq!(seen.len(), TXNS.len());
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds (fuzz/seeds/<target>/), derived from the golden stream and regenerated with it.

/// The `segment_replay` input layout: snapshot length u16 LE, segment 1 length u16 LE, the
/// first_seq of segment 2 (u8), then the three files back to back (see fuzz/README.md).
fn pack_replay_input(
    snapshot: &[u8],
    segment1: &[u8],
    second_first_seq: u8,
    segment2: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u16::try_from(snapshot.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&u16::try_from(segment1.len()).unwrap().to_le_bytes());
    out.push(second_first_seq);
    out.extend_from_slice(snapshot);
    out.extend_from_slice(segment1);
    out.extend_from_slice(segment2);
    out
}

/// A WAL holding the golden transactions as frames (page size 512, the golden salts).
fn golden_wal(big_endian_checksum: bool) -> Vec<u8> {
    use walstream::wal::{WalCursor, WalHeader};
    let header = WalHeader {
        big_endian_checksum,
        page_size: PAGE_SIZE,
        checkpoint_seq: 0,
        salt1: SALT1,
        salt2: SALT2,
        checksum: (0, 0),
    };
    let bytes = header.encode();
    let mut cursor = WalCursor::at_start(&WalHeader::parse(&bytes).unwrap());
    let mut out = bytes.to_vec();
    for t in &TXNS {
        for (i, &(pgno, seed)) in t.pages.iter().enumerate() {
            let commit = if i + 1 == t.pages.len() {
                t.db_size_pages
            } else {
                0
            };
            out.extend_from_slice(&cursor.encode_frame(pgno, commit, &page(seed)));
        }
    }
    out
}

/// A wal-index region 0 prefix (136 bytes) with two matching, initialised header copies, in
/// little-endian byte order (the wal-index is native-endian; the fuzz machines are
/// little-endian).
fn shm_prefix() -> Vec<u8> {
    let mut copy = [0u8; 48];
    copy[0..4].copy_from_slice(&3_007_000u32.to_le_bytes()); // iVersion
    copy[12] = 1; // isInit
    copy[14..16].copy_from_slice(&(PAGE_SIZE as u16).to_le_bytes()); // szPage
    copy[16..20].copy_from_slice(&7u32.to_le_bytes()); // mxFrame
    copy[20..24].copy_from_slice(&4u32.to_le_bytes()); // nPage
    copy[32..36].copy_from_slice(&SALT1.to_be_bytes());
    copy[36..40].copy_from_slice(&SALT2.to_be_bytes());
    let mut out = Vec::with_capacity(136);
    out.extend_from_slice(&copy);
    out.extend_from_slice(&copy);
    out.resize(136, 0);
    out[96..100].copy_from_slice(&3u32.to_le_bytes()); // nBackfill
    out
}

/// Every generated seed: (path relative to fuzz/seeds, bytes).
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let golden = generate();
    let get = |key: &str| golden.file(key);
    let (snapshot, segment1, segment4) = (get(SNAPSHOT_KEY), get(SEGMENT1_KEY), get(SEGMENT4_KEY));
    let golden_v2 = generate_version(2);
    let v2 = |key: &str| golden_v2.file(key);
    let golden_v3 = generate_version(3);
    let v3 = |key: &str| golden_v3.file(key);
    let golden_v4 = generate_version(4);
    let v4 = |key: &str| golden_v4.file(key);
    let mut seeds = vec![
        (
            "record_decode/golden-snapshot.wsnap".to_string(),
            snapshot.clone(),
        ),
        (
            "record_decode/golden-0000000000000001.wseg".to_string(),
            segment1.clone(),
        ),
        (
            "record_decode/golden-0000000000000004.wseg".to_string(),
            segment4.clone(),
        ),
        (
            "segment_replay/golden-full.bin".to_string(),
            pack_replay_input(&snapshot, &segment1, 4, &segment4),
        ),
        (
            "segment_replay/golden-first-segment.bin".to_string(),
            pack_replay_input(&snapshot, &segment1, 4, &[]),
        ),
        (
            "segment_replay/golden-snapshot-only.bin".to_string(),
            pack_replay_input(&snapshot, &[], 0, &[]),
        ),
        // Format v2: zstd pages, deltas against kept versions, compressed snapshot chunks.
        (
            "record_decode/golden-v2-0000000000000001.wseg".to_string(),
            v2(SEGMENT1_KEY),
        ),
        (
            "segment_replay/golden-v2-full.bin".to_string(),
            pack_replay_input(&v2(SNAPSHOT_KEY), &v2(SEGMENT1_KEY), 4, &v2(SEGMENT4_KEY)),
        ),
        // Format v3: as v2, records checked with XXH3.
        (
            "record_decode/golden-v3-0000000000000001.wseg".to_string(),
            v3(SEGMENT1_KEY),
        ),
        (
            "segment_replay/golden-v3-full.bin".to_string(),
            pack_replay_input(&v3(SNAPSHOT_KEY), &v3(SEGMENT1_KEY), 4, &v3(SEGMENT4_KEY)),
        ),
        // Format v4: as v3, state roots of keyed 64-byte nodes.
        (
            "segment_replay/golden-v4-full.bin".to_string(),
            pack_replay_input(&v4(SNAPSHOT_KEY), &v4(SEGMENT1_KEY), 4, &v4(SEGMENT4_KEY)),
        ),
        ("wal_frame/golden-wal-le.bin".to_string(), golden_wal(false)),
        ("wal_frame/golden-wal-be.bin".to_string(), golden_wal(true)),
        ("wal_frame/shm-prefix.bin".to_string(), shm_prefix()),
    ];
    for (name, uri) in [
        ("relative", "dir/x"),
        ("file", "file:///abs/dir"),
        ("s3", "s3://my-bucket/some/prefix/"),
        ("s3-bucket-only", "s3://my.bucket-1"),
        ("file-relative", "file://relative"),
        ("s3-dotdot", "s3://bucket/a/../b"),
        ("unknown-scheme", "ftp://host/x"),
    ] {
        seeds.push((format!("target_uri/{name}.txt"), uri.as_bytes().to_vec()));
    }
    seeds
}

#[test]
fn fuzz_seeds_are_derived_from_the_golden_stream() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let seeds = fuzz_seeds();
    if regen_requested() {
        for (rel, bytes) in &seeds {
            let path = dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, bytes).unwrap();
        }
    }
    for (rel, bytes) in seeds {
        let on_disk = fs::read(dir.join(&rel)).unwrap_or_else(|e| {
            panic!("fuzz/seeds/{rel}: {e}; run `{REGEN_ENV}=1 cargo test --test golden`")
        });
        assert!(
            on_disk == bytes,
            "fuzz/seeds/{rel} is not what the golden generator makes; run `{REGEN_ENV}=1 cargo test --test golden`"
        );
    }
    // The golden WAL is what the WAL code reads back: every frame valid, the last a commit.
    let wal = golden_wal(false);
    let header = walstream::wal::WalHeader::parse(wal[..32].try_into().unwrap()).unwrap();
    let mut cursor = walstream::wal::WalCursor::at_start(&header);
    let frame_bytes = cursor.frame_bytes();
    let mut last = None;
    for frame in wal[32..].chunks(frame_bytes) {
        let (h, sum) = cursor.validate(frame).expect("a valid frame");
        cursor.frame += 1;
        cursor.checksum = sum;
        last = Some(h);
    }
    assert_eq!(cursor.frame, 7);
    assert_eq!(last.map(|h| h.db_size_after_commit), Some(3));
    let shm = walstream::wal::ShmHeader::parse(shm_prefix()[..].try_into().unwrap());
    if cfg!(target_endian = "little") {
        let shm = shm.expect("a valid wal-index header");
        assert_eq!(
            (
                shm.mx_frame,
                shm.n_page,
                shm.page_size,
                shm.salt1,
                shm.n_backfill
            ),
            (7, 4, PAGE_SIZE, SALT1, 3)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (b) verify accepts the stream; restore rebuilds every state.

#[test]
fn golden_stream_verifies_and_replays() {
    check_verifies_and_replays(1);
}

#[test]
fn golden_v2_stream_verifies_and_replays() {
    check_verifies_and_replays(2);
}

#[test]
fn golden_v3_stream_verifies_and_replays() {
    check_verifies_and_replays(3);
}

#[test]
fn golden_v4_stream_verifies_and_replays() {
    check_verifies_and_replays(4);
}

fn check_verifies_and_replays(version: u32) {
    let dir = golden_dir_version(version);
    let expected = expected_json_version(version);
    let target = LocalTarget::new(dir.clone());
    let report = verify::verify(&target, &mut |_| {}).unwrap();
    assert_eq!(report.generations.len(), 1);
    let g = &report.generations[0];
    assert_eq!(
        (g.generation, g.page_size, g.snapshot_pages),
        (GENERATION, PAGE_SIZE, SNAPSHOT_PAGES)
    );
    assert_eq!(hex(&g.snapshot_hash), expected.snapshot_hash);
    let last = expected.txns.last().unwrap();
    assert_eq!(
        (g.last_seq, hex(&g.head_hash), g.db_size_pages),
        (last.0, last.2.clone(), last.1)
    );
    assert_eq!(g.last_commit_ms, TXNS[3].commit_time_ms);
    assert_eq!(
        (g.torn_tail.as_deref(), g.ended, g.reason.as_str()),
        (None, false, "new stream")
    );
    let total: u64 = list_files(&dir)
        .iter()
        .filter(|k| k.starts_with("generations/"))
        .map(|k| fs::metadata(dir.join(k)).unwrap().len())
        .sum();
    assert_eq!(report.bytes, total);

    let tmp = tempfile::tempdir().unwrap();
    let mut points = vec![(
        Point::Txn(0),
        SNAPSHOT_PAGES,
        expected.snapshot_image.clone(),
        expected.snapshot_hash.clone(),
    )];
    for (seq, size, chain, img) in &expected.txns {
        points.push((Point::Txn(*seq), *size, img.clone(), chain.clone()));
    }
    points.push((Point::Latest, last.1, last.3.clone(), last.2.clone()));
    // Times: before txn 1, exactly at txn 2's commit, between txn 3 and 4.
    points.push((
        Point::Time(CREATED_MS + 999),
        SNAPSHOT_PAGES,
        expected.snapshot_image.clone(),
        expected.snapshot_hash.clone(),
    ));
    let t2 = &expected.txns[1];
    points.push((
        Point::Time(TXNS[1].commit_time_ms),
        t2.1,
        t2.3.clone(),
        t2.2.clone(),
    ));
    let t3 = &expected.txns[2];
    points.push((
        Point::Time(TXNS[3].commit_time_ms - 1),
        t3.1,
        t3.3.clone(),
        t3.2.clone(),
    ));
    for (i, (point, size, image, head)) in points.into_iter().enumerate() {
        let out = tmp.path().join(format!("restored-{i}.db"));
        let restored =
            restore_to(&dir, &out, point).unwrap_or_else(|e| panic!("restore {point:?}: {e}"));
        assert_eq!(
            restored.bytes,
            u64::from(size) * u64::from(PAGE_SIZE),
            "{point:?}"
        );
        assert_eq!(hex(&restored.summary.head_hash), head, "{point:?}");
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, restored.bytes, "{point:?}");
        assert_eq!(
            hex(blake3::hash(&bytes).as_bytes()),
            image,
            "image at {point:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Bad vectors, derived from the golden files at test time.

fn integrity(e: &ReadError) -> &Integrity {
    match e {
        ReadError::Integrity(i) => i,
        other => panic!("expected an integrity error, got {other:?}"),
    }
}

#[test]
fn flipped_page_byte_is_a_page_hash_mismatch() {
    let (_tmp, root) = golden_copy();
    let path = root.join(SEGMENT1_KEY);
    let mut recs = records(&path);
    // The first Page record: txn 1, page 2. Flip a byte of its data and frame it again, so the
    // frame's check is right and only the page hash can tell.
    let (offset, rec) = recs
        .iter_mut()
        .find(|(_, r)| matches!(r.body, Some(Body::Page(_))))
        .unwrap();
    let Some(Body::Page(p)) = &mut rec.body else {
        unreachable!()
    };
    let mut data = p.data.to_vec();
    data[100] ^= 0x01;
    p.data = data.into();
    let (offset, recorded, computed) = (*offset, hex(&p.hash), hex(&page_hash(&p.data)));
    let rewritten: Vec<pb::Record> = recs.into_iter().map(|(_, r)| r).collect();
    fs::write(&path, file(FileKind::Segment, 1, &rewritten)).unwrap();

    let err = verify_error(&root);
    assert_eq!(
        err.to_string(),
        format!("generation 1, txn 1, page 2 ({SEGMENT1_KEY} at offset {offset}): page hash mismatch: recorded {recorded}, computed {computed}")
    );
    let i = integrity(&err);
    assert_eq!((i.seq, i.pgno, i.offset), (Some(1), Some(2), Some(offset)));
    // A restore reads the same bytes and refuses them the same way, leaving no output.
    let out = root.parent().unwrap().join("out.db");
    let e = restore_to(&root, &out, Point::Latest).unwrap_err();
    assert!(e.to_string().contains("page hash mismatch"), "{e}");
    assert!(!out.exists());
}

#[test]
fn flipped_snapshot_page_byte_is_a_page_hash_mismatch() {
    let (_tmp, root) = golden_copy();
    let path = root.join(SNAPSHOT_KEY);
    let mut recs = records(&path);
    // The second chunk holds page 3 alone.
    let (offset, rec) = recs
        .iter_mut()
        .filter(|(_, r)| matches!(r.body, Some(Body::SnapshotChunk(_))))
        .nth(1)
        .unwrap();
    let Some(Body::SnapshotChunk(c)) = &mut rec.body else {
        unreachable!()
    };
    c.data[7] ^= 0x80;
    let (offset, recorded, computed) = (*offset, hex(&c.hashes[0]), hex(&page_hash(&c.data)));
    let rewritten: Vec<pb::Record> = recs.into_iter().map(|(_, r)| r).collect();
    fs::write(&path, file(FileKind::Snapshot, 1, &rewritten)).unwrap();

    assert_eq!(
        verify_error(&root).to_string(),
        format!("generation 1, page 3 ({SNAPSHOT_KEY} at offset {offset}): page hash mismatch: recorded {recorded}, computed {computed}")
    );
}

#[test]
fn flipped_byte_without_reframing_is_a_corrupt_record() {
    let (_tmp, root) = golden_copy();
    let path = root.join(SEGMENT1_KEY);
    let recs = records(&path);
    let (offset, _) = recs
        .iter()
        .find(|(_, r)| matches!(r.body, Some(Body::Page(_))))
        .unwrap();
    let mut bytes = fs::read(&path).unwrap();
    bytes[*offset as usize + 200] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_eq!(
        verify_error(&root).to_string(),
        format!("{SEGMENT1_KEY}: record at offset {offset}: checksum mismatch (corrupt record)")
    );
}

#[test]
fn changed_version_byte_is_an_unknown_format_version() {
    for key in [SNAPSHOT_KEY, SEGMENT1_KEY, SEGMENT4_KEY] {
        let (_tmp, root) = golden_copy();
        let path = root.join(key);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 5;
        fs::write(&path, bytes).unwrap();
        assert_eq!(
            verify_error(&root).to_string(),
            format!("{key}: unknown format version 5 (this build reads versions 1 to 4)"),
            "version changed in {key}"
        );
    }
}

#[test]
fn missing_segment_is_named() {
    // Without segment 1, segment 4 follows the snapshot directly.
    let (_tmp, root) = golden_copy();
    fs::remove_file(root.join(SEGMENT1_KEY)).unwrap();
    let err = verify_error(&root);
    assert_eq!(
        err.to_string(),
        format!("generation 1, txn 1 ({SEGMENT4_KEY}): segment starts at txn 4 but txn 1 comes next (a segment is missing or extra)")
    );
    assert!(err.to_string().contains("a segment is missing"));
}

#[test]
fn truncated_last_segment_is_incomplete() {
    let (_tmp, root) = golden_copy();
    let path = root.join(SEGMENT4_KEY);
    let recs = records(&path);
    let (commit_offset, _) = *recs.last().unwrap();
    assert!(matches!(
        recs.last().unwrap().1.body,
        Some(Body::TxnCommit(_))
    ));
    let bytes = fs::read(&path).unwrap();

    // Cut inside the commit record of txn 4.
    fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = verify_error(&root);
    assert_eq!(
        err.to_string(),
        format!(
            "generation 1 ({SEGMENT4_KEY}: record at offset {commit_offset} truncated (file ends inside it)): the stream \
             ends with an incomplete record or transaction (a writer stopped mid-append, or the file was truncated)"
        )
    );
    assert!(err.to_string().contains("incomplete"));

    // Cut at the record boundary before the commit: txn 4 has pages but no commit.
    fs::write(&path, &bytes[..commit_offset as usize]).unwrap();
    assert_eq!(
        verify_error(&root).to_string(),
        format!(
            "generation 1 ({SEGMENT4_KEY}: txn 4 is incomplete (a writer stopped mid-append)): the stream ends with an \
             incomplete record or transaction (a writer stopped mid-append, or the file was truncated)"
        )
    );

    // A restore of the latest state stops at the last complete transaction, txn 3.
    let expected = expected_json();
    let out = root.parent().unwrap().join("out.db");
    let restored = restore_to(&root, &out, Point::Latest).unwrap();
    assert_eq!(restored.summary.last_seq, 3);
    assert_eq!(
        hex(blake3::hash(&fs::read(&out).unwrap()).as_bytes()),
        expected.txns[2].3
    );
}

#[test]
fn truncated_sealed_segment_is_an_error_not_a_torn_tail() {
    // Only the last segment may end early; a cut in segment 1 (which segment 4 follows) is
    // damage.
    let (_tmp, root) = golden_copy();
    let path = root.join(SEGMENT1_KEY);
    let (end_offset, _) = *records(&path).last().unwrap();
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(
        verify_error(&root).to_string(),
        format!("{SEGMENT1_KEY}: record at offset {end_offset} truncated (file ends inside it)")
    );
}

// ---------------------------------------------------------------------------------------------
// (e) Format version 2: compressed pages and deltas against kept versions.

/// Rewrites a segment of format `version` with `records`, framed afresh.
fn rewrite(path: &Path, version: u32, records: &[(u64, pb::Record)]) {
    let records: Vec<pb::Record> = records.iter().map(|(_, r)| r.clone()).collect();
    fs::write(path, file(FileKind::Segment, version, &records)).unwrap();
}

fn page_of(r: &pb::Record) -> Option<&pb::Page> {
    match &r.body {
        Some(Body::Page(p)) => Some(p),
        _ => None,
    }
}

#[test]
fn golden_v2_holds_compressed_pages_deltas_and_the_v1_hashes() {
    let pages: Vec<pb::Page> = records(&golden_dir_version(2).join(SEGMENT1_KEY))
        .iter()
        .filter_map(|(_, r)| page_of(r).cloned())
        .collect();
    assert!(
        pages.iter().all(|p| p.data.is_empty() && p.kept),
        "every page compressed and kept"
    );
    assert!(
        pages.iter().any(|p| !p.zstd.is_empty()),
        "a standalone page"
    );
    assert!(
        pages.iter().any(|p| !p.zstd_delta.is_empty()),
        "a delta page"
    );
    // Hashes cover the uncompressed pages, so both versions have the same chain and images.
    let v1 = fs::read_to_string(golden_dir_version(1).join("expected.json")).unwrap();
    let v2 = fs::read_to_string(golden_dir_version(2).join("expected.json")).unwrap();
    assert_eq!(
        v2.replace("\"format_version\": 2", "\"format_version\": 1"),
        v1
    );
}

#[test]
fn flipped_byte_in_a_delta_page_is_named_with_its_place() {
    let src = golden_dir_version(2).join(SEGMENT1_KEY);
    let recs = records(&src);
    let (at, seq, pgno, len) = {
        let mut seq = 0;
        let mut found = None;
        for (i, (_, r)) in recs.iter().enumerate() {
            match &r.body {
                Some(Body::TxnBegin(b)) => seq = b.seq,
                Some(Body::Page(p)) if !p.zstd_delta.is_empty() && found.is_none() => {
                    found = Some((i, seq, p.pgno, p.zstd_delta.len()))
                }
                _ => {}
            }
        }
        found.expect("the golden v2 segment holds a delta page")
    };
    for byte in 0..len {
        for bit in [0x01u8, 0x80] {
            let (_tmp, root) = golden_copy_version(2);
            let mut damaged = recs.clone();
            let Some(Body::Page(p)) = &mut damaged[at].1.body else {
                unreachable!()
            };
            let mut delta = p.zstd_delta.to_vec();
            delta[byte] ^= bit;
            p.zstd_delta = delta.into();
            rewrite(&root.join(SEGMENT1_KEY), 2, &damaged);
            let e = verify_error(&root);
            let i = integrity(&e);
            assert_eq!(
                (i.generation, i.seq, i.pgno, i.key.as_str()),
                (GENERATION, Some(seq), Some(pgno), SEGMENT1_KEY),
                "byte {byte} bit {bit:#x}: {e}"
            );
        }
    }
}

#[test]
fn delta_page_without_a_kept_base_is_refused() {
    let (_tmp, root) = golden_copy_version(2);
    let path = root.join(SEGMENT1_KEY);
    let mut recs = records(&path);
    let delta = recs
        .iter()
        .position(|(_, r)| page_of(r).is_some_and(|p| !p.zstd_delta.is_empty()))
        .unwrap();
    let pgno = page_of(&recs[delta].1).unwrap().pgno;
    for (_, r) in recs[..delta].iter_mut() {
        if let Some(Body::Page(p)) = &mut r.body {
            if p.pgno == pgno {
                p.kept = false;
            }
        }
    }
    rewrite(&path, 2, &recs);
    let e = verify_error(&root);
    assert_eq!(integrity(&e).pgno, Some(pgno), "{e}");
    assert!(
        e.to_string()
            .contains("delta page with no kept version of the page earlier in the segment"),
        "{e}"
    );
}

#[test]
fn version_2_page_fields_in_a_version_1_file_are_refused() {
    let (_tmp, root) = golden_copy_version(2);
    let path = root.join(SEGMENT1_KEY);
    let recs = records(&path);
    rewrite(&path, 1, &recs);
    let e = verify_error(&root);
    assert!(
        e.to_string()
            .contains("version 2 page fields in a version 1 file"),
        "{e}"
    );
}

#[test]
fn flipped_byte_in_a_compressed_snapshot_chunk_is_named() {
    let src = golden_dir_version(2).join(SNAPSHOT_KEY);
    let recs = records(&src);
    let at = recs
        .iter()
        .position(|(_, r)| matches!(&r.body, Some(Body::SnapshotChunk(c)) if !c.zstd.is_empty()))
        .unwrap();
    let Some(Body::SnapshotChunk(c)) = &recs[at].1.body else {
        unreachable!()
    };
    assert!(c.data.is_empty(), "a compressed chunk holds no raw pages");
    let (first, last, len) = (
        c.first_pgno,
        c.first_pgno + c.hashes.len() as u32 - 1,
        c.zstd.len(),
    );
    for byte in 0..len {
        let (_tmp, root) = golden_copy_version(2);
        let mut damaged = recs.clone();
        let Some(Body::SnapshotChunk(c)) = &mut damaged[at].1.body else {
            unreachable!()
        };
        c.zstd[byte] ^= 0x01;
        let records: Vec<pb::Record> = damaged.into_iter().map(|(_, r)| r).collect();
        fs::write(
            root.join(SNAPSHOT_KEY),
            file(FileKind::Snapshot, 2, &records),
        )
        .unwrap();
        let e = verify_error(&root);
        let i = integrity(&e);
        assert_eq!(
            (i.generation, i.key.as_str()),
            (GENERATION, SNAPSHOT_KEY),
            "byte {byte}: {e}"
        );
        assert!(
            i.pgno.is_some_and(|p| (first..=last).contains(&p)),
            "byte {byte}: {e}"
        );
    }
}

/// Version 3 changed only the record checksum: the same records at the same offsets as in
/// version 2, and each file's checks are XXH3-64 of the record bodies.
#[test]
fn golden_v3_holds_the_v2_records_checked_with_xxh3() {
    for key in [SNAPSHOT_KEY, SEGMENT1_KEY, SEGMENT4_KEY] {
        let v2 = fs::read(golden_dir_version(2).join(key)).unwrap();
        let v3 = fs::read(golden_dir_version(3).join(key)).unwrap();
        assert_eq!(v2.len(), v3.len(), "{key}");
        assert_eq!(
            records(&golden_dir_version(2).join(key)),
            records(&golden_dir_version(3).join(key)),
            "{key}"
        );
        // Walk the framing by hand: length, body, XXH3-64(body) little-endian.
        let mut at = 16;
        while at < v3.len() {
            let len = u32::from_le_bytes(v3[at..at + 4].try_into().unwrap()) as usize;
            let body = &v3[at + 4..at + 4 + len];
            let check = &v3[at + 4 + len..at + 12 + len];
            assert_eq!(
                check,
                xxhash_rust::xxh3::xxh3_64(body).to_le_bytes(),
                "{key} at {at}"
            );
            at += 12 + len;
        }
        assert_eq!(at, v3.len(), "{key}");
    }
    let v2 = fs::read_to_string(golden_dir_version(2).join("expected.json")).unwrap();
    let v3 = fs::read_to_string(golden_dir_version(3).join("expected.json")).unwrap();
    assert_eq!(
        v3.replace("\"format_version\": 3", "\"format_version\": 2"),
        v2
    );
}

/// A version 2 file relabelled version 3 fails on its first record's checksum.
#[test]
fn golden_v2_file_relabelled_v3_is_a_corrupt_record() {
    let (_tmp, root) = golden_copy_version(2);
    let path = root.join(SEGMENT1_KEY);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 3;
    fs::write(&path, bytes).unwrap();
    assert_eq!(
        verify_error(&root).to_string(),
        format!("{SEGMENT1_KEY}: record at offset 16: checksum mismatch (corrupt record)")
    );
}

/// Version 4 changed how state roots are computed, and lets a segment continue the kept page
/// versions of the one before it: the version 3 records at the same offsets but for the roots
/// and the chain hashes that cover them (same lengths: 32 bytes each), and the second segment
/// with a `KeptContinued` record after its header and its page stored as a delta against the
/// version kept in the first segment.
#[test]
fn golden_v4_holds_the_v3_records_with_v4_roots() {
    for key in [SNAPSHOT_KEY, SEGMENT1_KEY, SEGMENT4_KEY] {
        let v3 = records(&golden_dir_version(3).join(key));
        let mut v4 = records(&golden_dir_version(4).join(key));
        let continued = key == SEGMENT4_KEY;
        if continued {
            assert!(
                matches!(v4[1].1.body, Some(Body::KeptContinued(_))),
                "{key}"
            );
            v4.remove(1);
        }
        assert_eq!(v3.len(), v4.len(), "{key}");
        for ((at3, r3), (at4, mut r4)) in v3.into_iter().zip(v4) {
            if !continued {
                assert_eq!(at3, at4, "{key}");
            }
            match (&r3.body, &mut r4.body) {
                (Some(Body::Page(p3)), Some(Body::Page(p4))) if continued => {
                    assert!(!p3.zstd.is_empty() && !p4.zstd_delta.is_empty(), "{key}");
                    p4.zstd_delta = p3.zstd_delta.clone();
                    p4.zstd = p3.zstd.clone();
                }
                (Some(Body::TxnCommit(c3)), Some(Body::TxnCommit(c4))) => {
                    assert_ne!(c3.state_root, c4.state_root, "{key} txn {}", c3.seq);
                    assert_ne!(c3.hash, c4.hash, "{key} txn {}", c3.seq);
                    c4.state_root = c3.state_root.clone();
                    c4.hash = c3.hash.clone();
                }
                (Some(Body::SnapshotEnd(e3)), Some(Body::SnapshotEnd(e4))) => {
                    assert_ne!(e3.state_root, e4.state_root, "{key}");
                    e4.state_root = e3.state_root.clone();
                }
                (Some(Body::SegmentHeader(h3)), Some(Body::SegmentHeader(h4)))
                    if h3.first_seq > 1 =>
                {
                    h4.prev_hash = h3.prev_hash.clone();
                }
                _ => {}
            }
            assert_eq!(r3, r4, "{key} at {at3}");
        }
    }
}

/// The version 4 state roots, computed from FORMAT.md ("State roots") by hand: BLAKE3 keyed
/// with the 32 ASCII bytes `walstream/v4/state-tree/node-key` over the two children, a tree of
/// height max(6, ceil(log2(page_count))) whose missing leaves are 32 zero bytes, wrapped with
/// the domain `walstream/root/v4`, the page size and the page count.
#[test]
fn golden_v4_state_roots_follow_the_documented_definition() {
    fn by_hand(image: &[u8]) -> String {
        let leaves: Vec<Hash> = image.chunks(PAGE_SIZE as usize).map(hash_bytes).collect();
        let n = leaves.len();
        let mut height = 6;
        while (1usize << height) < n {
            height += 1;
        }
        let mut level = leaves;
        level.resize(1 << height, [0; 32]);
        while level.len() > 1 {
            level = level
                .chunks(2)
                .map(|pair| {
                    let mut h = blake3::Hasher::new_keyed(b"walstream/v4/state-tree/node-key");
                    h.update(&pair[0]).update(&pair[1]);
                    *h.finalize().as_bytes()
                })
                .collect();
        }
        let mut bytes = b"walstream/root/v4".to_vec();
        bytes.extend_from_slice(&PAGE_SIZE.to_le_bytes());
        bytes.extend_from_slice(&(n as u32).to_le_bytes());
        bytes.extend_from_slice(&level[0]);
        hex(&hash_bytes(&bytes))
    }
    let dir = golden_dir_version(4);
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let restored = tempfile::tempdir().unwrap();
    let mut roots = vec![(
        "snapshot".to_string(),
        json["snapshot"]["state_root"].clone(),
    )];
    for t in json["txns"].as_array().unwrap() {
        roots.push((t["seq"].to_string(), t["state_root"].clone()));
    }
    for (i, (what, expected)) in roots.into_iter().enumerate() {
        let out = restored.path().join(format!("{i}.db"));
        restore_to(&dir, &out, Point::Txn(i as u64)).unwrap();
        let image = fs::read(&out).unwrap();
        assert_eq!(by_hand(&image), expected.as_str().unwrap(), "{what}");
    }
    // And the recorded ones (the chain covers them).
    for (_, r) in records(&dir.join(SEGMENT1_KEY)) {
        if let Some(Body::TxnCommit(c)) = r.body {
            let t = &json["txns"][(c.seq - 1) as usize];
            assert_eq!(hex(&c.state_root), t["state_root"].as_str().unwrap());
        }
    }
}

/// A version 3 file relabelled version 4 frames and chains as before, but its recorded roots
/// are not version 4's: the first state root check names it.
#[test]
fn golden_v3_file_relabelled_v4_is_a_state_root_mismatch() {
    let (_tmp, root) = golden_copy_version(3);
    let path = root.join(SEGMENT1_KEY);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 4;
    fs::write(&path, bytes).unwrap();
    let e = verify_error(&root).to_string();
    // The root computed is version 4's for the same image.
    let v4: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(golden_dir_version(4).join("expected.json")).unwrap(),
    )
    .unwrap();
    let v4_root = v4["txns"][0]["state_root"].as_str().unwrap();
    assert!(
        e.starts_with(&format!("generation 1, txn 1 ({SEGMENT1_KEY} at offset "))
            && e.contains("state root mismatch: recorded ")
            && e.ends_with(&format!(", computed {v4_root}")),
        "{e}"
    );
}

/// The version 4 second segment without its `KeptContinued`: its page's base is in the first
/// segment, which it no longer continues.
#[test]
fn golden_v4_delta_across_segments_needs_the_kept_continued_record() {
    let (_tmp, root) = golden_copy_version(4);
    let path = root.join(SEGMENT4_KEY);
    let mut recs = records(&path);
    assert!(matches!(recs[1].1.body, Some(Body::KeptContinued(_))));
    recs.remove(1);
    rewrite(&path, 4, &recs);
    let e = verify_error(&root).to_string();
    assert!(
        e.starts_with(&format!("generation 1, txn 4, page 3 ({SEGMENT4_KEY} at offset "))
            && e.ends_with("delta page with no kept version of the page earlier in the segment (or the segments it continues)"),
        "{e}"
    );
}

/// A `KeptContinued` where none may be: in a version 3 file, in a generation's first segment,
/// after a transaction, twice.
#[test]
fn misplaced_kept_continued_records_are_named() {
    let marker = || rec(Body::KeptContinued(pb::KeptContinued {}));
    let cases: [(u32, &str, usize, &str); 4] = [
        (3, SEGMENT4_KEY, 1, "a kept-continued record (version 4) in a version 3 file"),
        (
            4,
            SEGMENT1_KEY,
            1,
            "the segment continues the kept page versions of the one before it, which does not exist (a generation's first segment has none)",
        ),
        (
            4,
            SEGMENT1_KEY,
            5,
            "a kept-continued record after the segment's first transaction, or twice",
        ),
        (
            4,
            SEGMENT4_KEY,
            1,
            "a kept-continued record after the segment's first transaction, or twice",
        ),
    ];
    for (version, key, at, problem) in cases {
        let (_tmp, root) = golden_copy_version(version);
        let path = root.join(key);
        let mut recs = records(&path);
        recs.insert(at, (0, marker()));
        rewrite(&path, version, &recs);
        let e = verify_error(&root).to_string();
        assert!(
            e.starts_with(&format!("generation 1 ({key} at offset ")) && e.ends_with(problem),
            "v{version} {key} at {at}: {e}"
        );
    }
}
