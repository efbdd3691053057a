//! databuild's engine: the event store, the fold and its projections, the planner, the scheduler,
//! the executor and recovery.
//!
//! Everything the engine knows is derived from the event log (`databuild-log`) by one fold,
//! [`state::State::apply`], and every change goes through one validated writer,
//! [`store::Store::commit`]. The choice a reader would question: state is never stored, only
//! derived, so a crash can lose nothing but work in flight, and any view of any moment of the
//! history can be recomputed from the log alone.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod events;
pub mod execute;
pub mod executor;
pub mod freshness;
pub mod graph;
pub mod planner;
pub mod proto;
pub mod query;
pub mod recovery;
pub mod scheduler;
#[path = "../server/mod.rs"]
pub mod server;
pub mod state;
pub mod store;
pub mod sys;
