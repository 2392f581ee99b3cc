//! Row-level diff of one transaction, decoded from the pages it wrote.
//!
//! `walstream diff TARGET --txn N` compares the database after txn N-1 of a generation (its
//! snapshot plus txns 1..N-1) with the database after txn N, and reports the rows of every
//! rowid table that txn N inserted, updated or deleted, with their rowids and column values;
//! inverted, the same changes undo txn N. Nothing here links SQLite: pages are decoded as
//! <https://www.sqlite.org/fileformat2.html> describes them.
//!
//! How (see `walk.rs` for the merge walk):
//!
//! 1. One validating replay writes the state before txn N to a temporary file and the pages
//!    of txn N to a second one (`images.rs`). Memory holds their page numbers only.
//! 2. `sqlite_schema` is read from both images. Tables, indexes, views and triggers created,
//!    dropped or redefined by txn N are reported as "schema changed: ..."; the rows of such
//!    tables are not decoded (their columns may not mean the same on both sides).
//! 3. Each rowid table defined the same way on both sides is merge-walked in both images,
//!    skipping what cannot have changed; rows are compared by rowid and decoded (overflow
//!    pages included) only where they differ.
//! 4. Every page txn N wrote must then be accounted for: read by a walk, on the freelist, a
//!    pointer-map page, an index page (index entries are not rows) or an overflow page of one
//!    of these. A page that is not (for example an overflow page SQLite rewrote in place, or
//!    a walk stopped short by an inconsistent tree) makes the diff walk every table whole,
//!    comparing overflow chains too, before it prints anything; what even that cannot place
//!    is reported as not decoded.
//!
//! Not decoded, and said so: WITHOUT ROWID tables (their pages are index b-trees), tables
//! whose definition changed in txn N, tables whose CREATE TABLE text this parser does not
//! understand, and rows stored before `ALTER TABLE ADD COLUMN` whose new column has a
//! non-literal DEFAULT. Index changes are not rows and are not reported. VIRTUAL generated
//! columns are not stored and not reported; STORED ones are reported but never written by
//! SQL output.

mod images;
mod output;
mod page;
mod schema;
mod value;
mod walk;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::reader::{self, ReadError};
use crate::target::Target;

pub use images::TxnInfo;
pub use output::{sql_statement, Collected, JsonWriter, SqlWriter};
pub use page::{varint, Corrupt, Side};
pub use schema::{parse_create_table, Affinity, Column, Table, TableDef};
pub use value::{decode_record, real_literal, TextEncoding, Value};

use images::Images;
use page::{be_u16, be_u32, corrupt, kind_of, Page, PageKind};
use schema::SchemaEntry;
use walk::{Mode, Walker};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    Corrupt(#[from] Corrupt),
    #[error("temporary file: {0}")]
    Temp(String),
    #[error("txn 0 is the generation's snapshot; diff needs a transaction number of 1 or more")]
    TxnZero,
    /// A table the diff cannot decode (reported as a note, not returned).
    #[error("{0}")]
    Undecodable(String),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

impl std::error::Error for Corrupt {}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// One changed row. `old` and `new` hold the table's stored columns (`table.columns`); the
/// INTEGER PRIMARY KEY column, if any, holds the rowid.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: Arc<Table>,
    pub op: Op,
    pub rowid: i64,
    pub old: Option<Vec<Value>>,
    pub new: Option<Vec<Value>>,
}

impl Change {
    /// The change that undoes this one.
    pub fn inverted(&self) -> Change {
        Change {
            table: Arc::clone(&self.table),
            op: match self.op {
                Op::Insert => Op::Delete,
                Op::Delete => Op::Insert,
                Op::Update => Op::Update,
            },
            rowid: self.rowid,
            old: self.new.clone(),
            new: self.old.clone(),
        }
    }

    /// Indexes of the columns whose value differs (all columns for inserts and deletes).
    pub fn changed_columns(&self) -> Vec<usize> {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => (0..o.len().min(n.len()))
                .filter(|&i| o[i] != n[i])
                .collect(),
            _ => (0..self.table.columns.len()).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// sqlite_schema changed: an object was created, dropped or redefined.
    SchemaChanged,
    /// Something changed that the diff does not decode into rows.
    NotDecoded,
}

/// What the diff reports besides rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub table: Option<String>,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            NoteKind::SchemaChanged => write!(f, "schema changed: {}", self.message),
            NoteKind::NotDecoded => write!(f, "not decoded: {}", self.message),
        }
    }
}

