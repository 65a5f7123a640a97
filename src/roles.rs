//! `callsync run --roles ...`: each role is a task under one shutdown signal.
//!
//! Every role scales by adding processes with the same config (they join the
//! same consumer group). Each role has a shutdown of its own under the process's; when one
//! fails, [`RoleFailurePolicy`] decides whether the others drain and stop or go on, and the
//! failure shows in `/readyz`, `callsync_role_up` and the exit code ([`crate::role_health`]).
//!
//! The roles `connector`, `scheduler` and `api` of one process share a provider
//! registry (health), the connectors' clients, a sync publisher and one
//! [`SyncStatusStore`] fed by `callsync.sync-events` (read to its end before the
//! workers start, so a completed sync id is never run again).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use callsync_connectors::{
    run_sync, ClientError, Connectors, KafkaSyncStore, PageRequest, Scan, SyncDeps, SyncError,
};
use callsync_processors::ProcessorReport;
use callsync_runtime::metrics::{CONSUMER_GROUP_MEMBERS, CONSUMER_LAG};
use callsync_runtime::topics::names;
use callsync_runtime::{Isolation, KafkaClientFactory, Shutdown};
use callsync_schemas::{CallRecord, Provider, SyncRequest, WireFormat};
use callsync_sinks::SinkReport;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::Message;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::api::{
    self, listener, ApiAuth, ApiState, FnReadiness, KafkaReadiness, PostgresReadiness,
};
use crate::config::CallsyncConfig;
use crate::role_health::{RoleFailed, RoleFailurePolicy, RoleHealth, RolesReadiness};
use crate::scheduler::{
    follow_sync_events, run_health_checks, sync_events_consumer, worker_consumer, AvroSyncCodec,
    HealthProbe, KafkaSyncPublisher, ProbeError, ProviderRegistry, Scheduler, SchedulerConfig,
    SyncCodec, SyncExecutor, SyncFailure, SyncPublisher, SyncStatusStore, SyncSummary, SyncWorkers,
};
use crate::webhooks::{
    kafka_message_max_bytes, AvroCallRecordEncoder, MalformedPayload, WebhookPayloadParser,
    WebhookReceiver,
};

