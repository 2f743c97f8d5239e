//! The Raft type configuration and the few identity rules every member must agree on.
//!
//! A log entry carries one [`InternalRequest`] (etcd's own request messages, as etcd's
//! `InternalRaftRequest` does) encoded as protobuf; openraft only sees opaque bytes, and
//! the entry stays encoded until the state machine applies it.

use std::fmt;

use esfleet_proto::raft::{InternalRequest, InternalResponse};
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A client request as it travels through the Raft log: the protobuf encoding of one
/// [`InternalRequest`], kept encoded. A leader reads each entry back from its log and sends
/// it to every follower (again after a timeout); decoding and re-encoding it every time
/// was 40% of a loaded leader's CPU with scheduler plans of a megabyte per entry. Now only
/// the state machine decodes it, once per member, when applying.
#[derive(Clone, Default, PartialEq)]
pub struct Request(bytes::Bytes);

impl Request {
    pub fn new(req: &InternalRequest) -> Request {
        Request(req.encode_to_vec().into())
    }

    /// The request; bytes that are not one (possible only from a faulty peer) are an
    /// error, the same on every member.
    pub fn decode(&self) -> Result<InternalRequest, prost::DecodeError> {
        InternalRequest::decode(self.0.as_ref())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.decode() {
            Ok(r) => f.debug_tuple("Request").field(&r).finish(),
            Err(_) => write!(f, "Request(<{} bytes, not a request>)", self.0.len()),
        }
    }
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Request(d.deserialize_byte_buf(BytesVisitor)?.into()))
    }
}

/// The state machine's answer to one applied [`Request`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response(pub InternalResponse);

macro_rules! serde_as_protobuf {
    ($ty:ident, $inner:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0.encode_to_vec())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bytes = d.deserialize_byte_buf(BytesVisitor)?;
                <$inner>::decode(bytes.as_slice())
                    .map($ty)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_protobuf!(Response, InternalResponse);

struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("protobuf bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// What the Raft membership knows of a member: where its peers reach it. The member's
/// name and client URLs are replicated state (published by the member itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peer_url: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.peer_url)
    }
}

openraft::declare_raft_types!(
    /// esfleet's Raft: u64 member ids (etcd's member ids), protobuf requests.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = PeerNode,
        // A file under `<data-dir>/snapshots/`: sent and received chunk by chunk.
        SnapshotData = crate::store::snapshots::SnapshotFile,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, PeerNode>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;

/// FNV-1a: a stable hash, so every member derives the same ids from the same URLs on
/// every platform and version (std's hasher makes no such promise).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A member's id, derived from its peer URL, so that `member add URL` on the cluster and
/// the new member starting with that URL agree without talking first. Never 0.
pub fn member_id(peer_url: &str) -> u64 {
    match fnv1a(&[b"esfleet-member", peer_url.as_bytes()]) {
        0 => 1,
        id => id,
    }
}

/// The cluster id of a cluster bootstrapped with these members: the same on every
/// founding member. Members that join later learn it from the leader.
pub fn cluster_id(members: &[(String, String)]) -> u64 {
    let mut ids: Vec<u64> = members.iter().map(|(_, url)| member_id(url)).collect();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    match fnv1a(&[b"esfleet-cluster", &bytes]) {
        0 => 1,
        id => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esfleet_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
    use esfleet_proto::raft::internal_request;

    #[test]
    fn ids_are_stable_and_nonzero() {
        // Pinned: changing the derivation would split existing clusters.
        assert_eq!(member_id("http://10.0.0.1:2380"), member_id("http://10.0.0.1:2380"));
        assert_ne!(member_id("http://10.0.0.1:2380"), member_id("http://10.0.0.2:2380"));
        let a = vec![
            ("a".to_string(), "http://x:1".to_string()),
            ("b".into(), "http://y:1".into()),
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(cluster_id(&a), cluster_id(&b));
    }

    #[test]
    fn request_roundtrips_through_bincode() {
        let req = Request::new(&InternalRequest {
            request: Some(internal_request::Request::Txn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(esfleet_proto::etcdserverpb::request_op::Request::RequestPut(
                        PutRequest {
                            key: b"k".to_vec().into(),
                            value: b"v".to_vec().into(),
                            ..Default::default()
                        },
                    )),
                }],
                ..Default::default()
            })),
        });
        let bytes = bincode::serialize(&req).unwrap();
        let back: Request = bincode::deserialize(&bytes).unwrap();
        assert_eq!(req, back);
        let json = serde_json::to_string(&req).unwrap();
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(req, back);
        assert!(matches!(
            back.decode().unwrap().request,
            Some(internal_request::Request::Txn(_))
        ));
        // Entries written before requests were kept encoded are the same bytes.
        let old = bincode::serialize(&serde_bytes_like(&req.decode().unwrap().encode_to_vec())).unwrap();
        assert_eq!(old, bytes);
    }

    /// How the old `Request(InternalRequest)` serialized: its protobuf as serde bytes.
    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
