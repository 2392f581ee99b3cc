//! Where a stream is stored. A [`TargetSpec`] names it (parsed from a URI parameter, the
//! environment or the command line); a [`Target`] reads and writes its objects. Readers
//! (restore, verify, ls) only use the trait, so every storage backend serves them alike.

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;

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
    Io {
        target: String,
        key: String,
        source: std::io::Error,
    },
    #[error("target {0}: this build has no S3 support")]
    Unsupported(String),
    #[error("target {target}: no object {key}")]
    NotFound { target: String, key: String },
    #[error("target {target}: {key}: {message}")]
    Remote {
        target: String,
        key: String,
        message: String,
    },
    #[error("target {target}: refusing key {key:?}: {reason}")]
    BadKey {
        target: String,
        key: String,
        reason: String,
    },
}

impl TargetError {
    /// The object (or the local file behind it) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            TargetError::NotFound { .. } => true,
            TargetError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Checks that `key` is a relative name below a target's root: non-empty `/`-separated
/// components, none of them `.` or `..`, no NUL or backslash. Every target refuses other keys,
/// so no key can reach outside the directory or prefix.
pub fn check_key(target: &str, key: &str) -> Result<(), TargetError> {
    let bad = |reason: &str| {
        Err(TargetError::BadKey {
            target: target.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.contains('\0') || key.contains('\\') {
        return bad("contains a NUL byte or a backslash");
    }
    if key.len() > 512 {
        return bad("longer than 512 bytes");
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("keys are relative paths without empty, '.' or '..' components");
    }
    Ok(())
}

/// The outcome of [`Target::put_file_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was stored.
    Created,
    /// An object with that key already existed; it was left as it was.
    Exists,
}

/// BLAKE3 (hex) of an object's content, read as a stream.
pub fn stream_hash(target: &(impl Target + ?Sized), key: &str) -> Result<String, TargetError> {
    let mut reader = target.get(key)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|source| TargetError::Io {
            target: target.describe(),
            key: key.to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
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
        let bad = |reason: &str| TargetError::BadUri {
            uri: uri.to_string(),
            reason: reason.into(),
        };
        if uri.is_empty() {
            return Err(bad("empty"));
        }
        if uri.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad(
                    "a file:// target needs an absolute path, as in file:///abs/dir",
                ));
            }
            return Ok(TargetSpec::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(bad(
                    "S3 bucket names are 3-63 characters of a-z, 0-9, '-' and '.'",
                ));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|p| p == ".." || p == ".") {
                return Err(bad("the S3 prefix may not contain '.' or '..' components"));
            }
            return Ok(TargetSpec::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(bad(&format!(
                "unknown scheme {scheme:?}; use a path, file:// or s3://"
            )));
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
    /// The objects whose keys sort after `start_after` (byte order): how a follower lists only
    /// what is new. S3 starts its listing there; this default lists everything and filters.
    fn list_after(&self, start_after: &str) -> Result<Vec<ObjectInfo>, TargetError> {
        let mut all = self.list()?;
        all.retain(|o| o.key.as_str() > start_after);
        Ok(all)
    }
    /// Streams one object.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, TargetError>;
    /// Streams one object from byte `offset` on (nothing if it is that long or shorter): how a
    /// follower reads on in a segment it has read up to `offset`. Backends that can start
    /// there (a file seek, an HTTP range) do; this default reads the start and drops it.
    fn get_from(&self, key: &str, offset: u64) -> Result<Box<dyn Read + Send>, TargetError> {
        let mut r = self.get(key)?;
        std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink()).map_err(|source| {
            TargetError::Io {
                target: self.describe(),
                key: key.to_string(),
                source,
            }
        })?;
        Ok(r)
    }
    /// Stores a local file as `key`, atomically: readers see all of it or none of it.
    fn put_file(&self, key: &str, path: &Path) -> Result<(), TargetError>;
    /// Stores a local file as `key` only if no object `key` exists (atomically: of two writers
    /// racing for one key, exactly one creates it). S3: a conditional `If-None-Match: *` write.
    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome, TargetError>;
    /// BLAKE3 (hex) of an object's content. S3 reads the hash recorded at upload when there is
    /// one; otherwise the object is read through.
    fn content_hash(&self, key: &str) -> Result<String, TargetError> {
        stream_hash(self, key)
    }
    /// Deletes `key`; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> Result<(), TargetError>;
}

/// Opens a target for reading (and shipping).
pub fn open(spec: &TargetSpec) -> Result<Box<dyn Target>, TargetError> {
    match spec {
        TargetSpec::Local(dir) => Ok(Box::new(LocalTarget::new(dir.clone()))),
        #[cfg(feature = "s3")]
        TargetSpec::S3 { bucket, prefix } => Ok(Box::new(s3::S3Target::open(bucket, prefix)?)),
        #[cfg(not(feature = "s3"))]
        TargetSpec::S3 { .. } => Err(TargetError::Unsupported(spec.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            TargetSpec::parse("dir/x").unwrap(),
            TargetSpec::Local("dir/x".into())
        );
        assert_eq!(
            TargetSpec::parse("file:///a/b").unwrap(),
            TargetSpec::Local("/a/b".into())
        );
        assert_eq!(
            TargetSpec::parse("s3://my-bucket/some/prefix/").unwrap(),
            TargetSpec::S3 {
                bucket: "my-bucket".into(),
                prefix: "some/prefix".into()
            }
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
