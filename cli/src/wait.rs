//! Waiting until units reach a state, from the Fleet service's WatchUnitStates stream (no
//! polling): [`evaluate`] is the pure judgement of one unit's view, [`wait_for`] drives the
//! stream and shows progress (a live view on a terminal, one line per unit otherwise).
//!
//! A unit that cannot be placed, that the agent cannot run, or that fails after the command
//! fails the wait at once (fleet's `start` hung forever instead: fleet #559).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use esfleet_proto::fleet as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::client::{Client, Retry};
use crate::error::CliError;
use crate::render::machine_label;

/// The state a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Every placement reports active with the unit's current text (`start`).
    Launched,
    /// Every placement reports loaded and not running (`load`, `stop`).
    Loaded,
    /// No placement is left (`unload`).
    Unloaded,
    /// The unit is gone and no placement is left (`destroy`).
    Destroyed,
}

/// One unit's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not there yet: what it is doing.
    Waiting(String),
    /// There: where (e.g. `launched on 1a2b3c4d.../10.0.0.1`).
    Done(String),
    /// It will not get there without help: why, and what to do.
    Failed(String),
}

/// Placements that had already failed when the wait began (unit, machine, since): a failure
/// from before the command is not this command's failure.
#[derive(Debug, Clone, Default)]
pub struct Baseline(BTreeSet<(String, String, u64)>);

impl Baseline {
    pub fn from_first(units: &[pb::UnitInfo]) -> Baseline {
        Baseline(
            units
                .iter()
                .flat_map(|u| {
                    u.placements
                        .iter()
                        .filter(|p| p.active == "failed")
                        .map(|p| (u.name.clone(), p.machine_id.clone(), p.since_usec))
                })
                .collect(),
        )
    }
}

fn labels(info: &pb::UnitInfo, full: bool) -> String {
    info.placements
        .iter()
        .map(|p| machine_label(&p.machine_id, &p.machine_address, full))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where `info` stands with respect to `goal`.
pub fn evaluate(goal: Goal, info: &pb::UnitInfo, baseline: &Baseline, full: bool) -> Verdict {
    let name = &info.name;
    match goal {
        Goal::Unloaded | Goal::Destroyed => {
            let gone = goal == Goal::Unloaded || !info.exists;
            return if info.placements.is_empty() && gone {
                Verdict::Done(
                    if goal == Goal::Unloaded {
                        "unloaded"
                    } else {
                        "destroyed"
                    }
                    .into(),
                )
            } else if info.placements.is_empty() {
                Verdict::Waiting("waiting for the cluster to forget it".into())
            } else {
                Verdict::Waiting(format!("still on {}", labels(info, full)))
            };
        }
        Goal::Launched | Goal::Loaded => {}
    }
    if !info.exists {
        return Verdict::Failed(format!(
            "{name} was destroyed while waiting (by another `esfleet destroy`?)"
        ));
    }
    if !info.unplaceable.is_empty() {
        return Verdict::Failed(format!(
            "{name} cannot be placed: {}\n  (its desired state stays {}: it is placed as soon as that changes; \
             `esfleet unload {name}` cancels)",
            info.unplaceable, info.desired
        ));
    }
    if info.placements.is_empty() {
        return Verdict::Waiting("waiting for the scheduler to place it".into());
    }
    let mut waiting = Vec::new();
    for p in &info.placements {
        let at = machine_label(&p.machine_id, &p.machine_address, full);
        if p.reported && !p.error.is_empty() {
            return Verdict::Failed(format!("the agent on {at} cannot run {name}: {}", p.error));
        }
        let current = p.reported && p.reported_hash == info.hash;
        if goal == Goal::Launched
            && current
            && p.active == "failed"
            && !baseline.0.contains(&(name.clone(), p.machine_id.clone(), p.since_usec))
        {
            return Verdict::Failed(format!(
                "{name} failed on {at} ({}); see `esfleet status {name}` and `esfleet journal {name}`",
                if p.sub.is_empty() { "failed" } else { &p.sub }
            ));
        }
        let there = current
            && match goal {
                Goal::Launched => p.active == "active",
                _ => p.load == "loaded" && matches!(p.active.as_str(), "inactive" | "failed"),
            };
        if there {
            continue;
        }
        waiting.push(if !p.reported {
            format!("placed on {at}, waiting for its agent")
        } else if p.reported_hash != info.hash {
            format!("on {at}, waiting for the agent to write the new unit file")
        } else if goal == Goal::Launched && p.desired == "loaded" {
            format!("loaded on {at}, waiting for its StartAfter= units to be active")
        } else {
            format!("{} ({}) on {at}", p.active, p.sub)
        });
    }
    if waiting.is_empty() {
        let word = if goal == Goal::Launched { "launched" } else { "loaded" };
        Verdict::Done(format!("{word} on {}", labels(info, full)))
    } else {
        Verdict::Waiting(waiting.join("; "))
    }
}

/// What a wait shows.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    pub goal: Goal,
    /// 0: no limit.
    pub timeout: Duration,
    /// A live view (stdout is a terminal).
    pub live: bool,
    /// Full machine ids.
    pub full: bool,
}

