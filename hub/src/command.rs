//! A remote command as the hub's domain sees it: what is sent, and how it ended. The relay turns these
//! into the agent protocol and back; the operator API turns results into job events.

use std::collections::BTreeMap;

pub use crate::store::Outcome;

/// A command for one agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Command {
    pub id: String,
    pub action: String,
    pub args: BTreeMap<String, String>,
    /// Who asked (the agent journals it).
    pub operator: String,
}

/// How one command ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandResult {
    pub outcome: Outcome,
    /// The process's exit code, when there was one; -1 otherwise.
    pub exit_code: i32,
    /// One line saying what happened and, for failures, what to do.
    pub message: String,
    /// Output cut at the action's cap, or dropped at the hub past the agent's window.
    pub output_dropped_bytes: u64,
    /// The agent answered from its journal (a redelivery of a command it had run).
    pub replayed: bool,
    pub duration_ms: i64,
}

impl CommandResult {
    /// A command that ended without running.
    pub fn not_run(outcome: Outcome, message: impl Into<String>) -> CommandResult {
        CommandResult { outcome, exit_code: -1, message: message.into(), ..Default::default() }
    }

    pub fn refused(message: impl Into<String>) -> CommandResult {
        CommandResult::not_run(Outcome::Refused, message)
    }
}
