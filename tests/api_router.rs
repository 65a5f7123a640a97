//! The HTTP API without Kafka: routes, status codes and JSON shapes, tokens and scopes,
//! bounded metric labels.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use callsync::api::{private_router, public_router, ApiAuth, ApiState, FnReadiness, Scope};
use callsync::scheduler::health::ProviderRegistry;
use callsync::scheduler::publish::MemorySyncPublisher;
use callsync::scheduler::status::SyncStatusStore;
use callsync_runtime::Secret;
use callsync_schemas::{Provider, SyncEvent, SyncEventKind, SyncMode};
use chrono::Utc;
use serde_json::Value;
use tower::ServiceExt;

/// The token with both scopes the fixture's API knows.
const TOKEN: &str = "api-router-test-token-0123456789abcdef";
/// A token with the read scope only.
const READ_TOKEN: &str = "api-router-read-token-0123456789abcdef";

async fn call(app: &Router, method: &str, uri: &str, body: Option<&str>) -> (StatusCode, String) {
    call_as(app, Some(TOKEN), method, uri, body).await
}

async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Body::from(body.unwrap_or("").to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

struct Fixture {
    app: Router,
    publisher: Arc<MemorySyncPublisher>,
    registry: ProviderRegistry,
    store: SyncStatusStore,
}

fn auth(metrics_public: bool) -> ApiAuth {
    ApiAuth::new(
        &[
            callsync::api::ApiTokenConfig {
                name: "ops".into(),
                sha256: Some(callsync::api::auth::token_sha256_hex(TOKEN)),
                token: None,
                scopes: vec![Scope::Read, Scope::Operate],
            },
            callsync::api::ApiTokenConfig {
                name: "grafana".into(),
                sha256: None,
                token: Some(Secret::new(READ_TOKEN)),
                scopes: vec![Scope::Read],
            },
        ],
        metrics_public,
    )
}

fn fixture(kafka_ready: bool) -> Fixture {
    let registry = ProviderRegistry::new();
    registry.register(Provider::Ringba, "RA1");
    registry.register(Provider::CallRail, "CR1");
    let store = SyncStatusStore::new(100);
    let publisher = Arc::new(MemorySyncPublisher::default());
    let state = ApiState::new(registry.clone(), store.clone())
        .with_publisher(publisher.clone())
        .with_readiness(Arc::new(FnReadiness::new("kafka", move || async move {
            if kafka_ready {
                Ok(())
            } else {
                Err("broker 127.0.0.1:1 unreachable".to_string())
            }
        })))
        .with_readiness(Arc::new(FnReadiness::new("postgres", || async { Ok(()) })))
        .with_auth(auth(false));
    Fixture {
        app: private_router(state),
        publisher,
        registry,
        store,
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let f = fixture(true);
    let (status, body) = call(&f.app, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&f.app, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["checks"]["postgres"], "ok");

    let down = fixture(false);
    let (status, body) = call(&down.app, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let body = json(&body);
    assert_eq!(body["status"], "not_ready");
    assert!(body["checks"]["kafka"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert_eq!(body["checks"]["postgres"], "ok");
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_request_counts() {
    let _ = callsync_runtime::metrics::prometheus();
    let f = fixture(true);
    call(&f.app, "GET", "/healthz", None).await;
    let (status, text) = call(&f.app, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains(
            "callsync_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("callsync_provider_enabled"), "{text}");
}

#[tokio::test]
async fn providers_show_why_they_are_disabled() {
    let f = fixture(true);
    f.registry
        .record_failure(Provider::Ringba, "RA1", "401 Unauthorized", 1, Utc::now());
    let (status, body) = call(&f.app, "GET", "/api/providers", None).await;
    assert_eq!(status, StatusCode::OK);
    let providers = json(&body)["providers"].as_array().unwrap().clone();
    assert_eq!(providers.len(), 2);
    let ringba = providers
        .iter()
        .find(|p| p["provider"] == "ringba")
        .unwrap();
    assert_eq!(ringba["enabled"], false);
    assert!(ringba["disabled_reason"].as_str().unwrap().contains("401"));
    let callrail = providers
        .iter()
        .find(|p| p["provider"] == "callrail")
        .unwrap();
    assert_eq!(callrail["enabled"], true);
}

#[tokio::test]
async fn triggering_a_sync_validates_and_writes_the_request() {
    let f = fixture(true);
    let (status, body) = call(
        &f.app,
        "POST",
        "/api/syncs",
        Some(r#"{"provider":"ringba","account_id":"RA1","mode":"backfill","window_start":"2025-01-01T00:00:00Z","window_end":"2025-02-01T00:00:00Z"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let written = f.publisher.requests();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].id, id);
    assert_eq!(written[0].mode, SyncMode::Backfill);
    assert_eq!(written[0].requested_by, "api");

    let bad = [
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"sideways"}"#,
            "mode",
        ),
        (
            r#"{"provider":"nope","account_id":"RA1","mode":"full"}"#,
            "provider",
        ),
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"incremental","window_start":"2025-01-01T00:00:00Z"}"#,
            "incremental",
        ),
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"full","window_start":"2025-02-01T00:00:00Z","window_end":"2025-01-01T00:00:00Z"}"#,
            "before",
        ),
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"backfill"}"#,
            "window_start",
        ),
        // accepted before (202), then the worker panicked on `end - 7 days`
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"full","window_end":"-262143-01-01T00:00:00Z"}"#,
            "window_end",
        ),
        (
            r#"{"provider":"ringba","account_id":"RA1","mode":"backfill","window_start":"2025-01-01T00:00:00Z","window_end":"+262142-01-01T00:00:00Z"}"#,
            "window_end",
        ),
        (r#"not json"#, ""),
    ];
    for (payload, word) in bad {
        let (status, body) = call(&f.app, "POST", "/api/syncs", Some(payload)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{payload}: {body}");
        let message = json(&body)["error"].as_str().unwrap().to_string();
        assert!(message.contains(word), "{payload}: {message}");
    }
    let (status, body) = call(
        &f.app,
        "POST",
        "/api/syncs",
        Some(r#"{"provider":"invoca","account_id":"X","mode":"full"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        f.publisher.requests().len(),
        1,
        "nothing written for refused requests"
    );

    // a service without a producer cannot trigger
    let state = ApiState::new(f.registry.clone(), f.store.clone()).with_auth(auth(false));
    let app = private_router(state);
    let (status, _) = call(
        &app,
        "POST",
        "/api/syncs",
        Some(r#"{"provider":"ringba","account_id":"RA1","mode":"full"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn syncs_are_listed_and_shown_with_progress() {
    let f = fixture(true);
    let (_, body) = call(
        &f.app,
        "POST",
        "/api/syncs",
        Some(r#"{"provider":"callrail","account_id":"CR1","mode":"full"}"#),
    )
    .await;
    let id = json(&body)["id"].as_str().unwrap().to_string();
    for (kind, records) in [(SyncEventKind::Started, 0), (SyncEventKind::Progress, 1000)] {
        f.store.record_event(
            &SyncEvent {
                sync_id: id.clone(),
                provider: Provider::CallRail,
                account_id: "CR1".into(),
                mode: SyncMode::Full,
                kind,
                records,
                pages: records / 100,
                rate_per_sec: 250.0,
                eta_secs: Some(12),
                error: None,
                at: Utc::now(),
            },
            None,
        );
    }
    let (status, body) = call(&f.app, "GET", &format!("/api/syncs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sync = json(&body);
    assert_eq!(sync["state"], "running");
    assert_eq!(sync["records"], 1000);
    assert_eq!(sync["eta_secs"], 12);
    assert_eq!(sync["events"].as_array().unwrap().len(), 2);

    let (status, body) = call(
        &f.app,
        "GET",
        "/api/syncs?provider=callrail&account=CR1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["syncs"].as_array().unwrap().len(), 1);
    let (status, body) = call(
        &f.app,
        "GET",
        "/api/syncs?provider=ringba&account=RA1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(json(&body)["syncs"].as_array().unwrap().is_empty());
    let (status, _) = call(&f.app, "GET", "/api/syncs?provider=bogus&account=x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&f.app, "GET", "/api/syncs/does-not-exist", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_route_but_healthz_needs_a_token_with_its_scope() {
    let f = fixture(true);
    let (status, _) = call_as(&f.app, None, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let trigger = r#"{"provider":"ringba","account_id":"RA1","mode":"full"}"#;
    let routes = [
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/api/providers", None),
        ("GET", "/api/syncs", None),
        ("GET", "/api/syncs/some-id", None),
        ("POST", "/api/syncs", Some(trigger)),
    ];
    for token in [None, Some("wrong-token"), Some("")] {
        for (method, uri, body) in routes {
            let (status, text) = call_as(&f.app, token, method, uri, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            // no detail: not which part was wrong, nor which tokens exist
            assert_eq!(json(&text), serde_json::json!({"error": "unauthorized"}));
        }
    }
    // the read scope reads, and may not trigger
    let (status, _) = call_as(&f.app, Some(READ_TOKEN), "GET", "/api/syncs", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, text) = call_as(
        &f.app,
        Some(READ_TOKEN),
        "POST",
        "/api/syncs",
        Some(trigger),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("operate"), "{text}");
    assert!(
        f.publisher.requests().is_empty(),
        "nothing written for refused requests"
    );
    let (status, _) = call_as(&f.app, Some(TOKEN), "POST", "/api/syncs", Some(trigger)).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // /metrics opened for Prometheus by config; the rest stays closed
    let open =
        private_router(ApiState::new(f.registry.clone(), f.store.clone()).with_auth(auth(true)));
    let (status, _) = call_as(&open, None, "GET", "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call_as(&open, None, "GET", "/api/syncs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // the public listener serves no API route at all
    let public = public_router(None);
    for (method, uri, body) in routes {
        let (status, _) = call_as(&public, Some(TOKEN), method, uri, body).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{method} {uri} on the public listener"
        );
    }
}

#[tokio::test]
async fn request_bodies_of_the_api_are_bounded() {
    let f = fixture(true);
    let huge = format!(
        r#"{{"provider":"ringba","account_id":"RA1","mode":"full","resume":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let (status, _) = call(&f.app, "POST", "/api/syncs", Some(&huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(f.publisher.requests().is_empty());
}

#[tokio::test]
async fn unknown_methods_share_one_metric_label() {
    let _ = callsync_runtime::metrics::prometheus();
    let f = fixture(true);
    // before, each of these added a series of its own: method="X1", method="X2", ...
    for i in 0..5 {
        let (status, _) = call_as(&f.app, None, &format!("X{i}"), "/healthz", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
    let (_, text) = call(&f.app, "GET", "/metrics", None).await;
    assert!(!text.contains("method=\"X"), "{text}");
    assert!(
        text.contains(
            "callsync_http_requests_total{route=\"/healthz\",method=\"other\",status=\"405\"}"
        ),
        "{text}"
    );
}
