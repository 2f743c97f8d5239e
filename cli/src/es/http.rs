//! A small HTTP/1.1 client for Elasticsearch's REST API: JSON bodies, `Content-Length` and
//! chunked answers, one connection per request (`Connection: close`), a timeout on each
//! attempt, and several nodes tried in turn.
//!
//! Why not hyper: the CLI makes a handful of sequential calls to one node at a time; a
//! hand-written request and a strict answer parser are less code than wiring hyper's
//! client, and keep the CLI's dependencies as they are.
//!
//! A node that cannot be reached (refused, timed out, closed mid-answer) is skipped and the
//! next one asked; every Elasticsearch call esfleet makes is safe to send twice (settings
//! are absolute values, voting exclusions are idempotent). An HTTP answer, whatever its
//! status, is returned: Elasticsearch's errors (`{"error":{"type","reason"},"status"}`) are
//! turned into [`HttpError::Es`] by [`EsHttp::json`].

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The largest answer accepted (a `_cat/shards` of a big cluster is a few MiB).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// The longest status or header line accepted.
const MAX_LINE_BYTES: usize = 16 << 10;

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

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The node (`host:port`) that answered.
    pub endpoint: String,
}

impl Reply {
    /// The body as JSON (`Null` for an empty body).
    pub fn json(&self) -> Result<Value, HttpError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| HttpError::BadAnswer {
            endpoint: self.endpoint.clone(),
            why: format!("the body is not JSON ({e}): {}", snippet(&self.body)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No node could be asked: what each one said.
    #[error("no Elasticsearch node answered {what}; tried {}", tried.iter().map(|(e, w)| format!("{e} ({w})")).collect::<Vec<_>>().join(", "))]
    Unreachable { what: String, tried: Vec<(String, String)> },
    /// Elasticsearch refused the request: its status, error type and reason.
    #[error("Elasticsearch ({endpoint}) answered {status} to {what}: {kind}: {reason}")]
    Es {
        endpoint: String,
        what: String,
        status: u16,
        kind: String,
        reason: String,
    },
    /// The answer was not HTTP or not what Elasticsearch sends.
    #[error("{endpoint} sent an answer esfleet cannot read: {why}")]
    BadAnswer { endpoint: String, why: String },
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned();
    if b.len() > 200 {
        format!("{s}…")
    } else {
        s
    }
}

/// Elasticsearch's error body → (type, reason); anything else → ("http_error", the body).
pub fn es_error(status: u16, body: &[u8]) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::Object(e)) => {
            let kind = e.get("type").and_then(Value::as_str).unwrap_or("error").to_string();
            let reason = e.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
            (kind, reason)
        }
        Some(Value::String(s)) => ("error".into(), s.clone()),
        _ => (format!("http_{status}"), snippet(body)),
    }
}

/// Elasticsearch nodes (`host:port`), tried in turn; the one that answered last goes first.
pub struct EsHttp {
    endpoints: Mutex<Vec<String>>,
    timeout: Duration,
}

