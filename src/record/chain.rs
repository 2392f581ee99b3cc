//! The hash chain. Hashes cover field values in a fixed little-endian layout, never protobuf
//! bytes, so any implementation can recompute them (docs/FORMAT.md, "Hashes").
//!
//! ```text
//! page hash     = BLAKE3(page image)
//! snapshot hash = BLAKE3("walstream/snp/v1" | generation u64 | page_size u32 |
//!                        prev_generation_hash (32 bytes, zeros if none) |
//!                        { pgno u32 | page hash }* | page_count u32)
//! txn hash      = BLAKE3("walstream/txn/v1" | generation u64 | seq u64 | prev hash |
//!                        { pgno u32 | page hash }* | page_count u32 | db_size_pages u32 |
//!                        commit_time_ms i64 | state_root (32 bytes))
//! ```
//! Transaction 1's prev hash is the snapshot hash; transaction n's is transaction n-1's hash.

use super::Hash;

const TXN_DOMAIN: &[u8; 16] = b"walstream/txn/v1";
const SNAPSHOT_DOMAIN: &[u8; 16] = b"walstream/snp/v1";

pub fn page_hash(page: &[u8]) -> Hash {
    *blake3::hash(page).as_bytes()
}

/// Incremental hash of one transaction, fed page by page as the transaction is streamed.
pub struct TxnHasher {
    hasher: blake3::Hasher,
    pages: u32,
}

impl TxnHasher {
    pub fn new(generation: u64, seq: u64, prev: &Hash) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(TXN_DOMAIN);
        hasher.update(&generation.to_le_bytes());
        hasher.update(&seq.to_le_bytes());
        hasher.update(prev);
        Self { hasher, pages: 0 }
    }

    pub fn page(&mut self, pgno: u32, hash: &Hash) {
        self.hasher.update(&pgno.to_le_bytes());
        self.hasher.update(hash);
        self.pages += 1;
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    pub fn finish(mut self, db_size_pages: u32, commit_time_ms: i64, state_root: &Hash) -> Hash {
        self.hasher.update(&self.pages.to_le_bytes());
        self.hasher.update(&db_size_pages.to_le_bytes());
        self.hasher.update(&commit_time_ms.to_le_bytes());
        self.hasher.update(state_root);
        *self.hasher.finalize().as_bytes()
    }
}

/// Incremental hash of a snapshot, fed page by page in page-number order.
pub struct SnapshotHasher {
    hasher: blake3::Hasher,
    pages: u32,
}

impl SnapshotHasher {
    pub fn new(generation: u64, page_size: u32, prev_generation: Option<&Hash>) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(SNAPSHOT_DOMAIN);
        hasher.update(&generation.to_le_bytes());
        hasher.update(&page_size.to_le_bytes());
        hasher.update(prev_generation.unwrap_or(&[0u8; 32]));
        Self { hasher, pages: 0 }
    }

    pub fn page(&mut self, pgno: u32, hash: &Hash) {
        self.hasher.update(&pgno.to_le_bytes());
        self.hasher.update(hash);
        self.pages += 1;
    }

    pub fn finish(mut self) -> Hash {
        self.hasher.update(&self.pages.to_le_bytes());
        *self.hasher.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_hash_depends_on_every_input() {
        let base = || {
            let mut h = TxnHasher::new(1, 2, &[3; 32]);
            h.page(4, &[5; 32]);
            h
        };
        let reference = base().finish(6, 7, &[9; 32]);
        assert_ne!(reference, base().finish(6, 8, &[9; 32]));
        assert_ne!(reference, base().finish(5, 7, &[9; 32]));
        assert_ne!(reference, base().finish(6, 7, &[8; 32]));
        let mut other = TxnHasher::new(1, 3, &[3; 32]);
        other.page(4, &[5; 32]);
        assert_ne!(reference, other.finish(6, 7, &[9; 32]));
        let mut other = TxnHasher::new(1, 2, &[3; 32]);
        other.page(4, &[6; 32]);
        assert_ne!(reference, other.finish(6, 7, &[9; 32]));
    }

    #[test]
    fn txn_hash_layout_is_pinned() {
        // The documented byte layout, spelled out by hand.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"walstream/txn/v1");
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&[3; 32]);
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&[5; 32]);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(&7i64.to_le_bytes());
        bytes.extend_from_slice(&[9; 32]);
        let mut h = TxnHasher::new(1, 2, &[3; 32]);
        h.page(4, &[5; 32]);
        assert_eq!(h.finish(6, 7, &[9; 32]), *blake3::hash(&bytes).as_bytes());
    }
}
