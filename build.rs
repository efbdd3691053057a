//! Compiles `proto/databuild.proto` into the library's `proto` module.
//!
//! protox parses the schema in-process, so a fresh machine needs no `protoc`. prost-build turns the
//! file descriptor set into structs, and pbjson-build adds canonical proto3 JSON (`serde`) impls:
//! lowerCamelCase names out, both spellings and enum names or numbers in.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/databuild.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile([proto], ["proto"])?;
    let descriptor_path = out_dir.join("databuild_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    // BTreeMap keeps env maps in key order, so rendering and JSON never depend on hash order.
    prost_build::Config::new().btree_map(["."]).compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".databuild.v1"])?;
    Ok(())
}
