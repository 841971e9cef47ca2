//! Compiles `headroom/v1/*.proto` with protox (no system protoc) and writes
//! the file descriptor set that the servers offer through reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "headroom/v1/common.proto",
        "headroom/v1/usage.proto",
        "headroom/v1/agent.proto",
        "headroom/v1/collector.proto",
        "headroom/v1/predictor.proto",
        "headroom/v1/allocator.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("headroom_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
