//! The agent's gRPC service (`esfleet.agent.v1.Agent`): `systemctl status` and the journal
//! of a unit, for operators (reached through the coordinator). Only units scheduled to
//! this machine are answered, the name is validated first ([`UnitName`]: no spaces, no
//! `/`), and the commands are spawned directly, never through a shell. A unit name may
//! begin with `-`, so it goes after `--` (systemctl) or as the value of `-u` (journalctl),
//! never where it could be read as an option. Each request runs a process on the host,
//! so at most [`MAX_COMMANDS`] run at once (a following journal holds its place until
//! the client goes away); more are refused, not queued.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;

use esfleet_core::UnitName;
use esfleet_proto::agent::{self as pb, agent_server::Agent};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

/// Most journal lines one request may ask for.
pub const MAX_JOURNAL_LINES: u32 = 10_000;
/// Lines when the request asks for none.
const DEFAULT_JOURNAL_LINES: u32 = 50;
/// Most `systemctl status` / `journalctl` processes the service runs at once.
pub const MAX_COMMANDS: usize = 16;

/// Tells whether a unit is scheduled to this machine.
pub type Scheduled = Arc<dyn Fn(&UnitName) -> bool + Send + Sync>;

/// The programs run (configurable so tests can substitute them).
#[derive(Debug, Clone)]
pub struct Commands {
    pub systemctl: PathBuf,
    pub journalctl: PathBuf,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            systemctl: "systemctl".into(),
            journalctl: "journalctl".into(),
        }
    }
}

pub struct AgentService {
    pub machine_id: String,
    pub scheduled: Scheduled,
    pub commands: Commands,
    running: Arc<tokio::sync::Semaphore>,
}

type JournalStream = Pin<Box<dyn Stream<Item = Result<pb::JournalLine, Status>> + Send>>;

impl AgentService {
    pub fn new(machine_id: String, scheduled: Scheduled, commands: Commands) -> AgentService {
        AgentService {
            machine_id,
            scheduled,
            commands,
            running: Arc::new(tokio::sync::Semaphore::new(MAX_COMMANDS)),
        }
    }

    /// A place for one more process, or why not.
    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.running.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "machine {} already runs {MAX_COMMANDS} status/journal requests (following journals count until \
                 their clients go away); try again later",
                self.machine_id
            ))
        })
    }

    fn check(&self, unit: &str) -> Result<UnitName, Status> {
        let name = UnitName::new(unit).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !(self.scheduled)(&name) {
            return Err(Status::not_found(format!(
                "unit {name} is not scheduled to machine {}; `esfleet list-units` shows where it runs",
                self.machine_id
            )));
        }
        Ok(name)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type JournalStream = JournalStream;

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let name = self.check(&req.get_ref().unit)?;
        let _permit = self.permit()?;
        let out = Command::new(&self.commands.systemctl)
            .args(["status", "--no-pager", "--full", "--", name.as_str()])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Status::internal(format!("cannot run {}: {e}", self.commands.systemctl.display())))?;
        // systemctl status exits 3 for an inactive unit; its text is still the answer.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(Response::new(pb::StatusResponse {
            machine_id: self.machine_id.clone(),
            text,
        }))
    }

    async fn journal(&self, req: Request<pb::JournalRequest>) -> Result<Response<JournalStream>, Status> {
        let r = req.into_inner();
        let name = self.check(&r.unit)?;
        let permit = self.permit()?;
        let lines = match r.lines {
            0 => DEFAULT_JOURNAL_LINES,
            n => n.min(MAX_JOURNAL_LINES),
        };
        let mut cmd = Command::new(&self.commands.journalctl);
        cmd.args(["-u", name.as_str(), "-n", &lines.to_string(), "--no-pager"]);
        if r.follow {
            cmd.arg("-f");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("cannot run {}: {e}", self.commands.journalctl.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            loop {
                tokio::select! {
                    line = reader.next_line() => match line {
                        Ok(Some(line)) => {
                            if tx.send(Ok(pb::JournalLine { line })).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(format!("reading the journal: {e}")))).await;
                            break;
                        }
                    },
                    // The client went away: stop following.
                    _ = tx.closed() => break,
                }
            }
            // Dropping the child kills a following journalctl.
            let _ = child.start_kill();
            let _ = child.wait().await;
            drop(permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn service() -> AgentService {
        AgentService::new(
            "m".into(),
            Arc::new(|u: &UnitName| u.as_str() == "a.service"),
            // `echo` prints its arguments: proof of exactly what would be run, no shell.
            Commands {
                systemctl: "echo".into(),
                journalctl: "echo".into(),
            },
        )
    }

    #[tokio::test]
    async fn following_journals_are_bounded_and_give_their_place_back() {
        let dir = tempfile::tempdir().unwrap();
        let follower = dir.path().join("journalctl");
        std::fs::write(&follower, "#!/bin/sh\necho first\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&follower, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let s = AgentService::new(
            "m".into(),
            Arc::new(|_: &UnitName| true),
            Commands {
                systemctl: "echo".into(),
                journalctl: follower,
            },
        );
        let follow = || {
            s.journal(Request::new(pb::JournalRequest {
                unit: "a.service".into(),
                lines: 1,
                follow: true,
            }))
        };
        let mut open = Vec::new();
        for _ in 0..MAX_COMMANDS {
            let mut stream = follow().await.unwrap().into_inner();
            assert_eq!(stream.next().await.unwrap().unwrap().line, "first");
            open.push(stream);
        }
        let e = follow().await.err().expect("one more than the limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("16 status/journal requests"), "{e:?}");
        let e = s
            .status(Request::new(pb::StatusRequest {
                unit: "a.service".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        // A client goes away: its journalctl is killed and its place given back.
        drop(open.pop());
        let t = std::time::Instant::now();
        loop {
            match follow().await {
                Ok(_) => break,
                Err(_) if t.elapsed() < std::time::Duration::from_secs(10) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("the place was not given back: {e:?}"),
            }
        }
    }

    #[tokio::test]
    async fn status_runs_systemctl_for_scheduled_units_only() {
        let s = service();
        let r = s
            .status(Request::new(pb::StatusRequest {
                unit: "a.service".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.text, "status --no-pager --full -- a.service\n");
        let e = s
            .status(Request::new(pb::StatusRequest {
                unit: "b.service".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = s
            .status(Request::new(pb::StatusRequest {
                unit: "a.service; rm -rf /".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn journal_streams_lines() {
        let s = service();
        let mut stream = s
            .journal(Request::new(pb::JournalRequest {
                unit: "a.service".into(),
                lines: 20,
                follow: true,
            }))
            .await
            .unwrap()
            .into_inner();
        let line = stream.next().await.unwrap().unwrap();
        assert_eq!(line.line, "-u a.service -n 20 --no-pager -f");
        assert!(stream.next().await.is_none());
    }
}
