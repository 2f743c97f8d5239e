//! sled_purge: how sled 0.34 reclaims the space of a Raft log's purges, alone.
//!
//! Appends log entries (`--entry-bytes` each, one batch per append, a flush every
//! `--flush-every` appends) and, every `--purge-every` entries, purges all but the last
//! `--keep`: `--mode bulk` deletes the purged range in one batch (what the coordinator's log
//! store did), `--mode lazy` deletes two purged entries with each later append (what it does
//! now). Prints sled's size on disk as it goes; not run by CI. It was written to show why
//! the bulk purge made real members' data dirs grow, and does not: sled alone reaches the
//! same plateau both ways (BENCHMARKS.md, "Data dir under churn").

use std::time::Instant;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Bulk,
    Lazy,
}

#[derive(Debug, Parser)]
#[command(about = "How sled reclaims the space of Raft log purges")]
struct Args {
    #[arg(long, value_enum, default_value = "bulk")]
    mode: Mode,
    /// Entries appended in all.
    #[arg(long, default_value_t = 400_000)]
    entries: u64,
    #[arg(long, default_value_t = 1200)]
    entry_bytes: usize,
    #[arg(long, default_value_t = 10_000)]
    purge_every: u64,
    #[arg(long, default_value_t = 1_000)]
    keep: u64,
    #[arg(long, default_value_t = 10)]
    flush_every: u64,
    #[arg(long, default_value_t = 50_000)]
    report_every: u64,
    /// Also what the state machine writes alongside: per append a 450-byte revision record
    /// and a small meta key overwritten, and every 3,000 appends the revisions older than
    /// the last 40,000 deleted in one batch (compaction).
    #[arg(long)]
    with_revisions: bool,
}

fn key(i: u64) -> [u8; 9] {
    keyed(2, i)
}

fn keyed(space: u8, i: u64) -> [u8; 9] {
    let mut k = [space; 9];
    k[1..].copy_from_slice(&i.to_be_bytes());
    k
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(Some(1000))
        .cache_capacity(64 * 1024 * 1024)
        .open()?;
    let tree = db.open_tree("log")?;
    let value = vec![7u8; a.entry_bytes];
    let (mut purged_to, mut next_delete) = (0u64, 0u64);
    let t = Instant::now();
    println!(
        "mode {:?}: {} entries of {} bytes, purge every {} keeping {}, flush every {}",
        a.mode, a.entries, a.entry_bytes, a.purge_every, a.keep, a.flush_every
    );
    for i in 1..=a.entries {
        let mut b = sled::Batch::default();
        b.insert(&key(i), value.clone());
        if a.mode == Mode::Lazy {
            for _ in 0..2 {
                if next_delete < purged_to {
                    b.remove(&key(next_delete));
                    next_delete += 1;
                }
            }
        }
        if a.with_revisions {
            b.insert(&keyed(3, i), vec![9u8; 450]);
            b.insert(&[1u8, b'a'][..], &i.to_be_bytes()[..]);
        }
        tree.apply_batch(b)?;
        if a.with_revisions && i % 3000 == 0 && i > 40_000 {
            let mut b = sled::Batch::default();
            for j in (i - 43_000)..(i - 40_000) {
                b.remove(&keyed(3, j));
            }
            tree.apply_batch(b)?;
        }
        if i % a.purge_every == 0 {
            let upto = i - a.keep;
            match a.mode {
                Mode::Bulk => {
                    let mut b = sled::Batch::default();
                    for j in purged_to..upto {
                        b.remove(&key(j));
                    }
                    tree.apply_batch(b)?;
                }
                Mode::Lazy => {}
            }
            purged_to = upto;
            if a.mode == Mode::Bulk {
                next_delete = upto;
            }
        }
        if i % a.flush_every == 0 {
            db.flush()?;
        }
        if i % a.report_every == 0 {
            let revs = if a.with_revisions { i.min(40_000) * 459 } else { 0 };
            let live = (i - next_delete) * (a.entry_bytes as u64 + 9) + revs;
            println!(
                "{i:>8} entries: on disk {:>7.1} MiB, stored entries {:>6.1} MiB ({:.0} s)",
                db.size_on_disk()? as f64 / 1048576.0,
                live as f64 / 1048576.0,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
