//! B-tree page decoding (https://www.sqlite.org/fileformat2.html, "B-tree Pages").
//!
//! Every accessor checks bounds and returns a [`Corrupt`] naming the page and byte offset
//! instead of panicking: pages come from a stream and are decoded before SQLite ever sees them.

use std::fmt;
use std::rc::Rc;

/// Which database image a page was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The state before the transaction (after txn N-1).
    Old,
    /// The state after the transaction (after txn N).
    New,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Old => "the state before the txn",
            Side::New => "the state after the txn",
        })
    }
}

/// A decoding failure: which image, page and byte offset, and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub side: Side,
    pub pgno: u32,
    pub offset: usize,
    pub problem: String,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: page {} at offset {}: {}",
            self.side, self.pgno, self.offset, self.problem
        )
    }
}

pub(crate) fn corrupt(side: Side, pgno: u32, offset: usize, problem: impl Into<String>) -> Corrupt {
    Corrupt {
        side,
        pgno,
        offset,
        problem: problem.into(),
    }
}

/// Reads an SQLite varint (1 to 9 bytes, big-endian groups of 7 bits, the ninth byte whole).
/// Returns the value and its length, or `None` if `buf` ends inside it.
pub fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *buf.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    unreachable!("the loop returns by the ninth byte")
}

pub(crate) fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The four b-tree page types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    IndexInterior = 2,
    TableInterior = 5,
    IndexLeaf = 10,
    TableLeaf = 13,
}

impl PageKind {
    pub fn from_byte(b: u8) -> Option<PageKind> {
        match b {
            2 => Some(PageKind::IndexInterior),
            5 => Some(PageKind::TableInterior),
            10 => Some(PageKind::IndexLeaf),
            13 => Some(PageKind::TableLeaf),
            _ => None,
        }
    }
    pub fn is_leaf(self) -> bool {
        matches!(self, PageKind::IndexLeaf | PageKind::TableLeaf)
    }
    pub fn is_table(self) -> bool {
        matches!(self, PageKind::TableInterior | PageKind::TableLeaf)
    }
}

/// Offset of the b-tree header in a page: page 1 starts with the 100-byte database header.
pub fn header_offset(pgno: u32) -> usize {
    if pgno == 1 {
        100
    } else {
        0
    }
}

/// The page-type byte of a page, if the page is long enough to have one.
pub fn kind_of(pgno: u32, data: &[u8]) -> Option<PageKind> {
    data.get(header_offset(pgno))
        .copied()
        .and_then(PageKind::from_byte)
}

/// A parsed b-tree page header over the page's bytes.
#[derive(Debug, Clone)]
pub struct Page {
    pub pgno: u32,
    pub side: Side,
    pub data: Rc<[u8]>,
    pub kind: PageKind,
    pub ncells: usize,
    /// Right-most child (interior pages only).
    pub right: u32,
    /// Offset of the cell pointer array.
    ptrs: usize,
    /// Usable size of the page (page size minus reserved bytes).
    pub usable: usize,
}

/// A table-leaf cell: its rowid and where its payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafCell {
    pub rowid: i64,
    /// Offset of the cell in the page.
    pub offset: usize,
    /// Total payload size.
    pub payload_size: u64,
    /// The part of the payload stored on the page: `data[local_start..local_start + local_len]`.
    pub local_start: usize,
    pub local_len: usize,
    /// First overflow page, when the payload does not fit.
    pub overflow: Option<u32>,
}

/// How many payload bytes a cell keeps on its page (the rest goes to overflow pages).
pub fn local_payload(payload: u64, usable: usize, table_leaf: bool) -> usize {
    let u = usable as u64;
    let x = if table_leaf {
        u - 35
    } else {
        ((u - 12) * 64 / 255) - 23
    };
    if payload <= x {
        return payload as usize;
    }
    let m = ((u - 12) * 32 / 255) - 23;
    let k = m + ((payload - m) % (u - 4));
    (if k <= x { k } else { m }) as usize
}

impl Page {
    /// Parses the header of a b-tree page.
    pub fn parse(side: Side, pgno: u32, data: Rc<[u8]>, usable: usize) -> Result<Page, Corrupt> {
        let h = header_offset(pgno);
        let fail = |off: usize, p: String| corrupt(side, pgno, off, p);
        if usable < 480 || usable > data.len() {
            return Err(fail(
                0,
                format!(
                    "usable size {usable} does not fit a {}-byte page",
                    data.len()
                ),
            ));
        }
        let byte = *data
            .get(h)
            .ok_or_else(|| fail(h, "page too short for a b-tree header".into()))?;
        let kind = PageKind::from_byte(byte)
            .ok_or_else(|| fail(h, format!("not a b-tree page (type byte {byte:#04x})")))?;
        let ncells = be_u16(&data, h + 3)
            .ok_or_else(|| fail(h + 3, "truncated b-tree header".into()))?
            as usize;
        let (right, hdr_len) = if kind.is_leaf() {
            (0, 8)
        } else {
            (
                be_u32(&data, h + 8)
                    .ok_or_else(|| fail(h + 8, "truncated b-tree header".into()))?,
                12,
            )
        };
        let ptrs = h + hdr_len;
        if ptrs + 2 * ncells > usable {
            return Err(fail(
                h + 3,
                format!("{ncells} cells do not fit in the page"),
            ));
        }
        Ok(Page {
            pgno,
            side,
            data,
            kind,
            ncells,
            right,
            ptrs,
            usable,
        })
    }

    fn fail(&self, offset: usize, problem: impl Into<String>) -> Corrupt {
        corrupt(self.side, self.pgno, offset, problem)
    }

