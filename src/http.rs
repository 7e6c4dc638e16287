//! The one HTTP client configuration (ureq over native-tls/OpenSSL) used for stats uploads,
//! REST notifications, provisioning and downloads: 15 s timeouts, `cacrt` added to the trust
//! store when set, `insecure` honoured (with a warning at start-up).
#![forbid(unsafe_code)]

use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// Default timeout of API requests (SPEC §5: "no answer in 15 s").
pub const API_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP agent for API calls with the given overall timeout.
pub fn agent(cfg: &Config, timeout: Duration) -> ureq::Agent {
    let mut tls = native_tls::TlsConnector::builder();
    if cfg.insecure {
        tls.danger_accept_invalid_certs(true);
        tls.danger_accept_invalid_hostnames(true);
    }
    if let Some(path) = &cfg.cacrt {
        match std::fs::read(path) {
            Ok(pem) => match native_tls::Certificate::from_pem(&pem) {
                Ok(cert) => {
                    tls.add_root_certificate(cert);
                }
                Err(e) => log::warn!(
                    "cacrt {path}: not a PEM certificate ({e}); HTTPS uses the system store"
                ),
            },
            Err(e) => log::warn!("cacrt {path}: {e}; HTTPS uses the system store"),
        }
    }
    if let Some(crt) = &cfg.client_crt {
        match client_identity(cfg, crt) {
            Ok(id) => {
                tls.identity(id);
            }
            Err(e) => log::error!("HTTPS client certificate {crt}: {e}; sending none"),
        }
    }
    let mut b = ureq::AgentBuilder::new()
        .timeout(timeout)
        .timeout_connect(timeout.min(Duration::from_secs(10)))
        .user_agent(&format!("socketman/{}", crate::VERSION));
    match tls.build() {
        Ok(c) => b = b.tls_connector(Arc::new(c)),
        Err(e) => log::error!("TLS setup for HTTPS failed: {e}"),
    }
    if let Some(p) = cfg.effective_proxy() {
        match ureq::Proxy::new(&p) {
            Ok(proxy) => b = b.proxy(proxy),
            Err(e) => log::error!(
                "proxy {}: {e}; HTTP goes direct",
                crate::config::mask_url_credentials(&p)
            ),
        }
    }
    b.build()
}

/// The `client_crt`/`client_key` pair (the key decrypted with `client_key_password`) as a
/// native-tls identity: PEM chain plus the key in PKCS#8, the form native-tls takes.
fn client_identity(cfg: &Config, crt: &str) -> Result<native_tls::Identity, String> {
    let chain = std::fs::read(crt).map_err(|e| e.to_string())?;
    let key_pem = match &cfg.client_key {
        Some(k) => std::fs::read(k).map_err(|e| format!("client_key {k}: {e}"))?,
        None => chain.clone(),
    };
    let pass = cfg.client_key_password.as_deref().unwrap_or("");
    let key = openssl::pkey::PKey::private_key_from_pem_passphrase(&key_pem, pass.as_bytes())
        .and_then(|k| k.private_key_to_pem_pkcs8())
        .map_err(|e| format!("cannot load the key: {e}"))?;
    native_tls::Identity::from_pkcs8(&chain, &key).map_err(|e| e.to_string())
}

/// Appends `key=value` pairs (URL-encoded) to `url`.
pub fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = url.to_string();
    for (k, v) in pairs {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&encode(k));
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// Percent-encoding of a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A URL with its `access_token` value replaced, for log lines.
pub fn redact(url: &str) -> String {
    match url.find("access_token=") {
        Some(i) => {
            let start = i + "access_token=".len();
            let end = url[start..].find('&').map_or(url.len(), |j| start + j);
            format!("{}***{}", &url[..start], &url[end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_building_and_redaction() {
        let u = with_query("http://h/p", &[("access_token", "a b&c"), ("mac", "AA-BB")]);
        assert_eq!(u, "http://h/p?access_token=a%20b%26c&mac=AA-BB");
        assert_eq!(
            with_query("http://h/p?x=1", &[("y", "2")]),
            "http://h/p?x=1&y=2"
        );
        assert_eq!(redact(&u), "http://h/p?access_token=***&mac=AA-BB");
        assert_eq!(redact("http://h/p"), "http://h/p");
    }
}
