//! File lengths asked of the kernel without the files' timestamps.
//!
//! Since Linux 6.13 (multigrain timestamps) a file whose change or modification time a process
//! has read gets a fine-grained timestamp at its next write, and handing out a fine-grained
//! timestamp moves every later timestamp on the machine past the clock tick. A spool segment
//! looked at with `metadata()` at every commit (or by the shipper, or by a follower of a local
//! target, every few milliseconds) so gave SQLite's WAL a new modification time at commits that
//! would otherwise have shared one, and at synchronous=FULL each of SQLite's fsyncs then also
//! wrote the WAL's inode and waited for it: ~50 µs a commit on the benchmark machine
//! (docs/BENCHMARKS.md). What looks at the spool's or a local target's files again and again
//! asks only for the length (and the link count), which reads no timestamp.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{statx, AtFlags, StatxFlags, CWD};

/// The length of the file at `path` (following symbolic links, as `std::fs::metadata`).
pub fn len_at(path: &Path) -> io::Result<u64> {
    match statx(CWD, path, AtFlags::empty(), StatxFlags::SIZE) {
        Ok(s) if has(s.stx_mask, StatxFlags::SIZE) => Ok(s.stx_size),
        // No statx (a kernel before 4.11, or a sandbox that refuses it), or a file system that
        // did not fill the length in: what std asks.
        _ => std::fs::metadata(path).map(|m| m.len()),
    }
}

/// The length and link count of an open file (0 links: it was removed).
pub fn len_and_links(file: &File) -> io::Result<(u64, u64)> {
    let mask = StatxFlags::SIZE | StatxFlags::NLINK;
    match statx(file, "", AtFlags::EMPTY_PATH, mask) {
        Ok(s) if has(s.stx_mask, mask) => Ok((s.stx_size, u64::from(s.stx_nlink))),
        _ => file.metadata().map(|m| (m.len(), m.nlink())),
    }
}

/// Whether statx filled in every field of `wanted` (its result mask says which it did).
fn has(result_mask: u32, wanted: StatxFlags) -> bool {
    StatxFlags::from_bits_retain(result_mask).contains(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lengths_and_links_are_right() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert_eq!(len_and_links(&file).unwrap(), (0, 1));
        file.write_all(&[7; 450]).unwrap();
        assert_eq!(len_and_links(&file).unwrap(), (450, 1));
        assert_eq!(len_at(&path).unwrap(), 450);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(len_and_links(&file).unwrap(), (450, 0));
        assert_eq!(len_at(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
