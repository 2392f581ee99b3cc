//! The validating replay (`reader::replay`, `verify::verify`, `restore`) over arbitrary
//! snapshot and segment files in a local target.
//!
//! Input layout (see README.md; `fuzz/seeds/segment_replay/` holds golden streams in it):
//!
//! ```text
//! snapshot length u16 LE | segment 1 length u16 LE | first_seq of segment 2 (u8) |
//! snapshot bytes | segment 1 bytes | segment 2 bytes (the rest; no file if empty)
//! ```
//! written as `generations/0000000000000001/snapshot.wsnap`, `.../0000000000000001.wseg` and
//! `.../<first_seq:016x>.wseg`. Lengths past the end of the input are clamped.
//!
//! Every entry point must return an error, never panic. A visitor checks what replay hands
//! out: snapshot pages numbered from 1 in order, page sizes that match, no page 0 (restore
//! computes `(pgno - 1) * page_size`).
#![no_main]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walstream::reader::{self, ReadError, ReplayLimit, Visitor};
use walstream::record::pb;
use walstream::restore::{self, Point, RestoreOptions};
use walstream::target::LocalTarget;
use walstream::{layout, verify};

/// A scratch directory for this process: `<tmp>/walstream-fuzz-segment-replay-<pid>`.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "walstream-fuzz-segment-replay-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Checks what replay reports; tracks the largest page offset, to keep restores small.
#[derive(Default)]
struct Checker {
    page_size: u32,
    next_snapshot_pgno: u32,
    max_pgno: u32,
}

impl Visitor for Checker {
    fn snapshot_header(&mut self, h: &pb::SnapshotHeader) -> Result<(), ReadError> {
        self.page_size = h.page_size;
        self.next_snapshot_pgno = 1;
        Ok(())
    }
    fn snapshot_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        assert_eq!(pgno, self.next_snapshot_pgno, "snapshot pages out of order");
        assert_eq!(
            data.len(),
            self.page_size as usize,
            "snapshot page of the wrong size"
        );
        self.next_snapshot_pgno += 1;
        self.max_pgno = self.max_pgno.max(pgno);
        Ok(())
    }
    fn txn_page(&mut self, _seq: u64, pgno: u32, data: &[u8]) -> Result<(), ReadError> {
        assert!(pgno >= 1, "replay handed out page 0");
        if self.page_size != 0 {
            assert_eq!(
                data.len(),
                self.page_size as usize,
                "txn page of the wrong size"
            );
        }
        self.max_pgno = self.max_pgno.max(pgno);
        Ok(())
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let snapshot_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let segment_len = usize::from(u16::from_le_bytes([data[2], data[3]]));
    let second_first_seq = u64::from(data[4]);
    let mut rest = &data[5..];
    let snapshot = take(&mut rest, snapshot_len);
    let segment1 = take(&mut rest, segment_len);
    let segment2 = rest;

    let root = scratch().join("target");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join(layout::generation_dir(1))).unwrap();
    fs::write(root.join(layout::snapshot_key(1)), snapshot).unwrap();
    fs::write(root.join(layout::segment_key(1, 1)), segment1).unwrap();
    if !segment2.is_empty() {
        fs::write(
            root.join(layout::segment_key(1, second_first_seq)),
            segment2,
        )
        .unwrap();
    }
    let target = LocalTarget::new(root);

    let _ = verify::verify(&target, &mut |_| {}).map_err(|e| e.to_string());
    let Ok(objects) = reader::latest_generation(&target) else {
        return;
    };
    let mut checker = Checker::default();
    let replayed = reader::replay(&target, &objects, ReplayLimit::All, &mut checker);
    let _ = replayed.as_ref().map_err(|e| e.to_string());

    // The points a restore resolves, replayed to.
    for point in [Point::Latest, Point::Txn(2), Point::Time(1_700_000_002_500)] {
        let opts = RestoreOptions {
            point,
            generation: None,
            force: true,
        };
        if let Ok((objects, seq)) = restore::resolve(&target, &opts) {
            let _ = reader::replay(
                &target,
                &objects,
                ReplayLimit::Txn(seq),
                &mut Checker::default(),
            );
        }
    }

    // A real restore, when the stream is sound and the output stays small.
    if let Ok(summary) = replayed {
        let bytes = u64::from(checker.max_pgno.max(summary.db_size_pages))
            * u64::from(summary.page_size.max(512));
        if bytes <= 16 << 20 {
            let out = scratch().join("restored.db");
            let opts = RestoreOptions {
                point: Point::Latest,
                generation: None,
                force: true,
            };
            match restore::restore(&target, &out, &opts, &mut |_| {}) {
                Ok(r) => assert_eq!(fs::metadata(&out).unwrap().len(), r.bytes),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
            let _ = fs::remove_file(&out);
        }
    }
});
