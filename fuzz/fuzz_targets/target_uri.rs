//! `TargetSpec::parse` over arbitrary UTF-8.
//!
//! Must return a value or an error naming the problem, never panic. Checked on the way: what it
//! accepts has the documented shape (a non-empty local path without NUL bytes; an S3 bucket of
//! 3-63 characters of a-z, 0-9, '-', '.', and a prefix with no leading or trailing '/' and no
//! '.' or '..' component), and an S3 target's description parses back to the same target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walstream::target::{self, TargetSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = std::str::from_utf8(data) else {
        return;
    };
    match TargetSpec::parse(uri) {
        Ok(spec) => {
            let described = spec.describe();
            match &spec {
                TargetSpec::Local(path) => {
                    let s = path.to_str().expect("parsed from UTF-8");
                    assert!(!s.is_empty(), "empty local path from {uri:?}");
                    assert!(!s.contains('\0'));
                    assert!(
                        uri.ends_with(s),
                        "local path {s:?} is not the tail of {uri:?}"
                    );
                    assert!(target::open(&spec).is_ok());
                }
                TargetSpec::S3 { bucket, prefix } => {
                    assert!((3..=63).contains(&bucket.len()), "bucket {bucket:?}");
                    assert!(bucket.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b == b'-'
                        || b == b'.'));
                    assert!(
                        !prefix.starts_with('/') && !prefix.ends_with('/'),
                        "prefix {prefix:?}"
                    );
                    assert!(
                        !prefix.split('/').any(|p| p == "." || p == ".."),
                        "prefix {prefix:?}"
                    );
                    let again =
                        TargetSpec::parse(&described).expect("a described S3 target parses");
                    assert_eq!(again, spec, "describe/parse round trip");
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("bad target "), "{msg}");
        }
    }
});
