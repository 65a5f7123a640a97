//! Webhook traffic of the chaos test: the simulator sends each account's webhooks (signed
//! CallRail bodies, the documented templates of the others, with each provider's retries)
//! for the changes of simulated time as it passes, to the `api` processes, every account to
//! one of them (a fixed load balancer); now and then a window is sent a second time (the
//! duplicate deliveries providers make).

use std::collections::BTreeMap;
use std::sync::Mutex;

use callsync_schemas::Provider;
use callsync_simulator::{RunningSimulator, WebhookReport, WebhookTarget, WebhookTargetAuth};
use chrono::{DateTime, Utc};

/// The secrets the test's config gives every account (at least 16 characters).
pub const WEBHOOK_TOKEN: &str = "chaos-webhook-token-0123456789";
pub const CALLRAIL_SIGNING_KEY: &str = "chaos-callrail-signing-key-0123";

/// The `[[webhooks.accounts]]` entry of an account.
pub fn account_config(provider: Provider, account: &str) -> serde_json::Value {
    if provider == Provider::CallRail {
        serde_json::json!({"provider": "callrail", "account_id": account,
            "method": "callrail_signature", "signing_key": CALLRAIL_SIGNING_KEY})
    } else {
        serde_json::json!({"provider": provider.as_str(), "account_id": account,
            "method": "token", "token": WEBHOOK_TOKEN})
    }
}

/// What was sent, per phase.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    /// Windows of simulated time sent, and the webhooks due in them.
    pub windows: u64,
    pub first: WebhookReport,
    /// Windows sent a second time, on purpose.
    pub again: WebhookReport,
}

fn add(total: &mut WebhookReport, r: &WebhookReport) {
    total.events += r.events;
    total.delivered += r.delivered;
    total.failed += r.failed;
    total.attempts += r.attempts;
}

/// The accounts' webhook targets and what has been sent to them.
pub struct WebhookTraffic {
    targets: Vec<(Provider, String, WebhookTarget)>,
    pub sent: Mutex<BTreeMap<&'static str, Sent>>,
}

impl WebhookTraffic {
    /// Account `i` posts to `ports[i % ports.len()]`.
    pub fn new(accounts: &[(Provider, String)], ports: &[u16]) -> Self {
        let targets = accounts
            .iter()
            .enumerate()
            .map(|(i, (provider, account))| {
                let port = ports[i % ports.len()];
                let auth = if *provider == Provider::CallRail {
                    WebhookTargetAuth::CallRailSignature(CALLRAIL_SIGNING_KEY.into())
                } else {
                    WebhookTargetAuth::Token(WEBHOOK_TOKEN.into())
                };
                let target = WebhookTarget {
                    url: format!(
                        "http://127.0.0.1:{port}/webhooks/{}/{account}",
                        provider.as_str()
                    ),
                    auth,
                };
                (*provider, account.clone(), target)
            })
            .collect();
        WebhookTraffic {
            targets,
            sent: Mutex::new(BTreeMap::new()),
        }
    }

    /// Sends every account's webhooks for the changes in `[from, to)`, the accounts at once;
    /// `again`: a window sent before, sent again.
    pub async fn send(
        &self,
        sim: &RunningSimulator,
        phase: &'static str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        again: bool,
    ) {
        let sends = self
            .targets
            .iter()
            .map(|(provider, account, target)| async move {
                sim.send_webhooks(*provider, account, from, to, target)
                    .await
                    .unwrap_or_else(|e| panic!("sending {provider} {account}'s webhooks: {e}"))
            });
        let reports = futures::future::join_all(sends).await;
        let mut sent = self.sent.lock().expect("webhook figures");
        let entry = sent.entry(phase).or_default();
        if !again {
            entry.windows += 1;
        }
        for r in &reports {
            add(
                if again {
                    &mut entry.again
                } else {
                    &mut entry.first
                },
                r,
            );
        }
    }

    pub fn figures(&self) -> BTreeMap<&'static str, Sent> {
        self.sent.lock().expect("webhook figures").clone()
    }
}
