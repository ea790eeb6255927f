//! Random and mutated inputs to the two untrusted parsers (AdmissionReview bodies and YAML
//! manifests): a bounded, seeded loop in `cargo test` that asserts no panic, and for reviews
//! that every body is answered (a review or a 400). The cargo-fuzz targets in `fuzz/` run the
//! same checks unbounded.

use palisade_injector::mutate::Settings;
use palisade_injector::review::{self, Answer};
use palisade_injector::{inject_stream, yaml};

/// Rounds per test; `PALISADE_RANDOM_ROUNDS` runs more (a longer local soak, not in CI).
fn rounds() -> usize {
    std::env::var("PALISADE_RANDOM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut seeds = Vec::new();
    for sub in ["inject", "inject-require-annotation", "manifests"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.to_string_lossy();
            if name.ends_with(".review.json") || name.ends_with(".yaml") {
                seeds.push(std::fs::read(&path).unwrap());
            }
        }
    }
    seeds
}

/// One mutation: flip, insert, delete or duplicate a byte range, or splice a token that
/// parsers care about.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    const TOKENS: &[&[u8]] = &[
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"null",
        b"-",
        b"\n",
        b"  ",
        b"&a ",
        b"*a",
        b"<<: ",
        b"!!int ",
        b"---\n",
        b"\\u0000",
        b"1e999",
        b"palisade-proxy",
        b"Pod",
        b"~1",
        b"\"port\":\"x\"",
        b"'",
        b"|\n",
        b"? ",
        b"%YAML 1.1\n",
    ];
    if input.is_empty() {
        input.push(rng.u8(..));
        return;
    }
    let at = rng.usize(..input.len());
    match rng.u8(..5) {
        0 => input[at] ^= 1 << rng.u8(..8),
        1 => {
            let token = TOKENS[rng.usize(..TOKENS.len())];
            input.splice(at..at, token.iter().copied());
        }
        2 => {
            let end = (at + rng.usize(1..16)).min(input.len());
            input.drain(at..end);
        }
        3 => {
            let end = (at + rng.usize(1..64)).min(input.len());
            let copy = input[at..end].to_vec();
            input.splice(at..at, copy);
        }
        _ => input[at] = rng.u8(..),
    }
}

#[test]
fn mutated_reviews_and_manifests_never_panic() {
    let settings = Settings::default();
    let seeds = seeds();
    let seed = std::env::var("PALISADE_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9a115ade);
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..rounds() {
        let mut input = seeds[rng.usize(..seeds.len())].clone();
        for _ in 0..rng.usize(1..8) {
            mutate(&mut rng, &mut input);
        }
        match review::answer(&input, round % 2 == 0, &settings) {
            Answer::Review(v) => {
                let response = v.get("response").expect("a response");
                assert!(response.get("uid").and_then(|u| u.as_str()).is_some());
                assert!(!v.to_json().contains("internal error"), "{}", v.to_json());
            }
            Answer::BadRequest(message) => assert!(!message.is_empty()),
        }
        let text = String::from_utf8_lossy(&input);
        let result = inject_stream(&text, &settings);
        if let Err(e) = &result {
            // Refusals name the input's problem; an internal error would be a bug of ours.
            assert!(!e.to_string().contains("internal error"), "{e}");
        }
        if let Ok(out) = result {
            // Whatever was accepted is written so that it reads back the same.
            let again = yaml::read_documents(&out.yaml).expect("own output parses");
            let first = yaml::read_documents(&out.yaml).unwrap();
            assert_eq!(again, first);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let settings = Settings::default();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..rounds() {
        let len = rng.usize(..256);
        let input: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = review::answer(&input, false, &settings);
        let _ = inject_stream(&String::from_utf8_lossy(&input), &settings);
    }
}

#[test]
fn written_yaml_reads_back_identically() {
    // Random trees of tricky scalars: what the writer prints, the reader reads back.
    let mut rng = fastrand::Rng::with_seed(42);
    let words = [
        "yes",
        "No",
        "0644",
        "0x1F",
        "1_000",
        "1:30",
        "~",
        "",
        "-",
        "- x",
        "a: b",
        "#",
        "on",
        "y",
        "1e3",
        "2001-12-14",
        "\u{85}",
        "tab\t",
        "é",
        "line\nbreak",
        "--flag",
        ".5",
        "null",
    ];
    for _ in 0..500 {
        let value = random_value(&mut rng, &words, 0);
        let text = yaml::to_yaml(&value);
        let docs = yaml::read_documents(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(docs.len(), 1, "{text}");
        assert_eq!(docs[0].value, value, "{text}");
    }
}

fn random_value(rng: &mut fastrand::Rng, words: &[&str], depth: usize) -> palisade_injector::Value {
    use palisade_injector::Value;
    let pick = |rng: &mut fastrand::Rng| words[rng.usize(..words.len())].to_owned();
    match if depth > 3 { rng.u8(..4) } else { rng.u8(..6) } {
        0 => Value::String(pick(rng)),
        1 => Value::Int(rng.i64(..)),
        2 => Value::Bool(rng.bool()),
        3 => Value::Null,
        4 => Value::Array(
            (0..rng.usize(..4))
                .map(|_| random_value(rng, words, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(..4))
                .map(|i| {
                    (
                        format!("{}{}", pick(rng), i),
                        random_value(rng, words, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}