/// A part of callsync that can run in a process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// Sync workers: run sync requests against the providers' APIs into `calls.raw`.
    Connector,
    /// Validate + dedup: `calls.raw` -> `calls` (exactly once).
    Processor,
    /// Batch-upsert `calls` into Postgres (or SQLite), offsets in the same transaction.
    Sink,
    /// Cron schedules -> `callsync.sync-requests`, and provider health checks.
    Scheduler,
    /// HTTP API: health, readiness, metrics, syncs, providers and webhooks.
    Api,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Connector,
        Role::Processor,
        Role::Sink,
        Role::Scheduler,
        Role::Api,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Connector => "connector",
            Role::Processor => "processor",
            Role::Sink => "sink",
            Role::Scheduler => "scheduler",
            Role::Api => "api",
        }
    }

    /// The exit code of a `callsync run` process whose role this is failed (11-15; 0 is a
    /// clean stop, 1 an error before the roles ran, 2 a usage error).
    pub fn exit_code(self) -> u8 {
        match self {
            Role::Connector => 11,
            Role::Processor => 12,
            Role::Sink => 13,
            Role::Scheduler => 14,
            Role::Api => 15,
        }
    }

    /// Whether the role needs the shared service parts (registry, sync status, connectors).
    fn is_service(self) -> bool {
        matches!(self, Role::Connector | Role::Scheduler | Role::Api)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Extra wiring for embedders (the demo, tests): pre-bound listeners and shared
/// status/registry handles to watch from outside.
#[derive(Default)]
pub struct RunOptions {
    /// Serve the private control API here instead of binding `api.listen`.
    pub api_listener: Option<TcpListener>,
    /// Serve the public webhook listener here instead of binding `webhooks.listen`.
    pub webhook_listener: Option<TcpListener>,
    /// The sync status store the roles feed (one is created when absent).
    pub status_store: Option<SyncStatusStore>,
    /// The provider registry the roles use (one is created when absent).
    pub registry: Option<ProviderRegistry>,
    /// What happens to the other roles when one fails.
    pub on_role_failure: RoleFailurePolicy,
    /// Where the roles' states are kept (`/readyz`, `callsync_role_up`).
    pub role_health: RoleHealth,
}

/// What the roles reported when they stopped.
#[derive(Debug, Default, Clone)]
pub struct RolesReport {
    pub processor: Option<ProcessorReport>,
    pub sink: Option<SinkReport>,
}

enum RoleOutput {
    None,
    Processor(ProcessorReport),
    Sink(SinkReport),
}

/// Run `roles` until `shutdown` is triggered or one of them fails.
pub async fn run_roles(
    config: &CallsyncConfig,
    roles: &[Role],
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    run_roles_with(config, roles, shutdown, RunOptions::default())
        .await
        .map(|_| ())
}

/// [`run_roles`] with [`RunOptions`]; returns the stages' reports.
pub async fn run_roles_with(
    config: &CallsyncConfig,
    roles: &[Role],
    shutdown: Shutdown,
    options: RunOptions,
) -> anyhow::Result<RolesReport> {
    let mut roles: Vec<Role> = roles.to_vec();
    roles.sort();
    roles.dedup();
    // Check every role's config before starting any, so a bad key fails at startup.
    check_roles_config(config, &roles)?;
    let schedules = if roles.contains(&Role::Scheduler) {
        Some(
            effective_scheduler_config(config)
                .schedules()
                .context("invalid [scheduler] config")?,
        )
    } else {
        None
    };
    let factory = KafkaClientFactory::new(config.kafka.clone());
    let mut tasks: JoinSet<(Role, anyhow::Result<RoleOutput>)> = JoinSet::new();
    report_process_metrics(&shutdown);

    let service = if roles.iter().any(|r| r.is_service()) {
        Some(
            ServiceParts::start(config, &factory, &roles, &shutdown, &options)
                .await
                .context("starting the service roles")?,
        )
    } else {
        None
    };
    let mut listeners = None;
    if roles.contains(&Role::Api) {
        let private = match options.api_listener {
            Some(l) => l,
            None => bind(config.api.listen, "api.listen", "the control API").await?,
        };
        let public = match options.webhook_listener {
            Some(l) => l,
            None => {
                bind(
                    config.webhooks.listen,
                    "webhooks.listen",
                    "the webhook listener",
                )
                .await?
            }
        };
        listeners = Some(ApiListeners { private, public });
    }

    let health = options.role_health.clone();
    let mut task_roles = HashMap::new();
    for &role in &roles {
        // a role may stop itself (e.g. a stuck connector) without stopping the others
        let shutdown = shutdown.child();
        let factory = factory.clone();
        let config = config.clone();
        let service = service.clone();
        let schedules = schedules.clone();
        let listener = if role == Role::Api {
            listeners.take()
        } else {
            None
        };
        let task = tasks.spawn(async move {
            let result = run_role(
                role, &config, factory, shutdown, service, schedules, listener,
            )
            .await;
            (role, result)
        });
        task_roles.insert(task.id(), role);
        health.running(role);
        tracing::info!(role = %role, "role started");
    }

    let (report, failure) = supervise_roles(
        tasks,
        &task_roles,
        &shutdown,
        options.on_role_failure,
        &health,
    )
    .await;
    if let Some(service) = service {
        service.stop().await;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(report),
    }
}

/// Waits for every role task; the first failure is returned (as [`RoleFailed`], which gives
/// the process its exit code). On a failure the other roles are stopped or kept running as
/// `policy` says, and either way the log says which role failed and what happens to the rest.
async fn supervise_roles(
    mut tasks: JoinSet<(Role, anyhow::Result<RoleOutput>)>,
    task_roles: &HashMap<tokio::task::Id, Role>,
    shutdown: &Shutdown,
    policy: RoleFailurePolicy,
    health: &RoleHealth,
) -> (RolesReport, Option<RoleFailed>) {
    let mut report = RolesReport::default();
    let mut first_failure: Option<RoleFailed> = None;
    while let Some(joined) = tasks.join_next().await {
        let (role, result) = match joined {
            Ok(done) => done,
            Err(join_error) => match task_roles.get(&join_error.id()) {
                // a panic is a failure of that role like any other
                Some(&role) => (
                    role,
                    Err(anyhow::anyhow!("the role panicked: {join_error}")),
                ),
                None => {
                    tracing::error!(error = %join_error, "a role task panicked; stopping every role");
                    shutdown.trigger();
                    continue;
                }
            },
        };
        match result {
            Ok(output) => {
                health.stopped(role);
                tracing::info!(role = %role, "role stopped");
                match output {
                    RoleOutput::Processor(r) => report.processor = Some(r),
                    RoleOutput::Sink(r) => report.sink = Some(r),
                    RoleOutput::None => {}
                }
            }
            Err(e) => {
                health.failed(role, &e);
                let others = health.running_roles();
                let error = format!("{e:#}");
                let code = role.exit_code();
                match policy {
                    _ if shutdown.is_triggered() || others.is_empty() => {
                        tracing::error!(role = %role, %error, exit_code = code, "role failed");
                    }
                    RoleFailurePolicy::StopAll => {
                        tracing::error!(role = %role, %error, stopping = ?others, exit_code = code,
                            "role failed; stopping the healthy roles of this process with it (--on-role-failure stop-all)");
                        shutdown.trigger();
                    }
                    RoleFailurePolicy::KeepOthers => {
                        tracing::error!(role = %role, %error, running = ?others, exit_code = code,
                            "role failed; the other roles keep running (--on-role-failure keep-others); /readyz answers 503 until the process is restarted");
                    }
                }
                first_failure.get_or_insert(RoleFailed {
                    role,
                    message: error,
                });
            }
        }
    }
    (report, first_failure)
}

/// Every check `run` makes of `config` before it starts `roles`, naming the key at fault
/// (also `callsync config check`). Nothing is contacted.
pub fn check_roles_config(config: &CallsyncConfig, roles: &[Role]) -> anyhow::Result<()> {
    if roles.contains(&Role::Sink) {
        let Some(sink) = &config.sink else {
            anyhow::bail!("the sink role needs the `sink.database_url` key (set CALLSYNC__SINK__DATABASE_URL or [sink] database_url)");
        };
        let url = sink.database_url.expose();
        if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            // the URL may hold a password: never shown
            anyhow::bail!(
                "key `sink.database_url`: expected a postgres://, postgresql:// or sqlite: URL"
            );
        }
    }
    if roles.contains(&Role::Processor) {
        config
            .processor
            .check()
            .context("invalid [processor] config")?;
    }
    if roles.contains(&Role::Scheduler) {
        effective_scheduler_config(config)
            .schedules()
            .context("invalid [scheduler] config")?;
    }
    if roles.iter().any(|r| r.is_service()) {
        Connectors::from_config(&config.connectors, &Shutdown::new())
            .context("invalid [connectors] config")?;
    }
    Ok(())
}

