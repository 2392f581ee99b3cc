//! Column values and the record format (https://www.sqlite.org/fileformat2.html, "Record
//! Format"), with SQL and JSON literals that round-trip.

use std::fmt::Write as _;

use super::page::varint;

/// The database text encoding (header offset 56).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    #[default]
    Utf8,
    Utf16le,
    Utf16be,
}

impl TextEncoding {
    pub fn from_header(v: u32) -> Option<TextEncoding> {
        match v {
            0 | 1 => Some(TextEncoding::Utf8),
            2 => Some(TextEncoding::Utf16le),
            3 => Some(TextEncoding::Utf16be),
            _ => None,
        }
    }
}

/// One column value as SQLite stores it. Text keeps the database's raw bytes (in its
/// encoding) so that nothing is lost; reals compare by bit pattern.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Integer(a), Value::Integer(b)) => a == b,
            (Value::Real(a), Value::Real(b)) => a.to_bits() == b.to_bits(),
            (Value::Text(a), Value::Text(b)) | (Value::Blob(a), Value::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The text as a Rust string, if it is valid in `enc` and holds no NUL character
    /// (a NUL cannot appear inside an SQL string literal).
    pub fn text_str(raw: &[u8], enc: TextEncoding) -> Option<String> {
        let s = match enc {
            TextEncoding::Utf8 => std::str::from_utf8(raw).ok()?.to_string(),
            TextEncoding::Utf16le | TextEncoding::Utf16be => {
                if !raw.len().is_multiple_of(2) {
                    return None;
                }
                let units = raw.chunks_exact(2).map(|c| match enc {
                    TextEncoding::Utf16le => u16::from_le_bytes([c[0], c[1]]),
                    _ => u16::from_be_bytes([c[0], c[1]]),
                });
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .ok()?
            }
        };
        (!s.contains('\0')).then_some(s)
    }

    /// An SQL expression that evaluates to exactly this value in a database of encoding `enc`.
    pub fn sql_literal(&self, enc: TextEncoding) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i64::MIN) => "(-9223372036854775807-1)".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(f) => real_literal(*f),
            Value::Text(raw) => match Value::text_str(raw, enc) {
                Some(s) => format!("'{}'", s.replace('\'', "''")),
                // Invalid or NUL-holding text: the exact bytes, read in the database encoding.
                None => format!("CAST(X'{}' AS TEXT)", hex_upper(raw)),
            },
            Value::Blob(b) => format!("X'{}'", hex_upper(b)),
        }
    }

    /// A JSON value: null, an integer, a number with a fraction or exponent for reals (the
    /// shortest text that parses back to the same double), a string for text, and objects
    /// for what JSON cannot say directly: `{"blob":"<hex>"}`, `{"real":"inf"}` /
    /// `{"real":"-inf"}`, and `{"text_hex":"<hex>"}` for text that is not valid in the
    /// database encoding.
    pub fn json(&self, enc: TextEncoding) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(f) if f.is_finite() => format!("{f:?}"),
            Value::Real(f) if f.is_nan() => "null".into(),
            Value::Real(f) => format!("{{\"real\":\"{}\"}}", if *f > 0.0 { "inf" } else { "-inf" }),
            Value::Text(raw) => match enc {
                TextEncoding::Utf8 => match std::str::from_utf8(raw) {
                    Ok(s) => json_string(s),
                    Err(_) => format!("{{\"text_hex\":\"{}\"}}", hex_lower(raw)),
                },
                _ => match Value::text_str(raw, enc) {
                    Some(s) => json_string(&s),
                    None => format!("{{\"text_hex\":\"{}\"}}", hex_lower(raw)),
                },
            },
            Value::Blob(b) => format!("{{\"blob\":\"{}\"}}", hex_lower(b)),
        }
    }
}

/// A real literal SQLite reads back as the same double: the shortest round-trip digits,
/// always with a fraction or exponent so that it stays a REAL.
pub fn real_literal(f: f64) -> String {
    if f.is_nan() {
        return "NULL".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "9e999".into()
        } else {
            "-9e999".into()
        };
    }
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

fn hex_upper(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02X}");
    }
    s
}

fn hex_lower(b: &[u8]) -> String {
    crate::record::hex(b)
}

