//! The HTTP/1.1 client esfleet speaks to Elasticsearch and to `HealthCheck=` URLs (feature
//! `http`): the CLI's calls to a cluster's nodes and the agent's health checks share it.
//!
//! - One request per connection (`Connection: close`); a caller bounds each attempt with a
//!   timeout. Answers are read with `Content-Length`, chunked, or to the end of the
//!   connection, at most [`MAX_BODY_BYTES`]; anything else is refused with what was wrong.
//! - `https://` verifies the server against one CA file (rustls, no system roots: an
//!   Elasticsearch cluster's certificates come from its own CA) and the name or IP address
//!   the caller dialled, which the node's certificate must carry.
//! - Credentials for HTTP basic authentication come from a file that only its owner may
//!   read (`user:password` on one line); esfleet stores the file's path, never its content.
//!   They are sent only over TLS.
//!
//! Why not hyper: every call is one small request on a fresh connection; a strict,
//! bounded parser of the answer is less code than wiring hyper's client and its TLS glue.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The largest answer accepted (a `_cat/shards` of a big cluster is a few MiB).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// The longest status or header line accepted.
const MAX_LINE_BYTES: usize = 16 << 10;
/// A credentials file is one short line; anything bigger is not one.
const MAX_CREDENTIALS_BYTES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// Why one request got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server could not be asked (refused, TLS handshake failed, closed mid-answer):
    /// another node may be asked instead.
    Unreachable(String),
    /// It answered something that is not HTTP, or too much of it.
    Bad(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(w) | Failure::Bad(w) => f.write_str(w),
        }
    }
}

fn io_failure(e: io::Error) -> Failure {
    Failure::Unreachable(e.to_string())
}

/// Who must own a credentials file: the agent (root) reads only root's files, so a user on
/// the host cannot plant credentials; the CLI reads its user's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Root,
    CurrentUser,
}

/// How requests travel: plain or TLS, with or without credentials.
#[derive(Clone, Default)]
pub struct Transport {
    tls: Option<Arc<ClientConfig>>,
    /// `Basic <base64>`.
    authorization: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("credentials", &self.authorization.is_some())
            .finish()
    }
}

impl Transport {
    /// `http://`, no credentials.
    pub fn plain() -> Transport {
        Transport::default()
    }

    /// `https://` trusting `ca_file` when given, with the credentials in `credentials_file`
    /// when given. Credentials without TLS are refused: they would cross the network in
    /// clear text.
    pub fn new(ca_file: Option<&Path>, credentials_file: Option<&Path>, owner: Owner) -> Result<Transport, String> {
        let tls = ca_file.map(load_ca).transpose()?;
        let authorization = match credentials_file {
            None => None,
            Some(f) if tls.is_none() => {
                return Err(format!(
                    "credentials ({}) are sent only over https: name the cluster's CA file too",
                    f.display()
                ))
            }
            Some(f) => {
                let (user, password) = read_credentials(f, owner)?;
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {token}"))
            }
        };
        Ok(Transport { tls, authorization })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn scheme(&self) -> &'static str {
        if self.is_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// One request to `endpoint` (`host:port`) on a fresh connection: (status, body).
    pub async fn send(
        &self,
        endpoint: &str,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let tcp = TcpStream::connect(endpoint).await.map_err(io_failure)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.exchange(tcp, endpoint, method, path, body).await;
        };
        let name = server_name(endpoint)
            .map_err(|e| Failure::Unreachable(format!("{endpoint} is not a name TLS can verify: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| Failure::Unreachable(format!("TLS handshake failed: {e}")))?;
        self.exchange(stream, endpoint, method, path, body).await
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        endpoint: &str,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {endpoint}\r\nUser-Agent: esfleet\r\nAccept: application/json\r\nConnection: close\r\n",
            method.as_str()
        );
        if let Some(a) = &self.authorization {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        match body {
            Some(b) => head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )),
            None if matches!(method, Method::Put | Method::Post) => head.push_str("Content-Length: 0\r\n\r\n"),
            None => head.push_str("\r\n"),
        }
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        stream.write_all(&out).await.map_err(io_failure)?;
        stream.flush().await.map_err(io_failure)?;
        let mut r = BufReader::new(stream);
        loop {
            let (status, headers) = read_head(&mut r).await?;
            // 1xx answers (100 Continue) precede the real one.
            if (100..200).contains(&status) {
                continue;
            }
            let body = read_body(&mut r, &headers).await?;
            return Ok((status, body));
        }
    }
}

/// The CA certificates in a PEM file, as the only roots a TLS client trusts.
pub fn load_ca(path: &Path) -> Result<Arc<ClientConfig>, String> {
    let what = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| what(&e))?;
    for cert in certs {
        let cert = cert.map_err(|e| what(&e))?;
        roots.add(cert).map_err(|e| what(&e))?;
    }
    if roots.is_empty() {
        return Err(what(&"holds no PEM certificate"));
    }
    // ring rather than aws-lc-rs (rustls's default): no cmake and a shorter build. rustls
    // deprecates ring's provider for lacking post-quantum key exchange, which the servers
    // here (Elasticsearch on a Java 17 TLS stack) do not offer either.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| what(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `user:password` from the first line of `path`, which must be a regular file no one but
/// its owner can read or write (mode 0600 or 0400), owned as `owner` says.
pub fn read_credentials(path: &Path, owner: Owner) -> Result<(String, String), String> {
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "credentials file {shown} is not a regular file (links are not followed)"
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "credentials file {shown} can be read or written by others (mode {mode:04o}); chmod 600 it"
        ));
    }
    let uid = process_uid();
    let want = match owner {
        Owner::Root => 0,
        Owner::CurrentUser => uid,
    };
    if meta.uid() != want {
        return Err(format!(
            "credentials file {shown} belongs to uid {}, not {}",
            meta.uid(),
            if owner == Owner::Root {
                "root".to_string()
            } else {
                format!("uid {want} (who runs this)")
            }
        ));
    }
    if meta.len() > MAX_CREDENTIALS_BYTES {
        return Err(format!(
            "credentials file {shown} is {} bytes; it should hold one user:password line",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("credentials file {shown}: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() && !user.contains(char::is_whitespace) => {
            Ok((user.to_string(), password.to_string()))
        }
        _ => Err(format!(
            "credentials file {shown} does not start with a user:password line"
        )),
    }
}

/// The uid of this process, from `/proc/self` (no libc call: the crate forbids unsafe and
/// carries no system-call dependency).
fn process_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// The name a server's certificate must carry: the host part of `host:port` (an IP address
/// or a DNS name; IPv6 in brackets).
fn server_name(endpoint: &str) -> Result<ServerName<'static>, String> {
    let host = match endpoint.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => endpoint,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| e.to_string())
}

