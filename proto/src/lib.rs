//! The Portcullis API, package `portcullis.v1`: prost messages (with serde impls that follow the
//! proto3 JSON mapping, so YAML/JSON policy files and grpcurl documents are the same thing),
//! tonic clients and servers (feature `grpc`), and the descriptor set for server reflection.

/// Package `portcullis.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/portcullis.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/portcullis.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every Portcullis proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_descriptor.bin"));

pub mod limits;
pub mod words;

#[cfg(feature = "grpc")]
pub mod auth;
