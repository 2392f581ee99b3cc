//! State roots: one hash that commits to a whole database image, so that a validator can prove
//! that a database file equals the state after transaction N without replaying the stream.
//!
//! The root is a Merkle tree of fixed height 32 over the page hashes (leaf `i` is page `i + 1`;
//! pages past the end of the database are empty leaves), wrapped with the page size and page
//! count. Updating it after a transaction costs a few dozen hashes per changed page, whatever
//! the database size. The construction is specified in docs/FORMAT.md ("State roots").

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::record::Hash;

/// Height of the tree: 2^32 leaves cover every page number SQLite allows.
pub const TREE_HEIGHT: usize = 32;
/// Leaves are hashed in blocks of 2^BLOCK_LEVEL; levels from BLOCK_LEVEL up are kept as nodes.
const BLOCK_LEVEL: usize = 6;
const BLOCK_LEAVES: usize = 1 << BLOCK_LEVEL;
const ROOT_DOMAIN: &[u8; 17] = b"walstream/root/v1";
const NODE_TAG: u8 = 0x01;

/// An inner node: BLAKE3(0x01 | left | right).
pub fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_TAG]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The hash of an empty subtree of each height: height 0 is an empty leaf (32 zero bytes).
pub fn empty(height: usize) -> &'static Hash {
    static EMPTY: OnceLock<Vec<Hash>> = OnceLock::new();
    &EMPTY.get_or_init(|| {
        let mut v = vec![[0u8; 32]];
        for h in 0..TREE_HEIGHT {
            let e = node(&v[h], &v[h]);
            v.push(e);
        }
        v
    })[height]
}

/// The state root of a database image given the root of its page tree.
pub fn state_root(page_size: u32, page_count: u32, tree_root: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(ROOT_DOMAIN);
    h.update(&page_size.to_le_bytes());
    h.update(&page_count.to_le_bytes());
    h.update(tree_root);
    *h.finalize().as_bytes()
}

/// The Merkle tree of one database image, updated incrementally.
///
/// Memory: 32 bytes per page for the leaves plus about one byte per page for the kept inner
/// levels.
#[derive(Debug, Clone, Default)]
pub struct StateTree {
    page_size: u32,
    /// Page hashes; the length is the page count.
    leaves: Vec<Hash>,
    /// `levels[k]` holds the nodes of height BLOCK_LEVEL + k that cover any page; nodes past
    /// the end are empty subtrees.
    levels: Vec<Vec<Hash>>,
    /// Leaf blocks changed since the last `root`.
    dirty: BTreeSet<usize>,
}

impl StateTree {
    pub fn new(page_size: u32) -> Self {
        Self { page_size, ..Default::default() }
    }