/// Totals of a diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub notes: u64,
    pub tables: u64,
    /// The walk had to read every table whole (see the module comment).
    pub full_walk: bool,
    /// Pages decoded (both images, all passes).
    pub pages_read: u64,
}

/// Receives a diff as it is produced: `begin`, then notes and changes, then `end`.
pub trait Sink {
    fn begin(&mut self, _info: &TxnInfo) -> std::io::Result<()> {
        Ok(())
    }
    fn note(&mut self, note: &Note) -> std::io::Result<()>;
    fn change(&mut self, change: &Change) -> std::io::Result<()>;
    fn end(&mut self, _info: &TxnInfo, _summary: &Summary) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Generation (default: the newest).
    pub generation: Option<u64>,
    /// Transaction to diff against the state before it (1 or more).
    pub txn: u64,
    /// Where the temporary images go (default: the system temporary directory).
    pub tmp_dir: Option<PathBuf>,
}

/// The database header fields the diff needs.
#[derive(Debug, Clone, Copy)]
struct DbHeader {
    usable: usize,
    encoding: TextEncoding,
    freelist_trunk: u32,
    autovacuum: bool,
}

fn db_header(images: &Images, side: Side) -> Result<Option<DbHeader>, DiffError> {
    if images.pages(side) == 0 {
        return Ok(None);
    }
    let data = images.read(side, 1)?;
    let fail = |off: usize, p: String| DiffError::Corrupt(corrupt(side, 1, off, p));
    if data.len() < 100 || &data[..16] != b"SQLite format 3\0" {
        return Err(fail(0, "not an SQLite database header".into()));
    }
    let ps = match be_u16(&data, 16).unwrap_or(0) {
        1 => 65536,
        n => n as usize,
    };
    if ps != images.page_size() {
        return Err(fail(
            16,
            format!(
                "header says {ps}-byte pages, the stream holds {}-byte pages",
                images.page_size()
            ),
        ));
    }
    let usable = ps - data[20] as usize;
    if usable < 480 {
        return Err(fail(
            20,
            format!(
                "{} reserved bytes leave {usable} usable bytes per page",
                data[20]
            ),
        ));
    }
    let enc = be_u32(&data, 56).unwrap_or(0);
    let encoding = TextEncoding::from_header(enc)
        .ok_or_else(|| fail(56, format!("unknown text encoding {enc}")))?;
    Ok(Some(DbHeader {
        usable,
        encoding,
        freelist_trunk: be_u32(&data, 32).unwrap_or(0),
        autovacuum: be_u32(&data, 52).unwrap_or(0) != 0,
    }))
}

fn text_of(v: &Value, enc: TextEncoding) -> Option<String> {
    match v {
        Value::Text(raw) => Some(
            Value::text_str(raw, enc).unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned()),
        ),
        _ => None,
    }
}

fn read_schema(
    w: &mut Walker,
    side: Side,
    enc: TextEncoding,
) -> Result<Vec<SchemaEntry>, DiffError> {
    let mut out = Vec::new();
    if w.images.pages(side) == 0 {
        return Ok(out);
    }
    w.scan(side, 1, &mut |_rowid, v| {
        let get = |i: usize| v.get(i).and_then(|x| text_of(x, enc)).unwrap_or_default();
        out.push(SchemaEntry {
            kind: get(0),
            name: get(1),
            tbl_name: get(2),
            rootpage: match v.get(3) {
                Some(Value::Integer(i)) => *i,
                _ => 0,
            },
            sql: v.get(4).and_then(|x| text_of(x, enc)),
        });
        Ok(())
    })?;
    Ok(out)
}

/// A table the walk decodes.
struct Planned {
    table: Arc<Table>,
    root_old: u32,
    root_new: u32,
}

/// A b-tree the diff does not decode but must account for; `note` is reported if the
/// transaction wrote any of its pages.
struct Other {
    root: u32,
    note: Option<Note>,
}

