//! The `webhooks:` section: where the GHL webhook receiver listens and which keys it
//! trusts. Keys are public, so they may be written inline; files are read relative to
//! the config file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    /// Its own address: the receiver is the one endpoint that faces the internet.
    pub listen: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Ed25519 keys for `X-GHL-Signature`: PEM or base64, inline.
    #[serde(default)]
    pub ed25519_keys: Vec<String>,
    #[serde(default)]
    pub ed25519_key_files: Vec<PathBuf>,
    /// RSA keys for the legacy `x-wh-signature`; GHL's published key when none is given.
    #[serde(default)]
    pub rsa_keys: Vec<String>,
    #[serde(default)]
    pub rsa_key_files: Vec<PathBuf>,
    /// Clock skew allowed in a delivery's `timestamp`: refused when ahead of now by more, or
    /// older than this plus GHL's retries (`webhooks::GHL_RETRY_SPAN`).
    #[serde(default = "default_tolerance", deserialize_with = "super::bounded::duration::<_, 1000, { super::DAY }>")]
    pub tolerance: Duration,
    /// Open connections at most; past it, deliveries get a 503 at once (GHL sends them again).
    #[serde(default = "default_max_connections", deserialize_with = "super::bounded::usize::<_, 1, 100_000>")]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and an idle connection stays open.
    #[serde(default = "default_header_timeout", deserialize_with = "super::bounded::duration::<_, 100, 300_000>")]
    pub header_timeout: Duration,
    /// Time from a request's headers to its answer: the body included.
    #[serde(default = "default_request_timeout", deserialize_with = "super::bounded::duration::<_, 100, 600_000>")]
    pub request_timeout: Duration,
}

/// The receiver's settings, keys parsed.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pub listen: SocketAddr,
    pub path: String,
    pub verifier: Arc<webhooks::Verifier>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

fn default_max_connections() -> usize {
    512
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_path() -> String {
    webhooks::DEFAULT_PATH.to_string()
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

pub(super) fn resolve(
    raw: &RawWebhooks,
    base: &Path,
    admin: SocketAddr,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Webhooks, String> {
    let listen: SocketAddr = raw
        .listen
        .parse()
        .map_err(|_| format!("webhooks.listen: `{}` is not an address like 0.0.0.0:8687", raw.listen))?;
    if listen == admin {
        return Err("webhooks.listen must differ from `listen`: admin and metrics stay off the internet".into());
    }
    if !raw.path.starts_with('/') || raw.path.len() < 2 {
        return Err(format!("webhooks.path: `{}` must be a path such as /hooks/ghl", raw.path));
    }
    let texts = |inline: &[String], files: &[PathBuf], what: &str| -> Result<Vec<(String, String)>, String> {
        // Inline keys may be `${ENV_VAR}` references, like every other value from outside.
        let mut out = Vec::with_capacity(inline.len() + files.len());
        for (i, k) in inline.iter().enumerate() {
            let at = format!("webhooks.{what}[{i}]");
            let key = super::expand(k, env).map_err(|m| format!("{at}: {m}"))?;
            out.push((at, key));
        }
        for f in files {
            let path = if f.is_absolute() { f.clone() } else { base.join(f) };
            let text = super::read_limited(&path, super::MAX_SECRET_FILE)
                .map_err(|e| format!("webhooks.{what}_files: {e}"))?;
            out.push((path.display().to_string(), text));
        }
        Ok(out)
    };
    let mut ed25519 = Vec::new();
    for (at, text) in texts(&raw.ed25519_keys, &raw.ed25519_key_files, "ed25519_keys")? {
        ed25519.push(webhooks::parse_ed25519(&text).map_err(|e| format!("{at}: {e}"))?);
    }
    let mut rsa = Vec::new();
    for (at, text) in texts(&raw.rsa_keys, &raw.rsa_key_files, "rsa_keys")? {
        rsa.push(webhooks::parse_rsa(&text).map_err(|e| format!("{at}: {e}"))?);
    }
    if rsa.is_empty() {
        rsa.push(webhooks::parse_rsa(webhooks::GHL_RSA_PUBLIC_KEY_PEM).map_err(|e| format!("GHL's RSA key: {e}"))?);
    }
    if ed25519.is_empty() {
        warnings.push(
            "webhooks: no ed25519_keys: only deliveries with the legacy x-wh-signature (RSA) are accepted".into(),
        );
    }
    Ok(Webhooks {
        listen,
        path: raw.path.clone(),
        verifier: Arc::new(webhooks::Verifier::new(ed25519, rsa, raw.tolerance)),
        max_connections: raw.max_connections,
        header_timeout: raw.header_timeout,
        request_timeout: raw.request_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawWebhooks {
        serde_saphyr::from_str(yaml).expect("yaml")
    }

    const ED25519: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";

    #[test]
    fn parses_keys_and_defaults() {
        let admin: SocketAddr = "127.0.0.1:8686".parse().expect("addr");
        let mut warnings = Vec::new();
        let w = resolve(
            &raw(&format!("listen: 0.0.0.0:8687\ned25519_keys: [\"{ED25519}\"]\n")),
            Path::new("."),
            admin,
            &|_| None,
            &mut warnings,
        )
        .expect("valid");
        assert_eq!(w.path, "/hooks/ghl");
        assert_eq!(w.verifier.tolerance(), Duration::from_secs(300));
        assert_eq!(
            (w.max_connections, w.header_timeout, w.request_timeout),
            (512, Duration::from_secs(10), Duration::from_secs(30))
        );
        assert!(warnings.is_empty());

        let e = resolve(&raw("listen: 127.0.0.1:8686\n"), Path::new("."), admin, &|_| None, &mut warnings).unwrap_err();
        assert!(e.contains("must differ"), "{e}");
        let e =
            resolve(&raw("listen: 0.0.0.0:1\ned25519_keys: [nope]\n"), Path::new("."), admin, &|_| None, &mut warnings)
                .unwrap_err();
        assert!(e.starts_with("webhooks.ed25519_keys[0]: "), "{e}");
        let e = resolve(
            &raw("listen: 0.0.0.0:1\nrsa_key_files: [missing.pem]\n"),
            Path::new("."),
            admin,
            &|_| None,
            &mut warnings,
        )
        .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        resolve(&raw("listen: 0.0.0.0:1\n"), Path::new("."), admin, &|_| None, &mut warnings).expect("RSA only");
        assert_eq!(warnings.len(), 1, "no Ed25519 key is worth a warning");
    }
}
