//! Counters and flags of the sync client, read by `/state`, `/metrics` and status reports.

use std::sync::{
    Mutex,
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
};

#[derive(Default)]
pub struct SyncStats {
    connected: AtomicBool,
    pub snapshots: AtomicU64,
    pub deltas: AtomicU64,
    pub nacks: AtomicU64,
    pub reconnects: AtomicU64,
    /// Unix milliseconds of the last message from the control plane.
    last_heard_ms: AtomicI64,
    last_mode: Mutex<String>,
    last_error: Mutex<String>,
    /// The control plane endpoint of the stream in use: its URL, and the address connected to.
    control_plane: Mutex<Option<(String, String)>>,
    /// Set once at start when the cache had to be rebuilt.
    pub cache_recovery: Mutex<Option<String>>,
    /// Kubernetes mode: "protected", "protected-without-policy", "deploy-failed",
    /// "unprotected", or "" (standalone, or not known yet), and the deploy error.
    protection: Mutex<(String, String)>,
}

impl SyncStats {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        if connected {
            self.set_error("");
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records the endpoint of the stream in use (`None`: no stream).
    pub fn set_control_plane(&self, in_use: Option<(String, String)>) {
        *self.control_plane.lock().unwrap_or_else(|e| e.into_inner()) = in_use;
    }

    /// The URL and address of the control plane endpoint in use.
    pub fn control_plane(&self) -> Option<(String, String)> {
        self.control_plane
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn heard(&self) {
        self.last_heard_ms.store(crate::now_ms(), Ordering::Relaxed);
    }

    pub fn set_mode(&self, mode: portcullis_proto::words::SyncMode) {
        *self.last_mode.lock().unwrap_or_else(|e| e.into_inner()) = mode.as_str().to_owned();
    }

    pub fn mode(&self) -> String {
        self.last_mode
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_error(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_owned();
    }

    pub fn error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The error a healthy (ACK) report carries: a cache recovery, if one happened, or why
    /// the webhook could not be deployed.
    pub fn error_for_report(&self) -> String {
        let recovery = self
            .cache_recovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let (_, deploy) = self.protection();
        match (recovery.is_empty(), deploy.is_empty()) {
            (_, true) => recovery,
            (true, false) => deploy,
            (false, false) => format!("{recovery}; {deploy}"),
        }
    }

    /// Records the protection state (and, for "deploy-failed", the error).
    pub fn set_protection(&self, state: portcullis_proto::words::ProtectionState, error: &str) {
        *self.protection.lock().unwrap_or_else(|e| e.into_inner()) =
            (state.as_str().to_owned(), error.to_owned());
    }

    /// The protection state and the deploy error.
    pub fn protection(&self) -> (String, String) {
        self.protection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seconds since the control plane was last heard from, or since the state was applied
    /// when it has not been heard from since start.
    pub fn cache_age_seconds(&self, applied_at_ms: i64) -> u64 {
        let heard = self
            .last_heard_ms
            .load(Ordering::Relaxed)
            .max(applied_at_ms);
        if heard == 0 {
            return 0;
        }
        ((crate::now_ms() - heard).max(0) / 1000) as u64
    }
}