/// Decodes a record into its fields. On failure returns the payload offset and the problem.
pub fn decode_record(payload: &[u8]) -> Result<Vec<Value>, (usize, String)> {
    let (header_len, n) =
        varint(payload).ok_or((0, "record header size runs past the payload".to_string()))?;
    let header_len = usize::try_from(header_len).unwrap_or(usize::MAX);
    if header_len < n || header_len > payload.len() {
        return Err((
            0,
            format!(
                "record header size {header_len} does not fit a {}-byte payload",
                payload.len()
            ),
        ));
    }
    let mut at = n;
    let mut body = header_len;
    let mut out = Vec::new();
    while at < header_len {
        let (serial, len) = varint(&payload[at..header_len])
            .ok_or((at, "serial type runs past the record header".to_string()))?;
        let size = match serial {
            0 | 8 | 9 => 0,
            1..=4 => serial as usize,
            5 => 6,
            6 | 7 => 8,
            10 | 11 => return Err((at, format!("reserved serial type {serial}"))),
            n => usize::try_from((n - 12) / 2).unwrap_or(usize::MAX),
        };
        let bytes = payload.get(body..body.saturating_add(size)).ok_or((
            at,
            format!(
                "value of serial type {serial} runs past the {}-byte payload",
                payload.len()
            ),
        ))?;
        out.push(match serial {
            0 => Value::Null,
            1..=6 => {
                let mut v: i64 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
                for b in bytes {
                    v = (v << 8) | i64::from(*b);
                }
                Value::Integer(v)
            }
            7 => Value::Real(f64::from_bits(u64::from_be_bytes(
                bytes.try_into().expect("8 bytes"),
            ))),
            8 => Value::Integer(0),
            9 => Value::Integer(1),
            n if n % 2 == 0 => Value::Blob(bytes.to_vec()),
            _ => Value::Text(bytes.to_vec()),
        });
        at += len;
        body += size;
    }
    if body != payload.len() {
        return Err((
            header_len,
            format!(
                "record body is {} bytes but its header describes {}",
                payload.len() - header_len,
                body - header_len
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_serial_types() {
        // header: size 10, types 0,1,2,3,4,5,6,7,8,9 would need 11; build it by hand.
        let mut p = vec![0u8];
        let types = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12 + 2 * 2, 13 + 2 * 3];
        p.extend_from_slice(&types);
        p[0] = p.len() as u8;
        p.push(0xff); // 1: -1
        p.extend_from_slice(&[0x80, 0x00]); // 2: -32768
        p.extend_from_slice(&[0x01, 0x00, 0x00]); // 3: 65536
        p.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]); // 4
        p.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]); // 5: -2
        p.extend_from_slice(&i64::MIN.to_be_bytes()); // 6
        p.extend_from_slice(&1.5f64.to_bits().to_be_bytes()); // 7
        p.extend_from_slice(&[0xde, 0xad]); // blob
        p.extend_from_slice(b"abc"); // text
        let v = decode_record(&p).unwrap();
        assert_eq!(
            v,
            vec![
                Value::Null,
                Value::Integer(-1),
                Value::Integer(-32768),
                Value::Integer(65536),
                Value::Integer(i32::MAX as i64),
                Value::Integer(-2),
                Value::Integer(i64::MIN),
                Value::Real(1.5),
                Value::Integer(0),
                Value::Integer(1),
                Value::Blob(vec![0xde, 0xad]),
                Value::Text(b"abc".to_vec()),
            ]
        );
        for cut in 0..p.len() {
            assert!(decode_record(&p[..cut]).is_err());
        }
        assert!(decode_record(&[2, 10]).is_err());
    }

    #[test]
    fn literals() {
        let e = TextEncoding::Utf8;
        assert_eq!(Value::Text(b"it's".to_vec()).sql_literal(e), "'it''s'");
        assert_eq!(
            Value::Text(b"a\0b".to_vec()).sql_literal(e),
            "CAST(X'610062' AS TEXT)"
        );
        assert_eq!(
            Value::Text(vec![0xff]).sql_literal(e),
            "CAST(X'FF' AS TEXT)"
        );
        assert_eq!(Value::Blob(vec![0, 0xab]).sql_literal(e), "X'00AB'");
        assert_eq!(Value::Real(1.0).sql_literal(e), "1.0");
        assert_eq!(Value::Real(1e300).sql_literal(e), "1e300");
        assert_eq!(Value::Real(f64::INFINITY).sql_literal(e), "9e999");
        assert_eq!(
            Value::Integer(i64::MIN).sql_literal(e),
            "(-9223372036854775807-1)"
        );
        assert_eq!(Value::Blob(vec![1]).json(e), "{\"blob\":\"01\"}");
        for f in [
            0.1f64,
            -2.5e-300,
            123456789.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            assert_eq!(
                real_literal(f).parse::<f64>().unwrap().to_bits(),
                f.to_bits()
            );
        }
    }
}