/// Most units drawn as separate lines in the live view; beyond, one counter.
const LIVE_LINES: usize = 30;

/// The progress display: a line per unit or a counter on a terminal, else plain lines.
enum Display {
    Lines,
    Bars {
        /// Owns the drawing of the bars; kept alive until the wait ends.
        _multi: MultiProgress,
        bars: BTreeMap<String, ProgressBar>,
    },
    Counter(ProgressBar),
}

impl Display {
    fn new(names: &[String], live: bool) -> Display {
        if !live {
            return Display::Lines;
        }
        let style = ProgressStyle::with_template("{spinner} {msg}").expect("a valid template");
        if names.len() > LIVE_LINES {
            let bar = ProgressBar::with_draw_target(Some(names.len() as u64), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {pos}/{len} units there {wide_msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            return Display::Counter(bar);
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let bars = names
            .iter()
            .map(|n| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_message(format!("{n}: waiting for the cluster"));
                bar.enable_steady_tick(Duration::from_millis(120));
                (n.clone(), bar)
            })
            .collect();
        Display::Bars { _multi: multi, bars }
    }

    fn update(&self, name: &str, verdict: &Verdict) {
        match (self, verdict) {
            (Display::Bars { bars, .. }, Verdict::Waiting(what)) => {
                if let Some(b) = bars.get(name) {
                    b.set_message(format!("{name}: {what}"));
                }
            }
            (_, Verdict::Waiting(_)) => {}
            (_, Verdict::Done(how)) => self.finish(name, format!("Unit {name} {how}")),
            (_, Verdict::Failed(_)) => self.finish(name, format!("Unit {name} failed")),
        }
    }

    fn finish(&self, name: &str, line: String) {
        match self {
            Display::Lines => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Display::Bars { bars, .. } => {
                if let Some(b) = bars.get(name) {
                    b.finish_with_message(line);
                }
            }
            Display::Counter(bar) => {
                bar.println(line);
                bar.inc(1);
            }
        }
    }

    fn close(&self) {
        match self {
            Display::Lines => {}
            // Finished lines stay on the screen (no clear): they are the command's output.
            Display::Bars { bars, .. } => {
                for b in bars.values().filter(|b| !b.is_finished()) {
                    b.abandon();
                }
            }
            Display::Counter(bar) => bar.abandon(),
        }
    }
}

async fn open(client: &Client, names: &[String]) -> Result<tonic::Streaming<pb::WatchUnitStatesResponse>, CliError> {
    let req = pb::WatchUnitStatesRequest { names: names.to_vec() };
    client
        .call("WatchUnitStates", Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { crate::client::fleet(ch).watch_unit_states(req).await }
        })
        .await
}

/// Waits until every unit in `names` (literal names) reaches the goal; fails at once when
/// one cannot. A broken stream is reopened on the next member.
pub async fn wait_for(client: &Client, names: &[String], opts: WaitOptions) -> Result<(), CliError> {
    if names.is_empty() {
        return Ok(());
    }
    let deadline = (!opts.timeout.is_zero()).then(|| Instant::now() + opts.timeout);
    let display = Display::new(names, opts.live);
    let result = drive(client, names, opts, deadline, &display).await;
    display.close();
    result
}

async fn drive(
    client: &Client,
    names: &[String],
    opts: WaitOptions,
    deadline: Option<Instant>,
    display: &Display,
) -> Result<(), CliError> {
    let mut stream = open(client, names).await?;
    let mut baseline: Option<Baseline> = None;
    let mut standing: BTreeMap<String, Verdict> = names
        .iter()
        .map(|n| (n.clone(), Verdict::Waiting("waiting for the cluster".into())))
        .collect();
    let mut reopened = 0;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                Ok(m) => m,
                Err(_) => return Err(timed_out(opts, &standing)),
            },
            None => stream.message().await,
        };
        let msg = match next {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) if reopened < 10 => {
                // The member went away (or the stream broke): follow on another one; the
                // new stream starts with every unit's full view.
                reopened += 1;
                client.skip_preferred();
                tokio::time::sleep(Duration::from_millis(100 * reopened)).await;
                stream = open(client, names).await?;
                continue;
            }
            Ok(None) => {
                return Err(CliError::Failed(
                    "the cluster kept closing the unit-state stream".into(),
                ))
            }
            Err(status) => return Err(CliError::from_status(&status)),
        };
        let baseline = baseline.get_or_insert_with(|| Baseline::from_first(&msg.units));
        let mut failures = Vec::new();
        for info in &msg.units {
            let Some(old) = standing.get(&info.name) else { continue };
            if matches!(old, Verdict::Done(_)) {
                continue;
            }
            let v = evaluate(opts.goal, info, baseline, opts.full);
            if &v != old {
                display.update(&info.name, &v);
            }
            if let Verdict::Failed(why) = &v {
                failures.push(why.clone());
            }
            standing.insert(info.name.clone(), v);
        }
        if !failures.is_empty() {
            return Err(CliError::Failed(failures.join("\n")));
        }
        if standing.values().all(|v| matches!(v, Verdict::Done(_))) {
            return Ok(());
        }
    }
}

