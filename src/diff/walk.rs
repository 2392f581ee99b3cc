//! The merge walk: both versions of a table b-tree, in rowid order, side by side.
//!
//! Each side is a lazily expanded sequence of items in key order: rows, and subtrees not yet
//! read (a child page with its key range `(lo, hi]` from the dividers above it). The walk
//! compares the heads of both sequences. Two subtrees are skipped unread when they are the
//! same page with the same range, the transaction did not write that page, and nothing
//! below it can have changed: either it is a leaf (all leaves of a b-tree are at one depth),
//! or no page the transaction wrote has its first key inside the range (`dirty` keys). A page
//! the transaction did not write is byte-identical in both images, so such a subtree can only
//! differ through a written page below it, and every written table page below it has its
//! first key inside the range: SQLite keeps every key of a subtree inside the range its
//! parent's dividers give it (`PRAGMA integrity_check` enforces this). Everything else is
//! read, so the work follows the pages the transaction wrote, not the size of the table.
//! Pages the walks never reach are accounted for afterwards (see `mod.rs`).

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use super::images::Images;
use super::page::{be_u32, corrupt, Corrupt, LeafCell, Page, PageKind, Side};
use super::schema::Table;
use super::value::{decode_record, Value};
use super::{Change, DiffError, Op};

/// Deeper than any b-tree SQLite can build (it stops at 20); a cycle gets here quickly.
const MAX_DEPTH: u32 = 40;

/// Receives each row of a scan: its rowid and the record's fields.
pub type RowFn<'f> = dyn FnMut(i64, Vec<Value>) -> Result<(), DiffError> + 'f;

/// How much a walk may skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Skip subtrees that cannot have changed.
    Pruned,
    /// Read everything, and follow the overflow chain of every unchanged cell to see whether
    /// the transaction rewrote one of its pages in place.
    Full,
}

/// Shared state of the walks over one pair of images.
pub struct Walker<'a> {
    pub images: &'a Images,
    pub usable_old: usize,
    pub usable_new: usize,
    pub dirty: BTreeSet<i64>,
    /// Leaves to read even if unwritten, comparing the overflow chains of unchanged cells
    /// (owners of overflow pages the transaction rewrote in place, found by pointer map).
    pub forced: HashSet<u32>,
    pub mode: Mode,
    /// Pages written by the transaction that the walks read in the new image.
    pub touched: HashSet<u32>,
    /// Pages read (both images), for the summary.
    pub pages_read: u64,
}

#[derive(Debug, Clone)]
struct Sub {
    pgno: u32,
    lo: Option<i64>,
    hi: Option<i64>,
    depth: u32,
    /// The page and offset of the pointer to it (for messages).
    from: (u32, usize),
}

#[derive(Debug, Clone)]
struct Row {
    page: Page,
    cell: LeafCell,
}

#[derive(Debug, Clone)]
enum Item {
    Row(Row),
    Sub(Sub),
}

struct Frame {
    page: Page,
    idx: usize,
    lo: Option<i64>,
    hi: Option<i64>,
    prev: Option<i64>,
    depth: u32,
}

struct Cursor {
    side: Side,
    frames: Vec<Frame>,
    head: Option<Item>,
    leaf_depth: Option<u32>,
}

fn out_of_range(key: i64, lo: Option<i64>, hi: Option<i64>, prev: Option<i64>) -> Option<String> {
    if let Some(p) = prev {
        if key <= p {
            return Some(format!("rowid {key} follows rowid {p} (keys out of order)"));
        }
    }
    if lo.is_some_and(|lo| key <= lo) || hi.is_some_and(|hi| key > hi) {
        let show = |b: Option<i64>, inf: &str| b.map_or(inf.to_string(), |v| v.to_string());
        return Some(format!(
            "rowid {key} is outside the range ({}, {}] its parent gives this page",
            show(lo, "-inf"),
            show(hi, "+inf")
        ));
    }
    None
}

impl Cursor {
    fn new(side: Side, root: Option<u32>) -> Cursor {
        let head = root.map(|pgno| {
            Item::Sub(Sub {
                pgno,
                lo: None,
                hi: None,
                depth: 0,
                from: (0, 0),
            })
        });
        Cursor {
            side,
            frames: Vec::new(),
            head,
            leaf_depth: None,
        }
    }

