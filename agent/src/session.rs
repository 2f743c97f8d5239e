//! The machine's session with the cluster: lease, registration, keepalive, and the fence
//! clock (DESIGN.md decision 5), as a state machine advanced by one [`Session::step`].
//!
//! ```text
//!  Connecting ──grant──▶ Registering ──record written──▶ Registered ◀──ack──┐
//!      ▲                      │  (id taken: retry)          │ keepalive fails │
//!      │ lease gone           │                             ▼                 │
//!      └──────────────── (any of these) ◀──────────────── Suspect ──────────┘
//!                 no acknowledgment for TTL − margin (from any state) ──▶ Fenced
//!  Fenced ──old lease alive, or a new grant──▶ Registering
//! ```
//!
//! The fence clock is the time of the last acknowledgment: a keepalive answered with a
//! TTL, a grant, or a member's answer that there is no leader (a leader that may have been
//! out of touch with that member waits the outage grace before expiring, and a new one
//! extends every lease by its TTL). It counts from when the
//! acknowledged request was *sent*, so the lease cannot expire before we fence. "No
//! leader" answers count for at most the outage grace after the last real
//! acknowledgment ([`esfleet_core::lease`]): the member saying it may be a minority cut off
//! with this host. Time is tokio's, so tests pause and advance it.
//!
//! Losing the lease (a keepalive answered with TTL 0) stops nothing: the agent registers
//! again on a new lease. Only the fence clock stops units.
//!
//! The fence clock outlives the agent process: the times of the last real acknowledgment
//! and the last answer are kept beside the lease id ([`Session::with_handoff`]), so a restarted agent goes on from it
//! instead of granting its units a fresh window (an agent that crashes every few seconds
//! while its host is cut off must still fence).

use std::future::Future;
use std::time::Duration;

use esfleet_core::lease::outage_grace;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::client::{Client, ClientError, Registration};
use crate::config::Timing;
use crate::jitter::Rng;

/// What the rest of the agent sees of the session (a `watch` channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// The lease the machine record is on; `None` while (re-)connecting.
    pub lease: Option<i64>,
    /// Counts registrations: a new value means "the record was (re)written; re-read the
    /// schedule and rewrite the states on the new lease".
    pub epoch: u64,
    /// Fence=stop units were stopped; nothing may start them until the next registration.
    pub fenced: bool,
}

/// The states of the session loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No lease: granting one.
    Connecting,
    /// A lease is granted: writing the machine record on it.
    Registering { lease: i64 },
    /// Registered; the last keepalive was acknowledged.
    Registered { lease: i64 },
    /// Keepalives are failing or answered "no leader"; the fence clock decides.
    Suspect { lease: i64 },
    /// Fence=stop units are stopped; getting back (on the old lease if it still lives).
    Fenced { lease: Option<i64> },
}

impl Phase {
    fn lease(self) -> Option<i64> {
        match self {
            Phase::Connecting => None,
            Phase::Registering { lease } | Phase::Registered { lease } | Phase::Suspect { lease } => Some(lease),
            Phase::Fenced { lease } => lease,
        }
    }
}

/// The coordinator calls the session makes ([`Client`] in the agent, a script in tests).
pub trait LeaseApi: Send + 'static {
    /// Grants the lease `id` (chosen by the caller, so that asking again after a timeout
    /// cannot leave a second lease).
    fn grant(&mut self, id: i64, ttl: i64) -> impl Future<Output = Result<(i64, i64), ClientError>> + Send;
    fn keep_alive(&mut self, lease: i64) -> impl Future<Output = Result<i64, ClientError>> + Send;
    fn register(
        &mut self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> impl Future<Output = Result<Registration, ClientError>> + Send;
    fn revoke(&mut self, lease: i64) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// Talk to the next member from now on (the current one did not answer in time).
    fn rotate(&mut self) {}
}

impl LeaseApi for Client {
    fn rotate(&mut self) {
        Client::rotate(self)
    }
    async fn grant(&mut self, id: i64, ttl: i64) -> Result<(i64, i64), ClientError> {
        Client::grant(self, id, ttl).await
    }
    async fn keep_alive(&mut self, lease: i64) -> Result<i64, ClientError> {
        Client::keep_alive(self, lease).await
    }
    async fn register(&mut self, key: &str, value: &str, lease: i64) -> Result<Registration, ClientError> {
        Client::register(self, key, value, lease).await
    }
    async fn revoke(&mut self, lease: i64) -> Result<(), ClientError> {
        Client::revoke(self, lease).await
    }
}

/// Stops the Fence=stop units (implemented by the reconciler, which knows them).
pub trait Fencer: Send + Sync + 'static {
    /// `why` is for the log.
    fn fence(&self, why: &str) -> impl Future<Output = ()> + Send;
}

pub struct Session<L, F> {
    api: L,
    fencer: F,
    timing: Timing,
    key: String,
    record: String,
    /// When the last request was sent that was acknowledged, or answered "there is no
    /// leader" (which also moves the fence clock, DESIGN.md decision 5).
    last_ack: Instant,
    /// When the last request was sent that a leader acknowledged: "no leader" answers keep
    /// units up for at most the outage grace after it ([`esfleet_core::lease`]).
    last_real_ack: Instant,
    next_keepalive: Instant,
    /// Failed requests in a row (only the first of a streak is logged as a warning).
    failures: u32,
    /// Grants and registrations refused or unanswered in a row ("no leader" answers not
    /// counted): their backoff doubles with it.
    backoffs: u32,
    /// The id of a grant that was asked for and not answered: it may have been applied, so
    /// it is asked for again (a second lease would only expire, after costing a grant and a
    /// revoke: under load, that is how a retry storm feeds itself).
    pending_grant: Option<i64>,
    /// For lease ids and retry jitter.
    rng: Rng,
    status: watch::Sender<Status>,
    /// Where the current lease id is kept, so that a restarted agent takes the same lease
    /// over instead of leaving the machine to be declared lost (see [`Session::with_handoff`]).
    lease_file: Option<std::path::PathBuf>,
    /// A lease a previous agent process left behind, tried once before granting a new one.
    inherited: Option<i64>,
    /// The lease id kept in `lease_file`.
    kept: Option<i64>,
    /// The last write of a handoff file failed (logged once).
    keep_failing: bool,
    /// This boot's id, for the fence-clock file.
    boot: String,
    /// The fence clock restored from a previous process is overdue but stale (the lease file
    /// was written after it, by an agent too old to keep the clock): renew the lease once
    /// before fencing (a live lease means the units were not moved).
    verify_first: bool,
    /// Revoke the lease on exit (the units were stopped); otherwise leave it to a successor.
    release_on_exit: bool,
    /// Newer machine records (facts re-read while the agent runs): written on the lease
    /// the machine is registered on, without a new registration.
    updates: Option<watch::Receiver<String>>,
    /// `record` differs from what the cluster has.
    record_dirty: bool,
}

