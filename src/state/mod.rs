//! State roots: one hash that commits to a whole database image, so that a validator can prove
//! that a database file equals the state after transaction N without replaying the stream.
//!
//! The root is a Merkle tree over the page hashes (leaf `i` is page `i + 1`; pages past the end
//! of the database are empty leaves), wrapped with the page size and page count. Two schemes
//! exist ([`RootScheme`]): format versions 1 to 3 hash 65-byte nodes in a tree of fixed height
//! 32; version 4 hashes 64-byte nodes (one BLAKE3 compression each) in a tree only as tall as the
//! database needs. Updating the root after a transaction costs one hash per node on the paths
//! from the changed pages to the root, shared between pages, whatever the database size. The
//! construction is specified in docs/FORMAT.md ("State roots").

mod leaves;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use crate::record::Hash;
use leaves::Leaves;
pub use leaves::SPILL_LEAVES;

/// Height of a scheme-1 tree: 2^32 leaves cover every page number SQLite allows.
const V1_TREE_HEIGHT: usize = 32;
/// Leaves are grouped in blocks of 2^BLOCK_LEVEL; levels from BLOCK_LEVEL up are kept as nodes.
/// A scheme-4 tree is never shorter than a block.
const BLOCK_LEVEL: usize = 6;
const BLOCK_LEAVES: usize = 1 << BLOCK_LEVEL;
/// Nodes strictly inside a block (heights 1 to BLOCK_LEVEL - 1): 32 + 16 + 8 + 4 + 2.
const BLOCK_INNER: usize = BLOCK_LEAVES - 2;
/// Blocks whose inner nodes are kept, the most recently changed ones: a change to a page of a
/// kept block costs BLOCK_LEVEL hashes inside it instead of 63. Bounds the cache to 256 KiB
/// (~2 KiB a block), whatever the database size; 128 blocks cover 8192 hot pages.
const CACHED_BLOCKS_MAX: usize = 128;
const V1_NODE_TAG: u8 = 0x01;
/// The BLAKE3 key of scheme-4 nodes: 32 ASCII bytes. Keying separates nodes from page hashes
/// (unkeyed) as scheme 1's tag byte did, without the 65th byte that cost a second compression.
const V4_NODE_KEY: &[u8; 32] = b"walstream/v4/state-tree/node-key";

/// How a format version turns page hashes into a state root (docs/FORMAT.md, "State roots").
/// A stream's roots follow the scheme of the file that records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootScheme {
    /// Format versions 1 to 3: node = BLAKE3(0x01 | left | right), a tree of fixed height 32.
    #[default]
    V1,
    /// Format version 4: node = BLAKE3 keyed with `V4_NODE_KEY` over left | right, a tree of
    /// height max(6, ceil(log2(page count))).
    V4,
}

impl RootScheme {
    /// The scheme of the files of format `version`.
    pub fn of_version(version: u32) -> Self {
        if version >= 4 {
            RootScheme::V4
        } else {
            RootScheme::V1
        }
    }

    /// The newest format version whose roots follow this scheme: what a writer uses for the
    /// new files of a generation, so that one generation never mixes schemes.
    pub fn newest_version(self) -> u32 {
        match self {
            RootScheme::V1 => 3,
            RootScheme::V4 => crate::record::FORMAT_VERSION,
        }
    }

    /// An inner node over two children.
    pub fn node(self, left: &Hash, right: &Hash) -> Hash {
        match self {
            RootScheme::V1 => {
                let mut input = [0u8; 65];
                input[0] = V1_NODE_TAG;
                input[1..33].copy_from_slice(left);
                input[33..].copy_from_slice(right);
                *blake3::hash(&input).as_bytes()
            }
            RootScheme::V4 => {
                let mut input = [0u8; 64];
                input[..32].copy_from_slice(left);
                input[32..].copy_from_slice(right);
                *blake3::keyed_hash(V4_NODE_KEY, &input).as_bytes()
            }
        }
    }

