//! Which coordinator binary a cluster runs, and where to find it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The binary name cargo gives the coordinator.
const COORDINATOR: &str = "esfleet-coordinator";
/// Overrides where [`Flavor::Esfleet`]'s binary is looked up.
const COORDINATOR_ENV: &str = "ESFLEET_COORDINATOR_BIN";
/// Debian's etcd 3.4 (package `etcd-server`).
const ETCD: &str = "/usr/bin/etcd";
/// Picks the flavor the integration tests run against: `esfleet` (default) or `etcd`.
const FLAVOR_ENV: &str = "ESFLEET_TEST_FLAVOR";

/// Which store a [`crate::ProcessCluster`] runs. Both take the same command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `esfleet-coordinator` from this workspace's cargo target dir.
    Esfleet,
    /// Debian's `/usr/bin/etcd` (3.4), the reference the tests are checked against.
    Etcd,
}

impl Flavor {
    /// The flavor the integration tests run against: [`Flavor::Esfleet`] unless
    /// `ESFLEET_TEST_FLAVOR=etcd`, which checks that the tests themselves hold for etcd.
    pub fn under_test() -> anyhow::Result<Self> {
        match std::env::var(FLAVOR_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Flavor::Esfleet),
            Ok(v) if v.is_empty() || v == "esfleet" => Ok(Flavor::Esfleet),
            Ok(v) if v == "etcd" => Ok(Flavor::Etcd),
            Ok(v) => bail!("{FLAVOR_ENV}={v:?}: expected `esfleet` or `etcd`"),
            Err(e) => bail!("{FLAVOR_ENV}: {e}"),
        }
    }

    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Esfleet => "esfleet",
            Flavor::Etcd => "etcd",
        }
    }

    /// The path of the binary to run, checked to exist.
    pub fn binary(self) -> anyhow::Result<PathBuf> {
        match self {
            Flavor::Etcd => {
                let path = PathBuf::from(ETCD);
                if !path.is_file() {
                    bail!(
                        "{ETCD} not found: install Debian's etcd 3.4 with \
                         `apt-get install -y etcd-server`"
                    );
                }
                Ok(path)
            }
            Flavor::Esfleet => {
                if let Some(path) = std::env::var_os(COORDINATOR_ENV) {
                    let path = PathBuf::from(path);
                    if !path.is_file() {
                        bail!("{COORDINATOR_ENV}={} is not a file", path.display());
                    }
                    return Ok(path);
                }
                let exe = std::env::current_exe().context("locating the running executable")?;
                let dir = profile_dir(&exe)?;
                let path = dir.join(COORDINATOR);
                if !path.is_file() {
                    let release = if dir.file_name().is_some_and(|n| n == "release") {
                        " --release"
                    } else {
                        ""
                    };
                    bail!(
                        "{} not found: build it with `cargo build{release} --bins` \
                         (or point {COORDINATOR_ENV} at the binary)",
                        path.display()
                    );
                }
                Ok(path)
            }
        }
    }
}

/// The `target/<profile>/` dir of a cargo-built executable: its own dir, or the parent of
/// `deps/` (tests) or `examples/`.
fn profile_dir(exe: &Path) -> anyhow::Result<PathBuf> {
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent dir", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps" || n == "examples") {
        dir = dir
            .parent()
            .with_context(|| format!("{} has no parent dir", dir.display()))?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_a_test_binary_is_above_deps() {
        let dir = profile_dir(Path::new("/w/target/debug/deps/it-0123abcd")).unwrap();
        assert_eq!(dir, Path::new("/w/target/debug"));
    }

    #[test]
    fn profile_dir_of_a_bin_is_its_own_dir() {
        let dir = profile_dir(Path::new("/w/target/release/bench")).unwrap();
        assert_eq!(dir, Path::new("/w/target/release"));
    }
}
