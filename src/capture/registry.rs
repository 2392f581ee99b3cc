//! One [`Capture`] per database file per process, shared by every connection to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::{Capture, CaptureError};
use crate::target::{TargetSpec, TARGET_ENV};

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
    let result = attach_inner(db, uri_target);
    if let Err(e) = &result {
        *last_attach_error().lock() = Some(format!("opening {}: {e}", db.display()));
    }
    result
}

fn attach_inner(db: &Path, uri_target: Option<&str>) -> Result<SharedCapture, CaptureError> {
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
        return Ok(existing.clone());
    }
    let capture = Arc::new(Mutex::new(Capture::open(db.to_path_buf(), spec)?));
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
