//! The MVCC store's semantics, checked against what etcd does.

use std::sync::Arc;

use bytes::Bytes;
use esfleet_proto::etcdserverpb::{self as pb, compare, request_op, response_op, Compare, RangeRequest};
use esfleet_proto::mvccpb::event::EventType;

use super::*;
use crate::store::backend::MemBackend;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

struct T {
    m: Mvcc,
    backend: Arc<dyn Backend>,
}

impl T {
    fn new() -> Self {
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
        Self {
            m: Mvcc::open(backend.clone()).unwrap(),
            backend,
        }
    }

    fn txn(&mut self, t: pb::TxnRequest) -> Result<(pb::TxnResponse, Changes), MvccError> {
        let mut batch = WriteBatch::default();
        let mut changes = Changes::default();
        let r = self.m.apply_txn(&t, &mut batch, &mut changes)?;
        self.m.persist_counters(&mut batch);
        self.backend.write(batch).unwrap();
        Ok((r, changes))
    }

    fn put(&mut self, k: &str, v: &str) -> Changes {
        self.put_req(pb::PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })
        .unwrap()
    }

    fn put_req(&mut self, p: pb::PutRequest) -> Result<Changes, MvccError> {
        let op = pb::RequestOp {
            request: Some(request_op::Request::RequestPut(p)),
        };
        self.txn(pb::TxnRequest {
            success: vec![op],
            ..Default::default()
        })
        .map(|(_, c)| c)
    }

    fn del(&mut self, k: &str, end: &str) -> i64 {
        let op = pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: b(k),
                range_end: b(end),
                prev_kv: false,
            })),
        };
        let (r, _) = self
            .txn(pb::TxnRequest {
                success: vec![op],
                ..Default::default()
            })
            .unwrap();
        match &r.responses[0].response {
            Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted,
            _ => unreachable!(),
        }
    }

    fn get(&self, k: &str, rev: i64) -> Option<KeyValue> {
        let r = self
            .m
            .range(&RangeRequest {
                key: b(k),
                revision: rev,
                ..Default::default()
            })
            .unwrap();
        r.kvs.into_iter().next()
    }

    fn compact(&mut self, rev: i64) -> Result<(), KvError> {
        let mut batch = WriteBatch::default();
        self.m.apply_compact(rev, &mut batch)?;
        self.m.persist_counters(&mut batch);
        self.backend.write(batch).unwrap();
        Ok(())
    }
}

#[test]
fn revisions_versions_and_history() {
    let mut t = T::new();
    t.put("a", "1"); // rev 1
    t.put("a", "2"); // rev 2
    t.put("b", "x"); // rev 3
    let a = t.get("a", 0).unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(t.get("a", 2).unwrap().value, b("1"), "history readable");
    assert_eq!(t.del("a", ""), 1); // rev 5
    assert!(t.get("a", 0).is_none());
    assert_eq!(t.get("a", 4).unwrap().value, b("2"));
    t.put("a", "new"); // rev 6: a new generation
    let a = t.get("a", 0).unwrap();
    assert_eq!((a.create_revision, a.version), (6, 1));
    assert_eq!(t.m.revision(), 6);
    assert!(matches!(
        t.m.range(&RangeRequest {
            key: b("a"),
            revision: 7,
            ..Default::default()
        }),
        Err(MvccError::Kv(KvError::FutureRev))
    ));
}