fn timed_out(opts: WaitOptions, standing: &BTreeMap<String, Verdict>) -> CliError {
    const SHOWN: usize = 20;
    let waiting: Vec<(&String, &String)> = standing
        .iter()
        .filter_map(|(n, v)| match v {
            Verdict::Waiting(w) => Some((n, w)),
            _ => None,
        })
        .collect();
    let mut msg = format!(
        "gave up after {} (--timeout); {} unit{} not there yet:",
        humantime::format_duration(opts.timeout),
        waiting.len(),
        if waiting.len() == 1 { " is" } else { "s are" }
    );
    for (n, w) in waiting.iter().take(SHOWN) {
        msg.push_str(&format!("\n  {n}: {w}"));
    }
    if waiting.len() > SHOWN {
        msg.push_str(&format!("\n  … and {} more", waiting.len() - SHOWN));
    }
    msg.push_str(
        "\nthe desired state stays as set; follow with `esfleet list-unit-files`, or wait longer with --timeout",
    );
    CliError::Failed(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "1a2b3c4d5e6f47a8b9c0d1e2f3a4b5c6";

    fn unit(placements: Vec<pb::Placement>) -> pb::UnitInfo {
        pb::UnitInfo {
            name: "hello.service".into(),
            hash: "h1".into(),
            desired: "launched".into(),
            exists: true,
            placements,
            ..Default::default()
        }
    }

    fn placed(active: &str, sub: &str) -> pb::Placement {
        pb::Placement {
            machine_id: M.into(),
            machine_address: "10.0.0.1".into(),
            desired: "launched".into(),
            hash: "h1".into(),
            load: "loaded".into(),
            active: active.into(),
            sub: sub.into(),
            reported_hash: "h1".into(),
            reported: true,
            since_usec: 5,
            ..Default::default()
        }
    }

    fn eval(goal: Goal, u: &pb::UnitInfo) -> Verdict {
        evaluate(goal, u, &Baseline::default(), false)
    }

    #[test]
    fn launched_when_every_placement_runs_the_current_text() {
        assert_eq!(
            eval(Goal::Launched, &unit(vec![placed("active", "running")])),
            Verdict::Done("launched on 1a2b3c4d.../10.0.0.1".into())
        );
        let mut old = placed("active", "running");
        old.reported_hash = "h0".into();
        assert!(matches!(eval(Goal::Launched, &unit(vec![old])), Verdict::Waiting(w) if w.contains("new unit file")));
        assert!(matches!(eval(Goal::Launched, &unit(vec![])), Verdict::Waiting(w) if w.contains("scheduler")));
        let mut gated = placed("inactive", "dead");
        gated.desired = "loaded".into();
        assert!(matches!(eval(Goal::Launched, &unit(vec![gated])), Verdict::Waiting(w) if w.contains("StartAfter")));
    }

    #[test]
    fn unplaceable_fails_fast_with_the_reason() {
        let mut u = unit(vec![]);
        u.unplaceable = "no machine has zone=z9".into();
        let Verdict::Failed(why) = eval(Goal::Launched, &u) else {
            panic!()
        };
        assert!(
            why.starts_with("hello.service cannot be placed: no machine has zone=z9"),
            "{why}"
        );
    }

    #[test]
    fn a_failure_counts_only_if_it_is_new() {
        let u = unit(vec![placed("failed", "failed")]);
        let before = Baseline::from_first(std::slice::from_ref(&u));
        assert!(matches!(
            evaluate(Goal::Launched, &u, &before, false),
            Verdict::Waiting(_)
        ));
        assert!(matches!(eval(Goal::Launched, &u), Verdict::Failed(w) if w.contains("esfleet journal")));
        let mut broken = placed("inactive", "dead");
        broken.error = "cannot write the unit file".into();
        assert!(matches!(eval(Goal::Loaded, &unit(vec![broken])), Verdict::Failed(w) if w.contains("cannot write")));
    }

    #[test]
    fn loaded_unloaded_destroyed() {
        assert!(matches!(
            eval(Goal::Loaded, &unit(vec![placed("inactive", "dead")])),
            Verdict::Done(_)
        ));
        assert!(matches!(
            eval(Goal::Loaded, &unit(vec![placed("active", "running")])),
            Verdict::Waiting(_)
        ));
        assert!(matches!(
            eval(Goal::Unloaded, &unit(vec![placed("inactive", "dead")])),
            Verdict::Waiting(_)
        ));
        assert_eq!(eval(Goal::Unloaded, &unit(vec![])), Verdict::Done("unloaded".into()));
        assert!(matches!(eval(Goal::Destroyed, &unit(vec![])), Verdict::Waiting(_)));
        let mut gone = unit(vec![]);
        gone.exists = false;
        assert_eq!(eval(Goal::Destroyed, &gone), Verdict::Done("destroyed".into()));
        assert!(matches!(eval(Goal::Launched, &gone), Verdict::Failed(_)));
    }
}
