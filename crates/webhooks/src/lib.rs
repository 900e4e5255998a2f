//! The one endpoint of flowd that faces the internet: GHL's webhook deliveries.
//!
//! A delivery is verified over its raw body ([`Verifier`]: the `X-GHL-Signature`
//! Ed25519 header, or the legacy `x-wh-signature` RSA-SHA256 one), checked for a
//! fresh timestamp and an unseen `webhookId`, then written to the store's inbox and
//! flushed **before** flowd answers 2xx. GHL retries only a 429, so anything that
//! could lose the event (the store failing) is answered 429; anything that will never
//! succeed (a bad signature) is a 4xx, counted by reason ([`WebhookMetrics`]).
//!
//! Architecture invariant: this crate depends on `store`, never on `engine`: it only
//! fills the inbox; turning events into runs is the engine's job.

mod keys;
mod metrics;
mod receiver;
mod verify;

pub use keys::{parse_ed25519, parse_rsa, KeyError, GHL_RSA_PUBLIC_KEY_PEM};
pub use metrics::{Outcome, WebhookMetrics};
pub use receiver::{router, Receiver, DEFAULT_PATH};
pub use verify::{Rejection, Verified, Verifier, ED25519_HEADER, GHL_RETRY_SPAN, RSA_HEADER};
