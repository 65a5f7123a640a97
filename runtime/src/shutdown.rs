//! Graceful shutdown: one token that every stage watches.
//!
//! SIGTERM or SIGINT cancels the token; each stage finishes or aborts the batch
//! in flight, commits what it may, and returns.

use tokio_util::sync::CancellationToken;

/// A cloneable handle to the process-wide shutdown signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel on SIGTERM or SIGINT. Call once, inside the tokio runtime.
    pub fn listen_for_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received: draining in-flight work"),
                _ = int.recv() => tracing::info!("SIGINT received: draining in-flight work"),
            }
            token.cancel();
        });
        Ok(())
    }

    /// Ask every holder of this handle to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A child handle: cancelled with its parent, or on its own (e.g. one role).
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// A guard that triggers shutdown when dropped, e.g. when a test panics: stages
    /// running on blocking threads then stop instead of keeping the runtime (and the
    /// test binary) alive forever.
    pub fn trigger_on_drop(&self) -> tokio_util::sync::DropGuard {
        self.token.clone().drop_guard()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_follows_parent_but_not_the_reverse() {
        let parent = Shutdown::new();
        let child = parent.child();
        child.trigger();
        assert!(!parent.is_triggered());
        let other = parent.child();
        parent.trigger();
        other.wait().await;
        assert!(other.is_triggered());
    }

    #[test]
    fn the_drop_guard_triggers_on_unwind() {
        let shutdown = Shutdown::new();
        let watched = shutdown.clone();
        let result = std::panic::catch_unwind(move || {
            let _stop = shutdown.trigger_on_drop();
            panic!("a failing test");
        });
        assert!(result.is_err());
        assert!(watched.is_triggered());
    }
}
