//! Free loopback ports, never handed out twice by one process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use anyhow::Context;

/// A loopback port that was free a moment ago: the OS picks it (bind `127.0.0.1:0`), and
/// this process never returns the same port twice, so tests running in parallel in one
/// test binary cannot collide.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .context("binding 127.0.0.1:0 to find a free port")?
            .local_addr()?
            .port();
        if given.lock().expect("port set poisoned").insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("found no free loopback port in 100 tries")
}