/// Every combination of limit, count_only, sort and revision filter, at the current and at
/// past revisions, against the same range computed in full and cut afterwards.
#[test]
fn limited_and_counted_ranges_agree_with_the_full_range() {
    use pb::range_request::{SortOrder, SortTarget};
    let mut t = T::new();
    for i in 0..12 {
        t.put(&format!("k{:02}", i % 7), &format!("v{}", 11 - i));
    }
    t.del("k03", "");
    t.put("k09", "late");
    let now = t.m.revision();
    for rev in [0, 3, 8, now] {
        for limit in [0, 1, 3, 20] {
            for (order, target) in [
                (SortOrder::None, SortTarget::Key),
                (SortOrder::Ascend, SortTarget::Key),
                (SortOrder::Descend, SortTarget::Key),
                (SortOrder::Ascend, SortTarget::Value),
                (SortOrder::None, SortTarget::Mod),
            ] {
                for min_mod in [0, 6] {
                    let base = RangeRequest {
                        key: b("k"),
                        range_end: b("l"),
                        revision: rev,
                        sort_order: order as i32,
                        sort_target: target as i32,
                        min_mod_revision: min_mod,
                        ..Default::default()
                    };
                    let full = t.m.range(&base).unwrap();
                    let want: Vec<KeyValue> = full
                        .kvs
                        .iter()
                        .take(if limit > 0 { limit } else { usize::MAX })
                        .cloned()
                        .collect();
                    let what = format!("rev {rev} limit {limit} {order:?}/{target:?} min_mod {min_mod}");
                    let r =
                        t.m.range(&RangeRequest {
                            limit: limit as i64,
                            ..base.clone()
                        })
                        .unwrap();
                    assert_eq!(r.kvs, want, "{what}");
                    assert_eq!(r.count, full.count, "{what}");
                    assert_eq!(r.more, limit > 0 && full.count > limit as i64, "{what}");
                    let c =
                        t.m.range(&RangeRequest {
                            limit: limit as i64,
                            count_only: true,
                            ..base
                        })
                        .unwrap();
                    assert_eq!((c.count, c.kvs.len()), (full.count, 0), "{what}");
                }
            }
        }
    }
}

#[test]
fn ranges_limits_sorting_and_counts() {
    let mut t = T::new();
    for (k, v) in [("k3", "c"), ("k1", "z"), ("k2", "a"), ("x", "q")] {
        t.put(k, v);
    }
    let r =
        t.m.range(&RangeRequest {
            key: b("k"),
            range_end: b("l"),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b("k1"), b("k2")]
    );
    assert_eq!((r.count, r.more), (3, true));
    let r =
        t.m.range(&RangeRequest {
            key: b("k"),
            range_end: b("l"),
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Value as i32,
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b("k1"), b("k3"), b("k2")]
    );
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let all =
        t.m.range(&RangeRequest {
            key: Bytes::from_static(&[0]),
            range_end: Bytes::from_static(&[0]),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((all.count, all.kvs.len()), (4, 0));
    let from =
        t.m.range(&RangeRequest {
            key: b("k2"),
            range_end: Bytes::from_static(&[0]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(from.count, 3);
}

#[test]
fn txn_compares_like_etcd() {
    let mut t = T::new();
    t.put("a", "1");
    let cmp =
        |target: compare::CompareTarget, result: compare::CompareResult, u: compare::TargetUnion, key: &str| Compare {
            result: result as i32,
            target: target as i32,
            key: b(key),
            target_union: Some(u),
            range_end: Bytes::new(),
        };
    let put = |k: &str| pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: b(k),
            value: b("t"),
            ..Default::default()
        })),
    };
    use compare::{CompareResult as R, CompareTarget as C, TargetUnion as U};
    let (r, _) = t
        .txn(pb::TxnRequest {
            compare: vec![
                cmp(C::Value, R::Equal, U::Value(b("1")), "a"),
                cmp(C::Mod, R::Less, U::ModRevision(5), "a"),
            ],
            success: vec![put("ok")],
            failure: vec![put("fail")],
        })
        .unwrap();
    assert!(r.succeeded);
    // A missing key has version 0 ...
    let (r, _) = t
        .txn(pb::TxnRequest {
            compare: vec![cmp(C::Version, R::Equal, U::Version(0), "missing")],
            ..Default::default()
        })
        .unwrap();
    assert!(r.succeeded);
    // ... and no value, so a VALUE compare on it fails.
    let (r, _) = t
        .txn(pb::TxnRequest {
            compare: vec![cmp(C::Value, R::Equal, U::Value(Bytes::new()), "missing")],
            ..Default::default()
        })
        .unwrap();
    assert!(!r.succeeded);
}

#[test]
fn txn_reads_its_own_writes_and_takes_one_revision() {
    let mut t = T::new();
    let ops = vec![
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: b("a"),
                value: b("1"),
                ..Default::default()
            })),
        },
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: b("b"),
                value: b("2"),
                ..Default::default()
            })),
        },
        pb::RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b("a"),
                ..Default::default()
            })),
        },
    ];
    let (r, changes) = t
        .txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(t.m.revision(), 2);
    assert_eq!(changes.revision, 2);
    assert_eq!(changes.events.len(), 2);
    match &r.responses[2].response {
        Some(response_op::Response::ResponseRange(rr)) => assert_eq!(rr.kvs[0].value, b("1")),
        _ => unreachable!(),
    }
}