    /// The hash of an empty subtree of each height: height 0 is an empty leaf (32 zero bytes).
    pub fn empty(self, height: usize) -> &'static Hash {
        static V1: OnceLock<Vec<Hash>> = OnceLock::new();
        static V4: OnceLock<Vec<Hash>> = OnceLock::new();
        let table = match self {
            RootScheme::V1 => &V1,
            RootScheme::V4 => &V4,
        };
        &table.get_or_init(|| {
            let mut v = vec![EMPTY_LEAF];
            for h in 0..V1_TREE_HEIGHT {
                let e = self.node(&v[h], &v[h]);
                v.push(e);
            }
            v
        })[height]
    }

    /// Height of the tree over an image of `page_count` pages.
    pub fn height(self, page_count: usize) -> usize {
        match self {
            RootScheme::V1 => V1_TREE_HEIGHT,
            RootScheme::V4 => {
                let fitted = page_count.next_power_of_two().trailing_zeros() as usize;
                fitted.max(BLOCK_LEVEL)
            }
        }
    }

    fn domain(self) -> &'static [u8; 17] {
        match self {
            RootScheme::V1 => b"walstream/root/v1",
            RootScheme::V4 => b"walstream/root/v4",
        }
    }

    /// The state root of a database image given the root of its page tree.
    pub fn state_root(self, page_size: u32, page_count: u32, tree_root: &Hash) -> Hash {
        let domain = self.domain();
        let mut input = [0u8; 17 + 8 + 32];
        input[..17].copy_from_slice(domain);
        input[17..21].copy_from_slice(&page_size.to_le_bytes());
        input[21..25].copy_from_slice(&page_count.to_le_bytes());
        input[25..].copy_from_slice(tree_root);
        *blake3::hash(&input).as_bytes()
    }
}

/// An empty leaf, for leaves past the end of the image.
const EMPTY_LEAF: Hash = [0; 32];
/// Below this many entries `dirty` is never compacted (see `StateTree::mark`).
const DIRTY_ENTRIES_MIN: usize = 4096;

/// The Merkle tree of one database image, updated incrementally.
///
/// Memory: 32 bytes per page for the leaves (at most `SPILL_LEAVES` of them in a tree told to
/// `spill_to` a directory), about one byte per page for the kept levels, and the inner nodes of
/// at most `CACHED_BLOCKS_MAX` blocks.
///
/// A spilled tree can meet an I/O error on its scratch file: the tree is then unusable, every
/// later `root` reports the error, and its owner drops it (a tree can always be rebuilt from
/// the stream).
#[derive(Debug, Default)]
pub struct StateTree {
    page_size: u32,
    scheme: RootScheme,
    /// Page hashes; the length is the page count.
    leaves: Leaves,
    /// The first I/O error of the scratch file, if any.
    error: Option<io::Error>,
    /// `levels[k]` holds the nodes of height BLOCK_LEVEL + k that cover any page; nodes past
    /// the end are empty subtrees.
    levels: Vec<Vec<Hash>>,
    /// Leaves changed since the last `root`: (block, bit mask of its changed leaves), in the
    /// order they changed, a block possibly more than once.
    dirty: Vec<(usize, u64)>,
    /// Length of `dirty` after it was last compacted.
    dirty_compacted: usize,
    /// Block numbers, reused by `root` for the levels above the blocks.
    scratch: Vec<usize>,
    /// (page size, hash of a zero page of that size).
    zero_page: Option<(u32, Hash)>,
    cache: BlockCache,
}

impl StateTree {
    pub fn new(page_size: u32, scheme: RootScheme) -> Self {
        Self {
            page_size,
            scheme,
            ..Default::default()
        }
    }

    pub fn scheme(&self) -> RootScheme {
        self.scheme
    }

    /// Computes roots by `scheme` from now on (a reader moving to a file of another format
    /// version). Every inner node depends on the scheme: the next `root` hashes them all again.
    pub fn set_scheme(&mut self, scheme: RootScheme) {
        if scheme == self.scheme {
            return;
        }
        self.scheme = scheme;
        self.levels.clear();
        self.cache = BlockCache::default();
        self.mark_range(0, self.leaves.len());
    }