/// The api role's two listeners.
struct ApiListeners {
    /// `[api] listen`: control API, readiness, metrics (tokens).
    private: TcpListener,
    /// `[webhooks] listen`: webhooks and `/healthz` (public).
    public: TcpListener,
}

async fn bind(addr: std::net::SocketAddr, key: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr} (key `{key}`)"))
}

/// `[scheduler]`, with every configured connectors account scheduled at the defaults when no
/// `[[scheduler.accounts]]` are listed.
pub fn effective_scheduler_config(config: &CallsyncConfig) -> SchedulerConfig {
    let mut scheduler = config.scheduler.clone();
    if scheduler.accounts.is_empty() {
        scheduler.accounts = configured_accounts(config)
            .into_iter()
            .map(
                |(provider, account_id)| crate::scheduler::schedule::AccountScheduleConfig {
                    provider,
                    account_id,
                    full: None,
                    incremental: None,
                    time_zone: None,
                },
            )
            .collect();
    }
    scheduler
}

/// Every provider account of `[connectors]`.
pub fn configured_accounts(config: &CallsyncConfig) -> Vec<(Provider, String)> {
    let c = &config.connectors;
    let mut out = Vec::new();
    out.extend(
        c.retreaver
            .iter()
            .map(|a| (Provider::Retreaver, a.account.clone())),
    );
    out.extend(
        c.ringba
            .iter()
            .map(|a| (Provider::Ringba, a.account.clone())),
    );
    out.extend(
        c.invoca
            .iter()
            .map(|a| (Provider::Invoca, a.account.clone())),
    );
    out.extend(
        c.callrail
            .iter()
            .map(|a| (Provider::CallRail, a.account.clone())),
    );
    out.extend(
        c.trackdrive
            .iter()
            .map(|a| (Provider::TrackDrive, a.account.clone())),
    );
    out
}

/// The parts the connector, scheduler and api roles of one process share.
#[derive(Clone)]
struct ServiceParts {
    connectors: Arc<Connectors>,
    registry: ProviderRegistry,
    store: SyncStatusStore,
    codec: Arc<dyn SyncCodec>,
    publisher: Arc<KafkaSyncPublisher>,
    follow: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    follow_shutdown: Shutdown,
    role_health: RoleHealth,
}

