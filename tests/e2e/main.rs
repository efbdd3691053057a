//! End-to-end tests: the real `databuild` binary on the shipped examples and on small graphs
//! made in temp directories (ripgrep's layout: one test binary, a module per topic).

mod audit;
mod bad_input;
mod build;
mod concurrency;
mod engine;
mod freshness;
mod hardening;
mod hardening_cli;
mod hardening_config;
mod hardening_input;
mod history;
mod kill;
mod log_damage;
mod serve;
mod slurm;
mod util;
mod ux_cli;
mod ux_jobs;
mod ux_progress;