    pub fn page_count(&self) -> u32 {
        self.leaves.len() as u32
    }

    /// From now on, page hashes beyond the first `spill_at` are kept in an unlinked scratch file
    /// created in `dir` instead of memory.
    pub fn spill_to(&mut self, dir: &Path, spill_at: usize) {
        let r = self.leaves.spill_to(dir, spill_at);
        self.note(r);
    }

    /// Whether the page hashes are in a scratch file.
    pub fn spilled(&self) -> bool {
        self.leaves.spilled()
    }

    /// Tests: behave as a `fork()` child would (its next scratch-file access fails).
    #[cfg(test)]
    pub(crate) fn pretend_forked(&mut self) {
        self.leaves.pretend_forked();
    }

    /// Whether the scratch file failed: the tree is unusable (`root` reports why).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Keeps the first I/O error.
    fn note(&mut self, r: io::Result<()>) {
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Sets the page size (for a tree started before any page was seen).
    pub fn set_page_size(&mut self, page_size: u32) {
        self.page_size = page_size;
    }

    /// The hash of a zero page, computed once per page size: a growing database adds one.
    fn zero_page_hash(&mut self) -> Hash {
        match self.zero_page {
            Some((size, hash)) if size == self.page_size => hash,
            _ => {
                let hash = *blake3::hash(&vec![0u8; self.page_size as usize]).as_bytes();
                self.zero_page = Some((self.page_size, hash));
                hash
            }
        }
    }

    /// Records that the leaves of `block` in `mask` changed.
    fn mark(&mut self, block: usize, mask: u64) {
        match self.dirty.last_mut() {
            Some(last) if last.0 == block => last.1 |= mask,
            _ => self.dirty.push((block, mask)),
        }
        // Pages changed in random order repeat blocks: merge the repeats once the list doubled,
        // so it stays within twice the number of blocks changed.
        if self.dirty.len() >= DIRTY_ENTRIES_MIN.max(2 * self.dirty_compacted) {
            compact(&mut self.dirty);
            self.dirty_compacted = self.dirty.len();
        }
    }

    /// Records that the leaves `lo..hi` changed.
    fn mark_range(&mut self, lo: usize, hi: usize) {
        let mut at = lo;
        while at < hi {
            let block = at / BLOCK_LEAVES;
            let end = hi.min((block + 1) * BLOCK_LEAVES);
            let (from, bits) = (at % BLOCK_LEAVES, end - at);
            let mask = if bits == BLOCK_LEAVES {
                u64::MAX
            } else {
                ((1u64 << bits) - 1) << from
            };
            self.mark(block, mask);
            at = end;
        }
    }

    /// Records the hash of page `pgno` (from 1), growing the image if needed: pages between the
    /// old end and `pgno` read as zeros until written.
    pub fn set_page(&mut self, pgno: u32, hash: Hash) {
        assert!(pgno >= 1, "page numbers start at 1");
        if self.failed() {
            return;
        }
        let index = pgno as usize - 1;
        if index >= self.leaves.len() {
            self.resize(pgno);
            if self.failed() {
                return;
            }
        }
        let r = self.leaves.set(index, hash);
        self.note(r);
        self.mark(index / BLOCK_LEAVES, 1 << (index % BLOCK_LEAVES));
    }

    /// Sets the number of pages: truncates, or extends with zero pages.
    pub fn resize(&mut self, page_count: u32) {
        let old = self.leaves.len();
        let new = page_count as usize;
        if new == old || self.failed() {
            return;
        }
        let fill = if new > old {
            self.zero_page_hash()
        } else {
            EMPTY_LEAF
        };
        let r = self.leaves.resize(new, fill);
        self.note(r);
        if self.failed() {
            return;
        }
        // Grown leaves became zero pages, cut ones empty leaves.
        self.mark_range(old.min(new), old.max(new));
    }

    /// The state root of the image as it is now; an error if the scratch file failed.
    pub fn root(&mut self) -> io::Result<Hash> {
        if let Some(e) = &self.error {
            return Err(io::Error::new(
                e.kind(),
                format!("state tree scratch file: {e}"),
            ));
        }
        let n = self.leaves.len();
        let scheme = self.scheme;
        let height = scheme.height(n);
        let heights = height - BLOCK_LEVEL + 1;
        // The width of every level follows from that of the blocks' level. A scheme-4 tree
        // grows a level whenever the image doubles past a block: the new top node is an
        // ancestor of the new pages, which are marked changed, so it is hashed below.
        if self.levels.len() != heights || self.levels[0].len() != n.div_ceil(BLOCK_LEAVES) {
            self.levels.resize(heights, Vec::new());
            for (k, level) in self.levels.iter_mut().enumerate() {
                let width = n.div_ceil(1 << (BLOCK_LEVEL + k));
                level.resize(width, *scheme.empty(BLOCK_LEVEL + k));
            }
        }
        compact(&mut self.dirty);
        self.dirty_compacted = 0;
        // Keeping inner nodes pays for blocks that change again; a transaction that changes
        // more blocks than the cache holds (a snapshot, a bulk load) would only churn it.
        let keep = self.dirty.len() <= CACHED_BLOCKS_MAX;
        let width = self.levels[0].len();
        for &(block, mask) in &self.dirty {
            if block < width {
                let leaves = match self.leaves.block(block) {
                    Ok(leaves) => leaves,
                    Err(e) => {
                        // The dirty list is lost with the tree: it is unusable from here on.
                        self.error = Some(io::Error::new(e.kind(), e.to_string()));
                        return Err(e);
                    }
                };
                self.levels[0][block] = self.cache.block_root(scheme, leaves, block, mask, keep);
            } else {
                // Past the end after shrinking: no node of its own any more, but its ancestors
                // must still be recomputed.
                self.cache.forget(block);
            }
        }
        let mut dirty = std::mem::take(&mut self.scratch);
        dirty.clear();
        dirty.extend(self.dirty.iter().map(|d| d.0));
        self.dirty.clear();
        for k in 1..heights {
            let below = BLOCK_LEVEL + k - 1;
            dirty.iter_mut().for_each(|i| *i /= 2);
            dirty.dedup();
            let (lower, upper) = self.levels.split_at_mut(k);
            let children = &lower[k - 1];
            for &p in &dirty {
                let child = |i: usize| children.get(i).unwrap_or(scheme.empty(below));
                let value = scheme.node(child(2 * p), child(2 * p + 1));
                if let Some(slot) = upper[0].get_mut(p) {
                    *slot = value;
                }
            }
        }
        self.scratch = dirty;
        let top = self.levels[heights - 1]
            .first()
            .copied()
            .unwrap_or(*scheme.empty(height));
        Ok(scheme.state_root(self.page_size, n as u32, &top))
    }
}

/// Sorts `dirty` by block and merges the masks of each block.
fn compact(dirty: &mut Vec<(usize, u64)>) {
    dirty.sort_unstable_by_key(|d| d.0);
    dirty.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 |= next.1;
        }
        same
    });
}

