//! Regenerates `src/gen` from the `.proto` files with a pure-Rust compiler (protox) and
//! fails if the committed code differs, so API changes are reviewed and builds never
//! need `protoc`.

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = [
        "palisade/v1/identity.proto",
        "palisade/v1/authorization.proto",
        "palisade/v1/network_policy.proto",
        "palisade/v1/discovery.proto",
        "palisade/v1/telemetry.proto",
    ];
    let fds = protox::compile(protos, [root]).expect("the .proto files compile");

    let out = tempdir(root);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps encode deterministically, so equal snapshots get equal versions.
        .btree_map(".")
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation succeeds");

    let generated = out.join("palisade.v1.rs");
    let fresh = std::fs::read_to_string(&generated).expect("generated file exists");
    let committed_path = root.join("src/gen/palisade.v1.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out);
    if fresh != committed {
        std::fs::write(&committed_path, &fresh).expect("write regenerated code");
        panic!(
            "{} was out of date and has been regenerated; review and commit it",
            committed_path.display()
        );
    }
}

fn tempdir(root: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "palisade-proto-gen-{}-{}",
        std::process::id(),
        root.as_os_str().len()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
