//! An `AuthorizationSnapshot` off the wire → `Authorizer` → one decision: never panics,
//! whatever the control plane (or an attacker who got between) sends.

#![cfg_attr(not(test), no_main)]

use libfuzzer_sys::fuzz_target;
use palisade_certs::SpiffeId;
use palisade_proto::v1;
use palisade_proxy::authz::{Authorizer, HttpAttrs, RequestAttrs};
use prost::Message;

fuzz_target!(|data: &[u8]| check(data));

fn check(data: &[u8]) {
    let Ok(snapshot) = v1::AuthorizationSnapshot::decode(data) else {
        return;
    };
    let Ok(authorizer) = Authorizer::try_from(&snapshot) else {
        return;
    };
    let Ok(caller) = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend") else {
        return;
    };
    let headers = http::HeaderMap::new();
    for http in [
        None,
        Some(HttpAttrs {
            method: "GET",
            host: "search.shop:8080",
            path: "/a/../b%41?x",
            headers: &headers,
        }),
    ] {
        for source in [None, Some(&caller)] {
            let req = RequestAttrs {
                source,
                source_ip: "10.0.0.1".parse().ok(),
                destination_ip: "10.0.0.2".parse().ok(),
                destination_port: 8080,
                sni: Some("port-8080.palisade.mesh"),
                http,
            };
            let decision = authorizer.evaluate(&req, false);
            let _ = decision.explain();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_sample_inputs() {
        for input in [&b""[..], b"\x0a\x00", b"\x08\x01", b"\xff\xff\xff"] {
            super::check(input);
        }
    }
}