    /// Makes `head` the next item, if any.
    fn fill(&mut self) -> Result<(), Corrupt> {
        while self.head.is_none() {
            let Some(f) = self.frames.last_mut() else {
                return Ok(());
            };
            let page = &f.page;
            if f.idx < page.ncells {
                let i = f.idx;
                f.idx += 1;
                if page.kind == PageKind::TableLeaf {
                    let cell = page.leaf_cell(i)?;
                    if let Some(p) = out_of_range(cell.rowid, f.lo, f.hi, f.prev) {
                        return Err(corrupt(self.side, page.pgno, cell.offset, p));
                    }
                    f.prev = Some(cell.rowid);
                    self.head = Some(Item::Row(Row {
                        page: page.clone(),
                        cell,
                    }));
                } else {
                    let (child, key) = page.interior_cell(i)?;
                    let off = page.cell_offset(i)?;
                    if let Some(p) = out_of_range(key, f.lo, f.hi, f.prev) {
                        return Err(corrupt(self.side, page.pgno, off, p));
                    }
                    let lo = f.prev.or(f.lo);
                    f.prev = Some(key);
                    self.head = Some(Item::Sub(Sub {
                        pgno: child,
                        lo,
                        hi: Some(key),
                        depth: f.depth + 1,
                        from: (page.pgno, off),
                    }));
                }
            } else if page.kind == PageKind::TableInterior && f.idx == page.ncells {
                f.idx += 1;
                let from = (page.pgno, super::page::header_offset(page.pgno) + 8);
                self.head = Some(Item::Sub(Sub {
                    pgno: page.right,
                    lo: f.prev.or(f.lo),
                    hi: f.hi,
                    depth: f.depth + 1,
                    from,
                }));
            } else {
                self.frames.pop();
            }
        }
        Ok(())
    }

    fn push(&mut self, sub: Sub, page: Page) -> Result<(), Corrupt> {
        if !page.kind.is_table() {
            return Err(corrupt(
                self.side,
                sub.from.0,
                sub.from.1,
                format!(
                    "points to page {}, which is an index page, not a table page",
                    sub.pgno
                ),
            ));
        }
        if sub.depth > MAX_DEPTH {
            return Err(corrupt(
                self.side,
                sub.from.0,
                sub.from.1,
                format!("b-tree deeper than {MAX_DEPTH} levels (a cycle?)"),
            ));
        }
        if page.kind == PageKind::TableLeaf {
            match self.leaf_depth {
                None => self.leaf_depth = Some(sub.depth),
                Some(d) if d != sub.depth => {
                    return Err(corrupt(
                        self.side,
                        sub.pgno,
                        0,
                        format!(
                            "leaf at depth {}, other leaves of the b-tree are at depth {d}",
                            sub.depth
                        ),
                    ));
                }
                _ => {}
            }
        }
        self.frames.push(Frame {
            page,
            idx: 0,
            lo: sub.lo,
            hi: sub.hi,
            prev: None,
            depth: sub.depth,
        });
        Ok(())
    }

    fn is_leaf_depth(&self, depth: u32) -> bool {
        self.leaf_depth == Some(depth)
    }
}

