//! Compiles our etcd v3 proto declarations without a system `protoc`:
//! protox parses them in pure Rust and tonic-prost-build generates the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/rpc.proto",
        "proto/kv.proto",
        "proto/auth.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // Without the `grpc` feature only the messages are generated (the store
    // speaks them); the services need tonic.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
