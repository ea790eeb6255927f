//! Regenerates `src/gen` from `proto/payments.proto` with a pure-Rust compiler (protox)
//! and fails if the committed code differs, so API changes are reviewed and builds never
//! need `protoc`.

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["payments.proto"], [root.join("proto")])
        .expect("the .proto file compiles");

    let out = tempdir(root);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("code generation succeeds");

    let generated = out.join("payments.rs");
    let fresh = std::fs::read_to_string(&generated).expect("generated file exists");
    let committed_path = root.join("src/gen/payments.rs");
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
        "palisade-shop-gen-{}-{}",
        std::process::id(),
        root.as_os_str().len()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