fn root_of(e: &SchemaEntry, side: Side, pages: u32) -> Result<u32, DiffError> {
    match u32::try_from(e.rootpage) {
        Ok(r) if r >= 1 && r <= pages => Ok(r),
        _ => Err(corrupt(
            side,
            1,
            0,
            format!(
                "sqlite_schema gives {} {} root page {}, outside the {pages}-page database",
                e.kind, e.name, e.rootpage
            ),
        )
        .into()),
    }
}

fn pending_byte_page(page_size: usize) -> u32 {
    (0x4000_0000 / page_size) as u32 + 1
}

fn is_ptrmap_page(pgno: u32, usable: usize, page_size: usize) -> bool {
    if pgno < 2 {
        return false;
    }
    let per = (usable / 5) as u32 + 1;
    let mut p = ((pgno - 2) / per) * per + 2;
    if p == pending_byte_page(page_size) {
        p += 1;
    }
    p == pgno
}

/// Diffs txn `opts.txn` against the state before it, feeding `sink`. `progress` receives
/// the stored bytes replayed so far.
pub fn diff(
    target: &dyn Target,
    opts: &DiffOptions,
    progress: &mut dyn FnMut(u64),
    sink: &mut dyn Sink,
) -> Result<Summary, DiffError> {
    if opts.txn == 0 {
        return Err(DiffError::TxnZero);
    }
    let objects = match opts.generation {
        Some(g) => reader::generation(target, g)?,
        None => reader::latest_generation(target)?,
    };
    let tmp = opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let images = Images::build(target, &objects, opts.txn, &tmp, progress)?;
    diff_images(&images, sink)
}

