//! Compiles `proto/databuild.proto` (the seed) and `proto/databuild_server.proto` (the server's
//! extension service) into the library's `proto` module.
//!
//! protox parses the schema in-process, so a fresh machine needs no `protoc`. prost-build turns the
//! file descriptor set into structs, tonic-prost-build adds the gRPC services (client and server),
//! and pbjson-build adds canonical proto3 JSON (`serde`) impls: lowerCamelCase names out, both
//! spellings and enum names or numbers in. The descriptor set is kept for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/databuild.proto", "proto/databuild_server.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile(protos, ["proto"])?;
    let descriptor_path = out_dir.join("databuild_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    // BTreeMap keeps env maps in key order, so rendering and JSON never depend on hash order.
    let services = tonic_prost_build::configure().build_transport(false).service_generator();
    prost_build::Config::new().btree_map(["."]).service_generator(services).compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".databuild.v1"])?;
    Ok(())
}
