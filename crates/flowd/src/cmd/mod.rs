pub mod auth;
pub mod catalog;
pub mod demo;
pub mod runs;
pub mod sandbox;
pub mod store;
pub mod test;
pub mod validate;
