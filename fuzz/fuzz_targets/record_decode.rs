//! Record framing and protobuf decoding over arbitrary bytes.
//!
//! `RecordReader::new` checks the 16-byte file header, then every record is read until the end
//! or the first error. The same bytes are also read as records with no file header
//! (`RecordReader::resume`), so that mutations reach the framing without having to keep the
//! magic intact. Must never panic, and never allocate more than one record
//! (`RECORD_BYTES_MAX`) whatever the length fields say.
//!
//! Checked on the way: offsets only grow and stay inside the input, every record that decodes
//! survives an encode/decode round trip unchanged, and every `Page` record goes through the
//! page decoder of its file's version (`record::page::PageDecoder`, format v2's zstd and delta
//! pages), which must return at most one page and never keep more than `KEPT_BYTES_MAX`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walstream::record::frame::{encode_record, FileKind, RecordReader, FORMAT_VERSION, RECORD_BYTES_MAX};
use walstream::record::page::{PageDecoder, KEPT_BYTES_MAX, PAGE_BYTES_MAX};
use walstream::record::pb::{self, record::Body};

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = RecordReader::new(data) {
        let kind = reader.kind();
        read_all(reader, data.len() as u64, kind);
    }
    let kind = if data.first().is_some_and(|b| b & 1 == 1) {
        FileKind::Snapshot
    } else {
        FileKind::Segment
    };
    read_all(RecordReader::resume(data, kind, FORMAT_VERSION, 0), data.len() as u64, kind);
});

fn read_all(mut reader: RecordReader<&[u8]>, input_len: u64, kind: FileKind) {
    let start = reader.offset();
    let mut last = None;
    let mut pages = PageDecoder::new(reader.version());
    loop {
        match reader.next_record() {
            Ok(Some((offset, record))) => {
                assert!(last.is_none_or(|l| offset > l), "offsets must grow");
                assert!(
                    reader.offset() <= start + input_len,
                    "offset past the input"
                );
                assert!(record.body.is_some(), "an empty record was returned");
                roundtrip(&record, reader.offset() - offset, kind);
                if let Some(Body::Page(p)) = &record.body {
                    if let Ok(page) = pages.decode(p, PAGE_BYTES_MAX) {
                        assert!(page.len() <= PAGE_BYTES_MAX, "a decoded page is larger than any page");
                    }
                    assert!(pages.kept_bytes() <= KEPT_BYTES_MAX, "kept more than the limit");
                }
                last = Some(offset);
            }
            Ok(None) => break,
            Err(e) => {
                // Formatting the error must not panic either.
                let _ = e.to_string();
                let _ = e.is_torn_tail();
                break;
            }
        }
    }
}

/// A decoded record, encoded again and decoded again, is the same record.
fn roundtrip(record: &pb::Record, framed_len: u64, kind: FileKind) {
    // Re-encoding may grow a record a little (a non-minimal varint of a negative enum value
    // becomes 10 bytes); stay far from the limit that `encode_record` asserts.
    if framed_len > (RECORD_BYTES_MAX / 4) as u64 {
        return;
    }
    let mut buf = Vec::new();
    encode_record(record, FORMAT_VERSION, &mut buf);
    let mut again = RecordReader::resume(&buf[..], kind, FORMAT_VERSION, 0);
    match again.next_record() {
        Ok(Some((0, decoded))) => assert_eq!(
            &decoded, record,
            "record changed in an encode/decode round trip"
        ),
        other => panic!("re-encoded record does not read back: {other:?}"),
    }
    assert!(matches!(again.next_record(), Ok(None)));
}
