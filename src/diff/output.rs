//! Writing a diff: SQL statements, JSON lines, or a collection in memory.

use std::io::Write;

use super::images::TxnInfo;
use super::schema::quote_ident;
use super::value::json_string;
use super::{Change, Note, NoteKind, Op, Sink, Summary};

/// The SQL statement that makes `c` happen, or `None` if no statement can (the rowid is
/// unreachable by name, or only generated columns changed).
pub fn sql_statement(c: &Change) -> Option<String> {
    let t = &c.table;
    let rowid = t.rowid_name.as_deref()?;
    let table = quote_ident(&t.name);
    let enc = t.encoding;
    let writable = |i: usize| !t.columns[i].rowid_alias && !t.columns[i].generated;
    match c.op {
        Op::Delete => Some(format!("DELETE FROM {table} WHERE {rowid}={};", c.rowid)),
        Op::Insert => {
            let new = c.new.as_ref()?;
            let mut names = vec![rowid.to_string()];
            let mut values = vec![c.rowid.to_string()];
            for (i, col) in t.columns.iter().enumerate().filter(|(i, _)| writable(*i)) {
                names.push(quote_ident(&col.name));
                values.push(new.get(i)?.sql_literal(enc));
            }
            Some(format!(
                "INSERT INTO {table}({}) VALUES ({});",
                names.join(", "),
                values.join(", ")
            ))
        }
        Op::Update => {
            let new = c.new.as_ref()?;
            let sets: Vec<String> = c
                .changed_columns()
                .into_iter()
                .filter(|&i| writable(i))
                .map(|i| {
                    format!(
                        "{}={}",
                        quote_ident(&t.columns[i].name),
                        new[i].sql_literal(enc)
                    )
                })
                .collect();
            if sets.is_empty() {
                return None;
            }
            Some(format!(
                "UPDATE {table} SET {} WHERE {rowid}={};",
                sets.join(", "),
                c.rowid
            ))
        }
    }
}

fn comment(text: &str) -> String {
    text.lines().map(|l| format!("-- {l}\n")).collect()
}

/// SQL output: a transaction of INSERT/UPDATE/DELETE statements; notes as comments. With
/// `invert`, the statements undo the transaction instead.
pub struct SqlWriter<W: Write> {
    pub out: W,
    pub invert: bool,
}

impl<W: Write> Sink for SqlWriter<W> {
    fn begin(&mut self, i: &TxnInfo) -> std::io::Result<()> {
        let what = if self.invert {
            format!(
                "undo of txn {}: turns the state after txn {} back into the state after txn {}",
                i.txn,
                i.txn,
                i.txn - 1
            )
        } else {
            format!(
                "txn {}: turns the state after txn {} into the state after txn {}",
                i.txn,
                i.txn - 1,
                i.txn
            )
        };
        write!(
            self.out,
            "{}",
            comment(&format!(
                "walstream diff, generation {}, {what}",
                i.generation
            ))
        )?;
        writeln!(self.out, "BEGIN;")
    }
    fn note(&mut self, note: &Note) -> std::io::Result<()> {
        write!(self.out, "{}", comment(&note.to_string()))
    }
    fn change(&mut self, change: &Change) -> std::io::Result<()> {
        let c = if self.invert {
            change.inverted()
        } else {
            change.clone()
        };
        match sql_statement(&c) {
            Some(s) => writeln!(self.out, "{s}"),
            None => write!(
                self.out,
                "{}",
                comment(&format!(
                    "not decoded: {} of rowid {} in table {}: no statement can address it",
                    c.op.as_str(),
                    c.rowid,
                    c.table.name
                ))
            ),
        }
    }
    fn end(&mut self, _i: &TxnInfo, s: &Summary) -> std::io::Result<()> {
        writeln!(self.out, "COMMIT;")?;
        let (ins, del) = if self.invert {
            (s.deletes, s.inserts)
        } else {
            (s.inserts, s.deletes)
        };
        write!(
            self.out,
            "{}",
            comment(&format!(
                "{ins} insert(s), {} update(s), {del} delete(s)",
                s.updates
            ))
        )?;
        self.out.flush()
    }
}

/// JSON output: one object per line. Changes:
/// `{"generation":G,"txn":N,"table":"t","op":"UPDATE","rowid":5,"old":{..},"new":{..},"changed":["a"]}`
/// (`old` is null for an INSERT, `new` for a DELETE); notes:
/// `{"generation":G,"txn":N,"op":"NOTE","kind":"schema_changed"|"not_decoded","table":..,"message":..}`.
pub struct JsonWriter<W: Write> {
    pub out: W,
    pub invert: bool,
    generation: u64,
    txn: u64,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W, invert: bool) -> Self {
        JsonWriter {
            out,
            invert,
            generation: 0,
            txn: 0,
        }
    }
}

fn json_row(c: &Change, values: &Option<Vec<super::Value>>) -> String {
    let Some(v) = values else {
        return "null".into();
    };
    let fields: Vec<String> = c
        .table
        .columns
        .iter()
        .zip(v)
        .map(|(col, val)| format!("{}:{}", json_string(&col.name), val.json(c.table.encoding)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

impl<W: Write> Sink for JsonWriter<W> {
    fn begin(&mut self, i: &TxnInfo) -> std::io::Result<()> {
        self.generation = i.generation;
        self.txn = i.txn;
        Ok(())
    }
    fn note(&mut self, note: &Note) -> std::io::Result<()> {
        let kind = match note.kind {
            NoteKind::SchemaChanged => "schema_changed",
            NoteKind::NotDecoded => "not_decoded",
        };
        let table = note
            .table
            .as_deref()
            .map_or("null".to_string(), json_string);
        writeln!(
            self.out,
            "{{\"generation\":{},\"txn\":{},\"op\":\"NOTE\",\"kind\":\"{kind}\",\"table\":{table},\"message\":{}}}",
            self.generation,
            self.txn,
            json_string(&note.to_string())
        )
    }
    fn change(&mut self, change: &Change) -> std::io::Result<()> {
        let c = if self.invert {
            change.inverted()
        } else {
            change.clone()
        };
        let mut line = format!(
            "{{\"generation\":{},\"txn\":{},\"table\":{},\"op\":\"{}\",\"rowid\":{},\"old\":{},\"new\":{}",
            self.generation,
            self.txn,
            json_string(&c.table.name),
            c.op.as_str(),
            c.rowid,
            json_row(&c, &c.old),
            json_row(&c, &c.new)
        );
        if c.op == Op::Update {
            let names: Vec<String> = c
                .changed_columns()
                .into_iter()
                .map(|i| json_string(&c.table.columns[i].name))
                .collect();
            line.push_str(&format!(",\"changed\":[{}]", names.join(",")));
        }
        line.push('}');
        writeln!(self.out, "{line}")
    }
    fn end(&mut self, _i: &TxnInfo, _s: &Summary) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Collects a diff in memory (for tests and small transactions).
#[derive(Debug, Default)]
pub struct Collected {
    pub info: Option<TxnInfo>,
    pub notes: Vec<Note>,
    pub changes: Vec<Change>,
}

impl Sink for Collected {
    fn begin(&mut self, info: &TxnInfo) -> std::io::Result<()> {
        self.info = Some(info.clone());
        Ok(())
    }
    fn note(&mut self, note: &Note) -> std::io::Result<()> {
        self.notes.push(note.clone());
        Ok(())
    }
    fn change(&mut self, change: &Change) -> std::io::Result<()> {
        self.changes.push(change.clone());
        Ok(())
    }
}