#[test]
fn leases_attach_refuse_and_revoke() {
    let mut t = T::new();
    let err = t
        .put_req(pb::PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 9,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(err, MvccError::Kv(KvError::LeaseNotFound)));
    assert_eq!(t.m.revision(), 1, "a refused put changes nothing");
    let mut batch = WriteBatch::default();
    let mut changes = Changes::default();
    t.m.apply_lease_grant(9, 10, &mut batch, &mut changes).unwrap();
    assert_eq!(
        t.m.apply_lease_grant(9, 10, &mut batch, &mut changes),
        Err(KvError::LeaseExists)
    );
    // Whatever proposed them (a peer's Forward included), grants are checked when applied.
    for (id, ttl, want) in [
        (10, i64::MAX, KvError::LeaseTtlTooLarge),
        (10, MAX_LEASE_TTL + 1, KvError::LeaseTtlTooLarge),
        (0, 10, KvError::LeaseNotFound),
        (-3, 10, KvError::LeaseNotFound),
    ] {
        assert_eq!(t.m.apply_lease_grant(id, ttl, &mut batch, &mut changes), Err(want));
    }
    t.m.apply_lease_grant(11, -5, &mut batch, &mut changes).unwrap();
    assert_eq!(changes.leases_granted.last(), Some(&(11, 1)), "a TTL below 1 s is 1 s");
    // A bounded number of leases: the next grant is refused, a revoke makes room.
    for id in 100..(100 + MAX_LEASES as i64 - 2) {
        t.m.apply_lease_grant(id, 10, &mut batch, &mut changes).unwrap();
    }
    assert_eq!(
        t.m.apply_lease_grant(1, 10, &mut batch, &mut changes),
        Err(KvError::TooManyLeases)
    );
    t.m.apply_lease_revoke(100, &mut batch, &mut changes).unwrap();
    t.m.apply_lease_grant(1, 10, &mut batch, &mut changes).unwrap();
    t.backend.write(batch).unwrap();
    t.put_req(pb::PutRequest {
        key: b("k"),
        value: b("v"),
        lease: 9,
        ..Default::default()
    })
    .unwrap();
    t.put("other", "x");
    assert_eq!(t.m.lease(9).unwrap().keys.len(), 1);
    let mut batch = WriteBatch::default();
    let mut changes = Changes::default();
    t.m.apply_lease_revoke(9, &mut batch, &mut changes).unwrap();
    t.m.persist_counters(&mut batch);
    t.backend.write(batch).unwrap();
    assert!(t.get("k", 0).is_none());
    assert!(t.get("other", 0).is_some());
    assert_eq!(changes.events.len(), 1);
    assert_eq!(changes.events[0].r#type, EventType::Delete as i32);
    assert_eq!(changes.events[0].prev_kv.as_ref().unwrap().value, b("v"));
    assert_eq!(changes.leases_revoked, vec![9]);
}

#[test]
fn compaction_keeps_the_state_at_the_compact_revision() {
    let mut t = T::new();
    t.put("a", "1"); // 1
    t.put("a", "2"); // 2
    t.put("gone", "x"); // 3
    t.del("gone", ""); // 4
    t.put("a", "3"); // 5
    t.compact(5).unwrap();
    assert_eq!(
        t.get("a", 5).unwrap().value,
        b("2"),
        "the value at the compact revision survives"
    );
    assert!(matches!(
        t.m.range(&RangeRequest {
            key: b("a"),
            revision: 4,
            ..Default::default()
        }),
        Err(MvccError::Kv(KvError::Compacted))
    ));
    assert_eq!(t.compact(5), Err(KvError::Compacted));
    assert_eq!(t.compact(9), Err(KvError::FutureRev));
    let range = KeyRange::new(&Bytes::from_static(&[0]), &Bytes::from_static(&[0]));
    assert!(matches!(
        t.m.history(4, &range, false, 100),
        Err(MvccError::Kv(KvError::Compacted))
    ));
    let (events, next) = t.m.history(6, &range, true, 100).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(next, 7);

    // Reopening from the backend rebuilds the same state.
    let reopened = Mvcc::open(t.backend.clone()).unwrap();
    assert_eq!((reopened.revision(), reopened.compact_revision()), (6, 5));
    assert_eq!(reopened.key_count(), 1);
}

#[test]
fn history_is_chunked_on_revision_boundaries() {
    let mut t = T::new();
    for i in 0..10 {
        t.put(&format!("k{i}"), "v");
    }
    let range = KeyRange::new(&b("k"), &b("l"));
    let (first, next) = t.m.history(2, &range, false, 3).unwrap();
    assert_eq!(first.iter().map(|(r, _)| *r).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(next, 5);
    let (rest, next) = t.m.history(next, &range, false, 100).unwrap();
    assert_eq!(rest.len(), 7);
    assert_eq!(next, 12);
}

#[test]
fn snapshot_restores_everything() {
    let mut t = T::new();
    t.put("a", "1");
    t.put("a", "2");
    let mut batch = WriteBatch::default();
    t.m.apply_lease_grant(5, 30, &mut batch, &mut Changes::default())
        .unwrap();
    let nospace = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Activate as i32,
        member_id: 7,
        alarm: pb::AlarmType::Nospace as i32,
    };
    assert_eq!(t.m.apply_alarm(&nospace, &mut batch).len(), 1);
    t.backend.write(batch).unwrap();
    let body = bincode::serialize(&t.m.snapshot().unwrap()).unwrap();
    // A snapshot from a build before alarms (format 1) still restores, without alarms.
    let v1 = SnapshotBodyV1 {
        format: 1,
        revision: 3,
        compact_revision: 0,
        records: vec![],
        leases: vec![],
        members: vec![],
        promotions: BTreeSet::new(),
    };
    let old: SnapshotBody = bincode::deserialize::<SnapshotBodyV1>(&bincode::serialize(&v1).unwrap())
        .unwrap()
        .into();
    assert!(old.alarms.is_empty() && old.format == SNAPSHOT_FORMAT);

    let mut other = T::new();
    other.put("junk", "x");
    let mut batch = WriteBatch::default();
    other
        .m
        .restore(bincode::deserialize(&body).unwrap(), &mut batch)
        .unwrap();
    other.backend.write(batch).unwrap();
    other.m.reload().unwrap();
    assert!(other.get("junk", 0).is_none());
    assert_eq!(other.get("a", 2).unwrap().value, b("1"));
    assert_eq!(other.m.revision(), 3);
    assert_eq!(other.m.lease(5).unwrap().ttl, 30);
    assert!(other.m.out_of_space(), "the alarm came with the snapshot");
    // Raised, it caps writes that add data; deactivated, it is gone.
    let off = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Deactivate as i32,
        member_id: 7,
        alarm: pb::AlarmType::Nospace as i32,
    };
    let mut batch = WriteBatch::default();
    assert!(other.m.apply_alarm(&off, &mut batch).is_empty());
    other.backend.write(batch).unwrap();
    other.m.reload().unwrap();
    assert!(!other.m.out_of_space(), "the deactivation was persisted");
}

