//! `SpiffeId::parse` and `TrustDomain::new` on arbitrary strings: never panic, and whatever
//! is accepted is returned unchanged and re-parses to the same value.

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_certs::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(input) {
        assert_eq!(id.as_str(), input);
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain(), id.path()),
            input
        );
        assert_eq!(SpiffeId::parse(&id.to_string()).as_ref(), Ok(&id));
        assert!(TrustDomain::new(id.trust_domain()).is_ok());
    }
    let _ = TrustDomain::new(input);
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"spiffe://cluster.local/ns/shop/sa/frontend",
            b"spiffe://cluster.local",
            b"spiffe://Cluster.Local/ns/a/../b",
            b"spiffe:///x",
            b"cluster.local",
            b"\xff",
        ] {
            super::check(input);
        }
    }
}
