//! Driving Debian's real `etcdctl` (3.4, package `etcd-client`) against a cluster.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

use crate::ProcessCluster;

const ETCDCTL: &str = "/usr/bin/etcdctl";

impl ProcessCluster {
    /// An `etcdctl` command (API v3, `--endpoints` = the running members) with `args`, for
    /// callers that spawn it themselves (e.g. a long-running `watch`). The caller's
    /// `ETCDCTL_*` environment is not passed on. Panics if etcdctl is not installed.
    pub fn etcdctl_cmd(&self, args: &[&str]) -> Command {
        if !Path::new(ETCDCTL).is_file() {
            panic!("{ETCDCTL} not found: install it with `apt-get install -y etcd-client`");
        }
        let mut cmd = Command::new(ETCDCTL);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `etcdctl args...` to completion.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("running etcdctl {args:?}: {e}"))
    }

    /// Runs `etcdctl args...` with `input` on its standard input (e.g. `txn`).
    pub fn etcdctl_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .etcdctl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running etcdctl {args:?}: {e}"));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing etcdctl's stdin: {e}"));
        drop(stdin);
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for etcdctl {args:?}: {e}"))
    }

    /// Runs `etcdctl args...` and returns its stdout, or an error with its exit status and
    /// output if it failed.
    pub fn etcdctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        checked(args, self.etcdctl(args))
    }

    /// Runs `etcdctl args... -w json` and parses its stdout.
    pub fn etcdctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-w", "json"]);
        let out = self.etcdctl_ok(&all)?;
        serde_json::from_str(&out).with_context(|| format!("etcdctl {all:?} printed {out:?}"))
    }
}

/// `output`'s stdout if it succeeded, else an error with everything it printed.
pub(crate) fn checked(args: &[&str], output: Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "etcdctl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
