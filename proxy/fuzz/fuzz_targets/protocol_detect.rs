//! Protocol detection reads the first bytes of every captured connection, which any app (or
//! anything that compromised one) chooses: it must never panic, and its verdict must not
//! change as more bytes arrive once it has decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::detect::classify_prefix;

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len().min(2048) {
        let verdict = classify_prefix(&data[..end]);
        match (&decided, verdict) {
            (None, Some(p)) => decided = Some(p),
            // TLS names may only be learned once the hello is complete; every other verdict
            // is final.
            (Some(first), Some(later)) => assert_eq!(first.label(), later.label(), "{end}"),
            (Some(_), None) => panic!("undecided again at {end} bytes"),
            (None, None) => {}
        }
    }
});
