//! Bad input gets a clear error, never a crash, and the cluster keeps serving.

use std::time::Duration;

use bytes::{Buf, BufMut};
use esfleet_tests::Flavor;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::fixtures::{assert_serves, cluster, status_of, PATIENCE};

/// etcd's default request size limit (`--max-request-bytes`): 1.5 MiB.
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024 / 2;

#[tokio::test(flavor = "multi_thread")]
async fn oversized_value_is_invalid_argument() {
    let c = cluster(3).await;
    let mut client = c.client().await;

    let big = vec![b'x'; MAX_REQUEST_BYTES + 1024];
    let err = client
        .put("/t50/big", big, None)
        .await
        .expect_err("a put over 1.5 MiB succeeded");
    let status = status_of(&err).unwrap_or_else(|| panic!("not a gRPC status: {err:?}"));
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().is_empty(), "{status:?}");
    println!("{}: oversized put: {}", c.flavor().name(), status.message());
    let got = client.get("/t50/big", None).await.expect("get");
    assert!(got.kvs().is_empty(), "the oversized value was stored");

    // Far over any limit, even the transport's: an error, not a crash.
    let huge = vec![b'x'; 5 * 1024 * 1024];
    let err = client
        .put("/t50/huge", huge, None)
        .await
        .expect_err("a 5 MiB put succeeded");
    println!("{}: 5 MiB put: {err}", c.flavor().name());

    // Under the limit is fine, and reads back whole.
    let mib = vec![b'y'; 1024 * 1024];
    client.put("/t50/mib", mib.clone(), None).await.expect("a 1 MiB put");
    let got = client.get("/t50/mib", None).await.expect("get 1 MiB");
    assert_eq!(got.kvs()[0].value(), mib.as_slice());

    c.check_alive().unwrap();
    assert_serves(&client, "/t50/ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inverted_range_is_rejected_but_from_key_is_not() {
    let c = cluster(3).await;
    let mut client = c.client().await;
    for k in ["/t50/a", "/t50/b", "/t50/c"] {
        client.put(k, "v", None).await.expect("put");
    }

    let inverted = client.get("/t50/c", Some(GetOptions::new().with_range("/t50/a"))).await;
    match c.flavor() {
        Flavor::Esfleet => {
            let err = inverted.expect_err("an inverted range was accepted");
            let status = status_of(&err).unwrap_or_else(|| panic!("not a gRPC status: {err:?}"));
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty(), "{status:?}");
            println!("esfleet: inverted range: {}", status.message());
        }
        // etcd answers an inverted range with nothing, which esfleet deliberately does not.
        Flavor::Etcd => {
            let resp = inverted.expect("etcd answers an inverted range");
            assert!(resp.kvs().is_empty());
        }
    }

    // range_end "\0" means "every key from `key` on": lower than the key, but not inverted.
    let from = client
        .get("/t50/b", Some(GetOptions::new().with_from_key()))
        .await
        .expect("a from-key range");
    let keys: Vec<&[u8]> = from.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, [&b"/t50/b"[..], b"/t50/c"]);

    c.check_alive().unwrap();
    assert_serves(&client, "/t50/ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_with_an_unknown_lease_is_lease_not_found() {
    let c = cluster(3).await;
    let mut client = c.client().await;
    let err = client
        .put("/t50/leased", "v", Some(PutOptions::new().with_lease(0x1234_5678)))
        .await
        .expect_err("a put with an unknown lease succeeded");
    let status = status_of(&err).unwrap_or_else(|| panic!("not a gRPC status: {err:?}"));
    assert!(status.message().contains("lease not found"), "{status:?}");
    assert_eq!(status.code(), Code::NotFound, "as etcd: {status:?}");
    let got = client.get("/t50/leased", None).await.expect("get");
    assert!(got.kvs().is_empty(), "the key was stored anyway");

    c.check_alive().unwrap();
    assert_serves(&client, "/t50/ok").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compares_on_a_missing_key_evaluate_as_etcd() {
    let c = cluster(3).await;
    let mut client = c.client().await;
    let missing = "/t50/missing";

    // What a txn says and which branch it ran (a put of "/t50/branch").
    let run = |compare: Compare| {
        let mut client = client.clone();
        async move {
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put("/t50/branch", "success", None)])
                .or_else([TxnOp::put("/t50/branch", "failure", None)]);
            let resp = client.txn(txn).await.expect("a txn comparing a missing key");
            assert_eq!(resp.op_responses().len(), 1);
            assert!(matches!(resp.op_responses()[0], TxnOpResponse::Put(_)));
            let branch = client.get("/t50/branch", None).await.expect("get");
            let branch = String::from_utf8_lossy(branch.kvs()[0].value()).into_owned();
            assert_eq!(resp.succeeded(), branch == "success");
            resp.succeeded()
        }
    };

    // A missing key has version, create and mod revision 0 and no lease...
    assert!(run(Compare::version(missing, CompareOp::Equal, 0)).await);
    assert!(run(Compare::create_revision(missing, CompareOp::Equal, 0)).await);
    assert!(run(Compare::mod_revision(missing, CompareOp::Less, 1)).await);
    assert!(!run(Compare::version(missing, CompareOp::Greater, 0)).await);
    assert!(run(Compare::lease(missing, CompareOp::Equal, 0)).await);
    // ...but it has no value to compare: every VALUE compare on it fails, even "!=".
    assert!(!run(Compare::value(missing, CompareOp::Equal, "")).await);
    assert!(!run(Compare::value(missing, CompareOp::NotEqual, "x")).await);
    assert!(!run(Compare::value(missing, CompareOp::Greater, "")).await);
    let got = client.get(missing, None).await.expect("get");
    assert!(got.kvs().is_empty(), "comparing created the key");

    c.check_alive().unwrap();
    assert_serves(&client, "/t50/ok").await;
}

