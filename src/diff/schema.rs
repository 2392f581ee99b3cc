//! Table definitions from `sqlite_schema`: column names, the rowid alias, REAL affinity,
//! generated columns, literal defaults and WITHOUT ROWID, parsed from the CREATE TABLE text
//! just far enough to map record fields to columns.

use super::value::{TextEncoding, Value};

/// One row of `sqlite_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaEntry {
    pub kind: String,
    pub name: String,
    pub tbl_name: String,
    pub rootpage: i64,
    pub sql: Option<String>,
}

/// Column affinity (https://www.sqlite.org/datatype3.html, "Determination Of Column Affinity").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

pub fn affinity(decl_type: &str) -> Affinity {
    let t = decl_type.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Integer
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Affinity::Text
    } else if t.contains("BLOB") || t.trim().is_empty() {
        Affinity::Blob
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// The value a row stored before `ALTER TABLE ADD COLUMN` has in that column.
#[derive(Debug, Clone, PartialEq)]
pub enum Default {
    Value(Value),
    /// An expression this decoder does not evaluate (the text is kept for messages).
    Unknown(String),
}

/// A stored column (VIRTUAL generated columns are not stored and not listed).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub affinity: Affinity,
    /// The INTEGER PRIMARY KEY: its value is the rowid (the record holds NULL).
    pub rowid_alias: bool,
    /// A STORED generated column: decoded, but never written by SQL output.
    pub generated: bool,
    pub default: Default,
}

/// A rowid table as the diff decodes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// How SQL output addresses the rowid: `rowid`, `_rowid_` or `oid` (whichever no
    /// ordinary column shadows), else the INTEGER PRIMARY KEY column; `None` if none works.
    pub rowid_name: Option<String>,
    pub encoding: TextEncoding,
}

/// What the CREATE TABLE text says, as far as the diff needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub columns: Vec<Column>,
    pub without_rowid: bool,
    /// Number of VIRTUAL generated columns (not stored, not decoded).
    pub virtual_columns: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word (keyword or identifier).
    Word(String),
    /// A quoted identifier ("x", [x], `x`).
    Quoted(String),
    Str(String),
    Blob(Vec<u8>),
    Num(String),
    Punct(char),
}

