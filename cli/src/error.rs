//! The CLI's errors and their exit codes: 1 when an operation failed, 2 when the command
//! line is wrong. Every message names the problem and, where there is one, the fix.

use std::fmt::Write as _;

use tonic::{Code, Status};

/// Exit code of a failed operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of a usage error (clap uses the same).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong: a bad flag value, a unit name that is not one.
    #[error("{0}")]
    Usage(String),
    /// The operation was refused or did not complete; the message says why.
    #[error("{0}")]
    Failed(String),
    /// No endpoint could serve the request: what each one said.
    #[error("{}", unreachable_message(what, tried))]
    Unreachable {
        /// The request, e.g. "ListUnits".
        what: String,
        /// Each endpoint tried, with what it answered (or why it could not be asked).
        tried: Vec<(String, String)>,
    },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) | CliError::Unreachable { .. } => EXIT_FAILED,
        }
    }

    /// A refusal from the server: its message already names the problem and the fix.
    pub fn from_status(status: &Status) -> CliError {
        let msg = status.message();
        let msg = if msg.is_empty() {
            status_chain(status)
        } else {
            msg.to_string()
        };
        match status.code() {
            Code::Unimplemented => CliError::Failed(format!(
                "the server does not serve this request ({msg}); is the endpoint an esfleet-coordinator of \
                 the same version as this esfleet?"
            )),
            Code::PermissionDenied | Code::Unauthenticated => {
                CliError::Failed(format!("the cluster refused the request: {msg}"))
            }
            _ => CliError::Failed(msg),
        }
    }
}

fn unreachable_message(what: &str, tried: &[(String, String)]) -> String {
    let mut s = format!(
        "could not reach the esfleet cluster for {what}; tried {} endpoint{}:",
        tried.len(),
        if tried.len() == 1 { "" } else { "s" }
    );
    for (url, said) in tried {
        let _ = write!(s, "\n  {url}: {said}");
    }
    s.push_str(
        "\nfix: check that the coordinators are running and that --endpoints (or ESFLEET_ENDPOINTS) lists \
         their client URLs, e.g. --endpoints http://10.0.0.1:2379,http://10.0.0.2:2379",
    );
    s
}

/// A status with the chain of its sources ("transport error: tcp connect error: Connection
/// refused"): tonic's own message for a failed connection says only "transport error".
pub fn status_chain(status: &Status) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !status.message().is_empty() {
        parts.push(status.message().to_string());
    }
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        // "transport error" says nothing the other parts do not.
        if text != "transport error" && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    if parts.is_empty() {
        format!("{:?}", status.code())
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_lists_every_endpoint_and_the_fix() {
        let e = CliError::Unreachable {
            what: "ListUnits".into(),
            tried: vec![
                ("http://127.0.0.1:1".into(), "connection refused".into()),
                ("http://127.0.0.1:2".into(), "no leader".into()),
            ],
        };
        assert_eq!(
            e.to_string(),
            "could not reach the esfleet cluster for ListUnits; tried 2 endpoints:\n  http://127.0.0.1:1: \
             connection refused\n  http://127.0.0.1:2: no leader\nfix: check that the coordinators are running \
             and that --endpoints (or ESFLEET_ENDPOINTS) lists their client URLs, e.g. --endpoints \
             http://10.0.0.1:2379,http://10.0.0.2:2379"
        );
        assert_eq!(e.exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }
}
