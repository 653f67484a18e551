//! The task pipe between the two halves of a proxied HTTP/1 exchange (vendored pingora-proxy
//! patch 0005, issue 23): its unit tests, built here from the vendored source, since `make test`
//! does not build the vendored crate's own tests. Order, capacity, reservations given back,
//! the close seen from each end, and a waiting end woken.
#![allow(clippy::unwrap_used)]

/// What `pingora_proxy::TASK_BUFFER_SIZE` is in the vendored crate.
const TASK_BUFFER_SIZE: usize = 4;

#[path = "../../vendor/pingora-proxy/src/task_pipe.rs"]
mod task_pipe;
