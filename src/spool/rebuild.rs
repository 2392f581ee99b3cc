//! The writer's state tree, rebuilt from the spool when this process does not hold it (its
//! first transaction on a stream others wrote, or after a failure).
//!
//! The spool records the hash of every page it holds (snapshot chunks and `Page` records) and
//! the state root after every transaction, so the tree is first rebuilt from those hashes alone:
//! no page is decompressed or hashed, and nothing but the tree is held. The result is accepted
//! only if its root equals the state root the spool recorded at that point (a commitment to the
//! page size, the page count and every page hash), in the record whose chain hash is the head
//! the writer extends. Anything unexpected (a torn record, a page size SQLite cannot have, a
//! snapshot whose chunks do not run from page 1 to its page count, a transaction that grows the
//! database by far more pages than it writes) sends it to the full replay, which checks the
//! generation as a reader does.

use crate::reader::{self, ReadError, ReplayLimit, Visitor};
use crate::record::page::stored_page_len;
use crate::record::pb::record::Body;
use crate::record::Hash;
use crate::record::{hash_field, FileKind, RecordReader};
use crate::state::{RootScheme, StateTree};
use crate::target::{LocalTarget, Target};
use crate::wal::is_valid_page_size;

use super::SpoolError;

/// Pages a record may take the database past its current size, on the fast path (SQLite grows
/// a database by the pages a transaction writes, and by few it does not write); a larger growth
/// is left to the full replay, so that a damaged count cannot make the fast path fill a scratch
/// file.
const UNWRITTEN_GROWTH_MAX: u32 = 1 << 16;

/// The state tree of `generation` after transaction `seq` (0: the snapshot), spilling past
/// `spill` pages into the spool directory `dir`.
pub(super) fn rebuild_tree(
    dir: &std::path::Path,
    spill: usize,
    generation: u64,
    seq: u64,
    head: &Hash,
) -> Result<StateTree, SpoolError> {
    let target = LocalTarget::new(dir.to_path_buf());
    let replay_err = |e: ReadError| SpoolError::Replay(e.to_string());
    let objects = reader::generation(&target, generation).map_err(replay_err)?;
    if let Some(tree) = from_recorded_hashes(&target, &objects, seq, head, dir, spill) {
        return Ok(tree);
    }
    struct Nothing;
    impl Visitor for Nothing {}
    let (_, tree) = reader::replay_with_tree_spilling(
        &target,
        &objects,
        ReplayLimit::Txn(seq),
        &mut Nothing,
        Some((dir, spill)),
    )
    .map_err(replay_err)?;
    Ok(tree)
}

