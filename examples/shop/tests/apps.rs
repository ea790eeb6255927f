//! Integration tests of the shop apps over real loopback sockets, one module per app.
//! Every server is bound before it is spawned, so no test waits on time for readiness.

mod apps {
    mod frontend;
    mod payments;
    mod search;
    mod support;
}