#[test]
fn read_only_txn_answers_like_the_write_path() {
    let mut t = T::new();
    t.put("a", "1");
    t.put("b", "2");
    let range = |k: &str| pb::RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: b(k),
            ..Default::default()
        })),
    };
    let cmp = Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: b("a"),
        target_union: Some(compare::TargetUnion::Value(b("1"))),
        range_end: Bytes::new(),
    };
    let nested = pb::RequestOp {
        request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
            compare: vec![Compare {
                key: b("b"),
                ..cmp.clone()
            }],
            success: vec![range("x")],
            failure: vec![range("b")],
        })),
    };
    let txn = pb::TxnRequest {
        compare: vec![cmp],
        success: vec![range("a"), nested],
        failure: vec![range("b")],
    };
    let before = t.m.revision();
    let shared = t.m.read_txn(&txn).unwrap();
    let (written, changes) = t.txn(txn).unwrap();
    assert_eq!(shared, written);
    assert!(shared.succeeded);
    assert_eq!(shared.responses.len(), 2);
    assert_eq!(t.m.revision(), before, "a read-only txn took a revision");
    assert!(changes.events.is_empty());
}

/// Reads all of a range's history from `from` in chunks of `max`, through `read`.
fn read_all(
    m: &Mvcc,
    from: i64,
    max: usize,
    mut read: impl FnMut(&Mvcc, i64, usize) -> Result<(Vec<(i64, Event)>, i64), MvccError>,
) -> Vec<(i64, Event)> {
    let mut out = Vec::new();
    let mut next = from;
    while next <= m.revision() {
        let (events, n) = read(m, next, max).unwrap();
        assert!(n > next, "no progress at {next}");
        out.extend(events);
        next = n;
    }
    out
}

