//! The typed key spaces of the store: one leading byte each. Integers are big-endian so
//! byte order is numeric order.

pub const META: u8 = 0x01;
pub const LOG: u8 = 0x02;
pub const REV: u8 = 0x03;
pub const LEASE: u8 = 0x04;

/// The on-disk format this build reads and writes. Bump it with a migration when any key
/// space or record encoding changes; a store with another version is refused at open.
///
/// - 1: the current snapshot was one value (meta key `snapshot`) inside sled.
/// - 2: snapshots are files under `<data-dir>/snapshots/`; meta key `snapshot` holds a
///   [`SnapshotPointer`](super::snapshots::SnapshotPointer). Version 1 is migrated at open.
pub const DATA_VERSION: u64 = 2;

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn log(index: u64) -> Vec<u8> {
    let mut k = vec![LOG];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn log_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// A revision record: main revision (the store's revision) and sub revision (the
/// position of the change within its transaction), like etcd's `revision{main, sub}`.
pub fn rev(main: i64, sub: u32) -> Vec<u8> {
    let mut k = vec![REV];
    k.extend_from_slice(&(main as u64).to_be_bytes());
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

pub fn rev_of(key: &[u8]) -> Option<(i64, u32)> {
    let main = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?) as i64;
    let sub = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    Some((main, sub))
}

pub fn lease(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub fn lease_id(key: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?) as i64)
}

/// The first key after the whole key space `prefix`.
pub fn space_end(prefix: u8) -> Vec<u8> {
    vec![prefix + 1]
}
