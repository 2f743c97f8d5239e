//! Bounded waiting on a condition, instead of sleeping and hoping.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `attempt` until it returns `Ok`, backing off from 20 ms to 250 ms between tries,
/// and gives up after `timeout` with the last error, saying what was awaited (`what`).
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let err = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(err.context(format!("timed out after {timeout:?} waiting for {what}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