impl<L: LeaseApi, F: Fencer> Session<L, F> {
    /// `key`/`record`: the machine record to register. The fence clock starts now: units a
    /// previous agent left running are fenced too if no member answers in time.
    pub fn new(api: L, fencer: F, timing: Timing, key: String, record: String) -> (Self, watch::Receiver<Status>) {
        let (status, rx) = watch::channel(Status::default());
        let now = Instant::now();
        (
            Session {
                api,
                fencer,
                timing,
                key,
                record,
                last_ack: now,
                last_real_ack: now,
                next_keepalive: now,
                failures: 0,
                backoffs: 0,
                pending_grant: None,
                rng: Rng::seeded(),
                status,
                lease_file: None,
                inherited: None,
                kept: None,
                keep_failing: false,
                boot: String::new(),
                verify_first: false,
                release_on_exit: true,
                updates: None,
                record_dirty: false,
            },
            rx,
        )
    }

    /// Takes newer machine records from `updates` and writes each on the current lease
    /// once registered (the registration's key and guard, no new epoch: the worker does not
    /// start over for a changed fact).
    pub fn with_record_updates(mut self, updates: watch::Receiver<String>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Writes a newer machine record on `lease` if one came; the phase stays Registered
    /// (a failure leaves the record to be written at the next step).
    async fn refresh_record(&mut self, lease: i64) {
        if let Some(rx) = &mut self.updates {
            if rx.has_changed().unwrap_or(false) {
                let record = rx.borrow_and_update().clone();
                self.record_dirty |= record != self.record;
                self.record = record;
            }
        }
        if !self.record_dirty {
            return;
        }
        let sent = Instant::now();
        let answer = tokio::time::timeout_at(self.deadline(), self.api.register(&self.key, &self.record, lease))
            .await
            .unwrap_or_else(|_| Err(unanswered(sent)));
        match answer {
            Ok(Registration::Done) => {
                self.record_dirty = false;
                tracing::info!(key = self.key, "machine record updated (its facts changed)");
            }
            Ok(Registration::Taken { .. }) => {
                // Not retried every step: the keepalive finds a lost lease and registers anew,
                // with the newest record.
                self.record_dirty = false;
                tracing::warn!(
                    key = self.key,
                    "machine record not updated: the key is not on our lease"
                );
            }
            Err(e) => tracing::debug!(error = %e, "machine record not updated yet; trying again"),
        }
    }

    /// Hands the lease over across agent restarts. The lease id is kept in `lease_file`
    /// (under `/run`: it survives an agent restart, not a reboot); a new agent process first
    /// tries to renew the lease found there and, if it is alive, registers on it again, so
    /// the machine never disappears and no unit is moved. With `release_on_exit` false (units
    /// are left running on exit) the lease is not revoked on exit: revoking it would make the
    /// scheduler start every unit elsewhere while the old copies still run. If no agent comes
    /// back, the lease expires after its TTL and the machine is lost as if it had crashed.
    ///
    /// `fence-clock` beside it keeps when the last real acknowledgment and the last answer
    /// were sent (on the boot-time clock, which counts suspend and is shared by all
    /// processes), and a new process's fence clock goes on from them: the units the previous process left are fenced when that one's
    /// would have been, not a fresh window after every restart.
    pub fn with_handoff(mut self, lease_file: std::path::PathBuf, release_on_exit: bool) -> Self {
        // The first word only: the file an agent before the fence clock wrote, and what a
        // downgraded agent reads, is the lease id alone.
        let lease = std::fs::read_to_string(&lease_file)
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|w| i64::from_str_radix(w, 16).ok())
            })
            .filter(|l| *l > 0);
        self.inherited = lease;
        self.kept = lease;
        let clock = std::fs::read_to_string(clock_file(&lease_file))
            .ok()
            .map(|s| FenceClock::parse(&s));
        self.boot = boot_id();
        if let Some(FenceClock {
            acked_at: Some(acked_at),
            answered_at,
            ..
        }) = clock.filter(|c| c.boot != "-" && c.boot == self.boot)
        {
            let now = Instant::now();
            // A time older than this process can express is long overdue: fence at once.
            let overdue = now
                .checked_sub(outage_grace(self.timing.lease_ttl) + self.timing.fence_after())
                .unwrap_or(now);
            let since = |at: Duration| {
                boot_clock()
                    .checked_sub(at)
                    .map(|age| now.checked_sub(age).unwrap_or(overdue))
            };
            if let Some(acked) = since(acked_at) {
                self.last_real_ack = acked;
                self.last_ack = answered_at.and_then(since).unwrap_or(acked).max(acked);
                self.next_keepalive = now;
                tracing::info!(
                    acknowledged = ?now - self.last_real_ack,
                    answered = ?now - self.last_ack,
                    "a previous agent process was last acknowledged (and last answered) this long ago; \
                     the fence clock goes on from then"
                );
                // Stale only if a lease was written after the clock last was: an agent too
                // old to keep the clock registered in between.
                let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                let stale = matches!(
                    (mtime(&lease_file), mtime(&clock_file(&lease_file))),
                    (Some(lease), Some(clock)) if lease > clock
                );
                self.verify_first = stale && self.inherited.is_some() && self.fence_at() <= now;
            }
        }
        self.lease_file = Some(lease_file);
        self.release_on_exit = release_on_exit;
        self
    }

    /// Keeps `lease` (or none) for a restarted agent.
    fn remember(&mut self, lease: Option<i64>) {
        self.kept = lease;
        let Some(path) = self.lease_file.clone() else { return };
        let text = format!("{:x}\n", lease.unwrap_or(0));
        self.write_aside(&path, &text, "the lease id");
        // Then the clock again, so that a lease file newer than the clock means an agent
        // that does not keep the clock wrote it (`verify_first`), never this one.
        self.keep();
    }

    /// Keeps the fence clock for a restarted agent (on every acknowledgment or answer).
    fn keep(&mut self) {
        let Some(path) = self.lease_file.as_deref().map(clock_file) else {
            return;
        };
        let now = boot_clock();
        let clock = FenceClock {
            boot: self.boot.clone(),
            acked_at: now.checked_sub(self.last_real_ack.elapsed()),
            answered_at: now.checked_sub(self.last_ack.elapsed()),
        };
        self.write_aside(&path, &clock.render(), "the fence clock");
    }

    /// Writes `text` aside and renames it over `path`, so a crash mid-write never leaves
    /// half a record. A failure is logged once, until a write succeeds again.
    fn write_aside(&mut self, path: &std::path::Path, text: &str, what: &str) {
        match crate::state::replace(path, text) {
            Ok(()) => self.keep_failing = false,
            Err(e) if !self.keep_failing => {
                self.keep_failing = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot keep {what} for a restarted agent");
            }
            Err(_) => {}
        }
    }

    /// Forgets the lease and the fence clock: the units were stopped on exit.
    fn forget(&self) {
        let Some(path) = &self.lease_file else { return };
        for path in [path.clone(), clock_file(path)] {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a handoff file");
                }
            }
        }
    }

    /// The latest a lease request may still be waited for: the fence deadline while it is
    /// ahead (a hung request must not delay the fence), else one request timeout.
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        let fence = self.fence_at();
        if fence > now {
            fence
        } else {
            now + self.timing.request_timeout
        }
    }

    /// When Fence=stop units must be stopped unless an acknowledgment comes first: the
    /// lease TTL less the margin after the last acknowledgement or "no leader" answer, and
    /// never later than the outage grace less the margin after the last acknowledgement (a
    /// member in a minority says "no leader" too, and a leader that may have been out of
    /// touch with it waits that grace before expiring the lease).
    pub fn fence_at(&self) -> Instant {
        let grace = outage_grace(self.timing.lease_ttl).saturating_sub(self.timing.fence_margin);
        (self.last_ack + self.timing.fence_after()).min(self.last_real_ack + grace)
    }

    /// A leader acknowledged a request sent at `sent`.
    fn acked(&mut self, sent: Instant) {
        self.last_ack = sent;
        self.last_real_ack = sent;
        self.keep();
    }

    /// A member answered a request sent at `sent` with "no leader": it moves the fence
    /// clock, bounded by the outage grace after the last real acknowledgment ([`Self::fence_at`]).
    fn no_leader(&mut self, sent: Instant) {
        self.last_ack = sent;
        self.keep();
    }

    /// Advances the loop by one step: one request (or one wait), and the next phase.
    pub async fn step(&mut self, phase: Phase) -> Phase {
        if std::mem::take(&mut self.verify_first) {
            if let Some(next) = self.renew_inherited_once().await {
                return next;
            }
        }
        if !matches!(phase, Phase::Fenced { .. }) && Instant::now() >= self.fence_at() {
            let now = Instant::now();
            let why = if now >= self.last_ack + self.timing.fence_after() {
                format!(
                    "no acknowledged keepalive and no member's word that there is no leader for {:?} \
                     (lease TTL {:?} − fence margin {:?}); the lease may expire and the units be started elsewhere",
                    now - self.last_ack,
                    self.timing.lease_ttl,
                    self.timing.fence_margin
                )
            } else {
                format!(
                    "only \"no leader\" answers for {:?} since the last acknowledged keepalive (outage grace \
                     {:?} − fence margin {:?}); the member saying so may be cut off in a minority while the \
                     majority expires the lease and starts the units elsewhere",
                    now - self.last_real_ack,
                    outage_grace(self.timing.lease_ttl),
                    self.timing.fence_margin
                )
            };
            self.status.send_modify(|s| s.fenced = true);
            self.fencer.fence(&why).await;
            return Phase::Fenced { lease: phase.lease() };
        }
        match phase {
            Phase::Connecting => self.connect(Phase::Connecting).await,
            Phase::Registering { lease } => self.register(lease).await,
            Phase::Registered { lease } => {
                self.refresh_record(lease).await;
                self.keep_alive(lease, phase).await
            }
            Phase::Suspect { lease } => self.keep_alive(lease, phase).await,
            Phase::Fenced { lease: Some(lease) } => {
                self.wait(self.next_keepalive).await;
                let sent = Instant::now();
                self.next_keepalive = sent + self.timing.keepalive;
                match self.api.keep_alive(lease).await {
                    Ok(ttl) if ttl > 0 => {
                        self.acked(sent);
                        tracing::info!(
                            lease = format!("{lease:x}"),
                            "the cluster answers again; the lease survived"
                        );
                        Phase::Registering { lease }
                    }
                    Ok(_) => Phase::Fenced { lease: None },
                    Err(e) => {
                        tracing::debug!(error = %e, "still fenced");
                        phase
                    }
                }
            }
            Phase::Fenced { lease: None } => {
                self.wait(self.next_keepalive).await;
                self.next_keepalive = Instant::now() + self.timing.keepalive;
                self.connect(phase).await
            }
        }
    }

    /// One renewal of the previous process's lease, given one keepalive interval, before
    /// an overdue restored fence clock fences: if the lease is alive, its units were not
    /// moved, and the clock is taken as acknowledged.
    async fn renew_inherited_once(&mut self) -> Option<Phase> {
        let lease = self.inherited?;
        let sent = Instant::now();
        match tokio::time::timeout(self.timing.keepalive, self.api.keep_alive(lease)).await {
            Ok(Ok(ttl)) if ttl > 0 => {
                self.inherited = None;
                self.acked(sent);
                self.next_keepalive = sent + self.timing.keepalive;
                tracing::info!(
                    lease = format!("{lease:x}"),
                    "the previous agent's lease is alive: its fence clock was stale; taking the lease over"
                );
                Some(Phase::Registering { lease })
            }
            _ => None,
        }
    }

    /// Sleeps until `at`, but not past a fence deadline still ahead (once fenced, the
    /// deadline is behind and no longer shortens waits).
    async fn wait(&self, at: Instant) {
        let fence_at = self.fence_at();
        if fence_at > Instant::now() {
            sleep_until(at.min(fence_at)).await;
        } else if self.status.borrow().fenced {
            sleep_until(at).await;
        }
        // Else the fence is due and not done: no wait at all, the next step fences.
    }

    async fn connect(&mut self, phase: Phase) -> Phase {
        if let Some(lease) = self.inherited.take() {
            let sent = Instant::now();
            match tokio::time::timeout_at(self.deadline(), self.api.keep_alive(lease))
                .await
                .unwrap_or(Ok(0))
            {
                Ok(ttl) if ttl > 0 => {
                    self.acked(sent);
                    self.next_keepalive = sent + self.timing.keepalive;
                    tracing::info!(
                        lease = format!("{lease:x}"),
                        "took over the lease of the previous agent process"
                    );
                    return Phase::Registering { lease };
                }
                Ok(_) => tracing::info!(lease = format!("{lease:x}"), "the previous agent's lease has expired"),
                Err(e) => {
                    tracing::info!(error = %e, "cannot renew the previous agent's lease; granting a new one")
                }
            }
        }
        let id = match self.pending_grant {
            Some(id) => id,
            None => *self.pending_grant.insert(self.rng.lease_id()),
        };
        let sent = Instant::now();
        // Unanswered by the deadline: backed off like a refusal (the wait is nil when the
        // fence is due; the next step fences).
        let answer = tokio::time::timeout_at(self.deadline(), self.api.grant(id, self.timing.ttl_secs()))
            .await
            .unwrap_or_else(|_| Err(unanswered(sent)));
        match answer {
            Ok((lease, ttl)) => {
                self.pending_grant = None;
                self.acked(sent);
                self.failures = 0;
                self.backoffs = 0;
                self.next_keepalive = sent + self.timing.keepalive;
                tracing::info!(lease = format!("{lease:x}"), ttl, "lease granted");
                Phase::Registering { lease }
            }
            Err(e) if e.is_lease_exists() => {
                // An earlier ask for this id was applied after all: the lease is ours, its TTL
                // running since then, so it counts once a renewal is acknowledged.
                let sent = Instant::now();
                match tokio::time::timeout_at(self.deadline(), self.api.keep_alive(id)).await {
                    Ok(Ok(ttl)) if ttl > 0 => {
                        self.pending_grant = None;
                        self.acked(sent);
                        self.failures = 0;
                        self.backoffs = 0;
                        self.next_keepalive = sent + self.timing.keepalive;
                        tracing::info!(
                            lease = format!("{id:x}"),
                            "a grant that had timed out was applied after all; registering on that lease"
                        );
                        return Phase::Registering { lease: id };
                    }
                    // It expired meanwhile: ask for a fresh one.
                    Ok(Ok(_)) => self.pending_grant = None,
                    // Unknown: ask for the same id again.
                    _ => {}
                }
                self.back_off(&e, "cannot grant a lease").await;
                phase
            }
            Err(e) if e.is_no_leader() => {
                // Nothing was proposed: asked again at the quick pace, whose answers keep
                // moving the fence clock (a longer wait would let it run out).
                if !matches!(phase, Phase::Fenced { .. }) {
                    self.no_leader(sent);
                }
                self.failures += 1;
                if self.failures == 1 {
                    tracing::warn!(error = %e, "cannot grant a lease; trying again");
                }
                self.wait(Instant::now() + retry_delay(self.timing)).await;
                phase
            }
            Err(e) => {
                self.back_off(&e, "cannot grant a lease").await;
                phase
            }
        }
    }

    /// After a failed grant or registration: logs (the first of a streak as a warning) and
    /// waits a jittered delay that doubles with each failure in a row, from a quarter of the
    /// keepalive interval up to the lease TTL, never past a fence deadline still ahead. Many
    /// agents cut off together (an outage, an overloaded leader) then come back spread out
    /// instead of in a synchronised storm of writes that the leader cannot commit in time.
    async fn back_off(&mut self, e: &ClientError, what: &str) {
        self.failures += 1;
        self.backoffs += 1;
        let fenced = self.status.borrow().fenced;
        let delay = backoff_delay(self.timing, self.backoffs, fenced, &mut self.rng);
        if self.failures == 1 {
            tracing::warn!(error = %e, retry_in = ?delay, "{what}; trying again");
        } else {
            tracing::debug!(error = %e, failures = self.failures, retry_in = ?delay, "{what}");
        }
        self.wait(Instant::now() + delay).await;
    }

    async fn register(&mut self, lease: i64) -> Phase {
        if let Some(rx) = &mut self.updates {
            self.record = rx.borrow_and_update().clone();
        }
        self.record_dirty = false;
        let sent = Instant::now();
        let answer = tokio::time::timeout_at(self.deadline(), self.api.register(&self.key, &self.record, lease))
            .await
            .unwrap_or_else(|_| Err(unanswered(sent)));
        match answer {
            Ok(Registration::Done) => {
                self.failures = 0;
                self.backoffs = 0;
                self.remember(Some(lease));
                self.status.send_modify(|s| {
                    s.lease = Some(lease);
                    s.epoch += 1;
                    s.fenced = false;
                });
                tracing::info!(key = self.key, lease = format!("{lease:x}"), "machine registered");
                Phase::Registered { lease }
            }
            Ok(Registration::Taken { lease: other, value }) => {
                tracing::error!(
                    key = self.key,
                    other_lease = format!("{other:x}"),
                    record = value,
                    "another live agent holds this machine id; not taking it over. Two hosts with one \
                     /etc/machine-id must get distinct ids (systemd-machine-id-setup); if this host's agent \
                     just restarted, this clears when the old lease expires"
                );
                // Keep our lease alive while we wait.
                self.keep_alive(lease, Phase::Registering { lease }).await
            }
            Err(e) if e.is_not_found() => {
                tracing::warn!(error = %e, "the lease is gone before registration; granting another");
                Phase::Connecting
            }
            Err(e) => {
                self.back_off(&e, "cannot register the machine").await;
                Phase::Registering { lease }
            }
        }
    }

    /// Waits for the next keepalive time, renews, and moves the fence clock.
    async fn keep_alive(&mut self, lease: i64, phase: Phase) -> Phase {
        self.wait(self.next_keepalive).await;
        if Instant::now() >= self.fence_at() {
            return phase; // the next step fences
        }
        let sent = Instant::now();
        let stay = |ok: bool| match phase {
            Phase::Registering { .. } => phase,
            _ if ok => Phase::Registered { lease },
            _ => Phase::Suspect { lease },
        };
        // Bounded by the fence deadline: a hung request must not carry the fence past the
        // moment the lease could expire.
        // A keepalive is given one keepalive interval, not the longer request timeout: a
        // member that swallowed it must not eat the fence window, the next member is tried.
        let limit = self.deadline().min(sent + self.timing.keepalive);
        let answer = match tokio::time::timeout_at(limit, self.api.keep_alive(lease)).await {
            Ok(a) => a,
            Err(_) if Instant::now() >= self.fence_at() => return phase, // the next step fences
            Err(_) => {
                self.api.rotate();
                Err(ClientError::Timeout {
                    endpoint: "the current member".into(),
                    timeout: self.timing.keepalive,
                })
            }
        };
        match answer {
            Ok(ttl) if ttl > 0 => {
                self.acked(sent);
                self.next_keepalive = sent + self.timing.keepalive;
                self.failures = 0;
                self.backoffs = 0;
                if matches!(phase, Phase::Suspect { .. }) {
                    tracing::info!(lease = format!("{lease:x}"), "keepalives acknowledged again");
                }
                stay(true)
            }
            Ok(_) => {
                tracing::warn!(
                    lease = format!("{lease:x}"),
                    "the lease expired; registering again on a new lease (units keep running)"
                );
                self.status.send_modify(|s| s.lease = None);
                Phase::Connecting
            }
            Err(e) if e.is_no_leader() => {
                // No leader can expire the lease, and the next one extends it by its TTL.
                self.no_leader(sent);
                self.next_keepalive = sent + self.timing.keepalive;
                tracing::info!(error = %e, "no leader; units keep running");
                stay(false)
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 {
                    tracing::warn!(error = %e, "keepalive failed; trying the next member");
                } else {
                    tracing::debug!(error = %e, failures = self.failures, "keepalive failed again");
                }
                self.next_keepalive = Instant::now() + retry_delay(self.timing);
                stay(false)
            }
        }
    }

    /// Runs until `shutdown` flips to true, then revokes the lease if it is to be released
    /// (the machine disappears at once rather than after its TTL), else leaves it for a
    /// restarted agent ([`Session::with_handoff`]).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut phase = Phase::Connecting;
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                next = self.step(phase) => {
                    if next != phase {
                        tracing::debug!(from = ?phase, to = ?next, "session");
                    }
                    phase = next;
                }
                _ = shutdown.changed() => {}
            }
        }
        let registered = self.status.borrow().lease;
        if !self.release_on_exit {
            if let Some(lease) = phase.lease().or(registered) {
                tracing::info!(
                    lease = format!("{lease:x}"),
                    ttl = ?self.timing.lease_ttl,
                    "leaving the lease for a restarted agent; units keep running. If no agent comes back \
                     within the TTL, the machine is lost and its units are started elsewhere while these \
                     copies still run: to take a host out for good, drain it or use --stop-units-on-exit"
                );
            }
            return;
        }
        self.forget();
        if let Some(lease) = phase.lease().or(registered) {
            match tokio::time::timeout(self.timing.request_timeout * 2, self.api.revoke(lease)).await {
                Ok(Ok(())) => tracing::info!(lease = format!("{lease:x}"), "lease revoked; machine unregistered"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot revoke the lease; it expires after its TTL"),
                Err(_) => tracing::warn!("revoking the lease timed out; it expires after its TTL"),
            }
        }
    }
}

