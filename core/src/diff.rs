//! The agent's reconcile step: `diff(desired, actual) -> Vec<Task>` (to be written).
