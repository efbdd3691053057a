//! The protocol types generated from `proto/databuild.proto` and `proto/databuild_server.proto`,
//! with canonical proto3 JSON and the gRPC services (client and server).
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/databuild.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/databuild.v1.serde.rs"));

/// The encoded `FileDescriptorSet` of both proto files, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/databuild_descriptor.bin"));
