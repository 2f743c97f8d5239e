//! Generates the etcd v3 API and the peer protocol with a vendored protoc, so building
//! esfleet needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &[
                "proto/etcd/kv.proto",
                "proto/etcd/rpc.proto",
                "proto/esfleet/raft.proto",
                "proto/esfleet/fleet.proto",
                "proto/esfleet/agent.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
