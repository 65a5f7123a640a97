//! What became of each role of a `callsync run` process: the `roles` check of `/readyz`, the
//! `callsync_role_up{role}` gauge and the process's exit code.
//!
//! A role that fails for a reason of its own (a fenced producer, a lost database) never takes
//! the healthy roles of its process down silently. With [`RoleFailurePolicy::StopAll`] (the
//! default) the process says which role failed and which healthy ones it stops because of it,
//! drains them and exits with the failed role's code ([`Role::exit_code`]), so a supervisor
//! restarts it. With [`RoleFailurePolicy::KeepOthers`] the healthy roles go on, `/readyz`
//! answers 503 naming the failed role, and the process exits with that code when stopped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::api::ReadinessCheck;
use crate::roles::Role;

/// 1 while a role of this process runs, 0 once it failed or stopped; labelled `role`.
pub const ROLE_UP: &str = "callsync_role_up";

/// What a process does with its other roles when one fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleFailurePolicy {
    /// Stop every role and exit with the failed role's code (for a supervisor to restart).
    #[default]
    StopAll,
    /// Keep the other roles running; `/readyz` answers 503 naming the failed role, and the
    /// process exits with its code when stopped.
    KeepOthers,
}

/// The state of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleState {
    Running,
    Stopped,
    Failed(String),
}

/// The roles of this process and their states. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RoleHealth {
    states: Arc<Mutex<BTreeMap<Role, RoleState>>>,
}

impl RoleHealth {
    pub fn running(&self, role: Role) {
        self.set(role, RoleState::Running);
    }

    pub fn stopped(&self, role: Role) {
        self.set(role, RoleState::Stopped);
    }

    pub fn failed(&self, role: Role, error: &anyhow::Error) {
        self.set(role, RoleState::Failed(format!("{error:#}")));
    }

    pub fn state(&self, role: Role) -> Option<RoleState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&role)
            .cloned()
    }

    /// The roles that failed, with their errors.
    pub fn failures(&self) -> Vec<(Role, String)> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(role, state)| match state {
                RoleState::Failed(message) => Some((*role, message.clone())),
                _ => None,
            })
            .collect()
    }

    /// The roles still running.
    pub fn running_roles(&self) -> Vec<Role> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, state)| **state == RoleState::Running)
            .map(|(role, _)| *role)
            .collect()
    }

    fn set(&self, role: Role, state: RoleState) {
        let up = if state == RoleState::Running {
            1.0
        } else {
            0.0
        };
        metrics::gauge!(ROLE_UP, "role" => role.as_str()).set(up);
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(role, state);
    }
}

/// `/readyz`'s `roles` check: fails while a role of this process has failed.
pub struct RolesReadiness {
    health: RoleHealth,
}

impl RolesReadiness {
    pub fn new(health: RoleHealth) -> Self {
        RolesReadiness { health }
    }
}

#[async_trait]
impl ReadinessCheck for RolesReadiness {
    fn name(&self) -> &str {
        "roles"
    }

    async fn check(&self) -> Result<(), String> {
        let failures = self.health.failures();
        if failures.is_empty() {
            return Ok(());
        }
        Err(failures
            .iter()
            .map(|(role, error)| format!("role {role} failed: {error}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// A role of `callsync run` failed: the process exits with [`Role::exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("role {role} failed (exit code {code}): {message}", code = role.exit_code())]
pub struct RoleFailed {
    pub role: Role,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_the_failed_role_and_its_error() {
        let health = RoleHealth::default();
        health.running(Role::Processor);
        health.running(Role::Sink);
        let check = RolesReadiness::new(health.clone());
        assert_eq!(check.check().await, Ok(()));
        health.failed(
            Role::Processor,
            &anyhow::anyhow!("fenced by a newer instance"),
        );
        let message = check.check().await.unwrap_err();
        assert!(
            message.contains("role processor failed: fenced by a newer instance"),
            "{message}"
        );
        assert_eq!(health.running_roles(), vec![Role::Sink]);
    }

    #[test]
    fn every_role_has_its_own_exit_code() {
        let codes: std::collections::BTreeSet<u8> =
            Role::ALL.iter().map(|r| r.exit_code()).collect();
        assert_eq!(codes.len(), Role::ALL.len());
        assert!(
            codes.iter().all(|&c| c > 2),
            "0-2 mean success, error, usage"
        );
    }
}
