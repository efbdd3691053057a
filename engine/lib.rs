//! databuild's engine.
#![deny(missing_docs)]

pub mod proto;
