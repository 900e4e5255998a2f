//! The client against the real sandbox over loopback.

mod common;
mod faults;
mod marked;
mod oauth;
mod paginate;
mod rate_limit;
mod request;
