//! What the store keeps on disk besides the API objects themselves: the change-log entry of
//! every revision and the cluster record with its token hash. prost-encoded, so the on-disk
//! format evolves the way the wire format does (new fields are optional).

use portcullis_proto::v1::{Cluster, ImageScan, ImageSummary, Policy};

/// One committed change, keyed in the `changes` tree by its revision (big-endian u64).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeRecord {
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    #[prost(int64, tag = "2")]
    pub unix_millis: i64,
    #[prost(oneof = "Change", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub change: Option<Change>,
}

/// What a revision changed. Upserts carry the whole object as of that revision, so a reader of
/// the log never has to consult the current state.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    #[prost(message, boxed, tag = "3")]
    PolicyPut(Box<Policy>),
    #[prost(string, tag = "4")]
    PolicyDeleted(String),
    #[prost(message, boxed, tag = "5")]
    ClusterPut(Box<Cluster>),
    #[prost(string, tag = "6")]
    ClusterDeleted(String),
    /// A scan imported (or re-imported, replacing the one with the same id), as written by
    /// earlier versions: the whole scan. Still read, so their change logs resume agents.
    #[prost(message, boxed, tag = "7")]
    ScanPut(Box<ImageScan>),
    /// A scan imported: its summary as agents receive it (ids spelled out). The scan itself is
    /// in the scans tree; copying it (tens of MB for a large report) into the log only cost
    /// memory at import and on every agent stream that read it back.
    #[prost(message, boxed, tag = "9")]
    ScanSummaryPut(Box<ImageSummary>),
    /// The id of a deleted scan.
    #[prost(string, tag = "8")]
    ScanDeleted(String),
}

/// A registered cluster as stored: the API object plus the SHA-256 of its agent token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClusterRecord {
    #[prost(message, optional, tag = "1")]
    pub cluster: Option<Cluster>,
    #[prost(bytes = "vec", tag = "2")]
    pub token_sha256: Vec<u8>,
}
