//! Integration tests of the shop apps over real loopback sockets, one module per app.
//! Every server is bound before it is spawned, so no test waits on time for readiness.

mod apps {
    pub mod frontend;
    pub mod payments;
    pub mod search;
    pub mod support;
}