/// Bit `p` of the result is set when bit `2p` or `2p + 1` of `mask` is: the nodes one level up
/// whose children changed.
fn parents(mask: u64) -> u64 {
    let mut x = (mask | (mask >> 1)) & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0f0f_0f0f_0f0f_0f0f;
    x = (x | (x >> 4)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    (x | (x >> 16)) & 0x0000_0000_ffff_ffff
}

/// Inner nodes of one block, height by height from height 1 (32 nodes) to BLOCK_LEVEL - 1.
type BlockInner = [Hash; BLOCK_INNER];

/// Recomputes the inner nodes of a block whose leaves are `leaves` (fewer than `BLOCK_LEAVES` at
/// the end of the image) above the leaves in `mask` (all of them must be current outside those
/// paths) and returns the block's root.
fn update_block(scheme: RootScheme, leaves: &[Hash], inner: &mut BlockInner, mask: u64) -> Hash {
    let node = |l: &Hash, r: &Hash| scheme.node(l, r);
    let leaf = |i: usize| leaves.get(i).unwrap_or(&EMPTY_LEAF);
    let mut changed = parents(mask);
    let mut bits = changed;
    while bits != 0 {
        let p = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        inner[p] = node(leaf(2 * p), leaf(2 * p + 1));
    }
    let (mut below, mut width) = (0, BLOCK_LEAVES / 2);
    for _ in 2..BLOCK_LEVEL {
        let at = below + width;
        changed = parents(changed);
        let mut bits = changed;
        while bits != 0 {
            let p = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            inner[at + p] = node(&inner[below + 2 * p], &inner[below + 2 * p + 1]);
        }
        (below, width) = (at, width / 2);
    }
    node(&inner[BLOCK_INNER - 2], &inner[BLOCK_INNER - 1])
}

/// The inner nodes of the most recently changed blocks.
#[derive(Debug, Default)]
struct BlockCache {
    slots: Vec<CachedBlock>,
    /// Block number to its index in `slots`.
    index: HashMap<usize, usize>,
    /// Counts `block_root` calls: the age of a slot.
    clock: u64,
    /// Inner nodes of a block that is not kept.
    scratch: Option<Box<BlockInner>>,
}

#[derive(Debug)]
struct CachedBlock {
    block: usize,
    last_used: u64,
    inner: Box<BlockInner>,
}

impl BlockCache {
    /// The root of `block`, whose leaves are `leaves`, after those in `mask` changed: only their paths are hashed
    /// again when the block's inner nodes are kept, else all of them (and kept if `keep`, in
    /// place of the least recently used block).
    fn block_root(
        &mut self,
        scheme: RootScheme,
        leaves: &[Hash],
        block: usize,
        mask: u64,
        keep: bool,
    ) -> Hash {
        self.clock += 1;
        if let Some(&slot) = self.index.get(&block) {
            let cached = &mut self.slots[slot];
            cached.last_used = self.clock;
            return update_block(scheme, leaves, &mut cached.inner, mask);
        }
        if !keep {
            let inner = self
                .scratch
                .get_or_insert_with(|| Box::new([EMPTY_LEAF; BLOCK_INNER]));
            return update_block(scheme, leaves, inner, u64::MAX);
        }
        let slot = if self.slots.len() < CACHED_BLOCKS_MAX {
            let inner = Box::new([EMPTY_LEAF; BLOCK_INNER]);
            self.slots.push(CachedBlock {
                block,
                last_used: self.clock,
                inner,
            });
            self.slots.len() - 1
        } else {
            let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].last_used);
            let slot = oldest.expect("the cache is full, so not empty");
            self.index.remove(&self.slots[slot].block);
            self.slots[slot].block = block;
            self.slots[slot].last_used = self.clock;
            slot
        };
        self.index.insert(block, slot);
        update_block(scheme, leaves, &mut self.slots[slot].inner, u64::MAX)
    }

    /// Drops the inner nodes of a block cut off the image.
    fn forget(&mut self, block: usize) {
        let Some(slot) = self.index.remove(&block) else {
            return;
        };
        self.slots.swap_remove(slot);
        if let Some(moved) = self.slots.get(slot) {
            self.index.insert(moved.block, slot);
        }
    }
}