fn diff_images(images: &Images, sink: &mut dyn Sink) -> Result<Summary, DiffError> {
    let info = images.info.clone();
    sink.begin(&info)?;
    let mut summary = Summary::default();
    let Some(new_hdr) = db_header(images, Side::New)? else {
        // The database is empty after the transaction: nothing to decode.
        sink.end(&info, &summary)?;
        return Ok(summary);
    };
    let old_hdr = db_header(images, Side::Old)?;
    let old_enc = old_hdr.map_or(new_hdr.encoding, |h| h.encoding);
    let enc = new_hdr.encoding;

    // Dirty keys: the first key of every table page the transaction wrote.
    let written = images.written_pages();
    let mut dirty = BTreeSet::new();
    let mut index_pages = Vec::new();
    for &p in &written {
        if p == 1 {
            // sqlite_schema's root: read whole anyway; its rowids say nothing of tables.
            continue;
        }
        let data = images.read(Side::New, p)?;
        match kind_of(p, &data) {
            Some(k) if k.is_table() => {
                if let Ok(page) = Page::parse(Side::New, p, data, new_hdr.usable) {
                    let key = match k {
                        PageKind::TableLeaf => page.leaf_cell(0).ok().map(|c| c.rowid),
                        _ => page.interior_cell(0).ok().map(|c| c.1),
                    };
                    dirty.extend(key);
                }
            }
            Some(_) => index_pages.push(p),
            None => {}
        }
    }

    let mut w = Walker {
        images,
        usable_old: old_hdr.map_or(new_hdr.usable, |h| h.usable),
        usable_new: new_hdr.usable,
        dirty,
        forced: HashSet::new(),
        mode: Mode::Pruned,
        touched: HashSet::new(),
        pages_read: 0,
    };
    let old_schema = read_schema(&mut w, Side::Old, old_enc)?;
    let new_schema = read_schema(&mut w, Side::New, enc)?;

    // Schema changes, and the plan.
    let mut notes: Vec<Note> = Vec::new();
    let key = |e: &SchemaEntry| (e.kind.to_ascii_lowercase(), e.name.to_ascii_lowercase());
    let old_by: HashMap<_, &SchemaEntry> = old_schema.iter().map(|e| (key(e), e)).collect();
    let new_by: HashMap<_, &SchemaEntry> = new_schema.iter().map(|e| (key(e), e)).collect();
    let mut planned = Vec::new();
    let mut others = Vec::new();
    let schema_note = |table: &str, message: String| Note {
        kind: NoteKind::SchemaChanged,
        table: Some(table.to_string()),
        message,
    };
    let not_decoded = |table: &str, message: String| Note {
        kind: NoteKind::NotDecoded,
        table: Some(table.to_string()),
        message,
    };
    let sql_of = |e: &SchemaEntry| e.sql.clone().unwrap_or_else(|| "(no sql)".into());
    for e in &new_schema {
        let is_table = e.kind == "table";
        let rows = if is_table {
            " (its rows are not decoded)"
        } else {
            ""
        };
        match old_by.get(&key(e)) {
            None => {
                notes.push(schema_note(
                    &e.name,
                    format!("{} {} created{rows}: {}", e.kind, e.name, sql_of(e)),
                ));
                if e.rootpage > 0 {
                    others.push(Other {
                        root: root_of(e, Side::New, images.pages(Side::New))?,
                        note: None,
                    });
                }
            }
            Some(o) if o.sql != e.sql || o.tbl_name != e.tbl_name => {
                notes.push(schema_note(
                    &e.name,
                    format!(
                        "{} {} redefined{rows}: {} -> {}",
                        e.kind,
                        e.name,
                        sql_of(o),
                        sql_of(e)
                    ),
                ));
                if e.rootpage > 0 {
                    others.push(Other {
                        root: root_of(e, Side::New, images.pages(Side::New))?,
                        note: None,
                    });
                }
            }
            Some(o) if is_table && e.rootpage > 0 => {
                let root_new = root_of(e, Side::New, images.pages(Side::New))?;
                let root_old = root_of(o, Side::Old, images.pages(Side::Old))?;
                match e.sql.as_deref().map(parse_create_table) {
                    Some(Ok(def)) if !def.without_rowid => {
                        let table = Table {
                            name: e.name.clone(),
                            rowid_name: schema::rowid_name(&def.columns),
                            columns: def.columns,
                            encoding: enc,
                        };
                        planned.push(Planned { table: Arc::new(table), root_old, root_new });
                    }
                    // Only an index page written can mean a WITHOUT ROWID table changed.
                    Some(Ok(_)) if index_pages.is_empty() => {}
                    Some(Ok(_)) => others.push(Other {
                        root: root_new,
                        note: Some(not_decoded(&e.name, format!("table {} is a WITHOUT ROWID table; its changed rows are not decoded", e.name))),
                    }),
                    other => {
                        let why = match other {
                            Some(Err(why)) => why,
                            _ => "no CREATE TABLE text".into(),
                        };
                        others.push(Other {
                            root: root_new,
                            note: Some(not_decoded(&e.name, format!("table {}: its definition is not understood ({why}); its changed rows are not decoded", e.name))),
                        });
                    }
                }
            }
            // Unchanged indexes: their written pages are placed by their page type.
            Some(_) => {}
        }
    }
    for e in &old_schema {
        if !new_by.contains_key(&key(e)) {
            let rows = if e.kind == "table" {
                " (its rows are not decoded)"
            } else {
                ""
            };
            notes.push(schema_note(
                &e.name,
                format!("{} {} dropped{rows}", e.kind, e.name),
            ));
        }
    }

    // Pass 1: walk without output, to learn which written pages the walks reach.
    let mut failed: BTreeMap<usize, Note> = BTreeMap::new();
    dry_walk(&mut w, &planned, &mut failed, &mut others)?;
    let others_changed: Vec<bool> = others
        .iter()
        .map(|o| w.enumerate_new(o.root))
        .collect::<Result<_, _>>()?;
    for (o, changed) in others.iter().zip(&others_changed) {
        if let (Some(n), true) = (&o.note, changed) {
            notes.push(n.clone());
        }
    }
    notes.extend(failed.values().cloned());
    for &p in &index_pages {
        let data = images.read(Side::New, p)?;
        if let Ok(page) = Page::parse(Side::New, p, data, new_hdr.usable) {
            // Overflow pages of new index entries.
            let _ = w.follow_new_chains(&page);
        }
    }
    let mut explained: HashSet<u32> = std::mem::take(&mut w.touched);
    explained.extend(index_pages.iter().copied());
    free_and_map_pages(images, &new_hdr, &written, &mut explained)?;
    let mut unplaced: Vec<u32> = written
        .iter()
        .copied()
        .filter(|p| !explained.contains(p))
        .collect();

    // Auto-vacuum databases say who owns every page: overflow pages relocated or rewritten in
    // place are traced to their cell's page; index ones are placed, table leaves are re-read.
    if new_hdr.autovacuum && !unplaced.is_empty() {
        let mut memo = HashMap::new();
        for &u in &unplaced {
            match trace_owner(images, &new_hdr, u, &mut memo)? {
                Owner::NotRows => {
                    explained.insert(u);
                }
                Owner::TableLeaf(leaf) => {
                    if w.forced.insert(leaf) {
                        let data = images.read(Side::New, leaf)?;
                        if let Ok(c) = Page::parse(Side::New, leaf, data, new_hdr.usable)
                            .and_then(|p| p.leaf_cell(0))
                        {
                            w.dirty.insert(c.rowid);
                        }
                    }
                }
                Owner::Unknown => {}
            }
        }
        if !w.forced.is_empty() {
            let mut again = failed.clone();
            dry_walk(&mut w, &planned, &mut again, &mut Vec::new())?;
            explained.extend(w.touched.drain());
        }
        unplaced.retain(|p| !explained.contains(p));
    }

    // Pass 2: the output, walking everything if pass 1 left written pages unplaced.
    for n in &notes {
        sink.note(n)?;
    }
    summary.notes = notes.len() as u64;
    if !unplaced.is_empty() {
        w.mode = Mode::Full;
        summary.full_walk = true;
    }
    for (i, p) in planned.iter().enumerate() {
        if failed.contains_key(&i) {
            continue;
        }
        summary.tables += 1;
        let mut emit = |c: Change| -> Result<(), DiffError> {
            match c.op {
                Op::Insert => summary.inserts += 1,
                Op::Update => summary.updates += 1,
                Op::Delete => summary.deletes += 1,
            }
            sink.change(&c)?;
            Ok(())
        };
        w.diff_table(&p.table, Some(p.root_old), Some(p.root_new), &mut emit)?;
    }
    if !unplaced.is_empty() {
        explained.extend(w.touched.iter().copied());
        let left: Vec<u32> = written
            .iter()
            .copied()
            .filter(|p| !explained.contains(p))
            .collect();
        if !left.is_empty() {
            let shown: Vec<String> = left.iter().take(20).map(|p| p.to_string()).collect();
            let more = if left.len() > 20 {
                format!(" and {} more", left.len() - 20)
            } else {
                String::new()
            };
            let n = Note {
                kind: NoteKind::NotDecoded,
                table: None,
                message: format!(
                    "{} written page(s) belong to no table this diff decodes: {}{more}",
                    left.len(),
                    shown.join(", ")
                ),
            };
            sink.note(&n)?;
            summary.notes += 1;
        }
    }
    summary.pages_read = w.pages_read;
    sink.end(&info, &summary)?;
    Ok(summary)
}

