//! The CLI as a client of a live server (CONTRACT §9): finding it, and `build`, `execute` and
//! `cancel` through it, with the same result lines and exit codes as without one.
