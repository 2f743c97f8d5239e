//! The key layout under `/esfleet/` (DESIGN.md "Keys"). Every key the system reads or
//! writes is built here, so the layout lives in one place.

use crate::name::UnitName;

pub const ROOT: &str = "/esfleet/";
pub const UNITS: &str = "/esfleet/units/";
pub const MACHINES: &str = "/esfleet/machines/";
pub const SCHEDULE: &str = "/esfleet/schedule/";
pub const STATES: &str = "/esfleet/states/";
pub const DRAIN: &str = "/esfleet/drain/";
/// Written by each new scheduler (leader) with its Raft term; plan writes compare it, so a
/// deposed leader's plan cannot land.
pub const SCHEDULER_EPOCH: &str = "/esfleet/scheduler/epoch";
/// `unplaceable/<unit>`: why the scheduler cannot place a unit that should run (plain
/// text); written by the scheduler, deleted once the unit is placed or no longer asked to
/// run. Replicated, so every member's Fleet service can show it and watchers see it.
pub const UNPLACEABLE: &str = "/esfleet/unplaceable/";
/// `es/<cluster>`: an Elasticsearch cluster definition (`esfleet es apply`), a
/// `core::es::ClusterRecord` in JSON. The scheduler renders each node's configuration from it.
pub const ES: &str = "/esfleet/es/";
/// `retired/<machine>/<unit>`: a placement the scheduler removed from a lost machine,
/// whose data that machine still holds (a `RetiredRecord` in JSON). Written by the
/// scheduler; the machine's agent removes the data when it registers again, then the key.
pub const RETIRED: &str = "/esfleet/retired/";

pub fn es_cluster(name: &str) -> String {
    format!("{ES}{name}")
}
pub fn unit(name: &UnitName) -> String {
    format!("{UNITS}{name}")
}
pub fn machine(id: &str) -> String {
    format!("{MACHINES}{id}")
}
pub fn schedule_prefix(machine: &str) -> String {
    format!("{SCHEDULE}{machine}/")
}
pub fn schedule(machine: &str, unit: &UnitName) -> String {
    format!("{SCHEDULE}{machine}/{unit}")
}
pub fn states_prefix(machine: &str) -> String {
    format!("{STATES}{machine}/")
}
pub fn state(machine: &str, unit: &UnitName) -> String {
    format!("{STATES}{machine}/{unit}")
}
pub fn drain(machine: &str) -> String {
    format!("{DRAIN}{machine}")
}
pub fn unplaceable(name: &UnitName) -> String {
    format!("{UNPLACEABLE}{name}")
}
pub fn retired_prefix(machine: &str) -> String {
    format!("{RETIRED}{machine}/")
}
pub fn retired(machine: &str, unit: &UnitName) -> String {
    format!("{RETIRED}{machine}/{unit}")
}

/// etcd's `range_end` for "every key with this prefix".
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Splits `<prefix><a>/<b>` into `(a, b)`; `None` for anything else.
pub fn split_two<'k>(key: &'k str, prefix: &str) -> Option<(&'k str, &'k str)> {
    key.strip_prefix(prefix)?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let u = UnitName::new("es@1.service").unwrap();
        assert_eq!(schedule("m1", &u), "/esfleet/schedule/m1/es@1.service");
        assert_eq!(split_two(&state("m1", &u), STATES), Some(("m1", "es@1.service")));
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(retired("m1", &u), format!("{}es@1.service", retired_prefix("m1")));
        assert_eq!(split_two(&retired("m1", &u), RETIRED), Some(("m1", "es@1.service")));
    }
}