/// The tree from the recorded page hashes, if its root is the one recorded after `seq`, in the
/// record whose chain hash is `head`.
fn from_recorded_hashes(
    target: &dyn Target,
    objects: &reader::GenerationObjects,
    seq: u64,
    head: &Hash,
    dir: &std::path::Path,
    spill: usize,
) -> Option<StateTree> {
    let snapshot = objects.snapshot.as_ref()?;
    let mut records = open(target, &snapshot.key, FileKind::Snapshot)?;
    let mut tree = StateTree::new(0, RootScheme::of_version(records.version()));
    tree.spill_to(dir, spill);
    // Chunks must run from page 1 up: the tree grows only by pages whose hashes were read.
    let mut page_count = None;
    let mut next = 1u32;
    loop {
        let (_, record) = records.next_record().ok()??;
        match record.body? {
            Body::SnapshotHeader(h) => {
                let empty = h.page_count == 0 && h.page_size == 0;
                if !empty && !is_valid_page_size(h.page_size) {
                    return None;
                }
                tree.set_page_size(h.page_size);
                page_count = Some(h.page_count);
            }
            Body::SnapshotChunk(c) => {
                if c.first_pgno != next || page_count.is_none() {
                    return None;
                }
                for h in &c.hashes {
                    tree.set_page(next, hash_field(h)?);
                    next = next.checked_add(1)?;
                }
            }
            Body::SnapshotEnd(end) => {
                if page_count? != next - 1 {
                    return None;
                }
                if seq == 0 {
                    return (end.hash == head.as_slice())
                        .then_some(())
                        .and_then(|()| root_is(tree, &end.state_root));
                }
                break;
            }
            _ => return None,
        }
    }
    for (_, segment) in objects.segments.range(..=seq) {
        let mut records = open(target, &segment.key, FileKind::Segment)?;
        // The root recorded in a file follows that file's scheme.
        tree.set_scheme(RootScheme::of_version(records.version()));
        while let Some((_, record)) = records.next_record().ok()? {
            match record.body? {
                Body::Page(p) => {
                    if tree.page_size() == 0 {
                        let len = u32::try_from(stored_page_len(&p)?).ok()?;
                        if !is_valid_page_size(len) {
                            return None;
                        }
                        tree.set_page_size(len);
                    }
                    let limit = tree.page_count().saturating_add(UNWRITTEN_GROWTH_MAX);
                    if p.pgno == 0 || p.pgno > limit {
                        return None;
                    }
                    tree.set_page(p.pgno, hash_field(&p.hash)?);
                }
                Body::TxnCommit(c) => {
                    let limit = tree.page_count().saturating_add(UNWRITTEN_GROWTH_MAX);
                    if c.db_size_pages > limit {
                        return None;
                    }
                    tree.resize(c.db_size_pages);
                    if c.seq == seq {
                        return (c.hash == head.as_slice())
                            .then_some(())
                            .and_then(|()| root_is(tree, &c.state_root));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn open(
    target: &dyn Target,
    key: &str,
    kind: FileKind,
) -> Option<RecordReader<Box<dyn std::io::Read + Send>>> {
    RecordReader::new(target.get(key).ok()?)
        .and_then(|r| r.expect_kind(kind))
        .ok()
}

/// `tree` if its root is `recorded`.
fn root_is(mut tree: StateTree, recorded: &[u8]) -> Option<StateTree> {
    let root = tree.root().ok()?;
    (recorded == root.as_slice()).then_some(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{SnapshotMeta, Spool};
    use crate::wal::WalCursor;

    #[test]
    fn the_tree_from_recorded_hashes_is_the_replayed_tree_at_every_point() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(tmp.path()).unwrap();
        let meta = SnapshotMeta {
            page_size: 512,
            page_count: 3,
            reason: "test".into(),
            wal: None,
        };
        let page = |pgno: u32, v: u32| {
            let mut p = vec![pgno as u8; 512];
            p[..4].copy_from_slice(&v.to_le_bytes());
            p
        };
        let mut lock = spool.lock().unwrap();
        lock.start_generation(&meta, &mut |pgno, buf| {
            buf.copy_from_slice(&page(pgno, 0));
            Ok(())
        })
        .unwrap();
        let mut heads = vec![lock.tail().unwrap().head_hash];
        // Growing, rewriting and shrinking, across two segments.
        for (v, (pages, size)) in [(1..=5, 5), (2..=3, 5), (4..=9, 9), (1..=1, 4)]
            .into_iter()
            .enumerate()
        {
            let v = v as u32 + 1;
            let mut txn = lock.begin_txn();
            for pgno in pages {
                lock.txn_page(&mut txn, pgno, &page(pgno, v)).unwrap();
            }
            let cursor = WalCursor {
                salt1: 1,
                salt2: 2,
                page_size: 512,
                big_endian_checksum: false,
                frame: v,
                checksum: (0, 0),
            };
            heads.push(lock.commit_txn(txn, size, 1, &cursor).unwrap());
            if v == 2 {
                lock.seal_active().unwrap();
            }
        }
        drop(lock);
        let target = LocalTarget::new(tmp.path().to_path_buf());
        let objects = reader::generation(&target, 1).unwrap();
        assert_eq!(objects.segments.len(), 2);
        for seq in 0..=4 {
            let head = heads[seq as usize];
            let mut fast = from_recorded_hashes(&target, &objects, seq, &head, tmp.path(), 2)
                .unwrap_or_else(|| panic!("txn {seq}: the recorded hashes give the recorded root"));
            let (_, full) =
                reader::replay_with_tree(&target, &objects, ReplayLimit::Txn(seq), &mut Nothing)
                    .unwrap();
            assert_eq!(fast.page_count(), full.page_count(), "txn {seq}");
            assert!(fast.root().is_ok());
        }
        // A point the stream does not have, and a head that is not the recorded one.
        assert!(from_recorded_hashes(&target, &objects, 5, &heads[4], tmp.path(), 2).is_none());
        assert!(from_recorded_hashes(&target, &objects, 3, &heads[2], tmp.path(), 2).is_none());
        assert!(from_recorded_hashes(&target, &objects, 0, &heads[1], tmp.path(), 2).is_none());
    }

    struct Nothing;
    impl Visitor for Nothing {}
}
