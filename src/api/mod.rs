//! The service's HTTP side (axum), on two listeners (see `docs/security.md`).
//!
//! The public listener (`[webhooks] listen`, reachable from the providers):
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `POST /webhooks/{provider}/{account}` | see [`crate::webhooks`] |
//!
//! The private listener (`[api] listen`), every route behind a bearer token ([`auth`]):
//!
//! | route | scope | answer |
//! |---|---|---|
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | read | 200 when every readiness check (Kafka, Postgres) passes, else 503 naming the failing ones |
//! | `GET /metrics` | read (none with `metrics_public`) | Prometheus text |
//! | `GET /api/providers` | read | health of every provider account |
//! | `GET /api/syncs` | read | syncs known to this service, newest first (`?limit=&provider=&account=`) |
//! | `POST /api/syncs` | operate | trigger a sync: `{"provider","account_id","mode","window_start"?,"window_end"?,"resume"?}` |
//! | `GET /api/syncs/{id}` | read | one sync's progress |
//!
//! Both listeners run under [`listener::ListenerLimits`] (timeouts, connection and request caps).

pub mod auth;
pub mod listener;
pub mod readiness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use callsync_schemas::Provider;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use crate::scheduler::health::ProviderRegistry;
use crate::scheduler::publish::SyncPublisher;
use crate::scheduler::status::SyncStatusStore;
use crate::scheduler::trigger::{trigger, TriggerError, TriggerRequest};
use crate::webhooks::{self, WebhookReceiver};

pub use auth::{ApiAuth, ApiTokenConfig, Scope};
pub use listener::ListenerLimits;
pub use readiness::{FnReadiness, KafkaReadiness, PostgresReadiness, ReadinessCheck};

/// HTTP requests served, labelled `route`, `method`, `status`. Routes are the routers'
/// templates (or `unmatched`), methods one of [`METHOD_LABELS`] (or `other`).
pub const HTTP_REQUESTS_TOTAL: &str = "callsync_http_requests_total";
/// HTTP request latency in seconds, labelled `route`, `method`.
pub const HTTP_REQUEST_SECONDS: &str = "callsync_http_request_seconds";

/// The methods that get a label of their own; any other is counted as `other`.
pub const METHOD_LABELS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Largest body of a control API request (JSON of a few hundred bytes).
pub const DEFAULT_API_MAX_BODY_BYTES: usize = 64 * 1024;

const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// What the API serves from. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub providers: ProviderRegistry,
    pub syncs: SyncStatusStore,
    /// Where `POST /api/syncs` writes; `None` answers 503.
    pub publisher: Option<Arc<dyn SyncPublisher>>,
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
    /// Per readiness check (default 3 s).
    pub readiness_timeout: Duration,
    /// Who may call what (no token: every call but `/healthz` answers 401).
    pub auth: ApiAuth,
    /// Largest request body (413 past it).
    pub max_body_bytes: usize,
}

impl ApiState {
    pub fn new(providers: ProviderRegistry, syncs: SyncStatusStore) -> Self {
        ApiState {
            providers,
            syncs,
            publisher: None,
            readiness: Vec::new(),
            readiness_timeout: Duration::from_secs(3),
            auth: ApiAuth::default(),
            max_body_bytes: DEFAULT_API_MAX_BODY_BYTES,
        }
    }

    pub fn with_auth(mut self, auth: ApiAuth) -> Self {
        self.auth = auth;
        self
    }

    pub fn with_publisher(mut self, publisher: Arc<dyn SyncPublisher>) -> Self {
        self.publisher = Some(publisher);
        self
    }

    pub fn with_readiness(mut self, check: Arc<dyn ReadinessCheck>) -> Self {
        self.readiness.push(check);
        self
    }
}

/// The private listener's routes: the control API, readiness and metrics, behind tokens.
pub fn private_router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    let max_body = state.max_body_bytes;
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/providers", get(list_providers))
        .route("/api/syncs", get(list_syncs).post(trigger_sync))
        .route("/api/syncs/{id}", get(get_sync))
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(auth, auth::require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .layer(middleware::from_fn(observe_request))
}

/// The public listener's routes: `/healthz` and, when `webhooks` is given, the webhook route.
pub fn public_router(webhooks: Option<Arc<WebhookReceiver>>) -> Router {
    let mut app = Router::new().route("/healthz", get(healthz));
    if let Some(receiver) = webhooks {
        app = app.merge(webhooks::router(receiver));
    }
    app.layer(middleware::from_fn(observe_request))
}

/// The metric label of a method: itself when it is one of [`METHOD_LABELS`], else `other`.
pub fn method_label(method: &Method) -> &'static str {
    METHOD_LABELS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("other")
}

/// A span and metrics per request, with bounded labels.
async fn observe_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(request.method());
    let span = tracing::info_span!("http", %method, %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!(HTTP_REQUEST_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let checks = state.readiness.iter().map(|check| {
        let timeout = state.readiness_timeout;
        async move {
            let result = match tokio::time::timeout(timeout, check.check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (check.name().to_string(), result)
        }
    });
    let results = futures::future::join_all(checks).await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let detail: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, r)| (name, json!(r.err().unwrap_or_else(|| "ok".to_string()))))
        .collect();
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (status, Json(json!({ "status": word, "checks": detail }))).into_response()
}

async fn metrics_text() -> Response {
    let text = callsync_runtime::metrics::prometheus().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn list_providers(State(state): State<ApiState>) -> Response {
    Json(json!({ "providers": state.providers.snapshot() })).into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    provider: Option<String>,
    account: Option<String>,
}

async fn list_syncs(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    let filter = match (&query.provider, &query.account) {
        (Some(p), Some(a)) => match p.parse::<Provider>() {
            Ok(p) => Some((p, a.as_str())),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        (None, None) => None,
        _ => return error(StatusCode::BAD_REQUEST, "provider and account go together"),
    };
    let syncs = state.syncs.list(limit, filter);
    Json(json!({ "syncs": syncs })).into_response()
}

async fn trigger_sync(
    State(state): State<ApiState>,
    body: Result<Json<TriggerRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        // 413 for a body past the limit, else 400
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, e.body_text())
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(publisher) = &state.publisher else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this process cannot trigger syncs (no Kafka producer)",
        );
    };
    match trigger(
        publisher.as_ref(),
        Some(&state.providers),
        Some(&state.syncs),
        &request,
        "api",
    )
    .await
    {
        Ok(sync) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": sync.id, "request": sync })),
        )
            .into_response(),
        Err(e @ TriggerError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e @ TriggerError::UnknownAccount { .. }) => error(StatusCode::NOT_FOUND, e),
        Err(e @ TriggerError::Unavailable(_)) => {
            tracing::warn!(error = %e, "triggering a sync");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Kafka is unavailable; retry later",
            )
        }
    }
}

async fn get_sync(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    match state.syncs.get(&id) {
        Some(status) => Json(status).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no sync {id:?} is known to this service"),
        ),
    }
}
