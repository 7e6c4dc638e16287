//! The artifact of an update: job arguments (name, URL, sha256, version), the download into a
//! temporary file (size and time limits, HTTP(S) through the shared client) and its sha256.
#![forbid(unsafe_code)]

#[allow(unused_imports)]
use super::*;

/// Validated `meta.args` of `service.update` (`name` empty for `agent.update`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateArgs {
    pub name: String,
    pub url: String,
    /// Lower-case hex.
    pub sha256: String,
    pub version: String,
}

fn str_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, UpdateError> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(UpdateError::Args(format!("{key} must be a string"))),
        None => Err(UpdateError::Args(format!("{key} is required"))),
    }
}

/// Parses the args of `service.update` (`with_name`) or `agent.update`.
pub fn parse_args(args: &Value, with_name: bool) -> Result<UpdateArgs, UpdateError> {
    if !args.is_object() {
        return Err(UpdateError::Args("meta.args must be an object".into()));
    }
    let name = if with_name {
        let n = str_arg(args, "name")?;
        validate_component("name", n)?;
        n.to_string()
    } else {
        String::new()
    };
    let url = str_arg(args, "url")?;
    validate_url(url)?;
    let sha256 = parse_sha256(str_arg(args, "sha256")?)?;
    let version = str_arg(args, "version")?;
    validate_component("version", version)?;
    Ok(UpdateArgs {
        name,
        url: url.to_string(),
        sha256,
        version: version.to_string(),
    })
}

/// A service name or version used as a file name: 1–64 of `A-Za-z0-9._+~-`, not starting
/// with `.` (so never `.`/`..` nor one of our temporary names), never `current`.
pub fn validate_component(what: &str, s: &str) -> Result<(), UpdateError> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'~' | b'-'));
    if s.is_empty() || s.len() > 64 {
        return Err(UpdateError::Args(format!("{what} must be 1-64 characters")));
    }
    if !ok_chars || s.starts_with('.') || s.starts_with('-') || s.contains("..") {
        return Err(UpdateError::Args(format!(
            "{what} {s:?} may only hold letters, digits and ._+~- (no '/', no '..', not starting with '.' or '-')"
        )));
    }
    if s == CURRENT || s.starts_with("current.") {
        return Err(UpdateError::Args(format!("{what} may not be {s:?}")));
    }
    Ok(())
}

/// `http://` or `https://` with a host.
pub fn validate_url(url: &str) -> Result<(), UpdateError> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(UpdateError::Args(format!(
            "url must be an http:// or https:// URL, got {:?}",
            crate::http::redact(url)
        ))),
    }
}

/// 64 hex digits, either case; returned lower-case.
pub fn parse_sha256(s: &str) -> Result<String, UpdateError> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(UpdateError::Args(format!(
            "sha256 must be 64 hex digits, got {s:?}"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// Download
// ---------------------------------------------------------------------------------------

/// A file that is removed when dropped unless [`TempFile::keep`] was called.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub fn new(path: PathBuf) -> TempFile {
        TempFile { path, keep: false }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Leaves the file in place (it was renamed or must stay).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep && !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A unique temporary name `dir/.<prefix>-<pid>-<n>`.
pub fn temp_name(dir: &Path, prefix: &str) -> PathBuf {
    // AtomicUsize: 32-bit MIPS (OpenWrt routers) has no AtomicU64.
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{prefix}-{}-{n}", std::process::id()))
}

/// A finished download.
#[derive(Debug)]
pub struct Download {
    pub file: TempFile,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
    pub size: u64,
}

/// A reader that fails once `deadline` has passed (each read itself is bounded by the stall
/// timeout, so a trickle ends at most one stall after the deadline).
struct Deadline<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the download took longer than its time limit",
            ));
        }
        self.inner.read(buf)
    }
}

