//! The one HTTP client ([`Client`], ureq over native-tls/OpenSSL) used for stats uploads,
//! REST notifications, provisioning, `boot_url` and downloads: redirects followed by hand
//! (http/https only, at most 5, never https → http, a POST never turned into a GET),
//! 15 s timeouts for API calls and a 30 s stall limit for downloads, `cacrt` added to the
//! trust store when set, `insecure` honoured (with a warning at start-up), the client
//! certificate (`client_crt`/`client_key`) and `proxy` when set.
#![forbid(unsafe_code)]

use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// Default timeout of API requests (SPEC §5: "no answer in 15 s").
pub const API_TIMEOUT: Duration = Duration::from_secs(15);

/// Redirects followed at most, per request.
pub const MAX_REDIRECTS: usize = 5;

/// A download is given up when no byte arrived for this long (besides its total limit).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The whole request, body included (API calls).
    Total(Duration),
    /// Each read and write (downloads, whose total the caller checks).
    Stall(Duration),
}

/// The ureq agent under every [`Client`]: redirects off (they are followed by hand),
/// `cacrt`/`insecure`, timeouts. ureq itself caps the response head (100 headers, 100 KiB)
/// and `into_string` bodies (10 MiB).
fn agent(cfg: &Config, limit: Limit) -> ureq::Agent {
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
        .redirects(0)
        .user_agent(&format!("socketman/{}", crate::VERSION));
    b = match limit {
        Limit::Total(t) => b.timeout(t).timeout_connect(t.min(Duration::from_secs(10))),
        Limit::Stall(t) => b
            .timeout_read(t)
            .timeout_write(t)
            .timeout_connect(t.min(Duration::from_secs(10))),
    };
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

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// The server answered 4xx or 5xx.
    Status { code: u16, reason: String },
    /// A 3xx that is not followed (`location` redacted, `why` the rule it broke).
    Redirect {
        code: u16,
        location: String,
        why: &'static str,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    TooManyRedirects,
    /// No answer: DNS, connect, TLS, timeout, a broken response.
    Transport(String),
}

impl HttpError {
    /// The HTTP status, when the server sent one (4xx/5xx, or a refused 3xx).
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { code, .. } | HttpError::Redirect { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status { code, reason } => write!(f, "HTTP {code} {reason}"),
            HttpError::Redirect {
                code,
                location,
                why,
            } => write!(
                f,
                "HTTP {code} redirect to {location:?} not followed: {why}"
            ),
            HttpError::TooManyRedirects => write!(f, "more than {MAX_REDIRECTS} redirects"),
            HttpError::Transport(t) => write!(f, "{}", redact_text(t)),
        }
    }
}

impl std::error::Error for HttpError {}

/// The HTTP client of stats uploads, REST notifications, provisioning, `boot_url` and
/// downloads: the only place that builds one. Redirects are followed by hand: at most
/// [`MAX_REDIRECTS`], to `http`/`https` only, never from `https` down to `http`; a GET
/// follows 301/302/303/307/308 as a GET; any other method follows only 307/308, re-sending
/// the same method and body (a 301/302/303 to a POST is a failure, never a GET without body).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// For API calls: `timeout` for the whole request.
    pub fn new(cfg: &Config, timeout: Duration) -> Client {
        Client {
            agent: agent(cfg, Limit::Total(timeout)),
        }
    }

    /// For downloads: every read and write gets `stall`; the caller bounds the total.
    pub fn for_download(cfg: &Config, stall: Duration) -> Client {
        Client {
            agent: agent(cfg, Limit::Stall(stall)),
        }
    }

    /// GET `url`.
    pub fn get(&self, url: &str) -> Result<ureq::Response, HttpError> {
        self.call("GET", url, None)
    }

    /// `method` (POST, PATCH, PUT) with `body` of `content_type`.
    pub fn send(
        &self,
        method: &'static str,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<ureq::Response, HttpError> {
        self.call(method, url, Some((content_type, body)))
    }

    fn call(
        &self,
        method: &'static str,
        url: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<ureq::Response, HttpError> {
        let mut current = url::Url::parse(url)
            .map_err(|e| HttpError::Transport(format!("bad URL {:?}: {e}", redact(url))))?;
        check_scheme(&current).map_err(|why| HttpError::Transport(why.to_string()))?;
        for _ in 0..=MAX_REDIRECTS {
            let req = self.agent.request_url(method, &current);
            let res = match body {
                Some((ct, b)) => req.set("Content-Type", ct).send_bytes(b),
                None => req.call(),
            };
            let resp = match res {
                Ok(r) => r,
                Err(ureq::Error::Status(code, r)) => {
                    return Err(HttpError::Status {
                        code,
                        reason: escape(r.status_text()),
                    })
                }
                Err(ureq::Error::Transport(t)) => return Err(HttpError::Transport(t.to_string())),
            };
            let code = resp.status();
            if !(300..400).contains(&code) {
                return Ok(resp);
            }
            current = next_hop(&current, method, code, resp.header("Location"))?;
            log::debug!("http: {code} redirect to {}", redact(current.as_str()));
        }
        Err(HttpError::TooManyRedirects)
    }
}