/// The state root of a database image held in memory (for tests and small images).
pub fn root_of_image(scheme: RootScheme, page_size: u32, image: &[u8]) -> Hash {
    let mut tree = StateTree::new(page_size, scheme);
    tree.resize((image.len() / page_size as usize) as u32);
    for (i, page) in image.chunks_exact(page_size as usize).enumerate() {
        tree.set_page(i as u32 + 1, *blake3::hash(page).as_bytes());
    }
    tree.root()
        .expect("a tree in memory has no scratch file to fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, computed naively over the whole tree with empty subtrees.
    fn naive(scheme: RootScheme, page_size: u32, leaves: &[Hash]) -> Hash {
        let mut level: Vec<Hash> = leaves.to_vec();
        for h in 0..scheme.height(leaves.len()) {
            if level.is_empty() {
                level.push(*scheme.empty(h));
            }
            if level.len() % 2 == 1 {
                level.push(*scheme.empty(h));
            }
            level = level
                .chunks_exact(2)
                .map(|p| scheme.node(&p[0], &p[1]))
                .collect();
        }
        assert_eq!(level.len(), 1, "the tree is tall enough for every page");
        scheme.state_root(page_size, leaves.len() as u32, &level[0])
    }

    const SCHEMES: [RootScheme; 2] = [RootScheme::V1, RootScheme::V4];

    const CACHED_LEAF_BLOCKS_FOR_TESTS: usize = leaves::CACHED_LEAF_BLOCKS;

    fn h(i: u32) -> Hash {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn incremental_root_equals_the_definition_through_growth_and_shrinking() {
        for scheme in SCHEMES {
            growth_and_shrinking_keep_the_definition(scheme);
        }
    }

    fn growth_and_shrinking_keep_the_definition(scheme: RootScheme) {
        let mut tree = StateTree::new(512, scheme);
        let mut model: Vec<Hash> = Vec::new();
        let zero = *blake3::hash(&[0u8; 512]).as_bytes();
        let steps: &[(u32, &[u32])] = &[
            (1, &[1]),
            (3, &[2, 3]),
            (200, &[100, 200]),
            (64, &[]),
            (300, &[]),
            (64, &[5]),
            (65, &[65]),
            (0, &[]),
            (129, &[129, 1]),
            (128, &[]),
            (4096, &[4000]),
            (200, &[7]),
            (5000, &[]),
            (1, &[]),
        ];
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
            assert_eq!(
                tree.root().unwrap(),
                naive(scheme, 512, &model),
                "{scheme:?}, after resizing to {count}"
            );
        }
    }

    #[test]
    fn incremental_root_equals_the_definition_with_kept_and_evicted_blocks() {
        for scheme in SCHEMES {
            random_changes_keep_the_definition(StateTree::new(1024, scheme));
        }
    }

    #[test]
    fn a_tree_switched_to_another_scheme_has_that_schemes_roots() {
        // A reader moves from a version-3 file to a version-4 one (and back) with the same tree.
        let mut tree = StateTree::new(1024, RootScheme::V1);
        let model: Vec<Hash> = (1..=300).map(h).collect();
        for (i, leaf) in model.iter().enumerate() {
            tree.set_page(i as u32 + 1, *leaf);
        }
        assert_eq!(tree.root().unwrap(), naive(RootScheme::V1, 1024, &model));
        for scheme in [RootScheme::V4, RootScheme::V1, RootScheme::V4] {
            tree.set_scheme(scheme);
            assert_eq!(
                tree.root().unwrap(),
                naive(scheme, 1024, &model),
                "{scheme:?}"
            );
        }
        assert_ne!(
            naive(RootScheme::V1, 1024, &model),
            naive(RootScheme::V4, 1024, &model)
        );
    }

    #[test]
    fn a_scheme_4_node_is_one_keyed_compression_of_its_children() {
        // The definition in docs/FORMAT.md, spelled out with the hasher's own API.
        let (l, r) = (h(1), h(2));
        let mut hasher = blake3::Hasher::new_keyed(b"walstream/v4/state-tree/node-key");
        hasher.update(&l).update(&r);
        assert_eq!(RootScheme::V4.node(&l, &r), *hasher.finalize().as_bytes());
        assert_eq!(RootScheme::V4.height(0), 6);
        assert_eq!(RootScheme::V4.height(64), 6);
        assert_eq!(RootScheme::V4.height(65), 7);
        assert_eq!(RootScheme::V4.height(1 << 20), 20);
        assert_eq!(RootScheme::V1.height(5), 32);
    }

    #[test]
    fn a_spilled_tree_has_the_roots_of_one_in_memory() {
        // Spilled from the first page on, and past the first blocks: the leaf cache holds fewer
        // blocks than the changes touch, so blocks are written back, read again and grown.
        for spill_at in [0, 5 * BLOCK_LEAVES + 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut tree = StateTree::new(1024, RootScheme::V4);
            tree.spill_to(dir.path(), spill_at);
            let tree = random_changes_keep_the_definition(tree);
            assert!(tree.spilled(), "spill_at {spill_at}");
            // Unlinked: nothing is left in the directory.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_forked_child_never_touches_its_parents_scratch_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = StateTree::new(512, RootScheme::V4);
        tree.spill_to(dir.path(), 0);
        let far = (CACHED_LEAF_BLOCKS_FOR_TESTS * BLOCK_LEAVES) as u32 * 2;
        tree.set_page(1, h(1));
        tree.set_page(far, h(far));
        assert!(tree.root().is_ok());
        tree.pretend_forked();
        // A block that is cached is still usable; the next one that is not fails the tree.
        tree.set_page(1, h(2));
        for p in (1..far).step_by(BLOCK_LEAVES) {
            tree.set_page(p, h(p));
        }
        let e = tree.root().unwrap_err();
        assert!(e.to_string().contains("forked"), "{e}");
        assert!(tree.failed());
    }

    #[test]
    fn a_tree_whose_scratch_file_cannot_be_made_reports_it_at_root() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut tree = StateTree::new(512, RootScheme::V4);
        tree.spill_to(&missing, 10);
        tree.set_page(3, h(3));
        assert!(tree.root().is_ok(), "not spilled yet: in memory");
        tree.set_page(11, h(11));
        let e = tree.root().unwrap_err();
        assert!(e.to_string().contains("scratch file"), "{e}");
        assert!(tree.root().is_err(), "the tree stays unusable");
    }

    /// Applies random changes to `tree` (empty at first), checking every root against the
    /// definition; returns the tree.
    fn random_changes_keep_the_definition(mut tree: StateTree) -> StateTree {
        // More blocks than the caches keep, changed in random order, grown and cut: every root
        // must equal the definition whether a block's inner nodes were kept, evicted or new.
        let zero = *blake3::hash(&[0u8; 1024]).as_bytes();
        let mut model: Vec<Hash> = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let blocks = (CACHED_BLOCKS_MAX.max(leaves::CACHED_LEAF_BLOCKS) + 20) as u64;
        for step in 0..60u32 {
            let hot = next(3) == 0;
            let count = if hot { 1 + next(4) } else { 1 + next(300) };
            for _ in 0..count {
                let span = if hot {
                    2 * BLOCK_LEAVES as u64
                } else {
                    blocks * BLOCK_LEAVES as u64
                };
                let p = 1 + next(span) as u32;
                if p as usize > model.len() {
                    model.resize(p as usize, zero);
                }
                model[p as usize - 1] = h(p ^ (step << 20));
                tree.set_page(p, h(p ^ (step << 20)));
            }
            if next(5) == 0 {
                let size = next(blocks * BLOCK_LEAVES as u64) as u32;
                tree.resize(size);
                model.resize(size as usize, zero);
            }
            let scheme = tree.scheme();
            assert_eq!(
                tree.root().unwrap(),
                naive(scheme, 1024, &model),
                "at step {step}"
            );
        }
        tree
    }

    #[test]
    fn parents_marks_the_node_above_each_changed_pair() {
        assert_eq!(parents(0b0110), 0b11);
        assert_eq!(parents(1 << 63), 1 << 31);
        assert_eq!(parents(u64::MAX), u64::from(u32::MAX));
        assert_eq!(parents(0b1000_0001), 0b1001);
    }

    #[test]
    fn root_commits_to_size_and_page_size() {
        let img = vec![7u8; 1024];
        for scheme in SCHEMES {
            let root = |page_size, img| root_of_image(scheme, page_size, img);
            assert_ne!(root(512, &img), root(1024, &img));
            assert_ne!(root(512, &img), root(512, &img[..512]));
        }
    }
}
