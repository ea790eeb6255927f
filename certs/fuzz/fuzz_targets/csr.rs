//! `CertificateAuthority::sign_csr` on arbitrary input (raw text and DER wrapped as PEM):
//! never panics, and anything it signs is a valid X.509-SVID for the requested identity.

#![cfg_attr(not(test), no_main)]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palisade_certs::{pem, svid, CaOptions, CertificateAuthority, SpiffeId, TrustDomain};

struct Fixture {
    ca: CertificateAuthority,
    identity: SpiffeId,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let td = TrustDomain::new("cluster.local").expect("valid trust domain");
    let (ca, _) =
        CertificateAuthority::generate(td.clone(), &CaOptions::default()).expect("CA generation");
    let identity = SpiffeId::for_service_account(&td, "fuzz", "target").expect("valid id");
    Fixture { ca, identity }
});

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let fixture = &*FIXTURE;
    let as_text = String::from_utf8_lossy(data);
    let as_pem = pem::encode("CERTIFICATE REQUEST", data);
    for input in [as_text.as_ref(), as_pem.as_str()] {
        if let Ok(leaf) = fixture
            .ca
            .sign_csr(input, &fixture.identity, Duration::from_secs(60))
        {
            assert_eq!(
                svid::validate_leaf(leaf.leaf.as_ref()).as_ref(),
                Ok(&fixture.identity)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [
            &b""[..],
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            b"\x30\x03\x02\x01\x00",
            b"\xff\xfe",
        ] {
            super::check(input);
        }
    }
}
