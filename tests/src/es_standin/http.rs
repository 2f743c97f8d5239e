//! A deliberately small HTTP/1.1 server and client on tokio for the stand-in: requests with
//! `Content-Length` or chunked bodies, responses always with `Content-Length`. Enough for
//! curl, the agent's HTTP/1.0 health check and the CLI's Elasticsearch client; no TLS, no
//! pipelining beyond sequential keep-alive.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Requests larger than this are refused: the stand-in only ever sees small JSON bodies.
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("malformed HTTP: {0}")]
    Malformed(String),
}

/// A parsed request. `path` is percent-decoded; `query` keeps the last value of each key.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// Path and query exactly as received (used when forwarding).
    pub target: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec(value).expect("JSON values serialize");
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }
    pub fn text(status: u16, text: String) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=UTF-8",
            body: text.into_bytes(),
        }
    }
    pub fn body_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `path?query` into a decoded path and query map.
pub fn split_target(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut map = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(percent_decode(k, true), percent_decode(v, true));
    }
    (percent_decode(path, false), map)
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<Request>, HttpError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| HttpError::Malformed(e.to_string()))?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::Malformed("truncated head".into()))
            };
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // tolerate stray blank lines between requests
            }
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(HttpError::Malformed("request head too large".into()));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(HttpError::Malformed(format!("bad request line {start:?}")));
    };
    let mut headers = Vec::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method: method.to_ascii_uppercase(),
        target: target.to_string(),
        headers,
        ..Default::default()
    };
    let (path, query) = split_target(target);
    req.path = path;
    req.query = query;
    req.body = read_body(reader, &req.headers).await?;
    if version == "HTTP/1.0" && req.header("connection").is_none() {
        req.headers.push(("connection".into(), "close".into()));
    }
    Ok(Some(req))
}

async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    headers: &[(String, String)],
) -> Result<Vec<u8>, HttpError> {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let io = |e: std::io::Error| HttpError::Malformed(e.to_string());
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).await.map_err(io)?;
            let size_hex = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| HttpError::Malformed(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // trailers until an empty line
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).await.map_err(io)? == 0 || l.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(HttpError::Malformed("body too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await.map_err(io)?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf).await.map_err(io)?;
        }
    }
    let len: usize = match get("content-length") {
        Some(v) => v
            .parse()
            .map_err(|_| HttpError::Malformed(format!("bad content-length {v:?}")))?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err(HttpError::Malformed("body too large".into()));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.map_err(io)?;
    Ok(body)
}

fn encode_response(resp: &Response, head_only: bool, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nX-elastic-product: Elasticsearch\r\n{}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    out
}

/// Serves `handler` on `listener` until `shutdown` completes. Each connection gets its own
/// task; requests on one connection are handled in order.
pub async fn serve<H, F>(listener: TcpListener, handler: H, shutdown: impl Future<Output = ()>)
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let req = match read_request(&mut reader).await {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(e) => {
                        let resp = Response::json(400, &super::api::es_error(400, "parse_exception", &e.to_string()));
                        let _ = write.write_all(&encode_response(&resp, false, true)).await;
                        return;
                    }
                };
                let close = req
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let head_only = req.method == "HEAD";
                let resp = handler(req).await;
                if write
                    .write_all(&encode_response(&resp, head_only, close))
                    .await
                    .is_err()
                    || close
                {
                    return;
                }
            }
        });
    }
}

/// One request on a fresh connection (`Connection: close`); `addr` is `host:port`.
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    let fut = async {
        let stream = TcpStream::connect(addr).await.map_err(|source| HttpError::Connect {
            addr: addr.to_string(),
            source,
        })?;
        let io = |source| HttpError::Io {
            addr: addr.to_string(),
            source,
        };
        let (read, mut write) = stream.into_split();
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        write.write_all(head.as_bytes()).await.map_err(io)?;
        write.write_all(body).await.map_err(io)?;
        let mut reader = BufReader::new(read);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.map_err(io)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HttpError::Malformed(format!("bad status line {status_line:?} from {addr}")))?;
        let mut hdrs = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.map_err(io)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let has_len = hdrs
            .iter()
            .any(|(k, _)| k == "content-length" || k == "transfer-encoding");
        let body = if has_len {
            read_body(&mut reader, &hdrs).await?
        } else {
            let mut b = Vec::new();
            reader.read_to_end(&mut b).await.map_err(io)?;
            b
        };
        let json = hdrs.iter().any(|(k, v)| k == "content-type" && v.contains("json"));
        Ok(Response {
            status,
            content_type: if json {
                "application/json"
            } else {
                "text/plain; charset=UTF-8"
            },
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| HttpError::Timeout {
            addr: addr.to_string(),
            after: timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_split_and_decoded() {
        let (path, q) = split_target("/_cluster/voting_config_exclusions?node_names=a%2Cb&timeout=1s&x");
        assert_eq!(path, "/_cluster/voting_config_exclusions");
        assert_eq!(q["node_names"], "a,b");
        assert_eq!(q["timeout"], "1s");
        assert_eq!(q["x"], "");
        assert_eq!(percent_decode("100%", false), "100%");
    }

    #[tokio::test]
    async fn chunked_and_plain_bodies_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            |req: Request| async move { Response::text(200, format!("{} {} {}", req.method, req.path, req.body.len())) },
            std::future::pending(),
        ));
        let r = request(&addr, "PUT", "/x?y=1", &[], b"hello", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (r.status, String::from_utf8(r.body).unwrap()),
            (200, "PUT /x 5".to_string())
        );
        // a chunked request by hand, then a second request on the same connection
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /d HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("POST /c 5"), "{out}");
        assert!(out.contains("GET /d 0"), "{out}");
    }
}
