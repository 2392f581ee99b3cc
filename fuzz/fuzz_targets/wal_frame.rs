//! SQLite WAL and wal-index parsing over arbitrary bytes.
//!
//! `WalHeader::parse` on the first 32 bytes, `ShmHeader::parse` on a 136-byte prefix, then a
//! `WalCursor` walks the frames after the header with `next_frame` over a `ReadAt` backed by a
//! `Vec`. When the header does not parse, the cursor is built from its raw fields anyway (with a
//! valid page size), so that frame validation is reached without a valid header checksum.
//!
//! Checked on the way: a header that parses encodes back to the same 32 bytes, `read` agrees
//! with `parse`, every accepted frame has a page number, and re-encoding an accepted frame with
//! `encode_frame` from the same position gives the same bytes and the same next position.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use walstream::wal::{
    is_valid_page_size, ReadAt, ShmHeader, WalCursor, WalHeader, FRAME_HEADER_BYTES,
    SHM_PREFIX_BYTES, WAL_HEADER_BYTES,
};

struct VecFile(Vec<u8>);

impl ReadAt for VecFile {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.0.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&mut self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.get(..SHM_PREFIX_BYTES) {
        if let Some(h) = ShmHeader::parse(prefix.try_into().unwrap()) {
            let _ = (h.mx_frame, h.n_page, h.page_size, h.n_backfill);
        }
    }

    let mut file = VecFile(data.to_vec());
    let read = WalHeader::read(&mut file);
    let Some(raw) = data.get(..WAL_HEADER_BYTES) else {
        assert!(matches!(read, Ok(None)), "a short WAL has no header");
        return;
    };
    let raw: &[u8; WAL_HEADER_BYTES] = raw.try_into().unwrap();
    let parsed = WalHeader::parse(raw);
    match (&parsed, &read) {
        (Ok(p), Ok(Some(r))) => assert_eq!(p, r),
        (Err(_), Err(_)) => {}
        _ => panic!("WalHeader::read and ::parse disagree: {parsed:?} vs {read:?}"),
    }
    let mut cursor = match parsed {
        Ok(h) => {
            assert_eq!(
                &h.encode(),
                raw,
                "a parsed header encodes back to its bytes"
            );
            assert!(is_valid_page_size(h.page_size));
            let c = WalCursor::at_start(&h);
            assert!(c.same_wal(&h));
            c
        }
        Err(e) => {
            let _ = e.to_string();
            let page_size = be32(raw, 8);
            WalCursor {
                salt1: be32(raw, 16),
                salt2: be32(raw, 20),
                page_size: if is_valid_page_size(page_size) {
                    page_size
                } else {
                    512
                },
                big_endian_checksum: raw[3] & 1 == 1,
                frame: 0,
                checksum: (be32(raw, 24), be32(raw, 28)),
            }
        }
    };

    let size = data.len() as u64;
    let mut buf = Vec::new();
    loop {
        let before = cursor;
        match cursor.next_frame(&mut file, size, &mut buf) {
            Ok(Some(frame)) => {
                assert_eq!(cursor.frame, before.frame + 1);
                assert_ne!(frame.pgno, 0, "an accepted frame has a page number");
                assert_eq!(buf.len(), before.frame_bytes());
                assert_eq!(before.validate(&buf), Some((frame, cursor.checksum)));
                let mut writer = before;
                let encoded = writer.encode_frame(
                    frame.pgno,
                    frame.db_size_after_commit,
                    &buf[FRAME_HEADER_BYTES..],
                );
                assert_eq!(encoded, buf, "an accepted frame encodes back to its bytes");
                assert_eq!(writer, cursor);
            }
            Ok(None) => {
                assert_eq!(cursor, before, "a rejected frame does not move the cursor");
                break;
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
