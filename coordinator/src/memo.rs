//! What a member keeps outside the Raft state for the fencing bound ([`crate::lease`]):
//! when it last heard from a leader, and the members it saw leave the membership. A
//! member restarted within the same boot goes on from them, so a restart neither hands its
//! agents a fresh span of "no leader" answers nor makes it forget a removed member it must
//! keep watching when it leads.
//!
//! Both are small files in the data dir, timed on the boot clock (`CLOCK_BOOTTIME`: counts
//! suspend, shared by every process) with the boot's id. After a reboot their age is
//! unknown, and they are read in the safe direction: never heard from a leader; removed
//! at the restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// Time since boot, suspend included.
fn boot_clock() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// This boot's id (empty if the kernel does not say).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `instant` on the boot clock, in milliseconds.
fn on_boot_clock(instant: Instant) -> u128 {
    boot_clock().saturating_sub(instant.elapsed()).as_millis()
}

/// The instant a boot-clock time stands for (`None`: of another boot, or garbled).
fn from_boot_clock(ms: &str, boot: &str, this_boot: &str) -> Option<Instant> {
    if boot.is_empty() || boot != this_boot {
        return None;
    }
    // `now` before the boot clock: the time read back is older, never newer.
    let now = Instant::now();
    let age = boot_clock().checked_sub(Duration::from_millis(ms.parse().ok()?))?;
    now.checked_sub(age)
}

pub struct Memo {
    dir: PathBuf,
    boot: String,
    /// A write failed and was logged; quiet until one succeeds.
    failing: std::sync::atomic::AtomicBool,
}

impl Memo {
    pub fn new(dir: &Path) -> Memo {
        Memo {
            dir: dir.to_path_buf(),
            boot: boot_id(),
            failing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// When this member last heard from a leader (kept by an earlier process of this boot).
    pub fn heard(&self) -> Option<Instant> {
        let text = std::fs::read_to_string(self.dir.join("heard")).ok()?;
        let mut words = text.split_whitespace();
        let (boot, ms) = (words.next()?, words.next()?);
        from_boot_clock(ms, boot, &self.boot)
    }

    pub fn keep_heard(&self, at: Instant) {
        self.write("heard", &format!("{} {}\n", self.boot, on_boot_clock(at)), false);
    }

    /// The members this member saw leave, with when; those of an earlier boot as if they
    /// left now.
    pub fn removed(&self) -> HashMap<u64, Instant> {
        let Ok(text) = std::fs::read_to_string(self.dir.join("removed")) else {
            return HashMap::new();
        };
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let id = u64::from_str_radix(words.next()?, 16).ok()?;
                let (boot, ms) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                Some((id, from_boot_clock(ms, boot, &self.boot).unwrap_or_else(Instant::now)))
            })
            .collect()
    }

    /// Keeps the removals (synced: rare, and a reboot must not lose them); false if the
    /// write failed.
    pub fn keep_removed(&self, left: &HashMap<u64, Instant>) -> bool {
        let text: String = left
            .iter()
            .map(|(id, at)| format!("{id:x} {} {}\n", self.boot, on_boot_clock(*at)))
            .collect();
        self.write("removed", &text, true)
    }

    /// The membership this member last saw (other members' ids), so that a removal it had
    /// not noted before a restart is noted after it.
    pub fn members(&self) -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(self.dir.join("members")).ok()?;
        text.split_whitespace()
            .map(|w| u64::from_str_radix(w, 16).ok())
            .collect()
    }

    pub fn keep_members(&self, members: &[u64]) -> bool {
        let text: String = members.iter().map(|id| format!("{id:x}\n")).collect();
        self.write("members", &text, true)
    }

    /// Written aside and renamed: a crash never leaves half a file. A failure is logged
    /// once, until a write succeeds again.
    fn write(&self, name: &str, text: &str, sync: bool) -> bool {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.new"));
        let res = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                if sync {
                    f.sync_all()?;
                }
                Ok(())
            })
            .and_then(|_| std::fs::rename(&tmp, &path));
        match res {
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot keep fencing state for a restart");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restart_reads_back_when_it_heard_and_who_left() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::new(dir.path());
        assert!(memo.heard().is_none(), "nothing kept yet");
        assert!(memo.removed().is_empty());
        let heard = Instant::now() - Duration::from_secs(3);
        memo.keep_heard(heard);
        let left = HashMap::from([(0xab, Instant::now() - Duration::from_secs(20))]);
        memo.keep_removed(&left);

        let again = Memo::new(dir.path());
        let back = again.heard().expect("kept");
        assert!(back.elapsed() >= Duration::from_secs(3) && back.elapsed() < Duration::from_secs(4));
        let removed = again.removed();
        assert_eq!(removed.keys().collect::<Vec<_>>(), [&0xab]);
        assert!(removed[&0xab].elapsed() >= Duration::from_secs(20));
        assert!(again.members().is_none());
        assert!(memo.keep_members(&[1, 0x2f]));
        assert_eq!(again.members(), Some(vec![1, 0x2f]));
    }

    #[tokio::test]
    async fn another_boot_s_times_are_read_in_the_safe_direction() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("heard"), "other-boot 5000\n").unwrap();
        std::fs::write(dir.path().join("removed"), "ab other-boot 5000\ncd\nzz x y\n").unwrap();
        let memo = Memo::new(dir.path());
        assert!(memo.heard().is_none(), "never heard, as far as this boot knows");
        let removed = memo.removed();
        let mut ids: Vec<u64> = removed.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, [0xab, 0xcd], "a garbled id is skipped");
        assert!(
            removed.values().all(|at| at.elapsed() < Duration::from_secs(1)),
            "removed as of now"
        );
    }
}
