//! Benchmarks that the `flannel-bench` tool runs.

pub mod api;
pub mod plane;
