//! Kubernetes sidecar injection (mutating admission webhook); built in a later slice.

pub mod install;
