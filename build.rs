//! Compiles `proto/walstream.proto` with prost, using protox as the protobuf parser so that no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/walstream.proto");
    let descriptors = protox::compile(["walstream.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
