//! The one integration test binary.
mod monitor;
