//! What `SELECT walstream_status()` reports.

use std::path::Path;

use serde_json::json;

/// Counters and the last error of one database's capture.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub database: String,
    pub target: String,
    pub generation: Option<u64>,
    pub last_seq: Option<u64>,
    pub head_hash: Option<String>,
    /// Transactions captured by this process.
    pub captured_txns: u64,
    /// Generations started by this process, and why the last one was.
    pub generations_started: u64,
    pub last_generation_reason: Option<String>,
    /// Capture failed and the WAL holds committed transactions not yet in the stream.
    pub behind: bool,
    pub last_error: Option<String>,
    pub errors: u64,
}

impl Status {
    pub fn to_json(&self, last_open_error: Option<String>) -> String {
        json!({
            "database": self.database,
            "target": self.target,
            "captured": true,
            "generation": self.generation,
            "last_seq": self.last_seq,
            "shipped_seq": self.last_seq,
            "lag_txns": 0,
            "head_hash": self.head_hash,
            "captured_txns": self.captured_txns,
            "generations_started": self.generations_started,
            "last_generation_reason": self.last_generation_reason,
            "behind": self.behind,
            "last_error": self.last_error,
            "errors": self.errors,
            "last_open_error": last_open_error,
        })
        .to_string()
    }
}

/// Status of a connection whose database is not captured.
pub fn not_captured(db: Option<&Path>, last_open_error: Option<String>) -> String {
    json!({
        "database": db.map(|p| p.display().to_string()),
        "captured": false,
        "last_open_error": last_open_error,
    })
    .to_string()
}
