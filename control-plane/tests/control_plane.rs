//! Integration tests of the control plane: configuration loading, and the identity and
//! discovery services over real TLS on loopback with a real tonic client. One binary, one
//! module per topic. Every server is bound before it is used, and every network await is
//! bounded by a timeout.

#![allow(clippy::unwrap_used)]

mod control_plane {
    mod admin;
    mod config;
    mod discovery;
    mod identity;
    mod kubernetes;
    mod limits;
    mod netpol;
    mod observed;
    mod policy;
    mod reload;
    mod rotation;
    mod support;
}
