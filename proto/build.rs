//! Compiles the `.proto` files of this crate into Rust with tonic + prost.
//!
//! `protox` parses the files in-process, so no system `protoc` is needed.

use std::error::Error;

/// Every proto file of the crate, relative to the crate root (which is the import root).
const PROTOS: &[&str] = &["cri/v1/api.proto", "deviceplugin/v1beta1/api.proto", "southbound.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
