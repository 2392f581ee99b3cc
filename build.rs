//! Compiles `proto/walstream.proto` with prost, using protox as the protobuf parser so that no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/walstream.proto");
    let descriptors = protox::compile(["walstream.proto"], ["proto"])?;
    // Page content decodes as slices of the record it came in (`bytes::Bytes`), not copies.
    prost_build::Config::new()
        .bytes([".walstream.v1.Page"])
        .compile_fds(descriptors)?;
    Ok(())
}
