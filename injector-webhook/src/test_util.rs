//! Helpers shared by this crate's tests and the workspace's e2e suite (feature `test-util`):
//! where the goldens are, which reviews they hold, and `palisade install` output parsed.

use std::path::{Path, PathBuf};

/// `injector-webhook/tests/golden`.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every golden review, sorted, with whether it is sent requiring the annotation (the
/// `inject-require-annotation/` ones).
pub fn review_cases() -> Vec<(PathBuf, bool)> {
    let mut cases = Vec::new();
    for (dir, require) in [("inject", false), ("inject-require-annotation", true)] {
        let path = golden_dir().join(dir);
        let entries =
            std::fs::read_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".review.json"))
            .collect();
        files.sort();
        cases.extend(files.into_iter().map(|p| (p, require)));
    }
    cases
}

/// Every document of `palisade install` output, parsed (comment-only documents left out).
pub fn install_documents(yaml: &str) -> Vec<serde_json::Value> {
    // The output separates documents with `---` lines only; the separator takes the newline
    // that ends each document, which a literal block's value needs back.
    yaml.split("\n---\n")
        .map(|doc| {
            serde_yaml_ng::from_str::<serde_json::Value>(&format!("{doc}\n"))
                .unwrap_or_else(|e| panic!("install output does not parse: {e}\n{doc}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the install output"))
}