    /// Offset of cell `i`, checked to lie in the cell content area.
    pub fn cell_offset(&self, i: usize) -> Result<usize, Corrupt> {
        let at = self.ptrs + 2 * i;
        let off = be_u16(&self.data, at)
            .ok_or_else(|| self.fail(at, "cell pointer past the page"))? as usize;
        if off < self.ptrs + 2 * self.ncells || off >= self.usable {
            return Err(self.fail(
                at,
                format!("cell {i} pointer {off} is outside the cell content area"),
            ));
        }
        Ok(off)
    }

    fn varint_at(&self, at: usize, what: &str) -> Result<(u64, usize), Corrupt> {
        let end = self.usable.min(self.data.len());
        self.data
            .get(at..end)
            .and_then(varint)
            .ok_or_else(|| self.fail(at, format!("{what} runs past the end of the page")))
    }

    /// Cell `i` of a table-interior page: (left child, key).
    pub fn interior_cell(&self, i: usize) -> Result<(u32, i64), Corrupt> {
        debug_assert_eq!(self.kind, PageKind::TableInterior);
        let off = self.cell_offset(i)?;
        let child = be_u32(&self.data, off)
            .filter(|_| off + 4 <= self.usable)
            .ok_or_else(|| self.fail(off, "child pointer runs past the page"))?;
        let (key, _) = self.varint_at(off + 4, "rowid")?;
        Ok((child, key as i64))
    }

    /// Cell `i` of a table-leaf page.
    pub fn leaf_cell(&self, i: usize) -> Result<LeafCell, Corrupt> {
        debug_assert_eq!(self.kind, PageKind::TableLeaf);
        let off = self.cell_offset(i)?;
        let (payload_size, n1) = self.varint_at(off, "payload size")?;
        let (rowid, n2) = self.varint_at(off + n1, "rowid")?;
        let local_start = off + n1 + n2;
        self.payload_layout(off, payload_size, local_start, true)
            .map(|(local_len, overflow)| LeafCell {
                rowid: rowid as i64,
                offset: off,
                payload_size,
                local_start,
                local_len,
                overflow,
            })
    }

    /// Cell `i` of an index page: (payload size, local range, first overflow page).
    pub fn index_cell(&self, i: usize) -> Result<(u64, usize, usize, Option<u32>), Corrupt> {
        let off = self.cell_offset(i)?;
        let start = if self.kind == PageKind::IndexInterior {
            off + 4
        } else {
            off
        };
        let (payload_size, n) = self.varint_at(start, "payload size")?;
        let (local_len, overflow) = self.payload_layout(off, payload_size, start + n, false)?;
        Ok((payload_size, start + n, local_len, overflow))
    }

    fn payload_layout(
        &self,
        off: usize,
        payload: u64,
        local_start: usize,
        table: bool,
    ) -> Result<(usize, Option<u32>), Corrupt> {
        if payload > i32::MAX as u64 {
            return Err(self.fail(
                off,
                format!("payload size {payload} is larger than SQLite allows"),
            ));
        }
        let local_len = local_payload(payload, self.usable, table);
        let end = local_start + local_len;
        if local_len as u64 == payload {
            if end > self.usable {
                return Err(self.fail(
                    off,
                    format!("payload of {payload} bytes runs past the end of the page"),
                ));
            }
            return Ok((local_len, None));
        }
        if end + 4 > self.usable {
            return Err(self.fail(off, "overflow pointer runs past the end of the page"));
        }
        let first = be_u32(&self.data, end)
            .ok_or_else(|| self.fail(end, "overflow pointer runs past the page"))?;
        Ok((local_len, Some(first)))
    }

    /// The local payload bytes of a leaf cell.
    pub fn local(&self, cell: &LeafCell) -> &[u8] {
        &self.data[cell.local_start..cell.local_start + cell.local_len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(varint(&[0x00]), Some((0, 1)));
        assert_eq!(varint(&[0x7f]), Some((127, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
        assert_eq!(varint(&[]), None);
    }

    #[test]
    fn local_sizes_match_the_file_format() {
        // 4096-byte pages: X = 4061, M = 489.
        let m = ((4096 - 12) * 32 / 255) - 23;
        assert_eq!(m, 489);
        assert_eq!(local_payload(4061, 4096, true), 4061);
        // K = M + (P - M) % (U - 4) = 4062 > X, so M bytes stay local.
        assert_eq!(local_payload(4062, 4096, true), m);
        // K = 489 + (8000 - 489) % 4092 = 3908 <= X.
        assert_eq!(local_payload(8000, 4096, true), 3908);
        // Index pages: X = ((U - 12) * 64 / 255) - 23 = 1002.
        assert_eq!(local_payload(1002, 4096, false), 1002);
        // K = 489 + 514 = 1003 > X: M bytes stay local.
        assert_eq!(local_payload(1003, 4096, false), m);
    }

    #[test]
    fn garbage_pages_are_errors_not_panics() {
        for len in [512usize, 4096] {
            for seed in 0..200u32 {
                let mut data = vec![0u8; len];
                let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
                for b in data.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
                data[0] = [2u8, 5, 10, 13][seed as usize % 4];
                let Ok(p) = Page::parse(Side::New, 2, data.into(), len) else {
                    continue;
                };
                for i in 0..p.ncells {
                    match p.kind {
                        PageKind::TableLeaf => drop(p.leaf_cell(i)),
                        PageKind::TableInterior => drop(p.interior_cell(i)),
                        _ => drop(p.index_cell(i)),
                    }
                }
            }
        }
    }
}