#[test]
fn history_through_the_key_index_matches_the_full_scan() {
    let mut t = T::new();
    let mut seed: u64 = 0x5eed;
    let mut rand = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let keys = ["p/a", "p/b", "p/c", "q/a", "q/b", "r"];
    for step in 0..400 {
        let k = keys[rand(keys.len() as u64) as usize];
        match rand(10) {
            0 => {
                t.del(k, "");
            }
            1 => {
                // Several changes in one revision.
                let ops = (0..3)
                    .map(|i| pb::RequestOp {
                        request: Some(request_op::Request::RequestPut(pb::PutRequest {
                            key: b(keys[(rand(6) as usize + i) % keys.len()]),
                            value: b(&format!("{step}.{i}")),
                            ..Default::default()
                        })),
                    })
                    .collect();
                t.txn(pb::TxnRequest {
                    success: ops,
                    ..Default::default()
                })
                .unwrap();
            }
            2 => {
                t.del("p/", "p0");
            }
            _ => {
                t.put(k, &format!("{step}"));
            }
        }
        if step == 200 {
            let at = t.m.revision() - 50;
            t.compact(at).unwrap();
        }
    }
    let ranges = [
        KeyRange::new(&b("p/"), &b("p0")),
        KeyRange::new(&b("q/a"), &Bytes::new()),
        KeyRange::new(&b("r"), &Bytes::new()),
        KeyRange::new(&b("q/"), &Bytes::from_static(&[0])),
        KeyRange::new(&b("zz"), &Bytes::new()),
    ];
    let from_min = t.m.compact_revision();
    let mut compared = 0;
    for range in &ranges {
        for from in [
            from_min,
            from_min + 1,
            from_min + 37,
            t.m.revision(),
            t.m.revision() + 1,
        ] {
            for (max, prev) in [(1, false), (5, true), (1000, true)] {
                let indexed = read_all(&t.m, from, max, |m, f, x| {
                    m.history_of(m.revisions_in(range, f, INDEXED_HISTORY_KEYS).unwrap(), prev, x)
                });
                let scanned = read_all(&t.m, from, max, |m, f, x| m.history_scan(f, range, prev, x));
                assert_eq!(indexed, scanned, "from {from}, max {max}");
                compared += indexed.len();
            }
        }
    }
    assert!(compared > 500, "only {compared} events compared");
    // More keys than the limit: the full scan is used.
    assert!(t.m.revisions_in(&ranges[0], 0, 1).is_none());
}
