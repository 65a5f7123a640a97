//! Serving a router on a TCP listener with limits: a header-read timeout (hyper), a request
//! timeout and a body idle timeout (tower-http), a cap on concurrent requests (tower), a cap on
//! open connections in all and per client address, and a graceful shutdown that gives requests
//! in flight `shutdown_grace_secs` and then closes whatever is left (a stalled client never
//! holds the process).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use callsync_runtime::Shutdown;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Connections refused because their client address already held its share, labelled
/// `listener`.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "callsync_http_connections_refused_total";
/// Connections open now, labelled `listener`.
pub const HTTP_CONNECTIONS_OPEN: &str = "callsync_http_connections_open";

/// `[api.limits]` and `[webhooks.limits]`: how much one listener gives its clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// A request's headers must arrive within this, seconds (also the idle time a kept-alive
    /// connection may wait for its next request).
    pub header_read_timeout_secs: u64,
    /// A whole request, body and answer included, seconds (408 past it).
    pub request_timeout_secs: u64,
    /// The longest gap between two chunks of a request body, seconds.
    pub body_timeout_secs: u64,
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections open at once from one client address; further ones are closed at once.
    pub max_connections_per_client: usize,
    /// Requests being answered at once; further ones wait (within their request timeout).
    pub max_concurrent_requests: usize,
    /// Headers per request (431 past it).
    pub max_headers: usize,
    /// Bytes of request line and headers (431 past it; at least 8192).
    pub max_header_bytes: usize,
    /// After shutdown is asked, requests in flight get this long, seconds; then their
    /// connections are closed.
    pub shutdown_grace_secs: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout_secs: 10,
            request_timeout_secs: 30,
            body_timeout_secs: 10,
            max_connections: 1024,
            max_connections_per_client: 128,
            max_concurrent_requests: 256,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            shutdown_grace_secs: 10,
        }
    }
}

/// hyper's smallest read buffer: `max_header_bytes` cannot go below it.
pub const MIN_HEADER_BYTES: usize = 8192;

impl ListenerLimits {
    /// Every limit that is out of range, as `(key under the section, problem)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let secs = [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("shutdown_grace_secs", self.shutdown_grace_secs),
        ];
        for (key, value) in secs {
            if !(1..=3600).contains(&value) {
                out.push((key, format!("must be 1 to 3600 seconds, not {value}")));
            }
        }
        let counts = [
            ("max_connections", self.max_connections, 1_000_000),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
                1_000_000,
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests,
                1_000_000,
            ),
            ("max_headers", self.max_headers, 1000),
        ];
        for (key, value, max) in counts {
            if !(1..=max).contains(&value) {
                out.push((key, format!("must be 1 to {max}, not {value}")));
            }
        }
        if !(MIN_HEADER_BYTES..=1024 * 1024).contains(&self.max_header_bytes) {
            out.push((
                "max_header_bytes",
                format!(
                    "must be {MIN_HEADER_BYTES} to 1048576, not {}",
                    self.max_header_bytes
                ),
            ));
        }
        out
    }

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value.max(1))
    }
}

/// Counts the open connections of each client address.
#[derive(Clone, Default)]
struct ClientConnections {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection of a client; gives its slot back when dropped.
struct ClientSlot {
    owner: ClientConnections,
    client: IpAddr,
}

impl ClientConnections {
    fn try_open(&self, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().ok()?;
        let count = open.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            owner: self.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.owner.open.lock() {
            if let Some(count) = open.get_mut(&self.client) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&self.client);
                }
            }
        }
    }
}

/// What one connection holds until it closes.
struct ConnectionGuard {
    _slot: ClientSlot,
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_CONNECTIONS_OPEN, "listener" => self.listener).decrement(1.0);
    }
}

/// The request-level limits as tower layers around `app`: request timeout (408), body idle
/// timeout, the concurrent request cap, and a panic in a handler answered 500.
pub fn with_request_limits(app: Router, limits: &ListenerLimits) -> Router {
    let concurrency = GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests.max(1));
    // layers run outside-in from the last added: the timeout covers waiting for a slot
    app.layer(CatchPanicLayer::custom(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": "internal error" })),
        )
            .into_response()
    }))
    .layer(concurrency)
    .layer(RequestBodyTimeoutLayer::new(ListenerLimits::secs(
        limits.body_timeout_secs,
    )))
    .layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        ListenerLimits::secs(limits.request_timeout_secs),
    ))
}

/// Serves `app` on `listener` until `shutdown`, under `limits`. `name` labels the metrics and
/// logs (`public`, `private`). Each request carries the peer's `ConnectInfo<SocketAddr>`.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: &ListenerLimits,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(listener = name, %addr, "HTTP listening");
    let app = with_request_limits(app, limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ListenerLimits::secs(limits.header_read_timeout_secs))
        .max_headers(limits.max_headers.max(1))
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_client = ClientConnections::default();
    let graceful = GracefulShutdown::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        // a free connection slot first: past the cap, clients wait in the backlog
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning
                    tracing::warn!(listener = name, error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_client.try_open(peer.ip(), limits.max_connections_per_client) else {
            metrics::counter!(HTTP_CONNECTIONS_REFUSED_TOTAL, "listener" => name).increment(1);
            tracing::debug!(listener = name, client = %peer.ip(), "too many connections from one client; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics::gauge!(HTTP_CONNECTIONS_OPEN, "listener" => name).increment(1.0);
        let guard = ConnectionGuard {
            _slot: slot,
            _permit: permit,
            listener: name,
        };
        let service = app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
            drop(guard);
        });
    }
    drop(listener);
    let grace = ListenerLimits::secs(limits.shutdown_grace_secs);
    let open = tasks.len();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, connections = tasks.len(), ?grace, "connections still open after the shutdown grace; closing them");
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    tracing::info!(
        listener = name,
        connections_at_shutdown = open,
        "HTTP listener stopped"
    );
    Ok(())
}

/// The client address of a request: the peer, or, when the peer is one of
/// `trusted_proxies`, the last address it appended to `X-Forwarded-For`.
pub fn client_address(
    peer: Option<SocketAddr>,
    headers: &axum::http::HeaderMap,
    trusted_proxies: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse::<IpAddr>().ok())
        .next_back();
    Some(forwarded.unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(ListenerLimits::default().problems().is_empty());
        let bad = ListenerLimits {
            header_read_timeout_secs: 0,
            max_connections: 0,
            max_header_bytes: 100,
            ..ListenerLimits::default()
        };
        let keys: Vec<&str> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "header_read_timeout_secs",
                "max_connections",
                "max_header_bytes"
            ]
        );
    }

    #[test]
    fn per_client_slots_are_counted_and_given_back() {
        let clients = ClientConnections::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = clients.try_open(ip, 2).unwrap();
        let b = clients.try_open(ip, 2).unwrap();
        assert!(clients.try_open(ip, 2).is_none());
        assert!(clients.try_open("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        let _c = clients.try_open(ip, 2).unwrap();
        drop(b);
        drop(_c);
        assert!(clients.open.lock().unwrap().is_empty());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let direct: SocketAddr = "3.3.3.3:5000".parse().unwrap();
        let trusted = ["10.0.0.9".parse().unwrap()];
        assert_eq!(
            client_address(Some(proxy), &headers, &trusted),
            Some("2.2.2.2".parse().unwrap())
        );
        assert_eq!(
            client_address(Some(direct), &headers, &trusted),
            Some("3.3.3.3".parse().unwrap())
        );
        assert_eq!(
            client_address(Some(proxy), &axum::http::HeaderMap::new(), &trusted),
            Some("10.0.0.9".parse().unwrap())
        );
    }
}
