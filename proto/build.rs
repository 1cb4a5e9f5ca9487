//! Compiles `portcullis/v1/*.proto` with protox (pure Rust, no system protoc), then generates
//! prost messages, tonic services (behind the `grpc` feature), pbjson serde impls (the proto3
//! JSON mapping), and the encoded descriptor set for gRPC server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "portcullis/v1/policy.proto",
        "portcullis/v1/cluster.proto",
        "portcullis/v1/agent.proto",
        "portcullis/v1/scan.proto",
        "portcullis/v1/event.proto",
        "portcullis/v1/audit.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(files, ["."])?;
    let descriptor_path = out.join("portcullis_descriptor.bin");
    fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .compile_well_known_types(true)
        // The report of an import is decoded as a slice of the request buffer, not a copy.
        .bytes(".portcullis.v1.ImportReportRequest.report")
        .extern_path(".google.protobuf", "::pbjson_types")
        .client_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .server_mod_attribute(".", "#[cfg(feature = \"grpc\")]")
        .compile_fds(fds)?;

    let descriptors = fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".portcullis.v1"])?;
    Ok(())
}