/// Streams `reader` into a new temporary file in `dir` (mode 0600), hashing as it goes;
/// stops with [`UpdateError::TooLarge`] beyond `max` bytes. The file is synced.
pub fn save_stream(
    reader: &mut dyn Read,
    dir: &Path,
    max: u64,
    url: &str,
) -> Result<Download, UpdateError> {
    let file = TempFile::new(temp_name(dir, "download"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file.path())
        .map_err(io_err(file.path()))?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(UpdateError::Download {
                    url: crate::http::redact(url),
                    detail: format!("reading the body: {e}"),
                })
            }
        };
        size += n as u64;
        if size > max {
            return Err(UpdateError::TooLarge {
                url: crate::http::redact(url),
                limit: max,
            });
        }
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).map_err(io_err(file.path()))?;
    }
    f.sync_all().map_err(io_err(file.path()))?;
    Ok(Download {
        file,
        sha256: hex(&hasher.finalize()),
        size,
    })
}

/// GETs `url` (HTTP or HTTPS, `cacrt`/`insecure` from `cfg`) into a temporary file in `dir`,
/// at most `max` bytes within `timeout`; given up when no byte came for
/// [`crate::http::STALL_TIMEOUT`] (or `timeout`, when shorter).
pub fn download(
    cfg: &Config,
    url: &str,
    dir: &Path,
    max: u64,
    timeout: Duration,
) -> Result<Download, UpdateError> {
    download_with(cfg, url, dir, max, timeout, crate::http::STALL_TIMEOUT)
}

/// [`download`] with the stall limit given.
fn download_with(
    cfg: &Config,
    url: &str,
    dir: &Path,
    max: u64,
    timeout: Duration,
    stall: Duration,
) -> Result<Download, UpdateError> {
    let shown = crate::http::redact(url);
    log::info!("downloading {shown} into {}", dir.display());
    let deadline = Instant::now() + timeout;
    let client = crate::http::Client::for_download(cfg, timeout.min(stall));
    let resp = client.get(url).map_err(|e| UpdateError::Download {
        url: shown.clone(),
        detail: e.to_string(),
    })?;
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > max {
            return Err(UpdateError::TooLarge {
                url: shown,
                limit: max,
            });
        }
    }
    let mut body = Deadline {
        inner: resp.into_reader(),
        deadline,
    };
    let d = save_stream(&mut body, dir, max, url)?;
    log::info!("downloaded {shown}: {} bytes, sha256 {}", d.size, d.sha256);
    Ok(d)
}

/// `Ok` when `got` equals `expected` (both hex, any case).
pub fn check_sha256(expected: &str, got: &str) -> Result<(), UpdateError> {
    if expected.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        Err(UpdateError::Checksum {
            expected: expected.to_ascii_lowercase(),
            got: got.to_ascii_lowercase(),
        })
    }
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Unpack
// ---------------------------------------------------------------------------------------

/// True when the URL's path names a gzip tar (`.tar.gz`, `.tgz`), query and fragment aside.
pub fn is_tar_gz(url: &str) -> bool {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    path.ends_with(".tar.gz") || path.ends_with(".tgz")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that sends a 200 head announcing 1000 bytes, then `bytes` one at a time,
    /// `gap` apart, then holds the connection.
    fn slow_server(bytes: usize, gap: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
                for _ in 0..bytes {
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                    std::thread::sleep(gap);
                }
                std::thread::sleep(Duration::from_secs(60));
            }
        });
        format!("http://127.0.0.1:{port}/a.tar.gz")
    }

    #[test]
    fn a_stalled_or_trickling_download_ends_at_its_limits() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::default();
        // Stalls after 2 bytes: ended by the 1 s stall limit, long before the 60 s total.
        let t = Instant::now();
        let e = download_with(
            &cfg,
            &slow_server(2, Duration::ZERO),
            d.path(),
            1 << 20,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, UpdateError::Download { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        // A byte every 200 ms never stalls, but the total limit ends it.
        let t = Instant::now();
        let e = download_with(
            &cfg,
            &slow_server(1000, Duration::from_millis(200)),
            d.path(),
            1 << 20,
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("time limit"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        // Nothing left behind in the directory.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
