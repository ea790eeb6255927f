//! Property-style robustness: parsers of untrusted input never panic, and what they accept
//! satisfies their invariants. Deterministic (fixed seeds); the fuzz targets in `fuzz/` go
//! further.

use std::time::Duration;

use palisade_certs::{CaError, SpiffeId, WorkloadKey, pem, svid};

use super::support::*;

/// Inputs per property.
const ROUNDS: usize = 3000;

/// Characters that make SPIFFE-ish strings likely, plus some that must be refused.
const SPIFFE_ALPHABET: &[char] = &[
    's', 'p', 'i', 'f', 'e', ':', '/', '/', '/', 'a', 'b', 'Z', '0', '9', '.', '.', '-', '_', '%',
    '?', '#', '@', ' ', '*', 'é', '\u{0}', '\u{202e}', 'S',
];

fn random_spiffe_like(rng: &mut fastrand::Rng) -> String {
    let mut s = String::new();
    if rng.bool() {
        s.push_str(["spiffe://", "spiffe://td/", "SPIFFE://", "spiffe:/"][rng.usize(..4)]);
    }
    for _ in 0..rng.usize(..40) {
        s.push(SPIFFE_ALPHABET[rng.usize(..SPIFFE_ALPHABET.len())]);
    }
    s
}

#[test]
fn spiffe_id_parse_never_panics_and_accepts_only_canonical_ids() {
    let mut rng = fastrand::Rng::with_seed(0x5b1ffe);
    let mut accepted = 0;
    for _ in 0..ROUNDS * 5 {
        let input = if rng.u8(..8) == 0 {
            let bytes: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            random_spiffe_like(&mut rng)
        };
        if let Ok(id) = SpiffeId::parse(&input) {
            accepted += 1;
            assert_eq!(id.as_str(), input);
            assert_eq!(
                format!("spiffe://{}{}", id.trust_domain(), id.path()),
                input
            );
            assert!(id.path().starts_with('/'));
            assert!(!id.path().contains("//") && !id.path().ends_with('/'));
            assert!(
                id.path()
                    .split('/')
                    .skip(1)
                    .all(|seg| seg != "." && seg != "..")
            );
            assert!(
                id.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/:._-".contains(&b))
            );
            assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id));
        }
    }
    // The generator reaches both outcomes.
    assert!(accepted > 10, "only {accepted} inputs were valid");
}

/// Mutations of `seed`: flips, truncations, insertions, deletions, splices.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        if out.is_empty() {
            out.push(rng.u8(..));
            continue;
        }
        let at = rng.usize(..out.len());
        match rng.u8(..6) {
            0 => out[at] ^= 1 << rng.u8(..8),
            1 => out[at] = rng.u8(..),
            2 => out.truncate(at),
            3 => out.insert(at, rng.u8(..)),
            4 => {
                out.remove(at);
            }
            _ => {
                // Length bytes are where DER parsers go wrong: force a large one.
                out[at] = [0x80, 0x81, 0x82, 0x84, 0xff, 0x00][rng.usize(..6)];
            }
        }
    }
    out
}

#[test]
fn svid_inspect_and_validate_never_panic() {
    let (ca, _) = new_ca();
    let (leaf, _) = ca.issue(&id("a", "b"), HOUR).unwrap();
    let seed = leaf.leaf.as_ref().to_vec();
    let mut rng = fastrand::Rng::with_seed(0xce47);
    for round in 0..ROUNDS {
        let input = if round % 10 == 0 {
            (0..rng.usize(..300)).map(|_| rng.u8(..)).collect()
        } else {
            mutate(&mut rng, &seed)
        };
        let info = svid::inspect(&input);
        let validated = svid::validate_leaf(&input);
        if validated.is_ok() {
            assert!(info.is_ok());
        }
        let _ = palisade_certs::tls::peer_identity(Some(&[input.into()]));
    }
}

#[test]
fn pem_decode_never_panics() {
    let (_, material) = new_ca();
    let seed = format!("{}{}", material.root_cert_pem, material.ca_cert_pem);
    let mut rng = fastrand::Rng::with_seed(0x9e3);
    for round in 0..ROUNDS {
        let bytes = if round % 10 == 0 {
            (0..rng.usize(..200)).map(|_| rng.u8(..)).collect()
        } else {
            mutate(&mut rng, seed.as_bytes())
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(certs) = pem::decode_certs(&text) {
            assert!(!certs.is_empty());
        }
        let _ = pem::decode_key(&text);
    }
}

#[test]
fn sign_csr_never_panics_and_only_signs_valid_requests() {
    let (ca, _) = new_ca();
    let identity = id("a", "b");
    let csr = WorkloadKey::generate().unwrap().csr_pem(&identity).unwrap();
    let der = ::pem::parse(&csr).unwrap().into_contents();
    let mut rng = fastrand::Rng::with_seed(0xc5a);
    let mut signed = 0;
    for round in 0..ROUNDS {
        let input = match round % 10 {
            // Arbitrary text, sometimes wrapped as a CSR block.
            0 => {
                let bytes: Vec<u8> = (0..rng.usize(..200)).map(|_| rng.u8(..)).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            1 => {
                let bytes: Vec<u8> = (0..rng.usize(..200)).map(|_| rng.u8(..)).collect();
                pem::encode("CERTIFICATE REQUEST", &bytes)
            }
            // Mutated PEM text.
            2 => String::from_utf8_lossy(&mutate(&mut rng, csr.as_bytes())).into_owned(),
            // Mutated DER, well-formed PEM.
            _ => pem::encode("CERTIFICATE REQUEST", &mutate(&mut rng, &der)),
        };
        match ca.sign_csr(&input, &identity, Duration::from_secs(60)) {
            Ok(leaf) => {
                signed += 1;
                assert_eq!(svid::validate_leaf(leaf.leaf.as_ref()).unwrap(), identity);
            }
            Err(CaError::BadCsr(_) | CaError::IdentityMismatch { .. }) => {}
            Err(other) => panic!("unexpected error kind for a bad CSR: {other:?}"),
        }
    }
    // Only mutations that keep the signed request intact can pass.
    assert!(signed < ROUNDS / 10, "{signed} mutated CSRs were signed");
}
