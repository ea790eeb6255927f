//! SPIFFE IDs through the public API (the parser's own vectors are unit tests in `spiffe.rs`).

use palisade_certs::{SpiffeId, SpiffeIdError, TrustDomain};

use super::support::*;

#[test]
fn service_account_names_cannot_add_path_segments() {
    // Regression: a `/` in a name used to produce a valid ID of another shape
    // (`.../ns/a/sa/b/sa/c`), whose namespace() and service_account() were None.
    for (ns, sa) in [("a/sa/b", "c"), ("a", "b/ns/c"), ("a", "b/"), ("/a", "b")] {
        let err = SpiffeId::for_service_account(&td(), ns, sa).unwrap_err();
        assert!(
            matches!(err, SpiffeIdError::BadPathChar { ch: '/', .. }),
            "{ns:?} {sa:?}: {err:?}"
        );
    }
    let ok = id("shop", "payments");
    assert_eq!(ok.namespace(), Some("shop"));
    assert_eq!(ok.service_account(), Some("payments"));
    assert!(SpiffeId::for_service_account(&td(), "", "b").is_err());
    assert!(SpiffeId::for_service_account(&td(), "a", "..").is_err());
}

#[test]
fn ids_round_trip_through_display_and_from_str() {
    let id: SpiffeId = "spiffe://example.org/ns/a/sa/b".parse().unwrap();
    assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
    assert_eq!(id.trust_domain(), "example.org");
    let td: TrustDomain = "example.org".parse().unwrap();
    assert_eq!(td.to_string(), "example.org");
    assert_eq!(td.as_str(), id.trust_domain());
}

#[test]
fn length_limits_are_exact() {
    // 2048 bytes is allowed, 2049 is not.
    let prefix = "spiffe://td/";
    let at_limit = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(at_limit.len(), 2048);
    assert!(SpiffeId::parse(&at_limit).is_ok());
    let over = format!("{at_limit}a");
    assert_eq!(SpiffeId::parse(&over), Err(SpiffeIdError::TooLong));

    let td255 = "a".repeat(255);
    assert!(TrustDomain::new(&td255).is_ok());
    assert_eq!(
        TrustDomain::new(&format!("{td255}a")),
        Err(SpiffeIdError::TrustDomainTooLong)
    );
}
