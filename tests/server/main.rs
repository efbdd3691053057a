//! `databuild serve` end to end: the real binary as a server, driven by clients that share no
//! code with it (Python grpcio stubs generated from `proto/`) and by the library's tonic clients,
//! with many requests at once, crashes and restarts. One test binary, a module per topic.

#[path = "../e2e/util.rs"]
mod util;

mod concurrency;
mod crash;
mod harness;
mod python;