fn check_scheme(u: &url::Url) -> Result<(), &'static str> {
    match u.scheme() {
        "http" | "https" if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "http" | "https" => Err("URL without a host"),
        _ => Err("only http and https URLs are followed"),
    }
}

/// Where a `code` redirect of `method` from `from` goes, or why it is not followed.
fn next_hop(
    from: &url::Url,
    method: &str,
    code: u16,
    location: Option<&str>,
) -> Result<url::Url, HttpError> {
    let refuse = |location: &str, why| HttpError::Redirect {
        code,
        location: redact(&escape(location)),
        why,
    };
    let Some(loc) = location else {
        return Err(refuse("", "no Location header"));
    };
    let next = from
        .join(loc)
        .map_err(|_| refuse(loc, "the Location is not a URL"))?;
    check_scheme(&next).map_err(|why| refuse(loc, why))?;
    if from.scheme() == "https" && next.scheme() == "http" {
        return Err(refuse(loc, "https to http is refused"));
    }
    match code {
        307 | 308 => Ok(next),
        301..=303 if method == "GET" => Ok(next),
        301..=303 => Err(refuse(
            loc,
            "only 307/308 re-send a request with a body; it is not turned into a GET",
        )),
        _ => Err(refuse(loc, "not a redirect status")),
    }
}

/// `s` with control characters escaped, for a log line (outside strings never forge lines).
pub fn escape(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        s.escape_debug().to_string()
    } else {
        s.to_string()
    }
}

/// A text with every `access_token=` value masked (ureq's messages may hold the URL).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("access_token=") {
        let start = i + "access_token=".len();
        out.push_str(&rest[..start]);
        out.push_str("***");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c == '&' || c == '"' || c == ')' || c.is_whitespace())
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
    fn redirect_rules() {
        let https = url::Url::parse("https://api.example/v1/stats?access_token=s3").unwrap();
        let http = url::Url::parse("http://api.example/v1/stats").unwrap();
        let hop = |from: &url::Url, m: &str, code, loc: Option<&str>| {
            next_hop(from, m, code, loc).map(|u| u.to_string())
        };
        // GET follows every redirect status, relative Locations resolved.
        for code in [301, 302, 303, 307, 308] {
            assert_eq!(
                hop(&http, "GET", code, Some("/other")).unwrap(),
                "http://api.example/other"
            );
        }
        // A body is re-sent only with 307/308.
        assert!(hop(&http, "POST", 307, Some("http://b/x")).is_ok());
        assert!(hop(&http, "PATCH", 308, Some("http://b/x")).is_ok());
        for code in [301, 302, 303] {
            let e = hop(&http, "POST", code, Some("http://b/x")).unwrap_err();
            assert!(e.to_string().contains("not turned into a GET"), "{e}");
            assert_eq!(e.status(), Some(code));
        }
        // Schemes, hosts, downgrades, missing or broken Locations.
        for (loc, why) in [
            ("file:///etc/shadow", "only http and https"),
            ("ftp://h/x", "only http and https"),
            ("http:", "not a URL"),
            ("http://a/x", "https to http"),
        ] {
            let e = hop(&https, "GET", 302, Some(loc)).unwrap_err();
            assert!(e.to_string().contains(why), "{loc}: {e}");
        }
        assert!(hop(&https, "GET", 302, None)
            .unwrap_err()
            .to_string()
            .contains("no Location"));
        assert!(hop(&https, "GET", 302, Some("https://b/x")).is_ok());
        assert!(hop(&http, "GET", 304, Some("/x")).is_err());
        // The refused Location is escaped and redacted in the message.
        let e = hop(
            &https,
            "GET",
            302,
            Some("http://a/?access_token=zz\nforged"),
        )
        .unwrap_err();
        assert!(
            !e.to_string().contains("zz") && !e.to_string().contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn escape_makes_one_line() {
        assert_eq!(escape("plain id-1"), "plain id-1");
        assert_eq!(escape("a\nERROR forged"), "a\\nERROR forged");
        assert!(!escape("x\r\u{1b}[31m").contains(['\r', '\u{1b}']));
    }

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
