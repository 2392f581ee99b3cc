//! walstream: continuous, verifiable replication of SQLite databases.
//!
//! The loadable extension (`ext/`) intercepts SQLite's I/O and calls into [`capture`] at the
//! moments a WAL transaction becomes visible; everything here is safe Rust with no SQLite
//! linkage, testable on its own. See ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]

pub mod capture;
pub mod diff;
pub mod file_size;
pub mod layout;
pub mod prune;
pub mod reader;
pub mod record;
pub mod restore;
pub mod ship;
pub mod sign;
pub mod spool;
pub mod state;
pub mod target;
#[cfg(feature = "cli")]
pub mod validate;
pub mod verify;
pub mod wal;

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
