//! Where a stream is stored. A [`TargetSpec`] names it (parsed from a URI parameter, the
//! environment or the command line); a [`Target`] reads and writes its objects. Readers
//! (restore, verify, ls) only use the trait, so every storage backend serves them alike.

pub mod local;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use local::LocalTarget;

/// Environment variable naming the target when no URI parameter does.
pub const TARGET_ENV: &str = "WALSTREAM_TARGET";
/// URI parameter naming the target of one database.
pub const TARGET_URI_PARAM: &str = "walstream_target";
/// Suffix of the default target directory, beside the database.
pub const DEFAULT_DIR_SUFFIX: &str = "-walstream";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("bad target {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("target {0} does not exist")]
    Missing(String),
    #[error("target {target}: cannot access {key}: {source}")]
    Io { target: String, key: String, source: std::io::Error },
    #[error("target {0}: this build has no S3 support")]
    Unsupported(String),
}

/// A parsed target location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A local directory (absolute or relative to the working directory).
    Local(PathBuf),
    /// An S3 bucket and key prefix (no leading or trailing slash).
    S3 { bucket: String, prefix: String },
}

impl TargetSpec {
    /// Parses `path`, `file:///abs/dir` or `s3://bucket/prefix`.
    pub fn parse(uri: &str) -> Result<Self, TargetError> {
        let bad = |reason: &str| TargetError::BadUri { uri: uri.to_string(), reason: reason.into() };
        if uri.is_empty() {
            return Err(bad("empty"));
        }
        if uri.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file:// target needs an absolute path, as in file:///abs/dir"));
            }
            return Ok(TargetSpec::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid_bucket {
                return Err(bad("S3 bucket names are 3-63 characters of a-z, 0-9, '-' and '.'"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == ".." || p == ".") {
                return Err(bad("the S3 prefix may not contain '.' or '..' components"));
            }
            return Ok(TargetSpec::S3 { bucket: bucket.into(), prefix: prefix.into() });
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(bad(&format!("unknown scheme {scheme:?}; use a path, file:// or s3://")));
        }
        Ok(TargetSpec::Local(PathBuf::from(uri)))
    }

    /// The default target of a database: the directory `<db>-walstream` beside it.
    pub fn default_for(db: &Path) -> Self {
        let mut dir = db.as_os_str().to_owned();
        dir.push(DEFAULT_DIR_SUFFIX);
        TargetSpec::Local(PathBuf::from(dir))
    }

    pub fn describe(&self) -> String {
        match self {
            TargetSpec::Local(p) => p.display().to_string(),
            TargetSpec::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// An object in a target, with its key relative to the target's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// Storage for one stream.
pub trait Target: Send + Sync {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;
    /// Every object under the root (order unspecified). A missing root is `TargetError::Missing`.
    fn list(&self) -> Result<Vec<ObjectInfo>, TargetError>;
    /// Streams one object.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, TargetError>;
    /// Stores a local file as `key`, atomically: readers see all of it or none of it.
    fn put_file(&self, key: &str, path: &Path) -> Result<(), TargetError>;
    fn delete(&self, key: &str) -> Result<(), TargetError>;
}

/// Opens a target for reading (and shipping).
pub fn open(spec: &TargetSpec) -> Result<Box<dyn Target>, TargetError> {
    match spec {
        TargetSpec::Local(dir) => Ok(Box::new(LocalTarget::new(dir.clone()))),
        TargetSpec::S3 { .. } => Err(TargetError::Unsupported(spec.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(TargetSpec::parse("dir/x").unwrap(), TargetSpec::Local("dir/x".into()));
        assert_eq!(TargetSpec::parse("file:///a/b").unwrap(), TargetSpec::Local("/a/b".into()));
        assert_eq!(
            TargetSpec::parse("s3://my-bucket/some/prefix/").unwrap(),
            TargetSpec::S3 { bucket: "my-bucket".into(), prefix: "some/prefix".into() }
        );
    }

    #[test]
    fn bad_uris_name_the_problem() {
        for (uri, needle) in [
            ("", "empty"),
            ("file://relative", "absolute path"),
            ("s3://A_B/x", "bucket"),
            ("s3://bucket/../x", "'..'"),
            ("ftp://host/x", "unknown scheme \"ftp\""),
        ] {
            let msg = TargetSpec::parse(uri).unwrap_err().to_string();
            assert!(msg.contains(needle), "{uri}: {msg}");
        }
    }

    #[test]
    fn default_target_sits_beside_the_database() {
        assert_eq!(
            TargetSpec::default_for(Path::new("/d/app.db")),
            TargetSpec::Local("/d/app.db-walstream".into())
        );
    }
}
