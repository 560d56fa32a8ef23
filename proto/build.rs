//! Compiles `tollgate/v1/tollgate.proto` with `protox` (a pure-Rust protobuf compiler), so building
//! Tollgate needs no system `protoc`, then generates prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "tollgate/v1/tollgate.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