/// Pass 1 over the decodable tables; tables that cannot be decoded move to `failed` (and
/// their trees to `others`).
fn dry_walk(
    w: &mut Walker,
    planned: &[Planned],
    failed: &mut BTreeMap<usize, Note>,
    others: &mut Vec<Other>,
) -> Result<(), DiffError> {
    for (i, p) in planned.iter().enumerate() {
        if failed.contains_key(&i) {
            continue;
        }
        match w.diff_table(
            &p.table,
            Some(p.root_old),
            Some(p.root_new),
            &mut |_| Ok(()),
        ) {
            Ok(()) => {}
            Err(DiffError::Undecodable(why)) => {
                let message = format!(
                    "table {}: {why}; its changed rows are not decoded",
                    p.table.name
                );
                failed.insert(
                    i,
                    Note {
                        kind: NoteKind::NotDecoded,
                        table: Some(p.table.name.clone()),
                        message,
                    },
                );
                others.push(Other {
                    root: p.root_new,
                    note: None,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Who owns a page, by the pointer map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A free page, an index page or an overflow page of an index entry.
    NotRows,
    /// An overflow page of a cell on this table leaf.
    TableLeaf(u32),
    Unknown,
}

/// The pointer-map entry of `pgno` in the new image: (type, parent).
fn ptrmap_entry(
    images: &Images,
    hdr: &DbHeader,
    pgno: u32,
) -> Result<Option<(u8, u32)>, DiffError> {
    let ps = images.page_size();
    let per = (hdr.usable / 5) as u32 + 1;
    if pgno < 3 {
        return Ok(None);
    }
    let mut map = ((pgno - 2) / per) * per + 2;
    if map == pending_byte_page(ps) {
        map += 1;
    }
    if map >= pgno || map > images.pages(Side::New) {
        return Ok(None);
    }
    let data = images.read(Side::New, map)?;
    let off = 5 * (pgno - map - 1) as usize;
    if off + 5 > hdr.usable {
        return Ok(None);
    }
    Ok(Some((data[off], be_u32(&data, off + 1).unwrap_or(0))))
}

fn trace_owner(
    images: &Images,
    hdr: &DbHeader,
    pgno: u32,
    memo: &mut HashMap<u32, Owner>,
) -> Result<Owner, DiffError> {
    let pages = images.pages(Side::New);
    let mut path = Vec::new();
    let mut cur = pgno;
    let owner = loop {
        if let Some(&o) = memo.get(&cur) {
            break o;
        }
        if path.len() as u64 > u64::from(pages) {
            break Owner::Unknown;
        }
        path.push(cur);
        let Some((kind, parent)) = ptrmap_entry(images, hdr, cur)? else {
            break Owner::Unknown;
        };
        let kind_at = |p: u32| -> Result<Option<PageKind>, DiffError> {
            if p == 0 || p > pages {
                return Ok(None);
            }
            Ok(kind_of(p, &images.read(Side::New, p)?))
        };
        match kind {
            2 => break Owner::NotRows,
            4 => cur = parent,
            3 => {
                break match kind_at(parent)? {
                    Some(PageKind::TableLeaf) => Owner::TableLeaf(parent),
                    Some(k) if !k.is_table() => Owner::NotRows,
                    _ => Owner::Unknown,
                }
            }
            1 | 5 => {
                break match kind_at(cur)? {
                    Some(k) if !k.is_table() => Owner::NotRows,
                    _ => Owner::Unknown,
                }
            }
            _ => break Owner::Unknown,
        }
    };
    for p in path {
        memo.insert(p, owner);
    }
    Ok(owner)
}

/// Adds the freelist (trunks and leaves), pointer-map pages and the lock-byte page of the
/// new image to `explained`.
fn free_and_map_pages(
    images: &Images,
    hdr: &DbHeader,
    written: &[u32],
    explained: &mut HashSet<u32>,
) -> Result<(), DiffError> {
    let pages = images.pages(Side::New);
    let ps = images.page_size();
    let written_set: HashSet<u32> = written.iter().copied().collect();
    let mut trunk = hdr.freelist_trunk;
    let mut steps = 0u32;
    let mut from = (1u32, 32usize);
    while trunk != 0 {
        if trunk > pages || steps > pages {
            return Err(corrupt(
                Side::New,
                from.0,
                from.1,
                format!("freelist trunk page {trunk} is outside the database or the list loops"),
            )
            .into());
        }
        steps += 1;
        explained.insert(trunk);
        let data = images.read(Side::New, trunk)?;
        let n = be_u32(&data, 4).unwrap_or(0) as usize;
        let n = n.min(hdr.usable / 4 - 2);
        for i in 0..n {
            let leaf = be_u32(&data, 8 + 4 * i).unwrap_or(0);
            if written_set.contains(&leaf) {
                explained.insert(leaf);
            }
        }
        from = (trunk, 0);
        trunk = be_u32(&data, 0).unwrap_or(0);
    }
    for &p in written {
        if p == pending_byte_page(ps) || (hdr.autovacuum && is_ptrmap_page(p, hdr.usable, ps)) {
            explained.insert(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptrmap_pages() {
        // 1024-byte pages: 204 entries per map page; map pages at 2, 207, 412, ...
        assert!(is_ptrmap_page(2, 1024, 1024));
        assert!(!is_ptrmap_page(3, 1024, 1024));
        assert!(is_ptrmap_page(207, 1024, 1024));
        assert!(!is_ptrmap_page(206, 1024, 1024));
    }
}
