//! One [`Capture`] per database file per process, shared by every connection to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::{Capture, CaptureError, CaptureOptions};
use crate::sign::{Signer, SIGNING_KEY_ENV, SIGNING_KEY_URI_PARAM};
use crate::target::{TargetSpec, TARGET_ENV, TARGET_URI_PARAM};

/// URI parameter: seal segments once they hold this many bytes (digits with an optional K, M
/// or G suffix); also `WALSTREAM_SEGMENT_BYTES` in the environment (the URI parameter wins).
pub const SEGMENT_BYTES_URI_PARAM: &str = "walstream_segment_bytes";
pub const SEGMENT_BYTES_ENV: &str = "WALSTREAM_SEGMENT_BYTES";

pub type SharedCapture = Arc<Mutex<Capture>>;

fn registry() -> &'static Mutex<HashMap<PathBuf, SharedCapture>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, SharedCapture>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Errors of opens that failed, kept for `walstream_status()` (bounded: only the newest).
fn last_attach_error() -> &'static Mutex<Option<String>> {
    static LAST: OnceLock<Mutex<Option<String>>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(None))
}

/// Resolves the target of `db` (URI parameter, else `WALSTREAM_TARGET`, else the default
/// directory) and returns the process-wide capture for it, creating it on first use.
/// Fails with a message naming the problem when the target is invalid or cannot be written.
pub fn attach(db: &Path, uri_target: Option<&str>) -> Result<SharedCapture, CaptureError> {
    attach_uri(db, &|key| {
        if key == TARGET_URI_PARAM {
            uri_target.map(str::to_string)
        } else {
            None
        }
    })
}

/// `attach` with every setting a connection may give in its URI, looked up by parameter name
/// (`uri_param`): `walstream_target`, `walstream_signing_key`, `walstream_segment_bytes`. Each
/// falls back to its environment variable.
pub fn attach_uri(
    db: &Path,
    uri_param: &dyn Fn(&str) -> Option<String>,
) -> Result<SharedCapture, CaptureError> {
    let result = attach_inner(db, uri_param);
    if let Err(e) = &result {
        *last_attach_error().lock() = Some(format!("opening {}: {e}", db.display()));
    }
    result
}

/// A setting from the URI, else from the environment; empty means unset.
fn setting(uri_param: &dyn Fn(&str) -> Option<String>, param: &str, env: &str) -> Option<String> {
    uri_param(param)
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var(env).ok().filter(|s| !s.is_empty()))
}

/// The signing key named by the connection, loaded once per process and key file.
fn signing_key(
    uri_param: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Arc<Signer>>, CaptureError> {
    let Some(path) = setting(uri_param, SIGNING_KEY_URI_PARAM, SIGNING_KEY_ENV) else {
        return Ok(None);
    };
    // Error messages name the file and the problem, never its content.
    let signer = Signer::load(Path::new(&path))
        .map_err(|e| CaptureError::Settings(format!("signing key: {e}")))?;
    Ok(Some(Arc::new(signer)))
}

fn segment_bytes(uri_param: &dyn Fn(&str) -> Option<String>) -> Result<Option<u64>, CaptureError> {
    let Some(v) = setting(uri_param, SEGMENT_BYTES_URI_PARAM, SEGMENT_BYTES_ENV) else {
        return Ok(None);
    };
    match crate::ship::parse_bytes(&v) {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(CaptureError::Settings(format!(
            "{SEGMENT_BYTES_URI_PARAM} / {SEGMENT_BYTES_ENV} = {v:?} is not a size such as 64M"
        ))),
    }
}

fn attach_inner(
    db: &Path,
    uri_param: &dyn Fn(&str) -> Option<String>,
) -> Result<SharedCapture, CaptureError> {
    let uri_target = uri_param(TARGET_URI_PARAM);
    let uri_target = uri_target.as_deref();
    let signer = signing_key(uri_param)?;
    let segment_bytes = segment_bytes(uri_param)?;
    let env_target = std::env::var(TARGET_ENV).ok().filter(|s| !s.is_empty());
    let spec = match uri_target.or(env_target.as_deref()) {
        Some(uri) => TargetSpec::parse(uri)?,
        None => TargetSpec::default_for(db),
    };
    let mut map = registry().lock();
    if let Some(existing) = map.get(db) {
        let same = existing.lock().target() == &spec;
        if !same {
            return Err(CaptureError::Target(crate::target::TargetError::BadUri {
                uri: spec.describe(),
                reason: format!(
                    "{} is already open in this process with target {}",
                    db.display(),
                    existing.lock().target().describe()
                ),
            }));
        }
        let mut capture = existing.lock();
        if let Some(signer) = &signer {
            // A connection that names no key shares the capture as it is; one that names
            // another key than the capture signs with is refused.
            if capture.signer().map(|s| s.public_key()) != Some(signer.public_key()) {
                let current = capture
                    .signer()
                    .map_or("no key".to_string(), |s| s.public_key().to_string());
                return Err(CaptureError::Settings(format!(
                    "{} is already open in this process signing with {current}, not with the key {}",
                    db.display(),
                    signer.public_key()
                )));
            }
        }
        if let Some(bytes) = segment_bytes {
            capture.set_segment_bytes(bytes);
        }
        drop(capture);
        return Ok(existing.clone());
    }
    let opts = CaptureOptions {
        signer,
        segment_bytes,
    };
    let capture = Arc::new(Mutex::new(Capture::open_with(
        db.to_path_buf(),
        spec,
        &opts,
    )?));
    map.insert(db.to_path_buf(), capture.clone());
    Ok(capture)
}

/// `walstream_status()` for the database at `db` (`None`: the connection's main database is
/// not open through walstream).
pub fn status_json(db: Option<&Path>) -> String {
    let capture = db.and_then(|p| registry().lock().get(p).cloned());
    let last_open_error = last_attach_error().lock().clone();
    match capture {
        Some(c) => c.lock().status().to_json(last_open_error),
        None => super::status::not_captured(db, last_open_error),
    }
}
