//! Benchmarks live in the shell drivers next to this crate (`make bench`); this crate holds shared Rust helpers as they are needed.
