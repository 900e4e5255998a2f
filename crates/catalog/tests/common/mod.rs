//! Helpers shared by the catalog tests (and, by path, the engine's).
pub mod spec;
