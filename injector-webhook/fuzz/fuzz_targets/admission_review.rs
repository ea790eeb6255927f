//! The webhook's handler on arbitrary request bodies, both policies: never panics; every
//! body is answered as a review that echoes a uid, or refused with a non-empty 400 text; and
//! any patch it sends decodes and applies to the review's own object.

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_injector::mutate::Settings;
use palisade_injector::review::{self, Answer};
use palisade_injector::value::from_json;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let settings = Settings::default();
    for require_annotation in [false, true] {
        match review::answer(data, require_annotation, &settings) {
            Answer::Review(answer) => {
                let response = answer.get("response").expect("a response");
                assert!(response.get("uid").and_then(|u| u.as_str()).is_some());
                if let Some(ops) = review::decoded_patch(&answer) {
                    assert!(ops.as_array().is_some_and(|o| !o.is_empty()));
                    let review = from_json(data).expect("a patched review was JSON");
                    assert!(review.get("request").and_then(|r| r.get("object")).is_some());
                }
            }
            Answer::BadRequest(message) => assert!(!message.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"{}",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"name":"a","livenessProbe":{"httpGet":{"port":"x"}}}]}}}}"#,
            b"\xff\xfe",
        ] {
            super::check(input);
        }
    }
}