impl ServiceParts {
    async fn start(
        config: &CallsyncConfig,
        factory: &KafkaClientFactory,
        roles: &[Role],
        shutdown: &Shutdown,
        options: &RunOptions,
    ) -> anyhow::Result<Self> {
        let connectors = Arc::new(
            Connectors::from_config(&config.connectors, shutdown)
                .context("invalid [connectors] config")?,
        );
        let registry = options.registry.clone().unwrap_or_default();
        for (provider, account) in configured_accounts(config) {
            registry.register(provider, &account);
        }
        let store = options
            .status_store
            .clone()
            .unwrap_or_else(|| SyncStatusStore::new(10_000));
        let codec: Arc<dyn SyncCodec> = Arc::new(AvroSyncCodec::single_object());
        let settings = factory.settings();
        let publisher = Arc::new(KafkaSyncPublisher::new(
            factory
                .producer()
                .context("creating the sync publisher's producer")?,
            Arc::clone(&codec),
            settings.topic(names::SYNC_REQUESTS),
            settings.topic(names::SYNC_EVENTS),
            Duration::from_secs(30),
        ));
        // the follower outlives the roles' drain (workers write their last events), so it
        // has its own shutdown, triggered in stop()
        let follow_shutdown = Shutdown::new();
        let events_topic = settings.topic(names::SYNC_EVENTS);
        let timeout = Duration::from_secs(config.workers.catch_up_timeout_secs.max(1));
        let group = format!("callsync-sync-events-{}", uuid::Uuid::new_v4());
        let consumer = {
            let factory = factory.clone();
            let topic = events_topic.clone();
            tokio::task::spawn_blocking(move || {
                sync_events_consumer(&factory, &topic, &group, timeout)
            })
            .await
            .context("sync-events consumer task")??
        };
        if roles.contains(&Role::Connector) {
            // start workers only once every known sync id is in the store
            let applied = catch_up_sync_events(
                &consumer,
                factory,
                &events_topic,
                &store,
                codec.as_ref(),
                timeout,
            )
            .await;
            match applied {
                Ok(n) => tracing::info!(events = n, "sync events read to their end"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read sync events to their end; starting anyway")
                }
            }
        }
        let follow = tokio::spawn(follow_sync_events(
            consumer,
            store.clone(),
            Arc::clone(&codec),
            follow_shutdown.clone(),
        ));
        Ok(ServiceParts {
            connectors,
            registry,
            store,
            codec,
            publisher,
            follow: Arc::new(tokio::sync::Mutex::new(Some(follow))),
            follow_shutdown,
            role_health: options.role_health.clone(),
        })
    }

    async fn stop(&self) {
        self.follow_shutdown.trigger();
        if let Some(handle) = self.follow.lock().await.take() {
            let _ = handle.await;
        }
    }
}

/// Reads `topic` from `consumer` until every partition reaches the high watermark it had when
/// this started, applying each event to `store`. Returns the events applied.
async fn catch_up_sync_events(
    consumer: &StreamConsumer,
    factory: &KafkaClientFactory,
    topic: &str,
    store: &SyncStatusStore,
    codec: &dyn SyncCodec,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let ends: BTreeMap<i32, i64> = {
        let factory = factory.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<i32, i64>> {
            let probe: BaseConsumer = factory.create(
                "sync-events watermarks",
                &factory.consumer_config("callsync-watermarks", Isolation::ReadCommitted),
            )?;
            let metadata = probe.fetch_metadata(Some(&topic), timeout)?;
            let mut ends = BTreeMap::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) = probe.fetch_watermarks(&topic, p.id(), timeout)?;
                    if high > low {
                        ends.insert(p.id(), high);
                    }
                }
            }
            Ok(ends)
        })
        .await??
    };
    let mut pending = ends;
    let mut applied = 0u64;
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} with partitions {:?} behind",
                pending.keys().collect::<Vec<_>>()
            );
        }
        let idle = tokio::time::Instant::now() + Duration::from_millis(250);
        let Ok(message) = tokio::time::timeout_at(idle.min(deadline), consumer.recv()).await else {
            // The workers' events are written in transactions: a partition can end in a
            // commit marker (or aborted records), which a read_committed consumer skips
            // without yielding a message. Its position passes the end all the same.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements_for_topic(topic) {
                    let at_end = match (e.offset(), pending.get(&e.partition())) {
                        (rdkafka::Offset::Offset(position), Some(end)) => position >= *end,
                        _ => false,
                    };
                    if at_end {
                        pending.remove(&e.partition());
                    }
                }
            }
            continue;
        };
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading sync events");
                continue;
            }
        };
        if let Some(payload) = m.payload() {
            if let Ok(event) = codec.decode_event(payload) {
                store.record_event(&event, None);
                applied += 1;
            }
        }
        let (partition, next) = (m.partition(), m.offset() + 1);
        if pending.get(&partition).is_some_and(|end| next >= *end) {
            pending.remove(&partition);
        }
    }
    Ok(applied)
}

