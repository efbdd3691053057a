//! The protocol types generated from `proto/databuild.proto`, with canonical proto3 JSON.
#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/databuild.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/databuild.v1.serde.rs"));
