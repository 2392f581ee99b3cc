//! The stream's records: protobuf messages (`pb`), the framing that stores them in files
//! (`frame`), and the hash chain (`chain`). Specified in docs/FORMAT.md.

pub mod chain;
pub mod delta;
pub mod frame;
pub mod page;

/// Types generated from `proto/walstream.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/walstream.v1.rs"));
}

pub use frame::{FileKind, RecordError, RecordReader, RecordWriter, FORMAT_VERSION};

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// Converts a hash field of a decoded record, which must be exactly 32 bytes.
pub fn hash_field(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

/// Lower-case hex of a hash, for messages and listings.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