impl Tok {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
    fn name(&self) -> Option<String> {
        match self {
            Tok::Word(s) | Tok::Quoted(s) | Tok::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
}

fn tokenize(sql: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let quoted = |i: &mut usize, close: char| -> Result<String, String> {
        let start = *i;
        *i += 1;
        let mut s = String::new();
        loop {
            let Some(&c) = b.get(*i) else {
                return Err(format!("unterminated quote starting at character {start}"));
            };
            *i += 1;
            if c == close {
                if close != ']' && b.get(*i) == Some(&close) {
                    s.push(c);
                    *i += 1;
                    continue;
                }
                return Ok(s);
            }
            s.push(c);
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if b.get(i + 1) == Some(&'-') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '/' if b.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
            }
            '"' => out.push(Tok::Quoted(quoted(&mut i, '"')?)),
            '`' => out.push(Tok::Quoted(quoted(&mut i, '`')?)),
            '[' => out.push(Tok::Quoted(quoted(&mut i, ']')?)),
            '\'' => out.push(Tok::Str(quoted(&mut i, '\'')?)),
            'x' | 'X' if b.get(i + 1) == Some(&'\'') => {
                i += 1;
                let h = quoted(&mut i, '\'')?;
                if h.len() % 2 != 0 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("bad blob literal X'{h}'"));
                }
                let bytes = (0..h.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&h[k..k + 2], 16).expect("hex"))
                    .collect();
                out.push(Tok::Blob(bytes));
            }
            c if c.is_ascii_digit()
                || (c == '.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let start = i;
                if c == '0' && matches!(b.get(i + 1), Some('x' | 'X')) {
                    i += 2;
                    while i < b.len() && b[i].is_ascii_hexdigit() {
                        i += 1;
                    }
                } else {
                    while i < b.len() && (b[i].is_ascii_digit() || b[i] == '.') {
                        i += 1;
                    }
                    if i < b.len() && (b[i] == 'e' || b[i] == 'E') {
                        i += 1;
                        if i < b.len() && (b[i] == '+' || b[i] == '-') {
                            i += 1;
                        }
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Num(b[start..i].iter().collect()));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' || !c.is_ascii() => {
                let start = i;
                while i < b.len()
                    && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$' || !b[i].is_ascii())
                {
                    i += 1;
                }
                out.push(Tok::Word(b[start..i].iter().collect()));
            }
            c => {
                out.push(Tok::Punct(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Splits `toks` at top-level commas.
fn split_commas(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                out.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&toks[start..]);
    out
}

/// Index of the parenthesis closing the one at `open`.
fn matching(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

const COLUMN_CONSTRAINTS: &[&str] = &[
    "CONSTRAINT",
    "PRIMARY",
    "NOT",
    "NULL",
    "UNIQUE",
    "CHECK",
    "DEFAULT",
    "COLLATE",
    "REFERENCES",
    "GENERATED",
    "AS",
];
const TABLE_CONSTRAINTS: &[&str] = &["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"];

/// Parses a CREATE TABLE statement as stored in `sqlite_schema`.
pub fn parse_create_table(sql: &str) -> Result<TableDef, String> {
    let toks = tokenize(sql)?;
    let open = toks
        .iter()
        .position(|t| *t == Tok::Punct('('))
        .ok_or("no column list")?;
    if !toks[..open].iter().any(|t| t.is_kw("TABLE"))
        || toks[..open].iter().any(|t| t.is_kw("VIRTUAL"))
    {
        return Err("not a CREATE TABLE statement".into());
    }
    let close = matching(&toks, open).ok_or("unbalanced parentheses")?;
    let tail = &toks[close + 1..];
    let without_rowid = tail
        .windows(2)
        .any(|w| w[0].is_kw("WITHOUT") && w[1].is_kw("ROWID"));

    struct Raw {
        name: String,
        decl_type: String,
        pk: Option<bool>,        // Some(desc)
        generated: Option<bool>, // Some(stored)
        default: Default,
    }
    let mut raws: Vec<Raw> = Vec::new();
    let mut table_pk: Option<Vec<String>> = None;
    for def in split_commas(&toks[open + 1..close]) {
        let Some(first) = def.first() else {
            return Err("empty column definition".into());
        };
        if TABLE_CONSTRAINTS.iter().any(|k| first.is_kw(k)) {
            // Table constraints follow the columns; find PRIMARY KEY (...) among them.
            if let Some(p) = def
                .windows(2)
                .position(|w| w[0].is_kw("PRIMARY") && w[1].is_kw("KEY"))
            {
                let lp = p + 2;
                if def.get(lp) == Some(&Tok::Punct('(')) {
                    let rp = matching(def, lp).ok_or("unbalanced PRIMARY KEY")?;
                    let cols: Vec<String> = split_commas(&def[lp + 1..rp])
                        .iter()
                        .filter_map(|c| c.first().and_then(Tok::name))
                        .collect();
                    table_pk = Some(cols);
                }
            }
            continue;
        }
        let name = first
            .name()
            .ok_or_else(|| format!("column name expected, found {first:?}"))?;
        let mut i = 1;
        let mut type_words = Vec::new();
        while let Some(t) = def.get(i) {
            match t {
                Tok::Word(w) if !COLUMN_CONSTRAINTS.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                    type_words.push(w.clone())
                }
                Tok::Quoted(w) | Tok::Str(w) => type_words.push(w.clone()),
                Tok::Punct('(') => {
                    let rp = matching(def, i).ok_or("unbalanced type")?;
                    i = rp;
                }
                _ => break,
            }
            i += 1;
        }
        let mut raw = Raw {
            name,
            decl_type: type_words.join(" "),
            pk: None,
            generated: None,
            default: Default::Value(Value::Null),
        };
        while i < def.len() {
            let t = &def[i];
            if t.is_kw("PRIMARY") && def.get(i + 1).is_some_and(|t| t.is_kw("KEY")) {
                raw.pk = Some(def.get(i + 2).is_some_and(|t| t.is_kw("DESC")));
                i += 2;
                continue;
            }
            if t.is_kw("AS") && def.get(i + 1) == Some(&Tok::Punct('(')) {
                let rp = matching(def, i + 1).ok_or("unbalanced generated column")?;
                raw.generated = Some(def.get(rp + 1).is_some_and(|t| t.is_kw("STORED")));
                i = rp + 1;
                continue;
            }
            if t.is_kw("DEFAULT") {
                let (d, used) = parse_default(&def[i + 1..]);
                raw.default = d;
                i += 1 + used;
                continue;
            }
            if *t == Tok::Punct('(') {
                i = matching(def, i).ok_or("unbalanced parentheses")? + 1;
                continue;
            }
            i += 1;
        }
        raws.push(raw);
    }
    if raws.is_empty() {
        return Err("no columns".into());
    }
    // The rowid alias: a column declared "INTEGER PRIMARY KEY" (not DESC), or the single
    // column of a table PRIMARY KEY whose type is INTEGER (https://www.sqlite.org/lang_createtable.html#rowid).
    let is_integer = |r: &Raw| r.decl_type.eq_ignore_ascii_case("INTEGER");
    let mut alias: Option<usize> = None;
    if !without_rowid {
        if let Some(i) = raws
            .iter()
            .position(|r| r.pk == Some(false) && is_integer(r))
        {
            alias = Some(i);
        } else if let Some(cols) = &table_pk {
            if cols.len() == 1 {
                alias = raws
                    .iter()
                    .position(|r| r.name.eq_ignore_ascii_case(&cols[0]) && is_integer(r));
            }
        }
    }
    let virtual_columns = raws.iter().filter(|r| r.generated == Some(false)).count();
    let columns = raws
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.generated != Some(false))
        .map(|(i, r)| {
            let aff = affinity(&r.decl_type);
            Column {
                affinity: aff,
                rowid_alias: alias == Some(i),
                generated: r.generated.is_some(),
                default: match r.default {
                    Default::Value(v) => apply_default_affinity(v, aff),
                    d => d,
                },
                name: r.name,
            }
        })
        .collect();
    Ok(TableDef {
        columns,
        without_rowid,
        virtual_columns,
    })
}

/// Parses the DEFAULT clause's value; returns it and the number of tokens used.
fn parse_default(toks: &[Tok]) -> (Default, usize) {
    let unknown = |n: usize| {
        let text: Vec<String> = toks[..n.min(toks.len())]
            .iter()
            .map(|t| format!("{t:?}"))
            .collect();
        (Default::Unknown(text.join(" ")), n)
    };
    match toks {
        [Tok::Punct(s @ ('+' | '-')), Tok::Num(n), ..] => match number(n, *s == '-') {
            Some(v) => (Default::Value(v), 2),
            None => unknown(2),
        },
        [Tok::Num(n), ..] => match number(n, false) {
            Some(v) => (Default::Value(v), 1),
            None => unknown(1),
        },
        [Tok::Str(s), ..] => (Default::Value(Value::Text(s.as_bytes().to_vec())), 1),
        [Tok::Blob(b), ..] => (Default::Value(Value::Blob(b.clone())), 1),
        [Tok::Word(w), ..] if w.eq_ignore_ascii_case("NULL") => (Default::Value(Value::Null), 1),
        [Tok::Word(w), ..] if w.eq_ignore_ascii_case("TRUE") => {
            (Default::Value(Value::Integer(1)), 1)
        }
        [Tok::Word(w), ..] if w.eq_ignore_ascii_case("FALSE") => {
            (Default::Value(Value::Integer(0)), 1)
        }
        [Tok::Word(w), ..] if w.to_ascii_uppercase().starts_with("CURRENT_") => unknown(1),
        [Tok::Word(w), ..] | [Tok::Quoted(w), ..] => {
            (Default::Value(Value::Text(w.as_bytes().to_vec())), 1)
        }
        [Tok::Punct('('), ..] => unknown(matching(toks, 0).map_or(toks.len(), |c| c + 1)),
        _ => unknown(1),
    }
}

fn number(text: &str, negative: bool) -> Option<Value> {
    let t = text.to_ascii_lowercase();
    if let Some(hex) = t.strip_prefix("0x") {
        let v = u64::from_str_radix(hex, 16).ok()? as i64;
        return Some(Value::Integer(if negative { v.wrapping_neg() } else { v }));
    }
    if !t.contains(['.', 'e']) {
        let s = if negative { format!("-{t}") } else { t.clone() };
        if let Ok(i) = s.parse::<i64>() {
            return Some(Value::Integer(i));
        }
    }
    let f: f64 = t.parse().ok()?;
    Some(Value::Real(if negative { -f } else { f }))
}

/// Applies a column's affinity to a literal default, where the result is unambiguous.
fn apply_default_affinity(v: Value, aff: Affinity) -> Default {
    match (v, aff) {
        (Value::Null, _) => Default::Value(Value::Null),
        (v @ Value::Blob(_), _) => Default::Value(v),
        (Value::Integer(i), Affinity::Real) => Default::Value(Value::Real(i as f64)),
        (v @ Value::Integer(_), Affinity::Integer | Affinity::Numeric | Affinity::Blob) => {
            Default::Value(v)
        }
        (Value::Real(f), Affinity::Integer | Affinity::Numeric)
            if f.fract() == 0.0 && f.abs() < 9.0e18 =>
        {
            Default::Value(Value::Integer(f as i64))
        }
        (
            v @ Value::Real(_),
            Affinity::Integer | Affinity::Numeric | Affinity::Real | Affinity::Blob,
        ) => Default::Value(v),
        (v @ Value::Text(_), Affinity::Text | Affinity::Blob) => Default::Value(v),
        (v, aff) => Default::Unknown(format!("{v:?} with {aff:?} affinity")),
    }
}

/// Chooses how SQL output names the rowid of a table with these columns.
pub fn rowid_name(columns: &[Column]) -> Option<String> {
    for cand in ["rowid", "_rowid_", "oid"] {
        if !columns
            .iter()
            .any(|c| !c.rowid_alias && c.name.eq_ignore_ascii_case(cand))
        {
            return Some(cand.to_string());
        }
    }
    columns
        .iter()
        .find(|c| c.rowid_alias)
        .map(|c| quote_ident(&c.name))
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<(String, bool)> {
        parse_create_table(sql)
            .unwrap()
            .columns
            .into_iter()
            .map(|c| (c.name, c.rowid_alias))
            .collect()
    }

    #[test]
    fn columns_and_alias() {
        assert_eq!(
            names("CREATE TABLE t(id INTEGER PRIMARY KEY, \"a b\" TEXT NOT NULL DEFAULT 'x,y', [c] VARCHAR(10, 2), `d`)"),
            vec![("id".into(), true), ("a b".into(), false), ("c".into(), false), ("d".into(), false)]
        );
        assert_eq!(
            names("CREATE TABLE t(x INTEGER PRIMARY KEY DESC, y)"),
            vec![("x".into(), false), ("y".into(), false)]
        );
        assert_eq!(
            names("CREATE TABLE t(x INTEGER, y, PRIMARY KEY(x DESC))"),
            vec![("x".into(), true), ("y".into(), false)]
        );
        assert_eq!(
            names("CREATE TABLE t(x INT PRIMARY KEY, y)"),
            vec![("x".into(), false), ("y".into(), false)]
        );
        assert_eq!(
            names("CREATE TABLE t(x integer, y, PRIMARY KEY(x, y))"),
            vec![("x".into(), false), ("y".into(), false)]
        );
        assert_eq!(names("CREATE TABLE \"we\"\"ird\" ( -- comment\n a /* c */ , b CHECK (b > 0) REFERENCES p(q))"), vec![("a".into(), false), ("b".into(), false)]);
        let d =
            parse_create_table("CREATE TABLE t(a INTEGER PRIMARY KEY, b) WITHOUT ROWID").unwrap();
        assert!(d.without_rowid && !d.columns[0].rowid_alias);
        let g = parse_create_table(
            "CREATE TABLE t(a, b AS (a*2), c GENERATED ALWAYS AS (a+1) STORED, e REAL DEFAULT 3)",
        )
        .unwrap();
        assert_eq!(g.virtual_columns, 1);
        assert_eq!(
            g.columns
                .iter()
                .map(|c| (c.name.as_str(), c.generated))
                .collect::<Vec<_>>(),
            vec![("a", false), ("c", true), ("e", false)]
        );
        assert_eq!(g.columns[2].default, Default::Value(Value::Real(3.0)));
        assert_eq!(g.columns[2].affinity, Affinity::Real);
    }

    #[test]
    fn defaults() {
        let d = |s: &str| {
            parse_create_table(&format!("CREATE TABLE t(a {s})"))
                .unwrap()
                .columns[0]
                .default
                .clone()
        };
        assert_eq!(d("INTEGER DEFAULT -5"), Default::Value(Value::Integer(-5)));
        assert_eq!(d("DEFAULT 0x10"), Default::Value(Value::Integer(16)));
        assert_eq!(
            d("TEXT DEFAULT 'it''s'"),
            Default::Value(Value::Text(b"it's".to_vec()))
        );
        assert_eq!(d("DEFAULT X'0A'"), Default::Value(Value::Blob(vec![10])));
        assert!(matches!(d("DEFAULT (1+2)"), Default::Unknown(_)));
        assert!(matches!(d("DEFAULT CURRENT_TIME"), Default::Unknown(_)));
        assert!(matches!(d("TEXT DEFAULT 5"), Default::Unknown(_)));
    }

    #[test]
    fn rowid_names() {
        let t = parse_create_table("CREATE TABLE t(rowid, _rowid_, oid, id INTEGER PRIMARY KEY)")
            .unwrap();
        assert_eq!(rowid_name(&t.columns).as_deref(), Some("\"id\""));
        let t = parse_create_table("CREATE TABLE t(rowid, b)").unwrap();
        assert_eq!(rowid_name(&t.columns).as_deref(), Some("_rowid_"));
    }
}