/// Where the fence clock is kept: `fence-clock` beside the lease file, so that the lease
/// file stays what older agents read.
fn clock_file(lease_file: &std::path::Path) -> std::path::PathBuf {
    lease_file.with_file_name("fence-clock")
}

/// What the fence-clock file holds: `<boot id> <boot-clock ms of the last real
/// acknowledgment> <boot-clock ms of the last acknowledgment or "no leader" answer>`. Times
/// of another boot (a state dir on a persistent disk) are not read.
#[derive(Debug, PartialEq, Eq)]
struct FenceClock {
    boot: String,
    acked_at: Option<Duration>,
    answered_at: Option<Duration>,
}

impl FenceClock {
    fn parse(s: &str) -> FenceClock {
        let mut words = s.split_whitespace();
        let boot = words.next().unwrap_or("").to_string();
        let mut times = words.map(|w| w.parse().ok().map(Duration::from_millis));
        FenceClock {
            boot,
            acked_at: times.next().flatten(),
            answered_at: times.next().flatten(),
        }
    }

    fn render(&self) -> String {
        let ms = |at: Option<Duration>| at.map_or("-".to_string(), |at| at.as_millis().to_string());
        format!("{} {} {}\n", self.boot, ms(self.acked_at), ms(self.answered_at))
    }
}

