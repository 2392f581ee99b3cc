//! The leaves of a state tree, one page hash each: in memory, or spilled to a scratch file.
//!
//! A database of 1 GiB has 262,144 pages of 4 KiB, so 8 MiB of page hashes; a host process
//! that writes it would hold them for as long as it captures (docs/GUARANTEES.md, "Bounded").
//! A tree told where it may spill keeps its leaves in memory up to `SPILL_LEAVES` and, past
//! that, in an unlinked scratch file read and written in blocks of `BLOCK_LEAVES` hashes
//! through a cache of the `CACHED_LEAF_BLOCKS` most recently used blocks: a commit that changes
//! pages of blocks it changed recently touches no file at all.
//!
//! The scratch file is private to the tree (unlinked, so nothing is left behind even by a
//! crash) and holds nothing that cannot be rebuilt from the stream.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{BLOCK_LEAVES, EMPTY_LEAF};
use crate::record::Hash;

/// Leaves held in memory at most, by a tree that may spill (512 KiB of hashes: a database of
/// 64 MiB at 4 KiB pages).
pub const SPILL_LEAVES: usize = 16 << 10;
/// Blocks of leaves a spilled tree caches (2 KiB each: 256 KiB).
pub(super) const CACHED_LEAF_BLOCKS: usize = 128;
const BLOCK_BYTES: usize = BLOCK_LEAVES * 32;

type Block = [Hash; BLOCK_LEAVES];

/// The page hashes of one image; the length is its page count.
#[derive(Debug, Default)]
pub struct Leaves {
    len: usize,
    store: Store,
    /// Where the leaves go once there are more than `spill_at`.
    spill: Option<(PathBuf, usize)>,
}

#[derive(Debug)]
enum Store {
    Memory(Vec<Hash>),
    File(FileLeaves),
}

impl Default for Store {
    fn default() -> Self {
        Store::Memory(Vec::new())
    }
}

impl Leaves {
    /// From now on, leaves beyond `spill_at` go to a scratch file created in `dir`.
    pub fn spill_to(&mut self, dir: &Path, spill_at: usize) -> io::Result<()> {
        self.spill = Some((dir.to_path_buf(), spill_at));
        self.spill_if_needed()
    }

    /// Tests: behave as a `fork()` child would, whose scratch file is its parent's.
    #[cfg(test)]
    pub fn pretend_forked(&mut self) {
        if let Store::File(f) = &mut self.store {
            f.owner = f.owner.wrapping_add(1);
        }
    }

