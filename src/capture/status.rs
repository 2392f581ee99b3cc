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
    /// Chain hash of the last transaction (hex in the JSON, formatted only when asked for).
    pub head_hash: Option<crate::record::Hash>,
    /// Transactions captured by this process.
    pub captured_txns: u64,
    /// Generations started by this process, and why the last one was.
    pub generations_started: u64,
    pub last_generation_reason: Option<String>,
    /// Capture failed and the WAL holds committed transactions not yet in the stream.
    pub behind: bool,
    pub last_error: Option<String>,
    pub errors: u64,
    /// Remote targets: the local spool directory, its limit, and the shipper's live state.
    pub spool: Option<String>,
    pub spool_limit: Option<u64>,
    pub ship: Option<std::sync::Arc<crate::ship::ShipShared>>,
    /// The public key heads are signed with (never the secret).
    pub signing_key: Option<crate::sign::PublicKey>,
}

impl Status {
    pub fn to_json(&self, last_open_error: Option<String>) -> String {
        let mut v = json!({
            "database": self.database,
            "target": self.target,
            "captured": true,
            "generation": self.generation,
            "last_seq": self.last_seq,
            "shipped_seq": self.last_seq,
            "lag_txns": 0,
            "head_hash": self.head_hash.as_ref().map(|h| crate::record::hex(h)),
            "captured_txns": self.captured_txns,
            "generations_started": self.generations_started,
            "last_generation_reason": self.last_generation_reason,
            "behind": self.behind,
            "last_error": self.last_error,
            "errors": self.errors,
            "last_open_error": last_open_error,
            "signing": self.signing_key.as_ref().map(|k| json!({
                "algorithm": k.algorithm().name(),
                "public_key": crate::record::hex(k.bytes()),
            })),
        });
        if let Some(ship) = &self.ship {
            // Shipping fields: shipped_seq, lag_txns, lag_ms, ship_error, ... (see docs/S3.md).
            let extra = ship.status_json(self.spool_limit);
            if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
                obj.insert("spool".into(), json!(self.spool));
                obj.extend(extra);
            }
        }
        v.to_string()
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