/// This boot's id (`-` if the kernel does not say: then no time is ever read back).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "-".to_string())
}

/// Time since boot, suspend included (`CLOCK_BOOTTIME`): one clock for every process of
/// this boot, and the lease file under `/run` does not outlive the boot.
fn real_boot_clock() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(not(test))]
use real_boot_clock as boot_clock;

/// Unit tests run on paused tokio time: their "boot clock" is that time (from the first
/// reading on the test's thread, plus an uptime), so a restart within a test keeps time.
#[cfg(test)]
fn boot_clock() -> Duration {
    thread_local!(static BOOT: Instant = Instant::now());
    BOOT.with(|boot| boot.elapsed()) + Duration::from_secs(3600)
}

/// A request sent at `sent` that got no answer by its deadline.
fn unanswered(sent: Instant) -> ClientError {
    ClientError::Timeout {
        endpoint: "the current member".into(),
        timeout: Instant::now() - sent,
    }
}

/// How soon a failed request is retried (on the next member): quick, so a dead member
/// costs little of the fence window.
fn retry_delay(t: Timing) -> Duration {
    (t.keepalive / 4).max(Duration::from_millis(50))
}

/// The wait after the `failures`-th failed grant or registration in a row: [`retry_delay`]
/// doubled per failure, then drawn from its upper half. Up to a quarter of the fence window
/// while units still run (several more tries before the fence), up to the lease TTL once
/// they are fenced (nothing left to lose by waiting).
fn backoff_delay(t: Timing, failures: u32, fenced: bool, rng: &mut Rng) -> Duration {
    let base = retry_delay(t);
    let ceiling = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let most = if fenced { t.lease_ttl } else { t.fence_after() / 4 };
    rng.jitter(ceiling.min(most.max(base)))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What the scripted coordinator answers to keepalives; grants always succeed.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Ack,
        NoLeader,
        Down,
        Gone,
    }

    #[derive(Clone, Default)]
    struct Script {
        answers: Arc<Mutex<VecDeque<(Duration, Answer)>>>,
        start: Arc<Mutex<Option<Instant>>>,
        grants: Arc<Mutex<u32>>,
        /// Every grant asked for, answered or not.
        asks: Arc<Mutex<u32>>,
        /// The next grant is applied (under the id asked for) and then times out, as a slow
        /// leader's would.
        slow_grant: Arc<Mutex<bool>>,
        /// Ids granted by slow grants.
        applied: Arc<Mutex<Vec<i64>>>,
        /// Keepalives never answer.
        hang_keepalives: Arc<Mutex<bool>>,
        /// Every record registered, in order.
        records: Arc<Mutex<Vec<String>>>,
    }

    impl Script {
        /// The answer in effect at the current (paused) time.
        fn now(&self) -> Answer {
            let start = self.start.lock().unwrap().get_or_insert_with(Instant::now).to_owned();
            let elapsed = Instant::now() - start;
            let a = self.answers.lock().unwrap();
            a.iter()
                .take_while(|(from, _)| *from <= elapsed)
                .last()
                .map_or(Answer::Ack, |(_, a)| *a)
        }
        fn err(a: Answer) -> ClientError {
            match a {
                Answer::NoLeader => ClientError::NoLeader { endpoint: "x".into() },
                _ => ClientError::Timeout {
                    endpoint: "x".into(),
                    timeout: Duration::from_secs(1),
                },
            }
        }
    }

    impl LeaseApi for Script {
        async fn grant(&mut self, id: i64, _ttl: i64) -> Result<(i64, i64), ClientError> {
            *self.asks.lock().unwrap() += 1;
            if self.applied.lock().unwrap().contains(&id) {
                return Err(ClientError::Rpc {
                    endpoint: "x".into(),
                    status: tonic::Status::failed_precondition("etcdserver: lease already exists"),
                });
            }
            if std::mem::take(&mut *self.slow_grant.lock().unwrap()) {
                self.applied.lock().unwrap().push(id);
                tokio::time::sleep(Timing::default().request_timeout).await;
                return Err(Self::err(Answer::Down));
            }
            match self.now() {
                Answer::Ack | Answer::Gone => {
                    let mut g = self.grants.lock().unwrap();
                    *g += 1;
                    Ok((i64::from(*g), 5))
                }
                a => Err(Self::err(a)),
            }
        }
        async fn keep_alive(&mut self, _lease: i64) -> Result<i64, ClientError> {
            if *self.hang_keepalives.lock().unwrap() {
                std::future::pending::<()>().await;
            }
            match self.now() {
                Answer::Ack => Ok(5),
                Answer::Gone => Ok(0),
                a => Err(Self::err(a)),
            }
        }
        async fn register(&mut self, _k: &str, v: &str, _lease: i64) -> Result<Registration, ClientError> {
            match self.now() {
                Answer::Ack | Answer::Gone => {
                    self.records.lock().unwrap().push(v.to_string());
                    Ok(Registration::Done)
                }
                a => Err(Self::err(a)),
            }
        }
        async fn revoke(&mut self, _lease: i64) -> Result<(), ClientError> {
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Instant>>>);
    impl Fencer for Log {
        async fn fence(&self, _why: &str) {
            self.0.lock().unwrap().push(Instant::now());
        }
    }

    /// Steps the session until `until` (paused time), recording phases.
    async fn drive(s: &mut Session<Script, Log>, mut phase: Phase, until: Duration) -> (Phase, Vec<Phase>) {
        let end = Instant::now() + until;
        let mut seen = vec![phase];
        while Instant::now() < end {
            phase = s.step(phase).await;
            if seen.last() != Some(&phase) {
                seen.push(phase);
            }
        }
        (phase, seen)
    }

    fn session(script: &Script, fences: &Log) -> (Session<Script, Log>, watch::Receiver<Status>) {
        let (mut s, status) = Session::new(
            script.clone(),
            fences.clone(),
            Timing::default(),
            "/esfleet/machines/m".into(),
            "{}".into(),
        );
        s.rng = Rng::from_seed(1); // the same delays on every run
        (s, status)
    }

    /// A machine record that changes while registered (a fact re-read) is written on the
    /// same lease at the next step, without a new registration epoch; one that fails to be
    /// written is tried again.
    #[tokio::test(start_paused = true)]
    async fn a_changed_record_is_written_on_the_lease_without_a_new_epoch() {
        let script = Script::default();
        script.answers.lock().unwrap().extend([
            (Duration::from_secs(5), Answer::Down),
            (Duration::from_millis(6500), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let (s, status) = session(&script, &fences);
        let (tx, rx) = watch::channel("{}".to_string());
        let mut s = s.with_record_updates(rx);
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(2)).await;
        assert_eq!(phase, Phase::Registered { lease: 1 });
        assert_eq!(*script.records.lock().unwrap(), ["{}"]);
        tx.send_replace("{\"max_map_count\":262144}".into());
        let (phase, _) = drive(&mut s, phase, Duration::from_secs(2)).await;
        assert_eq!(phase, Phase::Registered { lease: 1 });
        assert_eq!(*script.records.lock().unwrap(), ["{}", "{\"max_map_count\":262144}"]);
        assert_eq!(status.borrow().epoch, 1, "no new registration epoch");
        // Changed while the cluster does not answer: written once it answers again.
        let (phase, _) = drive(&mut s, phase, Duration::from_millis(1500)).await;
        tx.send_replace("{\"max_map_count\":65530}".into());
        let (_, _) = drive(&mut s, phase, Duration::from_secs(4)).await;
        let records = script.records.lock().unwrap().clone();
        assert_eq!(
            records.last().map(String::as_str),
            Some("{\"max_map_count\":65530}"),
            "{records:?}"
        );
        assert!(fences.0.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fences_at_ttl_minus_margin_after_the_last_ack_and_comes_back() {
        let script = Script::default();
        // Healthy for 10 s, unreachable for 10 s, then healthy again.
        script.answers.lock().unwrap().extend([
            (Duration::from_secs(10), Answer::Down),
            (Duration::from_secs(20), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let (mut s, status) = session(&script, &fences);
        let t0 = Instant::now();
        // (A step may end a little past the asked time: it waits for its next keepalive.)
        let (phase, seen) = drive(&mut s, Phase::Connecting, Duration::from_millis(9500)).await;
        assert_eq!(
            seen[..3],
            [
                Phase::Connecting,
                Phase::Registering { lease: 1 },
                Phase::Registered { lease: 1 }
            ]
        );
        assert_eq!(status.borrow().epoch, 1);
        assert!(fences.0.lock().unwrap().is_empty());

        let (phase, seen) = drive(&mut s, phase, Duration::from_secs(8)).await;
        assert!(seen.contains(&Phase::Suspect { lease: 1 }), "{seen:?}");
        assert_eq!(phase, Phase::Fenced { lease: Some(1) });
        let fenced_at = fences.0.lock().unwrap()[0];
        // The last acknowledged keepalive was sent at 10 s − 1 s (one per second from 0 s);
        // the fence fires 4 s later, not a moment before or after.
        assert_eq!(fenced_at - t0, Duration::from_secs(9 + 4));
        assert!(status.borrow().fenced);

        let (phase, _) = drive(&mut s, phase, Duration::from_secs(3)).await;
        assert_eq!(
            phase,
            Phase::Registered { lease: 1 },
            "the old lease is kept alive again"
        );
        assert_eq!(fences.0.lock().unwrap().len(), 1);
        assert_eq!(
            *status.borrow(),
            Status {
                lease: Some(1),
                epoch: 2,
                fenced: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_leader_answers_keep_units_up_within_the_outage_grace() {
        let script = Script::default();
        script.answers.lock().unwrap().extend([
            (Duration::from_secs(3), Answer::NoLeader),
            (Duration::from_secs(25), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let (mut s, _status) = session(&script, &fences);
        let (phase, seen) = drive(&mut s, Phase::Connecting, Duration::from_secs(30)).await;
        assert!(fences.0.lock().unwrap().is_empty());
        assert!(seen.contains(&Phase::Suspect { lease: 1 }));
        assert_eq!(phase, Phase::Registered { lease: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn no_leader_answers_fence_once_the_outage_grace_is_spent() {
        let script = Script::default();
        script.answers.lock().unwrap().extend([
            (Duration::from_secs(3), Answer::NoLeader),
            (Duration::from_secs(60), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let (mut s, status) = session(&script, &fences);
        let t0 = Instant::now();
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(40)).await;
        assert_eq!(phase, Phase::Fenced { lease: Some(1) });
        // The last acknowledged keepalive was sent at 2 s; the grace is 6 TTLs (30 s) less
        // the 1 s margin.
        assert_eq!(fences.0.lock().unwrap()[..], [t0 + Duration::from_secs(2 + 29)]);
        assert!(status.borrow().fenced);
        let (phase, _) = drive(&mut s, phase, Duration::from_secs(25)).await;
        assert_eq!(
            phase,
            Phase::Registered { lease: 1 },
            "the old lease is kept alive again"
        );
        assert_eq!(fences.0.lock().unwrap().len(), 1);
    }

    /// A lease file in a fresh directory, removed on drop.
    struct LeaseFile(std::path::PathBuf);
    impl LeaseFile {
        fn new(name: &str) -> LeaseFile {
            let dir = std::env::temp_dir().join(format!("esfleet-session-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            LeaseFile(dir.join("lease"))
        }
    }
    impl Drop for LeaseFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_agent_goes_on_with_the_previous_fence_clock() {
        let file = LeaseFile::new("restart");
        let script = Script::default();
        script.answers.lock().unwrap().extend([
            (Duration::from_millis(2500), Answer::NoLeader),
            (Duration::from_secs(60), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let t0 = Instant::now();
        // The agent crashes and is restarted every 10 s while its member says "no leader";
        // each process starts over from Connecting.
        let mut phase = Phase::Connecting;
        for _ in 0..4 {
            let (s, _status) = session(&script, &fences);
            let mut s = s.with_handoff(file.0.clone(), false);
            (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(10)).await;
        }
        assert!(matches!(phase, Phase::Fenced { .. }), "{phase:?}");
        // Last real acknowledgment at 2 s (keepalives every second from 0 s), by the
        // first process; the grace less the margin is 29 s. (A process restarted after that
        // fences again at its start: that stops nothing new.)
        assert_eq!(fences.0.lock().unwrap()[0] - t0, Duration::from_secs(2 + 29));
        assert_eq!(
            std::fs::read_to_string(&file.0).unwrap(),
            "1\n",
            "the lease file holds the lease id alone, as older agents read it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_long_after_the_last_acknowledgment_fences_at_once() {
        let file = LeaseFile::new("late");
        std::fs::create_dir_all(file.0.parent().unwrap()).unwrap();
        let acked_at = boot_clock() - Duration::from_secs(300);
        std::fs::write(&file.0, "9\n").unwrap();
        let clock = FenceClock {
            boot: boot_id(),
            acked_at: Some(acked_at),
            answered_at: Some(acked_at + Duration::from_secs(200)),
        };
        std::fs::write(clock_file(&file.0), clock.render()).unwrap();
        let script = Script::default();
        script.answers.lock().unwrap().push_back((Duration::ZERO, Answer::Down));
        script.now();
        let fences = Log::default();
        let t0 = Instant::now();
        let (s, _status) = session(&script, &fences);
        let mut s = s.with_handoff(file.0.clone(), false);
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_millis(100)).await;
        assert_eq!(phase, Phase::Fenced { lease: None });
        assert_eq!(
            fences.0.lock().unwrap()[..],
            [t0],
            "the units left behind are fenced before any request"
        );
    }

    /// Writes a lease file for lease 9 and a fence clock last acknowledged `ago` on `boot`.
    fn stale_handoff(file: &LeaseFile, boot: String, ago: Duration) {
        std::fs::create_dir_all(file.0.parent().unwrap()).unwrap();
        std::fs::write(&file.0, "9\n").unwrap();
        let at = boot_clock() - ago;
        let clock = FenceClock {
            boot,
            acked_at: Some(at),
            answered_at: Some(at),
        };
        std::fs::write(clock_file(&file.0), clock.render()).unwrap();
    }

    fn set_mtime(path: &std::path::Path, at: std::time::SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_fence_clock_older_than_the_lease_file_is_checked_before_fencing() {
        // Left by this agent before a downgrade to one that does not keep the clock, which
        // then registered (wrote the lease file) and ran for a while.
        let file = LeaseFile::new("stale");
        stale_handoff(&file, boot_id(), Duration::from_secs(300));
        set_mtime(&file.0, std::time::SystemTime::now() + Duration::from_secs(60));
        let script = Script::default();
        script.now();
        let fences = Log::default();
        let (s, _status) = session(&script, &fences);
        let mut s = s.with_handoff(file.0.clone(), false);
        let (phase, seen) = drive(&mut s, Phase::Connecting, Duration::from_secs(3)).await;
        assert!(fences.0.lock().unwrap().is_empty(), "{seen:?}");
        assert_eq!(phase, Phase::Registered { lease: 9 }, "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_fence_clock_newer_than_the_lease_file_fences_at_once_even_if_the_lease_lives() {
        let file = LeaseFile::new("fresh-clock");
        stale_handoff(&file, boot_id(), Duration::from_secs(300));
        set_mtime(&file.0, std::time::SystemTime::now() - Duration::from_secs(600));
        let script = Script::default(); // the lease would renew
        script.now();
        let fences = Log::default();
        let t0 = Instant::now();
        let (s, _status) = session(&script, &fences);
        let mut s = s.with_handoff(file.0.clone(), false);
        drive(&mut s, Phase::Connecting, Duration::from_millis(100)).await;
        assert_eq!(
            fences.0.lock().unwrap()[..],
            [t0],
            "a crash-looping agent's own clock is trusted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn registering_leaves_the_clock_newer_than_the_lease_file() {
        let file = LeaseFile::new("order");
        let script = Script::default();
        script.now();
        let fences = Log::default();
        let (s, _status) = session(&script, &fences);
        let mut s = s.with_handoff(file.0.clone(), false);
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_millis(10)).await;
        assert!(matches!(phase, Phase::Registered { .. }), "{phase:?}");
        let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert!(mtime(&clock_file(&file.0)) >= mtime(&file.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_clock_of_another_boot_is_not_read() {
        let file = LeaseFile::new("reboot");
        stale_handoff(&file, "another-boot".into(), Duration::from_secs(300));
        let script = Script::default();
        script.answers.lock().unwrap().push_back((Duration::ZERO, Answer::Down));
        script.now();
        let fences = Log::default();
        let t0 = Instant::now();
        let (s, _status) = session(&script, &fences);
        let mut s = s.with_handoff(file.0.clone(), false);
        drive(&mut s, Phase::Connecting, Duration::from_secs(6)).await;
        assert_eq!(
            fences.0.lock().unwrap()[..],
            [t0 + Duration::from_secs(4)],
            "a fresh clock: TTL − margin after the start"
        );
    }

    #[test]
    fn the_fence_clock_file_reads_what_it_wrote() {
        let ms = |n| Some(Duration::from_millis(n));
        let c = FenceClock {
            boot: "b1".into(),
            acked_at: ms(123_456),
            answered_at: ms(124_000),
        };
        assert_eq!(c.render(), "b1 123456 124000\n");
        assert_eq!(FenceClock::parse(&c.render()), c);
        let half = FenceClock {
            boot: "b1".into(),
            acked_at: ms(5),
            answered_at: None,
        };
        assert_eq!(FenceClock::parse(&half.render()), half);
        let garbled = FenceClock::parse("b1 zz");
        assert_eq!((garbled.acked_at, garbled.answered_at), (None, None));
        assert!(!boot_id().contains(char::is_whitespace) && !boot_id().is_empty());
        let a = real_boot_clock();
        assert!(real_boot_clock() >= a && a > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_re_registers_without_fencing() {
        let script = Script::default();
        script.answers.lock().unwrap().extend([
            (Duration::from_secs(3), Answer::Gone),
            (Duration::from_millis(3500), Answer::Ack),
        ]);
        script.now();
        let fences = Log::default();
        let (mut s, status) = session(&script, &fences);
        let (phase, seen) = drive(&mut s, Phase::Connecting, Duration::from_secs(8)).await;
        assert!(seen.contains(&Phase::Connecting));
        assert!(fences.0.lock().unwrap().is_empty());
        assert!(matches!(phase, Phase::Registered { lease } if lease >= 2), "{phase:?}");
        assert_eq!(status.borrow().epoch, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_cluster_at_start_fences_leftover_units() {
        let script = Script::default();
        script.answers.lock().unwrap().push_back((Duration::ZERO, Answer::Down));
        script.now();
        let fences = Log::default();
        let (mut s, _) = session(&script, &fences);
        let t0 = Instant::now();
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(6)).await;
        assert_eq!(phase, Phase::Fenced { lease: None });
        assert_eq!(fences.0.lock().unwrap()[0] - t0, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_applied_after_it_timed_out_is_taken_over_not_granted_twice() {
        let script = Script::default();
        *script.slow_grant.lock().unwrap() = true;
        let fences = Log::default();
        let (mut s, status) = session(&script, &fences);
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(3)).await;
        let applied = script.applied.lock().unwrap().clone();
        assert_eq!(applied.len(), 1, "the first grant was applied");
        assert_eq!(
            phase,
            Phase::Registered { lease: applied[0] },
            "registered on that lease"
        );
        assert_eq!(*script.grants.lock().unwrap(), 0, "no second lease was granted");
        assert_eq!(*script.asks.lock().unwrap(), 2, "asked once more, for the same id");
        assert_eq!(status.borrow().lease, Some(applied[0]));
        assert!(fences.0.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_grants_back_off_to_the_lease_ttl_and_recover_when_the_cluster_does() {
        let script = Script::default();
        script
            .answers
            .lock()
            .unwrap()
            .extend([(Duration::ZERO, Answer::Down), (Duration::from_secs(60), Answer::Ack)]);
        script.now();
        let fences = Log::default();
        let (mut s, _) = session(&script, &fences);
        let t0 = Instant::now();
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(60)).await;
        assert_eq!(phase, Phase::Fenced { lease: None });
        // Retried every 250 ms before the fence and every second after, that was 72 asks;
        // doubling delays (each at least half of min(250 ms × 2^n, 5 s)) allow at most 30.
        let asks = *script.asks.lock().unwrap();
        assert!((12..=30).contains(&asks), "{asks} grants asked for in 60 s");
        // Back within one longest delay (5 s) and a keepalive interval once it answers.
        let mut phase = phase;
        while !matches!(phase, Phase::Registered { .. }) {
            phase = s.step(phase).await;
        }
        let back = Instant::now() - t0;
        assert!(back <= Duration::from_secs(66), "registered again at {back:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fence_that_falls_due_during_a_request_is_not_put_off_by_a_backoff() {
        // The grant is applied but answered too late; asked again, "the lease exists"; the
        // renewal of that lease then hangs until the fence deadline. The backoff that
        // follows must not delay the fence.
        let script = Script::default();
        *script.slow_grant.lock().unwrap() = true;
        *script.hang_keepalives.lock().unwrap() = true;
        let fences = Log::default();
        let (mut s, _) = session(&script, &fences);
        let t0 = Instant::now();
        let (phase, _) = drive(&mut s, Phase::Connecting, Duration::from_secs(5)).await;
        assert!(matches!(phase, Phase::Fenced { .. }), "{phase:?}");
        assert_eq!(fences.0.lock().unwrap()[0] - t0, Timing::default().fence_after());
    }
}