/// Runs syncs with the connectors' [`run_sync`]; a rejected credential is permanent.
///
/// A sync whose Kafka transaction call did not return ([`SyncError::is_stuck`]) fails as
/// retryable, and it also asks the process to stop: the connector role then ends with that
/// error ([`ConnectorExecutor::stuck`]) so its supervisor restarts it, and the restart fences
/// the stuck transaction.
pub struct ConnectorExecutor {
    deps: SyncDeps,
    stuck: std::sync::OnceLock<String>,
}

impl ConnectorExecutor {
    pub fn new(deps: SyncDeps) -> Self {
        ConnectorExecutor {
            deps,
            stuck: std::sync::OnceLock::new(),
        }
    }

    /// The first stuck sync's error, once one got stuck.
    pub fn stuck(&self) -> Option<&str> {
        self.stuck.get().map(String::as_str)
    }
}

/// The dependencies of [`run_sync`] for `config` on `factory`.
pub fn sync_deps(
    config: &CallsyncConfig,
    connectors: Arc<Connectors>,
    factory: KafkaClientFactory,
    shutdown: Shutdown,
) -> SyncDeps {
    let sync = &config.connectors.sync;
    SyncDeps {
        connectors,
        store: Arc::new(KafkaSyncStore::new(
            factory,
            &sync.transactional_id_prefix,
            Duration::from_secs(sync.kafka_timeout_secs.max(1)),
        )),
        settings: sync.clone(),
        wire_format: WireFormat::SingleObject,
        shutdown,
    }
}

#[async_trait]
impl SyncExecutor for ConnectorExecutor {
    async fn execute(&self, request: &SyncRequest) -> Result<SyncSummary, SyncFailure> {
        match run_sync(request, &self.deps, callsync_connectors::NoProgress).await {
            Ok(outcome) => {
                if let Some(reason) = &outcome.skipped {
                    tracing::info!(sync_id = %request.id, %reason, "sync skipped");
                }
                Ok(SyncSummary {
                    records: i64::try_from(outcome.records).unwrap_or(i64::MAX),
                    pages: i64::try_from(outcome.pages).unwrap_or(i64::MAX),
                })
            }
            Err(e) => {
                if e.is_stuck() {
                    let message = e.to_string();
                    tracing::error!(sync_id = %request.id, error = %message, "a sync's Kafka transaction is stuck; stopping so that the restarted connector fences it");
                    let _ = self.stuck.set(message);
                    self.deps.shutdown.trigger();
                }
                Err(classify_failure(&e))
            }
        }
    }
}

/// Auth errors, unknown accounts and invalid requests will not get better by retrying.
pub fn classify_failure(error: &SyncError) -> SyncFailure {
    let message = error.to_string();
    match error {
        SyncError::Client(ClientError::Auth { .. } | ClientError::Rejected { .. })
        | SyncError::UnknownAccount { .. }
        | SyncError::InvalidRequest { .. } => SyncFailure::permanent(message),
        _ => SyncFailure::retryable(message),
    }
}

/// A health probe: one page of the last hour from the account's client (through its rate
/// limiter and circuit breaker).
pub struct ConnectorsProbe {
    connectors: Arc<Connectors>,
}

impl ConnectorsProbe {
    pub fn new(connectors: Arc<Connectors>) -> Self {
        ConnectorsProbe { connectors }
    }
}

#[async_trait]
impl HealthProbe for ConnectorsProbe {
    async fn probe(&self, provider: Provider, account_id: &str) -> Result<(), ProbeError> {
        let handle = self.connectors.get(provider, account_id).ok_or_else(|| {
            ProbeError(format!(
                "no {provider} account {account_id:?} is configured"
            ))
        })?;
        let end = Utc::now();
        let request = PageRequest {
            scan: Scan::Created,
            start: end - chrono::Duration::hours(1),
            end,
            token: None,
        };
        handle
            .client
            .fetch_page(&request)
            .await
            .map(|_| ())
            .map_err(|e| ProbeError(e.to_string()))
    }
}

