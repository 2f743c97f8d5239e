//! [`Client`]: the coordinator members the CLI may talk to, tried in turn.
//!
//! A request goes to the member that answered last; when a member cannot be reached, or
//! answers UNAVAILABLE (it has no leader or no quorum, e.g. during an election), the same
//! request goes to the next one, so a dead member or a leader change is invisible to the
//! user. An application error (a bad unit file, an unknown unit) is the answer and is never
//! retried. When no member can serve, the error lists every endpoint with what it said.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use esfleet_proto::fleet::fleet_client::FleetClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::{status_chain, CliError};

/// How long to wait between rounds over the endpoints while members answer "no leader".
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// One coordinator member.
struct Member {
    url: String,
    channel: Channel,
}

/// Whether a request may be sent again after it timed out (it may have been applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, and writes whose repetition does no harm.
    Idempotent,
    /// Writes whose second application answers differently (e.g. destroy).
    Once,
}

pub struct Client {
    members: Vec<Member>,
    /// The index of the member that answered last: asked first next time.
    preferred: AtomicUsize,
    request_timeout: Duration,
}

/// Largest answer the CLI accepts: `list-unit-files` for 10,000 units with their
/// placements is several MiB, beyond tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The Fleet service's client on `channel`, accepting large answers.
pub fn fleet(channel: Channel) -> FleetClient<Channel> {
    FleetClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// `10.0.0.1:2379` → `http://10.0.0.1:2379`; a URL is kept as it is.
pub fn normalize_endpoint(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// Whether a status means "this member cannot serve now; ask another".
fn is_unreachable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable)
        || (status.code() == Code::Unknown && std::error::Error::source(status).is_some())
}

/// Whether an unreachable status came from a member that answered (no leader, no quorum),
/// rather than from a connection that failed: only then may waiting a moment help.
fn member_answered(status: &Status) -> bool {
    std::error::Error::source(status).is_none() && !status.message().contains("transport error")
}

impl Client {
    /// A client of `endpoints` (URLs or `host:port`); connections are made on first use.
    pub fn new(endpoints: &[String], request_timeout: Duration) -> Result<Client, CliError> {
        let mut members = Vec::new();
        for raw in endpoints.iter().filter(|e| !e.trim().is_empty()) {
            let url = normalize_endpoint(raw);
            let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| {
                CliError::Usage(format!(
                    "--endpoints: {raw:?} is not a URL ({e}); write e.g. http://10.0.0.1:2379"
                ))
            })?;
            let channel = endpoint
                // Shorter than the request timeout, so a blackholed member is given up on
                // (and the next one tried) before the request itself times out.
                .connect_timeout((request_timeout / 2).min(Duration::from_secs(3)))
                .tcp_nodelay(true)
                // A member that goes silent under an open stream (`start` waiting, `journal
                // -f`) is noticed, so the stream fails over instead of hanging.
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy();
            members.push(Member { url, channel });
        }
        if members.is_empty() {
            return Err(CliError::Usage(
                "no endpoints given; set --endpoints (or ESFLEET_ENDPOINTS) to the coordinators' client URLs".into(),
            ));
        }
        Ok(Client {
            members,
            preferred: AtomicUsize::new(0),
            request_timeout,
        })
    }

    /// The endpoints, normalized, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Makes the next request start with the member after the one that answered last (a
    /// stream from it broke).
    pub fn skip_preferred(&self) {
        let n = self.members.len();
        let _ = self
            .preferred
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some((p + 1) % n));
    }

    /// Sends one request (built by `f` on a member's channel) to the members in turn, as
    /// the module docs say. `what` names the request in errors. Each attempt may take
    /// `--request-timeout`; rounds over the members go on while one of them answers "no
    /// leader", for at most `--request-timeout` after the first round.
    pub async fn call<T, F, Fut>(&self, what: &str, retry: Retry, mut f: F) -> Result<T, CliError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.members.len();
        let deadline = Instant::now() + self.request_timeout;
        let mut round = 0;
        loop {
            let start = self.preferred.load(Ordering::Relaxed) % n;
            let mut tried: Vec<(String, String)> = Vec::new();
            let mut someone_answered = false;
            for k in 0..n {
                let i = (start + k) % n;
                let m = &self.members[i];
                match tokio::time::timeout(self.request_timeout, f(m.channel.clone())).await {
                    Ok(Ok(resp)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(status)) if is_unreachable(&status) => {
                        someone_answered |= member_answered(&status);
                        tried.push((m.url.clone(), status_chain(&status)));
                    }
                    Ok(Err(status)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Err(CliError::from_status(&status));
                    }
                    Err(_) if retry == Retry::Idempotent => {
                        tried.push((
                            m.url.clone(),
                            format!(
                                "no answer within {} (--request-timeout)",
                                humantime::format_duration(self.request_timeout)
                            ),
                        ));
                    }
                    Err(_) => {
                        return Err(CliError::Failed(format!(
                            "{what}: {} did not answer within {} (--request-timeout); the request may or may \
                             not have been applied: check with `esfleet list-unit-files`, then retry or raise \
                             --request-timeout",
                            m.url,
                            humantime::format_duration(self.request_timeout)
                        )));
                    }
                }
            }
            round += 1;
            if !someone_answered || Instant::now() + ROUND_PAUSE >= deadline {
                let what = if round > 1 {
                    format!("{what} ({round} rounds)")
                } else {
                    what.to_string()
                };
                return Err(CliError::Unreachable { what, tried });
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_scheme() {
        assert_eq!(normalize_endpoint("10.0.0.1:2379"), "http://10.0.0.1:2379");
        assert_eq!(normalize_endpoint(" https://a:1/ "), "https://a:1");
    }

    #[tokio::test]
    async fn no_endpoints_is_a_usage_error() {
        let e = Client::new(&[" ".into()], Duration::from_secs(1)).err().unwrap();
        assert_eq!(e.exit_code(), 2);
    }

    #[tokio::test]
    async fn application_errors_are_not_retried_and_unreachable_ones_are() {
        let c = Client::new(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], Duration::from_secs(1)).unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let e = c
            .call("Test", Retry::Idempotent, |_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<tonic::Response<()>, _>(Status::not_found("unit x.service not found")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(e.to_string(), "unit x.service not found");

        calls.store(0, Ordering::Relaxed);
        let e = c
            .call("Test", Retry::Idempotent, |_| {
                let i = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if i == 0 {
                        Err(Status::unavailable("no leader"))
                    } else {
                        Ok(tonic::Response::new(i))
                    }
                }
            })
            .await;
        assert_eq!(e.unwrap(), 1);
        // The member that answered is asked first next time.
        assert_eq!(c.preferred.load(Ordering::Relaxed), 1);
    }
}