impl Walker<'_> {
    fn usable(&self, side: Side) -> usize {
        match side {
            Side::Old => self.usable_old,
            Side::New => self.usable_new,
        }
    }

    /// Reads a page referenced from `from`, noting written pages read in the new image.
    pub fn raw(
        &mut self,
        side: Side,
        pgno: u32,
        from: (u32, usize),
    ) -> Result<std::rc::Rc<[u8]>, DiffError> {
        let pages = self.images.pages(side);
        if pgno == 0 || pgno > pages {
            return Err(corrupt(
                side,
                from.0,
                from.1,
                format!("refers to page {pgno}, but the database has {pages} pages"),
            )
            .into());
        }
        if side == Side::New && self.images.changed(pgno) {
            self.touched.insert(pgno);
        }
        self.pages_read += 1;
        self.images.read(side, pgno)
    }

    fn load(&mut self, side: Side, pgno: u32, from: (u32, usize)) -> Result<Page, DiffError> {
        let data = self.raw(side, pgno, from)?;
        Ok(Page::parse(side, pgno, data, self.usable(side))?)
    }

    fn expand(&mut self, c: &mut Cursor, sub: Sub) -> Result<(), DiffError> {
        let page = self.load(c.side, sub.pgno, sub.from)?;
        c.push(sub, page)?;
        c.fill()?;
        Ok(())
    }

    /// The whole payload of a cell, following its overflow chain.
    fn payload(&mut self, side: Side, row: &Row) -> Result<Vec<u8>, DiffError> {
        let total = row.cell.payload_size as usize;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(row.page.local(&row.cell));
        let per = self.usable(side) - 4;
        let mut next = row.cell.overflow;
        let mut from = (row.page.pgno, row.cell.local_start + row.cell.local_len);
        while out.len() < total {
            let pgno = match next {
                Some(p) if p != 0 => p,
                _ => {
                    return Err(corrupt(
                        side,
                        from.0,
                        from.1,
                        format!(
                            "overflow chain of rowid {} ends {} bytes short of its payload",
                            row.cell.rowid,
                            total - out.len()
                        ),
                    )
                    .into())
                }
            };
            let data = self.raw(side, pgno, from)?;
            let take = per.min(total - out.len());
            out.extend_from_slice(&data[4..4 + take]);
            next = be_u32(&data, 0);
            from = (pgno, 0);
        }
        Ok(out)
    }

    /// Whether the new-image overflow chain of an unchanged cell holds a page the
    /// transaction wrote (SQLite overwrites same-size payloads in place).
    fn chain_written(&mut self, row: &Row) -> Result<bool, DiffError> {
        let Some(mut pgno) = row.cell.overflow else {
            return Ok(false);
        };
        let per = (self.usable_new - 4) as u64;
        let mut left = row.cell.payload_size - row.cell.local_len as u64;
        let mut from = (row.page.pgno, row.cell.local_start + row.cell.local_len);
        let mut written = false;
        while left > 0 {
            if pgno == 0 {
                return Err(corrupt(
                    Side::New,
                    from.0,
                    from.1,
                    format!("overflow chain of rowid {} ends early", row.cell.rowid),
                )
                .into());
            }
            written |= self.images.changed(pgno);
            let data = self.raw(Side::New, pgno, from)?;
            left = left.saturating_sub(per);
            from = (pgno, 0);
            pgno = be_u32(&data, 0).unwrap_or(0);
        }
        Ok(written)
    }

    /// Decodes a row into the table's stored columns.
    fn values(&mut self, side: Side, row: &Row, table: &Table) -> Result<Vec<Value>, DiffError> {
        let payload = self.payload(side, row)?;
        let fields = decode_record(&payload).map_err(|(at, problem)| {
            corrupt(
                side,
                row.page.pgno,
                row.cell.offset,
                format!(
                    "rowid {}: record: {problem} (payload offset {at})",
                    row.cell.rowid
                ),
            )
        })?;
        if fields.len() > table.columns.len() {
            return Err(corrupt(
                side,
                row.page.pgno,
                row.cell.offset,
                format!(
                    "rowid {} has {} fields but table {} has {} stored columns",
                    row.cell.rowid,
                    fields.len(),
                    table.name,
                    table.columns.len()
                ),
            )
            .into());
        }
        let mut fields = fields.into_iter();
        let mut out = Vec::with_capacity(table.columns.len());
        for col in &table.columns {
            let v = match fields.next() {
                Some(v) => v,
                None => match &col.default {
                    super::schema::Default::Value(v) => v.clone(),
                    super::schema::Default::Unknown(expr) => {
                        return Err(DiffError::Undecodable(format!(
                            "rowid {} was stored before column {} was added, and its DEFAULT {expr} is not decoded",
                            row.cell.rowid, col.name
                        )))
                    }
                },
            };
            out.push(if col.rowid_alias {
                Value::Integer(row.cell.rowid)
            } else if let (super::schema::Affinity::Real, Value::Integer(i)) = (col.affinity, &v) {
                Value::Real(*i as f64)
            } else {
                v
            });
        }
        Ok(out)
    }

    fn dirty_in(&self, lo: Option<i64>, hi: Option<i64>) -> bool {
        let lo_b = lo.map_or(Bound::Unbounded, Bound::Excluded);
        let hi_b = hi.map_or(Bound::Unbounded, Bound::Included);
        if let (Some(l), Some(h)) = (lo, hi) {
            if l >= h {
                return false;
            }
        }
        self.dirty.range((lo_b, hi_b)).next().is_some()
    }

    /// Compares one table's b-tree before (`root_old`) and after (`root_new`) the
    /// transaction; `None` for a side where the table does not exist.
    pub fn diff_table(
        &mut self,
        table: &Arc<Table>,
        root_old: Option<u32>,
        root_new: Option<u32>,
        emit: &mut dyn FnMut(Change) -> Result<(), DiffError>,
    ) -> Result<(), DiffError> {
        let mut old = Cursor::new(Side::Old, root_old);
        let mut new = Cursor::new(Side::New, root_new);
        let change = |op, rowid, old, new| Change {
            table: Arc::clone(table),
            op,
            rowid,
            old,
            new,
        };
        loop {
            old.fill()?;
            new.fill()?;
            match (old.head.take(), new.head.take()) {
                (None, None) => return Ok(()),
                (Some(Item::Row(r)), None) => {
                    let v = self.values(Side::Old, &r, table)?;
                    emit(change(Op::Delete, r.cell.rowid, Some(v), None))?;
                }
                (None, Some(Item::Row(r))) => {
                    let v = self.values(Side::New, &r, table)?;
                    emit(change(Op::Insert, r.cell.rowid, None, Some(v)))?;
                }
                (Some(Item::Sub(s)), n) => {
                    match n {
                        None => self.expand(&mut old, s)?,
                        Some(Item::Row(r)) => {
                            if s.lo.is_some_and(|lo| r.cell.rowid <= lo) {
                                // The new row comes before everything in the old subtree.
                                let v = self.values(Side::New, &r, table)?;
                                emit(change(Op::Insert, r.cell.rowid, None, Some(v)))?;
                                old.head = Some(Item::Sub(s));
                            } else {
                                new.head = Some(Item::Row(r));
                                self.expand(&mut old, s)?;
                            }
                        }
                        Some(Item::Sub(t)) => self.subs(&mut old, &mut new, s, t)?,
                    }
                }
                (Some(Item::Row(r)), Some(Item::Sub(t))) => {
                    if t.lo.is_some_and(|lo| r.cell.rowid <= lo) {
                        let v = self.values(Side::Old, &r, table)?;
                        emit(change(Op::Delete, r.cell.rowid, Some(v), None))?;
                        new.head = Some(Item::Sub(t));
                    } else {
                        old.head = Some(Item::Row(r));
                        self.expand(&mut new, t)?;
                    }
                }
                (None, Some(Item::Sub(t))) => self.expand(&mut new, t)?,
                (Some(Item::Row(a)), Some(Item::Row(b))) => {
                    let (ka, kb) = (a.cell.rowid, b.cell.rowid);
                    if ka < kb {
                        let v = self.values(Side::Old, &a, table)?;
                        emit(change(Op::Delete, ka, Some(v), None))?;
                        new.head = Some(Item::Row(b));
                    } else if kb < ka {
                        let v = self.values(Side::New, &b, table)?;
                        emit(change(Op::Insert, kb, None, Some(v)))?;
                        old.head = Some(Item::Row(a));
                    } else if !self.same_cell(&a, &b)? {
                        let va = self.values(Side::Old, &a, table)?;
                        let vb = self.values(Side::New, &b, table)?;
                        if va != vb {
                            emit(change(Op::Update, ka, Some(va), Some(vb)))?;
                        }
                    }
                }
            }
        }
    }

    /// Whether two cells with the same rowid certainly hold the same payload.
    fn same_cell(&mut self, a: &Row, b: &Row) -> Result<bool, DiffError> {
        if a.cell.payload_size != b.cell.payload_size
            || a.page.local(&a.cell) != b.page.local(&b.cell)
            || a.cell.overflow != b.cell.overflow
        {
            return Ok(false);
        }
        let Some(first) = b.cell.overflow else {
            return Ok(true);
        };
        if self.images.changed(first) {
            return Ok(false);
        }
        if self.mode == Mode::Full || self.forced.contains(&b.page.pgno) {
            return Ok(!self.chain_written(b)?);
        }
        Ok(true)
    }

    /// Two subtrees at the heads: skip them, or read the one that starts first.
    fn subs(
        &mut self,
        old: &mut Cursor,
        new: &mut Cursor,
        s: Sub,
        t: Sub,
    ) -> Result<(), DiffError> {
        if self.mode == Mode::Pruned
            && s.pgno == t.pgno
            && s.lo == t.lo
            && s.hi == t.hi
            && !self.images.changed(s.pgno)
            && !self.forced.contains(&s.pgno)
            && ((old.is_leaf_depth(s.depth) && new.is_leaf_depth(t.depth))
                || !self.dirty_in(s.lo, s.hi))
        {
            return Ok(());
        }
        // -inf < any lo; any hi < +inf.
        let lo_cmp = match (s.lo, t.lo) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(&b),
        };
        let hi_cmp = match (s.hi, t.hi) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(_), None) => std::cmp::Ordering::Less,
            (Some(a), Some(b)) => a.cmp(&b),
        };
        use std::cmp::Ordering::*;
        match (lo_cmp, hi_cmp) {
            (Less, _) | (Equal, Greater) => {
                new.head = Some(Item::Sub(t));
                self.expand(old, s)
            }
            (Greater, _) | (Equal, Less) => {
                old.head = Some(Item::Sub(s));
                self.expand(new, t)
            }
            (Equal, Equal) => {
                self.expand(old, s)?;
                self.expand(new, t)
            }
        }
    }

    /// Every row of one b-tree in one image, in rowid order (for `sqlite_schema`).
    pub fn scan(&mut self, side: Side, root: u32, f: &mut RowFn<'_>) -> Result<(), DiffError> {
        let mut c = Cursor::new(side, Some(root));
        loop {
            c.fill()?;
            match c.head.take() {
                None => return Ok(()),
                Some(Item::Sub(s)) => self.expand(&mut c, s)?,
                Some(Item::Row(r)) => {
                    let payload = self.payload(side, &r)?;
                    let v = decode_record(&payload).map_err(|(at, problem)| {
                        corrupt(
                            side,
                            r.page.pgno,
                            r.cell.offset,
                            format!(
                                "rowid {}: record: {problem} (payload offset {at})",
                                r.cell.rowid
                            ),
                        )
                    })?;
                    f(r.cell.rowid, v)?;
                }
            }
        }
    }

    /// Every page of a b-tree (table or index) in the new image, reading only interior pages
    /// and written leaves; follows the overflow chains that start on a written page.
    /// Returns whether any of its pages was written.
    pub fn enumerate_new(&mut self, root: u32) -> Result<bool, DiffError> {
        let mut written = false;
        let mut leaf_depth: Option<u32> = None;
        let mut stack = vec![(root, (0u32, 0usize), 0u32)];
        while let Some((pgno, from, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(corrupt(
                    Side::New,
                    from.0,
                    from.1,
                    format!("b-tree deeper than {MAX_DEPTH} levels (a cycle?)"),
                )
                .into());
            }
            let changed = self.images.changed(pgno);
            written |= changed;
            if leaf_depth == Some(depth) && !changed {
                // An unwritten leaf: nothing below it, nothing new in it.
                continue;
            }
            let page = self.load(Side::New, pgno, from)?;
            if changed {
                self.follow_new_chains(&page)?;
            }
            if page.kind.is_leaf() {
                leaf_depth.get_or_insert(depth);
                continue;
            }
            stack.push((
                page.right,
                (pgno, super::page::header_offset(pgno) + 8),
                depth + 1,
            ));
            for i in (0..page.ncells).rev() {
                let off = page.cell_offset(i)?;
                let child = be_u32(&page.data, off)
                    .ok_or_else(|| corrupt(Side::New, pgno, off, "child pointer past the page"))?;
                stack.push((child, (pgno, off), depth + 1));
            }
        }
        Ok(written)
    }

    /// Marks the overflow pages of a written page's cells whose chains start on a written
    /// page (a new chain is written whole).
    pub fn follow_new_chains(&mut self, page: &Page) -> Result<(), DiffError> {
        if page.kind == PageKind::TableInterior {
            return Ok(());
        }
        for i in 0..page.ncells {
            let (size, start, local, first) = if page.kind == PageKind::TableLeaf {
                let c = page.leaf_cell(i)?;
                (c.payload_size, c.local_start, c.local_len, c.overflow)
            } else {
                page.index_cell(i)?
            };
            let Some(mut pgno) = first else { continue };
            if !self.images.changed(pgno) {
                continue;
            }
            let per = (self.usable_new - 4) as u64;
            let mut left = size - local as u64;
            let mut from = (page.pgno, start + local);
            while left > 0 && pgno != 0 {
                let data = self.raw(Side::New, pgno, from)?;
                left = left.saturating_sub(per);
                from = (pgno, 0);
                pgno = be_u32(&data, 0).unwrap_or(0);
            }
        }
        Ok(())
    }
}