/// Webhook bodies parsed by the connectors' webhook parsers (CallRail's own JSON, the
/// templates of the others) with default account settings (UTC, USD).
pub struct ConnectorsWebhookParser;

impl WebhookPayloadParser for ConnectorsWebhookParser {
    fn parse(
        &self,
        provider: Provider,
        account_id: &str,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<CallRecord>, MalformedPayload> {
        let ctx = callsync_connectors::webhook::default_context(provider, account_id);
        callsync_connectors::webhook::parse_webhook(body, &ctx, received_at)
            .map(|record| vec![record])
            .map_err(|e| MalformedPayload(e.to_string()))
    }
}

/// Webhook bodies read with each account's settings from `[connectors]` (its time zone,
/// currency), for accounts configured there.
pub struct AccountWebhookParser(pub Arc<Connectors>);

impl WebhookPayloadParser for AccountWebhookParser {
    fn parse(
        &self,
        provider: Provider,
        account_id: &str,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<CallRecord>, MalformedPayload> {
        let ctx = self.0.webhook_context(provider, account_id);
        callsync_connectors::webhook::parse_webhook(body, &ctx, received_at)
            .map(|record| vec![record])
            .map_err(|e| MalformedPayload(e.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_role(
    role: Role,
    config: &CallsyncConfig,
    factory: KafkaClientFactory,
    shutdown: Shutdown,
    service: Option<ServiceParts>,
    schedules: Option<Vec<crate::scheduler::Schedule>>,
    listeners: Option<ApiListeners>,
) -> anyhow::Result<RoleOutput> {
    match role {
        Role::Processor => {
            let report =
                callsync_processors::run_processor(config.processor.clone(), factory, shutdown)
                    .await
                    .context("processor")?;
            tracing::info!(?report, "processor finished");
            Ok(RoleOutput::Processor(report))
        }
        Role::Sink => {
            let sink_config = config
                .sink
                .clone()
                .context("the sink role needs the `sink.database_url` key")?;
            let store = callsync_sinks::connect_store(&sink_config)
                .await
                .context("connecting the sink's store")?;
            let report = callsync_sinks::run_sink(sink_config, factory, store, shutdown)
                .await
                .context("sink")?;
            tracing::info!(?report, "sink finished");
            Ok(RoleOutput::Sink(report))
        }
        Role::Connector => {
            let service = service.context("connector role without service parts")?;
            let settings = config.workers.settings();
            let requests_topic = factory.settings().topic(names::SYNC_REQUESTS);
            let consumer = worker_consumer(&factory, &settings.group_id, &requests_topic)
                .context("creating the sync workers' consumer")?;
            let deps = sync_deps(
                config,
                Arc::clone(&service.connectors),
                factory,
                shutdown.clone(),
            );
            let publisher: Arc<dyn SyncPublisher> = service.publisher.clone();
            let executor = Arc::new(ConnectorExecutor::new(deps));
            let workers = SyncWorkers::new(
                consumer,
                executor.clone(),
                publisher,
                Arc::clone(&service.codec),
                service.store.clone(),
                settings,
            );
            workers.run(shutdown).await;
            if let Some(stuck) = executor.stuck() {
                anyhow::bail!("connector: a sync's Kafka transaction got stuck: {stuck}");
            }
            Ok(RoleOutput::None)
        }
        Role::Scheduler => {
            let service = service.context("scheduler role without service parts")?;
            let schedules = schedules.unwrap_or_default();
            let publisher: Arc<dyn SyncPublisher> = service.publisher.clone();
            let scheduler = Scheduler::new(
                schedules,
                publisher,
                service.registry.clone(),
                config.scheduler.catch_up(),
                Utc::now(),
            )
            .with_status_store(service.store.clone());
            let accounts = configured_accounts(config);
            let health = run_health_checks(
                Arc::new(ConnectorsProbe::new(Arc::clone(&service.connectors))),
                service.registry.clone(),
                accounts,
                config.health.settings(),
                shutdown.clone(),
            );
            tokio::join!(scheduler.run(shutdown.clone()), health);
            Ok(RoleOutput::None)
        }
        Role::Api => {
            let service = service.context("api role without service parts")?;
            let listeners = listeners.context("api role without its listeners")?;
            let calls_raw = factory.settings().topic(names::CALLS_RAW);
            let producer = factory
                .producer()
                .context("creating the webhook producer")?;
            let receiver = WebhookReceiver::new(
                &config.webhooks,
                Arc::new(AccountWebhookParser(Arc::clone(&service.connectors))),
                Arc::new(AvroCallRecordEncoder::single_object()),
                producer,
                calls_raw.clone(),
            )
            .with_max_message_bytes(kafka_message_max_bytes(factory.settings()));
            let publisher: Arc<dyn SyncPublisher> = service.publisher.clone();
            let auth = ApiAuth::new(&config.api.tokens, config.api.metrics_public);
            if auth.is_empty() {
                tracing::warn!("no [[api.tokens]] are configured: the control API answers 401 to every call (see docs/security.md)");
            }
            let mut state = ApiState::new(service.registry.clone(), service.store.clone())
                .with_publisher(publisher)
                .with_auth(auth);
            state.max_body_bytes = config.api.max_body_bytes;
            state = with_role_readiness(state, &service.role_health);
            let readiness_timeout = Duration::from_secs(config.api.readiness_timeout_secs.max(1));
            state.readiness_timeout = readiness_timeout;
            let readiness_consumer: BaseConsumer = factory
                .create(
                    "readiness client",
                    &factory.consumer_config("callsync-readiness", Isolation::ReadCommitted),
                )
                .context("creating the readiness client")?;
            state = state.with_readiness(Arc::new(KafkaReadiness::new(
                readiness_consumer,
                calls_raw,
                readiness_timeout,
            )));
            if let Some(sink) = &config.sink {
                let url = sink.database_url.expose();
                if url.starts_with("postgres") {
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect_lazy(url)
                        .context("the `sink.database_url` key is not a valid Postgres URL")?;
                    state = state.with_readiness(Arc::new(PostgresReadiness::new(pool)));
                } else {
                    state = state
                        .with_readiness(Arc::new(FnReadiness::new("database", || async {
                            Ok(())
                        })));
                }
            }
            if config.api.lag_interval_secs > 0 {
                tokio::spawn(report_consumer_lag(
                    config.clone(),
                    factory.clone(),
                    Duration::from_secs(config.api.lag_interval_secs),
                    shutdown.clone(),
                ));
            }
            let private = listener::serve(
                "private",
                listeners.private,
                api::private_router(state),
                &config.api.limits,
                shutdown.clone(),
            );
            let public = listener::serve(
                "public",
                listeners.public,
                api::public_router(Some(Arc::new(receiver))),
                &config.webhooks.limits,
                shutdown,
            );
            let (private, public) = tokio::join!(private, public);
            private.context("serving the control API")?;
            public.context("serving the webhook listener")?;
            Ok(RoleOutput::None)
        }
    }
}

/// The process's memory gauges (the "RSS near its limit" alert), every 5 s until shutdown.
fn report_process_metrics(shutdown: &Shutdown) {
    tokio::spawn(callsync_runtime::process_memory::report_process_memory(
        Duration::from_secs(5),
        shutdown.clone(),
    ));
}

/// `/readyz` also fails while a role of this process has failed.
fn with_role_readiness(state: ApiState, health: &RoleHealth) -> ApiState {
    state.with_readiness(Arc::new(RolesReadiness::new(health.clone())))
}

/// Sets `callsync_consumer_lag{group,topic,partition}` for the processor's and the sink's
/// groups every `interval`: the records left to read after the group's committed offset; and
/// `callsync_consumer_group_members{group}` for those two and the workers' group.
async fn report_consumer_lag(
    config: CallsyncConfig,
    factory: KafkaClientFactory,
    interval: Duration,
    shutdown: Shutdown,
) {
    let settings = factory.settings().clone();
    let mut groups = vec![(
        config.processor.group_id.clone(),
        settings.topic(names::CALLS_RAW),
    )];
    if let Some(sink) = &config.sink {
        groups.push((
            sink.group.clone(),
            sink.topic
                .clone()
                .unwrap_or_else(|| settings.topic(names::CALLS)),
        ));
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => {}
        }
        let (factory2, mut member_groups) = (factory.clone(), groups.clone());
        member_groups.push((config.workers.group_id.clone(), String::new()));
        let members =
            tokio::task::spawn_blocking(move || measure_members(&factory2, &member_groups)).await;
        match members {
            Ok(Ok(members)) => {
                for (group, n) in members {
                    metrics::gauge!(CONSUMER_GROUP_MEMBERS, "group" => group).set(n as f64);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "counting consumer group members"),
            Err(e) => tracing::debug!(error = %e, "consumer group members task"),
        }
        let factory = factory.clone();
        let groups = groups.clone();
        let measured = tokio::task::spawn_blocking(move || measure_lag(&factory, &groups)).await;
        match measured {
            Ok(Ok(lags)) => {
                for (group, topic, partition, lag) in lags {
                    metrics::gauge!(CONSUMER_LAG, "group" => group, "topic" => topic, "partition" => partition.to_string())
                        .set(lag as f64);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "measuring consumer lag"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task"),
        }
    }
}

/// The members of each group (0 when it has none or does not exist).
fn measure_members(
    factory: &KafkaClientFactory,
    groups: &[(String, String)],
) -> anyhow::Result<Vec<(String, usize)>> {
    // never subscribes: only asks the coordinators
    let consumer: BaseConsumer = factory.create(
        "group members probe",
        &factory.consumer_config("callsync-group-members", Isolation::ReadCommitted),
    )?;
    groups
        .iter()
        .map(|(group, _)| {
            let description = crate::ops::describe_group(&consumer, group, Duration::from_secs(5))?;
            Ok((group.clone(), description.members.len()))
        })
        .collect()
}

type Lag = (String, String, i32, i64);

fn measure_lag(
    factory: &KafkaClientFactory,
    groups: &[(String, String)],
) -> anyhow::Result<Vec<Lag>> {
    let timeout = Duration::from_secs(5);
    let reader = crate::ops::scan::scan_consumer(
        factory,
        crate::ops::scan::READ_ONLY_GROUP,
        Isolation::ReadCommitted,
    )?;
    let mut out = Vec::new();
    for (group, topic) in groups {
        let consumer: BaseConsumer = factory.create(
            "lag probe",
            &factory.consumer_config(group, Isolation::ReadCommitted),
        )?;
        let partitions = crate::ops::offsets::topic_partitions(&consumer, topic, timeout)?;
        let marks = crate::ops::offsets::watermarks(&consumer, topic, &partitions, timeout)?;
        let committed =
            crate::ops::offsets::committed_offsets(&consumer, group, topic, &partitions, timeout)?;
        let gaps = marks
            .iter()
            .map(|(&p, mark)| {
                (
                    p,
                    (committed.get(&p).copied().unwrap_or(mark.low), mark.high),
                )
            })
            .collect();
        let left = crate::ops::scan::records_left(&reader, topic, &gaps)?;
        for (partition, lag) in left {
            out.push((group.clone(), topic.clone(), partition, lag));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsync_connectors::{ConnectorsConfig, StoreError, SyncSession, SyncStore};
    use callsync_schemas::SyncMode;

    /// A Kafka store whose `init_transactions` never returned.
    struct StuckStore;

    #[async_trait]
    impl SyncStore for StuckStore {
        async fn open(&self, scope: &str) -> Result<Arc<dyn SyncSession>, StoreError> {
            Err(StoreError::Stuck {
                step: "init_transactions",
                scope: scope.to_string(),
                transactional_id: format!("callsync-{scope}"),
                secs: 61,
            })
        }
    }

    #[tokio::test]
    async fn a_stuck_sync_fails_retryable_and_stops_the_connector() {
        let config: ConnectorsConfig = serde_json::from_value(serde_json::json!({
            "retreaver": [{"account": "a", "api_key": "k", "company_id": "a",
                           "base_url": "http://127.0.0.1:1"}]
        }))
        .expect("config");
        let shutdown = Shutdown::new();
        let deps = SyncDeps {
            connectors: Arc::new(Connectors::from_config(&config, &shutdown).expect("connectors")),
            store: Arc::new(StuckStore),
            settings: config.sync.clone(),
            wire_format: WireFormat::SingleObject,
            shutdown: shutdown.clone(),
        };
        let executor = ConnectorExecutor::new(deps);
        let request = SyncRequest {
            id: "stuck-1".into(),
            provider: Provider::Retreaver,
            account_id: "a".into(),
            mode: SyncMode::Incremental,
            window_start: None,
            window_end: None,
            requested_at: Utc::now(),
            requested_by: "test".into(),
            attempt: 1,
            not_before: None,
        };
        let failure = executor.execute(&request).await.expect_err("stuck");
        // the sync runs again (after the restart), from its last committed cursor
        assert!(failure.retryable, "{failure:?}");
        assert!(failure.message.contains("init_transactions"), "{failure:?}");
        // and the role ends with the error
        let stuck = executor.stuck().expect("the connector role must end");
        assert!(
            stuck.contains("callsync-retreaver-a-incremental"),
            "{stuck}"
        );
        assert!(shutdown.is_triggered());
    }
}
