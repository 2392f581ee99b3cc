//! Object names inside a target. Names are derived only from generation and sequence numbers,
//! so nothing a user supplies can reach outside the target's root or prefix.
//!
//! ```text
//! generations/<generation:016x>/snapshot.wsnap
//! generations/<generation:016x>/<first_seq:016x>.wseg
//! ```

pub const GENERATIONS_DIR: &str = "generations";
pub const SNAPSHOT_NAME: &str = "snapshot.wsnap";
pub const SEGMENT_SUFFIX: &str = ".wseg";

pub fn generation_dir(generation: u64) -> String {
    format!("{GENERATIONS_DIR}/{generation:016x}")
}

pub fn snapshot_key(generation: u64) -> String {
    format!("{}/{SNAPSHOT_NAME}", generation_dir(generation))
}

pub fn segment_key(generation: u64, first_seq: u64) -> String {
    format!(
        "{}/{first_seq:016x}{SEGMENT_SUFFIX}",
        generation_dir(generation)
    )
}

/// What an object name in a target denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectName {
    Snapshot { generation: u64 },
    Segment { generation: u64, first_seq: u64 },
}

impl ObjectName {
    /// The generation the object belongs to.
    pub fn generation(self) -> u64 {
        match self {
            ObjectName::Snapshot { generation } | ObjectName::Segment { generation, .. } => {
                generation
            }
        }
    }
}

/// Parses the 16-digit lower-case hex numbers used in names.
pub fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Parses a key relative to the target root; `None` for anything that is not ours (temporary
/// files, lock files, foreign objects), which readers ignore.
pub fn parse_key(key: &str) -> Option<ObjectName> {
    let mut parts = key.split('/');
    let (root, generation, file) = (parts.next()?, parts.next()?, parts.next()?);
    if root != GENERATIONS_DIR || parts.next().is_some() {
        return None;
    }
    let generation = parse_hex16(generation)?;
    if file == SNAPSHOT_NAME {
        return Some(ObjectName::Snapshot { generation });
    }
    let first_seq = parse_hex16(file.strip_suffix(SEGMENT_SUFFIX)?)?;
    Some(ObjectName::Segment {
        generation,
        first_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip() {
        assert_eq!(
            parse_key(&snapshot_key(3)),
            Some(ObjectName::Snapshot { generation: 3 })
        );
        assert_eq!(
            parse_key(&segment_key(3, 0x1f)),
            Some(ObjectName::Segment {
                generation: 3,
                first_seq: 0x1f
            })
        );
    }

    #[test]
    fn foreign_names_are_ignored() {
        for k in [
            "generations/0000000000000001/snapshot.wsnap.tmp",
            "generations/../snapshot.wsnap",
            "generations/000000000000000G/snapshot.wsnap",
            "generations/0000000000000001/0000000000000001.wseg/x",
            "spool.lock",
        ] {
            assert_eq!(parse_key(k), None, "{k}");
        }
    }
}