impl EsHttp {
    /// `endpoints` as `host:port` (an `http://` prefix is dropped); `timeout` bounds each
    /// attempt (connect, send, and read the whole answer).
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> EsHttp {
        let endpoints = endpoints
            .into_iter()
            .map(|e| e.trim().trim_start_matches("http://").trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        EsHttp {
            endpoints: Mutex::new(endpoints),
            timeout,
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.lock().expect("poisoned").clone()
    }

    /// Moves `endpoint` to the end of the list: a node about to be stopped is asked last.
    pub fn avoid(&self, endpoint: &str) {
        let mut e = self.endpoints.lock().expect("poisoned");
        if let Some(i) = e.iter().position(|x| x == endpoint) {
            let x = e.remove(i);
            e.push(x);
        }
    }

    fn prefer(&self, endpoint: &str) {
        let mut e = self.endpoints.lock().expect("poisoned");
        if let Some(i) = e.iter().position(|x| x == endpoint) {
            let x = e.remove(i);
            e.insert(0, x);
        }
    }

    /// Sends `method path` with an optional JSON body to the nodes in turn until one answers.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, HttpError> {
        let what = format!("{} {path}", method.as_str());
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serializes"));
        let mut tried = Vec::new();
        for endpoint in self.endpoints() {
            let attempt = tokio::time::timeout(self.timeout, send(&endpoint, method, path, body.as_deref())).await;
            match attempt {
                Ok(Ok((status, body))) => {
                    self.prefer(&endpoint);
                    return Ok(Reply { status, body, endpoint });
                }
                Ok(Err(Failure::Unreachable(why))) => tried.push((endpoint, why)),
                Ok(Err(Failure::Bad(why))) => return Err(HttpError::BadAnswer { endpoint, why }),
                Err(_) => tried.push((
                    endpoint,
                    format!("no answer within {}", humantime::format_duration(self.timeout)),
                )),
            }
        }
        if tried.is_empty() {
            tried.push(("-".into(), "no node address is known".into()));
        }
        Err(HttpError::Unreachable { what, tried })
    }

    /// [`request`](Self::request), then: a 2xx answer's JSON, or Elasticsearch's error.
    pub async fn json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, HttpError> {
        let reply = self.request(method, path, body).await?;
        if (200..300).contains(&reply.status) {
            return reply.json();
        }
        let (kind, reason) = es_error(reply.status, &reply.body);
        Err(HttpError::Es {
            endpoint: reply.endpoint,
            what: format!("{} {path}", method.as_str()),
            status: reply.status,
            kind,
            reason,
        })
    }
}

enum Failure {
    /// The node could not be asked, or went away mid-answer: ask another.
    Unreachable(String),
    /// It answered something that is not HTTP.
    Bad(String),
}

fn io(e: std::io::Error) -> Failure {
    Failure::Unreachable(e.to_string())
}

/// One request on a fresh connection: (status, body).
async fn send(endpoint: &str, method: Method, path: &str, body: Option<&[u8]>) -> Result<(u16, Vec<u8>), Failure> {
    let mut stream = TcpStream::connect(endpoint).await.map_err(io)?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {endpoint}\r\nUser-Agent: esfleet\r\nAccept: application/json\r\nConnection: close\r\n",
        method.as_str()
    );
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
    stream.write_all(&out).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
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

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, Failure> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(io)?;
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
async fn read_head(r: &mut BufReader<TcpStream>) -> Result<(u16, Vec<(String, String)>), Failure> {
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

async fn read_body(r: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> Result<Vec<u8>, Failure> {
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
            r.read_exact(&mut body[start..]).await.map_err(io)?;
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
        r.read_exact(&mut body).await.map_err(io)?;
        return Ok(body);
    }
    // Neither: the body runs to the end of the connection (we asked for Connection: close).
    let mut body = Vec::new();
    (&mut *r)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .await
        .map_err(io)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(Failure::Bad(format!("an answer larger than {MAX_BODY_BYTES} bytes")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads one request and writes `answer` verbatim; returns its address
    /// and what it received.
    async fn serve_once(answer: impl Into<Vec<u8>>) -> (String, tokio::task::JoinHandle<String>) {
        let answer: Vec<u8> = answer.into();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head and the declared body.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn content_length_answer_and_json_body() {
        let (addr, task) = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{\"acknowledged\":1}",
        )
        .await;
        // The declared length is shorter than what follows: only it is read.
        let es = EsHttp::new(vec![addr.clone()], Duration::from_secs(5));
        let body = serde_json::json!({"persistent": {"a": null}});
        let r = es
            .request(Method::Put, "/_cluster/settings", Some(&body))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"acknowledged\":".to_vec());
        let sent = task.await.unwrap();
        assert!(sent.starts_with("PUT /_cluster/settings HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Content-Type: application/json\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\n{\"persistent\":{\"a\":null}}"), "{sent}");
    }

    #[tokio::test]
    async fn chunked_answer() {
        let (addr, _t) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n5\r\n:true\r\n1\r\n}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .await;
        let es = EsHttp::new(vec![addr], Duration::from_secs(5));
        let v = es.json(Method::Get, "/", None).await.unwrap();
        assert_eq!(v, serde_json::json!({"a": true}));
    }

    #[tokio::test]
    async fn es_errors_carry_type_and_reason() {
        let body = r#"{"error":{"type":"illegal_argument_exception","reason":"unknown setting [x]"},"status":400}"#;
        let (addr, _t) = serve_once(format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let es = EsHttp::new(vec![addr], Duration::from_secs(5));
        let e = es.json(Method::Put, "/_cluster/settings", None).await.unwrap_err();
        let HttpError::Es {
            status, kind, reason, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(
            (*status, kind.as_str(), reason.as_str()),
            (400, "illegal_argument_exception", "unknown setting [x]")
        );
        assert!(
            e.to_string()
                .contains("answered 400 to PUT /_cluster/settings: illegal_argument_exception: unknown setting [x]"),
            "{e}"
        );
    }

    /// A port nobody listens on: bind, note, drop.
    async fn dead_addr() -> String {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn a_dead_node_is_skipped_and_the_live_one_preferred_next_time() {
        let dead = dead_addr().await;
        let (addr, _t) = serve_once(b"HTTP/1.0 200 OK\r\n\r\n{\"ok\":1}").await;
        let es = EsHttp::new(vec![format!("http://{dead}"), addr.clone()], Duration::from_secs(5));
        let v = es.json(Method::Get, "/", None).await.unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ok": 1}),
            "a body up to the end of the connection"
        );
        assert_eq!(es.endpoints()[0], addr);
        es.avoid(&addr);
        assert_eq!(es.endpoints()[1], addr);
    }

    #[tokio::test]
    async fn nothing_reachable_names_every_node() {
        let dead = dead_addr().await;
        let es = EsHttp::new(vec![dead.clone()], Duration::from_secs(5));
        let e = es.json(Method::Get, "/_cluster/health", None).await.unwrap_err();
        assert!(matches!(e, HttpError::Unreachable { .. }));
        assert!(
            e.to_string().starts_with(&format!(
                "no Elasticsearch node answered GET /_cluster/health; tried {dead} ("
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        let (addr, _t) = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        let es = EsHttp::new(vec![addr], Duration::from_secs(5));
        let e = es.request(Method::Get, "/", None).await.unwrap_err();
        assert!(e.to_string().contains("not an HTTP/1.x status line"), "{e}");
    }
}
