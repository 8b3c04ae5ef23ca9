//! Feature pins for the workspace's shared dependencies; no code.
//!
//! `meshctl` depends on this crate so that the README's first command (`cargo run -p meshctl --
//! demo`) compiles its dependencies with the same features as the second (`cargo test
//! --workspace`), and the second reuses the first's build instead of redoing most of it. See
//! `Cargo.toml` here for why each pin exists.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
