//! The one number agents and the coordinator leader must agree on for fencing to be safe
//! (DESIGN.md decision 5, with a bound).
//!
//! A coordinator member that has no leader says so, and an agent that hears it keeps its
//! units: an election or a lost quorum is not a reason to stop anything. But a member cut
//! off in a minority (with the hosts around it) says the same thing while the majority
//! still has a leader that can expire those hosts' leases and start their units elsewhere.
//! Neither side can tell the two apart, so both bound the credit a "no leader" answer
//! gives:
//!
//! - an agent keeps its `Fence=stop` units on "no leader" answers for at most
//!   [`outage_grace`] after its last real acknowledgement, then fences anyway;
//! - a leader that cannot confirm every member follows it (one may be the minority that
//!   says "no leader") expires a lease only once that grace has passed since the lease's
//!   last renewal, instead of after its TTL.
//!
//! So a control-plane outage stops nothing for [`outage_grace`] (30 s at the default 5 s
//! TTL), and a host lost while some coordinator member is unreachable has its units moved
//! after that grace rather than after its TTL.

use std::time::Duration;

/// The grace, in lease TTLs.
pub const OUTAGE_GRACE_TTLS: u32 = 6;

/// How long "no leader" answers may keep units up after the last real acknowledgement of
/// a lease with this TTL, and how long a leader in doubt waits before expiring it.
pub fn outage_grace(ttl: Duration) -> Duration {
    ttl.saturating_mul(OUTAGE_GRACE_TTLS)
}