/// A URL's parts: (https, `host:port`, path with query). The port defaults to 80 / 443.
pub fn split_url(url: &str) -> Result<(bool, String, String), String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url}: not an http:// or https:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{url}: no host, or credentials in the URL (use a credentials file)"
        ));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty());
    let endpoint = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    Ok((https, endpoint, path.to_string()))
}

async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(io_failure)?;
    if n == 0 {
        return Err(Failure::Unreachable(
            "the connection closed before the answer was complete".into(),
        ));
    }
    if buf.last() != Some(&b'\n') {
        return Err(Failure::Bad(format!(
            "a header line longer than {MAX_LINE_BYTES} bytes"
        )));
    }
    let s = String::from_utf8(buf).map_err(|_| Failure::Bad("a header line that is not UTF-8".into()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// The status line and headers (names lowercased).
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<(u16, Vec<(String, String)>), Failure> {
    let line = read_line(r).await?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (true, Some(status)) = (version.starts_with("HTTP/1."), status) else {
        return Err(Failure::Bad(format!("not an HTTP/1.x status line: {line:?}")));
    };
    let mut headers = Vec::new();
    loop {
        let h = read_line(r).await?;
        if h.is_empty() {
            return Ok((status, headers));
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(Failure::Bad(format!("a malformed header line: {h:?}")));
        };
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        if headers.len() > 200 {
            return Err(Failure::Bad("more than 200 headers".into()));
        }
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn read_body<R: AsyncBufRead + Unpin>(r: &mut R, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
    let chunked = header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let line = read_line(r).await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| Failure::Bad(format!("a bad chunk size line: {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(r).await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(Failure::Bad(format!("an answer larger than {MAX_BODY_BYTES} bytes")));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..]).await.map_err(io_failure)?;
            if !read_line(r).await?.is_empty() {
                return Err(Failure::Bad("a chunk not followed by CRLF".into()));
            }
        }
    }
    if let Some(len) = header(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| Failure::Bad(format!("a bad Content-Length: {len:?}")))?;
        if len > MAX_BODY_BYTES {
            return Err(Failure::Bad(format!(
                "an answer of {len} bytes; at most {MAX_BODY_BYTES} accepted"
            )));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.map_err(io_failure)?;
        return Ok(body);
    }
    // Neither: the body runs to the end of the connection (we asked for Connection: close).
    // A TLS peer that closes without close_notify ends the body too.
    let mut body = Vec::new();
    match (&mut *r).take(MAX_BODY_BYTES as u64 + 1).read_to_end(&mut body).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(io_failure(e)),
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(Failure::Bad(format!("an answer larger than {MAX_BODY_BYTES} bytes")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests;