/// Sends `bytes` to member 0's client port and expects the server to close the connection
/// (after whatever it answers).
async fn send_garbage(endpoint: &str, bytes: &[u8]) {
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    // The server may hang up before it read everything: a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let _ = conn.flush().await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the server kept a connection open after garbage ({} bytes answered)",
        sink.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_grpc_port_drops_the_connection() {
    let c = cluster(3).await;
    let endpoint = c.endpoint(0);

    // Not HTTP/2 at all.
    let mut noise = Vec::with_capacity(64 * 1024);
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..64 * 1024 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    send_garbage(&endpoint, &noise).await;
    // A valid HTTP/2 preface, then a frame header announcing a frame far over the limit.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend([0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
    h2.extend(&noise[..1024]);
    send_garbage(&endpoint, &h2).await;

    c.check_alive().unwrap();
    assert_serves(&c.client_for(0).await, "/t50/ok").await;
    assert_serves(&c.client().await, "/t50/ok").await;
}

/// A codec that sends raw bytes as the request message, to put malformed protobuf on the
/// wire of an otherwise valid gRPC call.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_protobuf_in_a_grpc_call_is_an_error_status() {
    let c = cluster(3).await;
    let channel = tonic::transport::Endpoint::from_shared(c.endpoint(0))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connecting a raw gRPC channel");
    let mut grpc = tonic::client::Grpc::new(channel);
    // Field 1 (key), length-delimited, claiming far more bytes than follow.
    let malformed = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'k'];
    for method in ["/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range"] {
        grpc.ready().await.expect("channel ready");
        let status = grpc
            .unary::<_, Vec<u8>, _>(
                tonic::Request::new(malformed.clone()),
                tonic::codegen::http::uri::PathAndQuery::from_static(method),
                RawCodec,
            )
            .await
            .expect_err("a malformed request succeeded");
        assert_ne!(status.code(), Code::Ok);
        assert_ne!(status.code(), Code::Unavailable, "{method}: {status:?}");
        assert!(!status.message().is_empty(), "{method}: {status:?}");
        println!(
            "{}: malformed {method}: {:?} {}",
            c.flavor().name(),
            status.code(),
            status.message()
        );
    }

    c.check_alive().unwrap();
    assert_serves(&c.client().await, "/t50/ok").await;
}
