//! Compiles `proto/p2p.proto` into the tonic client and server (needs `protoc` on PATH).

fn main() -> std::io::Result<()> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    tonic_prost_build::configure()
        .bytes(".p2p.MessageEntry.content")
        .compile_protos(&[format!("{proto_dir}/p2p.proto")], &[proto_dir.to_owned()])
}