    pub fn page_count(&self) -> u32 {
        self.leaves.len() as u32
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Sets the page size (for a tree started before any page was seen).
    pub fn set_page_size(&mut self, page_size: u32) {
        self.page_size = page_size;
    }

    fn zero_page_hash(&self) -> Hash {
        *blake3::hash(&vec![0u8; self.page_size as usize]).as_bytes()
    }

    /// Records the hash of page `pgno` (from 1), growing the image if needed: pages between the
    /// old end and `pgno` read as zeros until written.
    pub fn set_page(&mut self, pgno: u32, hash: Hash) {
        assert!(pgno >= 1, "page numbers start at 1");
        let index = pgno as usize - 1;
        if index >= self.leaves.len() {
            self.resize(pgno);
        }
        self.leaves[index] = hash;
        self.dirty.insert(index / BLOCK_LEAVES);
    }

    /// Sets the number of pages: truncates, or extends with zero pages.
    pub fn resize(&mut self, page_count: u32) {
        let old = self.leaves.len();
        let new = page_count as usize;
        if new == old {
            return;
        }
        let fill = if new > old { self.zero_page_hash() } else { [0; 32] };
        self.leaves.resize(new, fill);
        let (lo, hi) = (old.min(new), old.max(new));
        let last_block = hi.div_ceil(BLOCK_LEAVES);
        self.dirty.extend(lo / BLOCK_LEAVES..last_block);
    }

    fn block_hash(&self, block: usize) -> Hash {
        let start = block * BLOCK_LEAVES;
        let mut level: Vec<Hash> = (start..start + BLOCK_LEAVES)
            .map(|i| self.leaves.get(i).copied().unwrap_or(*empty(0)))
            .collect();
        while level.len() > 1 {
            level = level.chunks_exact(2).map(|p| node(&p[0], &p[1])).collect();
        }
        level[0]
    }

    /// The state root of the image as it is now.
    pub fn root(&mut self) -> Hash {
        let n = self.leaves.len();
        let heights = TREE_HEIGHT - BLOCK_LEVEL + 1;
        if self.levels.len() != heights {
            self.levels = vec![Vec::new(); heights];
        }
        for (k, level) in self.levels.iter_mut().enumerate() {
            let width = n.div_ceil(1 << (BLOCK_LEVEL + k));
            level.resize(width, *empty(BLOCK_LEVEL + k));
        }
        // Blocks past the end (after shrinking) have no node of their own any more, but their
        // ancestors must still be recomputed.
        let mut dirty = std::mem::take(&mut self.dirty);
        let width = self.levels[0].len();
        for &b in dirty.iter().filter(|b| **b < width) {
            self.levels[0][b] = self.block_hash(b);
        }
        for k in 1..heights {
            let below = BLOCK_LEVEL + k - 1;
            let parents: BTreeSet<usize> = dirty.iter().map(|i| i / 2).collect();
            for &p in &parents {
                let child = |i: usize| self.levels[k - 1].get(i).copied().unwrap_or(*empty(below));
                let value = node(&child(2 * p), &child(2 * p + 1));
                if let Some(slot) = self.levels[k].get_mut(p) {
                    *slot = value;
                }
            }
            dirty = parents;
        }
        let top = self.levels[heights - 1].first().copied().unwrap_or(*empty(TREE_HEIGHT));
        state_root(self.page_size, n as u32, &top)
    }
}

/// The state root of a database image held in memory (for tests and small images).
pub fn root_of_image(page_size: u32, image: &[u8]) -> Hash {
    let mut tree = StateTree::new(page_size);
    tree.resize((image.len() / page_size as usize) as u32);
    for (i, page) in image.chunks_exact(page_size as usize).enumerate() {
        tree.set_page(i as u32 + 1, *blake3::hash(page).as_bytes());
    }
    tree.root()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, computed naively over the whole 2^32-leaf tree with empty subtrees.
    fn naive(page_size: u32, leaves: &[Hash]) -> Hash {
        let mut level: Vec<Hash> = leaves.to_vec();
        for h in 0..TREE_HEIGHT {
            if level.is_empty() {
                level.push(*empty(h));
            }
            if level.len() % 2 == 1 {
                level.push(*empty(h));
            }
            level = level.chunks_exact(2).map(|p| node(&p[0], &p[1])).collect();
        }
        state_root(page_size, leaves.len() as u32, &level[0])
    }

    fn h(i: u32) -> Hash {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn incremental_root_equals_the_definition_through_growth_and_shrinking() {
        let mut tree = StateTree::new(512);
        let mut model: Vec<Hash> = Vec::new();
        let zero = *blake3::hash(&[0u8; 512]).as_bytes();
        let steps: &[(u32, &[u32])] = &[(1, &[1]), (3, &[2, 3]), (200, &[100, 200]), (64, &[]), (300, &[]), (64, &[5]), (65, &[65]), (0, &[]), (129, &[129, 1])];
        for (count, pages) in steps {
            for &p in *pages {
                if p as usize > model.len() {
                    model.resize(p as usize, zero);
                }
                model[p as usize - 1] = h(p * 7 + count);
                tree.set_page(p, h(p * 7 + count));
            }
            tree.resize(*count);
            model.resize(*count as usize, zero);
            assert_eq!(tree.root(), naive(512, &model), "after resizing to {count}");
        }
    }

    #[test]
    fn root_commits_to_size_and_page_size() {
        let img = vec![7u8; 1024];
        assert_ne!(root_of_image(512, &img), root_of_image(1024, &img));
        assert_ne!(root_of_image(512, &img), root_of_image(512, &img[..512]));
    }
}
