//! Generates the Rust code for `outpost.v1` with a vendored `protoc`: no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect(dst)` constructor would clash with the `Connect` RPC; clients are built
        // from a TLS `Channel` anyway.
        .build_transport(false)
        // Prost with small per-RPC buffers (see `codec`).
        .codec_path("crate::codec::LeanCodec")
        .compile_with_config(config, &["proto/outpost/v1/outpost.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
