//! Issue 17's attacks, tried as someone on the same network would: each must now fail to
//! get in or to hurt. The member keeps serving, and no panic reaches its log.

use std::time::{Duration, Instant};

use esfleet_proto::etcdserverpb as pb;
use esfleet_proto::raft::{
    internal_request, internal_response, raft_peer_client::RaftPeerClient, InternalRequest, InternalResponse,
    PeerMessage,
};
use esfleet_tests::Flavor;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixtures::{assert_serves, cluster, PATIENCE};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// The member's log has no panic in it.
fn assert_no_panic(c: &esfleet_tests::ProcessCluster, i: usize) {
    let log = std::fs::read_to_string(c.log_path(i)).unwrap_or_default();
    assert!(!log.contains("panicked"), "member {i} panicked:\n{log}");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbled_header_block_closes_only_its_connection() {
    let c = cluster(1).await;
    let addr = c.endpoint(0).trim_start_matches("http://").to_string();
    // A one-byte HPACK block (0x3f: an indexed-field integer that never ends) once
    // panicked the pre-parser's decoder.
    for block in [&[0x3f][..], &[0xff; 64][..], &[0x40, 0x7f, 0xff, 0xff, 0xff, 0xff][..]] {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes.extend(frame(HEADERS, END_HEADERS, 1, block));
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = conn.write_all(&bytes).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "the connection stayed open after a garbled header block"
        );
    }
    c.check_alive().unwrap();
    assert_serves(&c.client().await, "/t51/ok").await;
    assert_no_panic(&c, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_header_block_is_cut_off_and_its_memory_returned() {
    let c = cluster(1).await;
    let pid = c.pid(0).unwrap();
    let addr = c.endpoint(0).trim_start_matches("http://").to_string();
    let before = rss_kib(pid);
    // A well-formed first request (POST / on 127.0.0.1:1, hand-encoded HPACK) lets the
    // connection through the pre-parser untouched; the flood then meets h2 itself.
    let mut first = vec![0x83, 0x86, 0x84, 0x41, 11];
    first.extend(b"127.0.0.1:1");
    for (what, opening) in [
        ("as the connection's first header block", vec![]),
        ("after a well-formed request", frame(HEADERS, END_HEADERS, 1, &first)),
    ] {
        // HEADERS without END_HEADERS, then CONTINUATION frames that never end it: 64 MiB.
        let stream = if opening.is_empty() { 1 } else { 3 };
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut head = PREFACE.to_vec();
        head.extend(frame(SETTINGS, 0, 0, &[]));
        head.extend(opening);
        head.extend(frame(HEADERS, 0, stream, &[0x82])); // :method GET, block not ended
        conn.write_all(&head).await.unwrap();
        let piece = frame(CONTINUATION, 0, stream, &[0x82; 16_384]);
        let t = Instant::now();
        let mut sent = 0usize;
        let mut peak = before;
        while sent < 64 << 20 && t.elapsed() < PATIENCE {
            match tokio::time::timeout(Duration::from_secs(5), conn.write_all(&piece)).await {
                Ok(Ok(())) => sent += piece.len(),
                _ => break,
            }
            if sent % (4 << 20) < piece.len() {
                peak = peak.max(rss_kib(pid));
            }
        }
        // The server hangs up: the connection ends (EOF or a reset), not merely stalls.
        let mut sink = Vec::new();
        let closed = c.flavor() == Flavor::Etcd // not judged there (below)
            || tokio::time::timeout(PATIENCE, conn.read_to_end(&mut sink)).await.is_ok();
        drop(conn);
        peak = peak.max(rss_kib(pid));
        println!(
            "{}, {what}: sent {} KiB before the server stopped reading; RSS {} → peak {} KiB",
            c.flavor().name(),
            sent / 1024,
            before,
            peak
        );
        if c.flavor() == Flavor::Etcd {
            // etcd 3.4's Go HTTP/2 server reads it all (CVE-2023-45288, fixed in later Go
            // releases): printed for comparison, not judged.
            continue;
        }
        assert!(
            sent < 64 << 20,
            "{what}: the server read a 64 MiB header block to the end"
        );
        assert!(closed, "{what}: the server kept the connection open");
        assert!(
            peak.saturating_sub(before) < 64 * 1024,
            "{what}: RSS grew by {} KiB",
            peak - before
        );
    }
    c.check_alive().unwrap();
    assert_serves(&c.client().await, "/t51/ok").await;
    assert_no_panic(&c, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_lease_with_an_endless_ttl_is_refused_and_the_store_lives_on() {
    if crate::fixtures::flavor() != Flavor::Esfleet {
        return; // esfleet's peer protocol
    }
    let c = cluster(3).await;
    let mut client = c.client().await;
    // The cluster id, as any client response header carries it.
    let cluster_id = client.get("/t51", None).await.unwrap().header().unwrap().cluster_id();
    let leader = c.leader().await.unwrap();
    let mut peer = RaftPeerClient::connect(c.peer_url(leader)).await.unwrap();
    for ttl in [i64::MAX, 9_000_000_001, -5] {
        let req = InternalRequest {
            request: Some(internal_request::Request::LeaseGrant(pb::LeaseGrantRequest {
                ttl,
                id: 0x5105 + ttl.rem_euclid(1000),
            })),
        };
        let msg = PeerMessage {
            cluster_id,
            data: req.encode_to_vec().into(),
        };
        let data = peer.forward(msg).await.expect("the leader answers").into_inner().data;
        let resp = InternalResponse::decode(data.as_ref()).unwrap();
        println!("forwarded LeaseGrant ttl={ttl}: {resp:?}");
        match (ttl, resp.response) {
            (-5, Some(internal_response::Response::LeaseGrant(g))) => assert_eq!(g.ttl, 1),
            (_, Some(internal_response::Response::Error(e))) if ttl > 0 => {
                assert!(e.message.contains("too large lease TTL"), "{e:?}")
            }
            (_, other) => panic!("ttl {ttl}: {other:?}"),
        }
    }
    // The store keeps applying: puts, lease grants and keepalives work on every member.
    assert_serves(&client, "/t51/after").await;
    let lease = client.lease_grant(10, None).await.expect("a lease after the attack");
    client.lease_keep_alive(lease.id()).await.expect("its keepalive");
    for i in 0..3 {
        assert_serves(&c.client_for(i).await, &format!("/t51/after/{i}")).await;
    }
    let leases = client.leases().await.unwrap();
    for l in leases.leases() {
        let ttl = client.lease_time_to_live(l.id(), None).await.unwrap();
        assert!(
            ttl.granted_ttl() <= 9_000_000_000 && ttl.granted_ttl() >= 1,
            "lease {:x} has TTL {}",
            l.id(),
            ttl.granted_ttl()
        );
    }
    c.check_alive().unwrap();
    for i in 0..3 {
        assert_no_panic(&c, i);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_watch_stream_holds_a_bounded_number_of_watchers() {
    if crate::fixtures::flavor() != Flavor::Esfleet {
        return; // etcd sets no limit
    }
    const LIMIT: usize = 10_000;
    let c = cluster(1).await;
    let mut client = c.client().await;
    let (mut watcher, mut stream) = client.watch("/t51/w/0", None).await.unwrap().split();
    for i in 1..=LIMIT {
        watcher.watch(format!("/t51/w/{i}"), None).await.unwrap();
    }
    // Creates are answered in order; the first may have been consumed by `watch` itself.
    let mut created = 0;
    let refused = loop {
        let r = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("an answer to every create")
            .unwrap()
            .expect("the stream stays open");
        if r.canceled() {
            break r.cancel_reason().to_string();
        }
        created += usize::from(r.created());
    };
    assert!(
        created == LIMIT || created == LIMIT - 1,
        "{created} created before the refusal"
    );
    assert!(refused.contains("10000 watchers"), "{refused}");
    // The stream and its watchers still work.
    client.put("/t51/w/5", "x", None).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.events()[0].kv().unwrap().key(), b"/t51/w/5");
    c.check_alive().unwrap();
    assert_no_panic(&c, 0);
}