    /// Whether the leaves are in a scratch file.
    pub fn spilled(&self) -> bool {
        matches!(self.store, Store::File(_))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Sets leaf `index` (below `len`).
    pub fn set(&mut self, index: usize, hash: Hash) -> io::Result<()> {
        if index >= self.len {
            return Err(io::Error::other(format!(
                "leaf {index} set past the end ({})",
                self.len
            )));
        }
        match &mut self.store {
            Store::Memory(v) => {
                v[index] = hash;
                Ok(())
            }
            Store::File(f) => {
                let (block, at) = (index / BLOCK_LEAVES, index % BLOCK_LEAVES);
                let slot = f.slot(block)?;
                slot.hashes[at] = hash;
                slot.dirty = true;
                Ok(())
            }
        }
    }

    /// Sets the number of leaves: new ones are `fill`.
    pub fn resize(&mut self, len: usize, fill: Hash) -> io::Result<()> {
        if self.spill.as_ref().is_some_and(|(_, at)| len > *at) {
            // Spilled before growing, so that the leaves are never all in memory at once.
            self.spill_now()?;
        }
        let old = self.len;
        match &mut self.store {
            Store::Memory(v) => v.resize(len, fill),
            Store::File(f) => {
                // Leaves past the end are never read, so cutting only moves the end; growing
                // writes every new leaf, whatever the file held there before.
                let mut at = old;
                while at < len {
                    let block = at / BLOCK_LEAVES;
                    let end = len.min((block + 1) * BLOCK_LEAVES);
                    if end - at == BLOCK_LEAVES {
                        f.fill_block(block, &fill)?;
                    } else {
                        let slot = f.slot(block)?;
                        slot.hashes[at % BLOCK_LEAVES..][..end - at].fill(fill);
                        slot.dirty = true;
                    }
                    at = end;
                }
            }
        }
        self.len = len;
        Ok(())
    }

    /// The leaves of `block`: up to `BLOCK_LEAVES` of them, fewer (or none) at the end.
    pub fn block(&mut self, block: usize) -> io::Result<&[Hash]> {
        let start = (block * BLOCK_LEAVES).min(self.len);
        let end = (start + BLOCK_LEAVES).min(self.len);
        match &mut self.store {
            Store::Memory(v) => Ok(&v[start..end]),
            Store::File(f) => {
                if start == end {
                    return Ok(&[]);
                }
                Ok(&f.slot(block)?.hashes[..end - start])
            }
        }
    }

    fn spill_if_needed(&mut self) -> io::Result<()> {
        match &self.spill {
            Some((_, spill_at)) if self.len > *spill_at => self.spill_now(),
            _ => Ok(()),
        }
    }

    /// Moves the leaves to a scratch file in the spill directory, if not there yet.
    fn spill_now(&mut self) -> io::Result<()> {
        let (Some((dir, _)), Store::Memory(v)) = (&self.spill, &self.store) else {
            return Ok(());
        };
        let file = tempfile::tempfile_in(dir)?;
        for (block, leaves) in v.chunks(BLOCK_LEAVES).enumerate() {
            let mut whole: Block = [EMPTY_LEAF; BLOCK_LEAVES];
            whole[..leaves.len()].copy_from_slice(leaves);
            file.write_all_at(whole.as_flattened(), offset(block))?;
        }
        self.store = Store::File(FileLeaves {
            file,
            owner: std::process::id(),
            slots: Vec::new(),
            index: HashMap::new(),
            clock: 0,
        });
        Ok(())
    }
}

/// Leaves in a scratch file, block `b` at offset `b * BLOCK_BYTES`; every block that holds a
/// leaf below the length is either in the file or cached (and then newer there).
#[derive(Debug)]
struct FileLeaves {
    file: File,
    /// The process that made the file. A `fork()` child shares it with its parent, so a child
    /// never touches it (its tree fails, and is rebuilt): each would overwrite the other's
    /// leaves.
    owner: u32,
    slots: Vec<Slot>,
    /// Block number to its index in `slots`.
    index: HashMap<usize, usize>,
    clock: u64,
}

#[derive(Debug)]
struct Slot {
    block: usize,
    dirty: bool,
    last_used: u64,
    hashes: Box<Block>,
}

fn offset(block: usize) -> u64 {
    (block * BLOCK_BYTES) as u64
}

impl FileLeaves {
    /// The cached copy of `block`, read from the file if needed.
    fn slot(&mut self, block: usize) -> io::Result<&mut Slot> {
        self.clock += 1;
        if let Some(&i) = self.index.get(&block) {
            let slot = &mut self.slots[i];
            slot.last_used = self.clock;
            return Ok(slot);
        }
        self.check_owner()?;
        let i = if self.slots.len() < CACHED_LEAF_BLOCKS {
            self.slots.push(Slot {
                block,
                dirty: false,
                last_used: 0,
                hashes: Box::new([EMPTY_LEAF; BLOCK_LEAVES]),
            });
            self.slots.len() - 1
        } else {
            let oldest = (0..self.slots.len()).min_by_key(|&i| self.slots[i].last_used);
            let i = oldest.expect("the cache is full, so not empty");
            let old = &mut self.slots[i];
            if old.dirty {
                self.file
                    .write_all_at(old.hashes.as_flattened(), offset(old.block))?;
                old.dirty = false;
            }
            self.index.remove(&old.block);
            i
        };
        let slot = &mut self.slots[i];
        slot.block = block;
        slot.last_used = self.clock;
        if let Err(e) = read_block(&self.file, block, &mut slot.hashes) {
            // The slot holds nothing valid: unindexed, oldest and naming no block, to be reused.
            slot.block = usize::MAX;
            slot.last_used = 0;
            slot.dirty = false;
            return Err(e);
        }
        self.index.insert(block, i);
        Ok(&mut self.slots[i])
    }

    /// Makes every leaf of `block` equal `fill`.
    fn fill_block(&mut self, block: usize, fill: &Hash) -> io::Result<()> {
        if let Some(&i) = self.index.get(&block) {
            let slot = &mut self.slots[i];
            slot.hashes.fill(*fill);
            slot.dirty = true;
            return Ok(());
        }
        self.check_owner()?;
        let whole: Block = [*fill; BLOCK_LEAVES];
        self.file.write_all_at(whole.as_flattened(), offset(block))
    }

    fn check_owner(&self) -> io::Result<()> {
        if self.owner == std::process::id() {
            return Ok(());
        }
        Err(io::Error::other(
            "it belongs to the parent of this forked process",
        ))
    }
}

/// Reads `block` from the file; a block wholly or partly past the file's end (grown through the
/// cache, never written back) reads as empty leaves there.
fn read_block(file: &File, block: usize, out: &mut Block) -> io::Result<()> {
    let bytes = out.as_flattened_mut();
    let mut done = 0;
    while done < bytes.len() {
        match file.read_at(&mut bytes[done..], offset(block) + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes[done..].fill(0);
    Ok(())
}
