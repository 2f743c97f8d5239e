//! The CLI's client for a cluster's Elasticsearch nodes: [`esfleet_core::http`]'s
//! transport (http or https with the cluster's CA and credentials), several nodes tried in
//! turn, and Elasticsearch's error bodies read into [`HttpError::Es`].
//!
//! A node that cannot be reached (refused, timed out, TLS handshake failed, closed
//! mid-answer) is skipped and the next one asked; every Elasticsearch call esfleet makes is
//! safe to send twice (settings are absolute values, voting exclusions are idempotent). An
//! HTTP answer, whatever its status, is returned: Elasticsearch's errors
//! (`{"error":{"type","reason"},"status"}`) are turned into [`HttpError::Es`] by
//! [`EsHttp::json`].

use std::sync::Mutex;
use std::time::Duration;

pub use esfleet_core::http::Method;
use esfleet_core::http::{Failure, Transport};
use serde_json::Value;

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
    transport: Transport,
}

impl EsHttp {
    /// `endpoints` as `host:port` (an `http://` or `https://` prefix is dropped: `transport`
    /// decides); `timeout` bounds each attempt (connect, TLS, send, and read the whole
    /// answer).
    pub fn new(endpoints: Vec<String>, timeout: Duration, transport: Transport) -> EsHttp {
        let endpoints = endpoints
            .into_iter()
            .map(|e| {
                let e = e.trim();
                let e = e
                    .strip_prefix("https://")
                    .or_else(|| e.strip_prefix("http://"))
                    .unwrap_or(e);
                e.trim_end_matches('/').to_string()
            })
            .filter(|e| !e.is_empty())
            .collect();
        EsHttp {
            endpoints: Mutex::new(endpoints),
            timeout,
            transport,
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
            let attempt = tokio::time::timeout(
                self.timeout,
                self.transport.send(&endpoint, method, path, body.as_deref()),
            )
            .await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        let es = EsHttp::new(vec![addr.clone()], Duration::from_secs(5), Transport::plain());
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
        let es = EsHttp::new(vec![addr], Duration::from_secs(5), Transport::plain());
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
        let es = EsHttp::new(vec![addr], Duration::from_secs(5), Transport::plain());
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
        let es = EsHttp::new(
            vec![format!("http://{dead}"), addr.clone()],
            Duration::from_secs(5),
            Transport::plain(),
        );
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
        let es = EsHttp::new(vec![dead.clone()], Duration::from_secs(5), Transport::plain());
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
        let es = EsHttp::new(vec![addr], Duration::from_secs(5), Transport::plain());
        let e = es.request(Method::Get, "/", None).await.unwrap_err();
        assert!(e.to_string().contains("not an HTTP/1.x status line"), "{e}");
    }
}
