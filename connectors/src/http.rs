//! The request loop every provider client goes through: circuit breaker, rate limiter,
//! one tracing span and metrics per request, and the retry rules:
//! - 401/403 fail at once ([`ClientError::Auth`]), except an Invoca 403 whose body is a
//!   validation error (Invoca answers invalid parameters with 403): [`ClientError::Rejected`];
//! - 429, and a 2xx body that says it was rate limited ([`BodyProblem::RateLimited`], Ringba's
//!   `isRateLimited`), slow the account down (AIMD) and retry without using up error
//!   attempts; `Retry-After` (seconds or an HTTP date) is honoured, else the backoff grows;
//! - 5xx, timeouts, connection errors and malformed bodies retry with exponential backoff and
//!   full jitter, up to `max_attempts`;
//! - other 4xx fail at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use callsync_runtime::metrics::{
    PROVIDER_RATE_LIMITED_TOTAL, PROVIDER_REQUESTS_TOTAL, PROVIDER_REQUEST_SECONDS,
};
use callsync_runtime::Shutdown;
use callsync_schemas::Provider;
use rand::Rng;
use reqwest::header::HeaderMap;
use tracing::Instrument;

use crate::circuit::CircuitBreaker;
use crate::config::RetrySettings;
use crate::error::ClientError;
use crate::ratelimit::AccountRateLimiter;

/// A response that came back 2xx, with its body read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    /// The URL it came from, secrets redacted (for error messages).
    pub url: String,
}

/// Counters a test or the benchmark can read.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub requests: std::sync::atomic::AtomicU64,
    pub rate_limited: std::sync::atomic::AtomicU64,
    pub retried: std::sync::atomic::AtomicU64,
}

impl RequestStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn retried(&self) -> u64 {
        self.retried.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The HTTP side of one provider account: client, pacing, health and retry policy.
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    pub provider: Provider,
    pub account: String,
    pub client: reqwest::Client,
    pub limiter: Arc<AccountRateLimiter>,
    pub breaker: Arc<CircuitBreaker>,
    pub retry: RetrySettings,
    pub stats: Arc<RequestStats>,
    pub shutdown: Shutdown,
}

/// Why a 2xx body was not a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not the page it should be (retried as an error).
    Malformed(String),
    /// The provider says we are over its limit (treated like a 429).
    RateLimited(String),
}

impl From<String> for BodyProblem {
    fn from(detail: String) -> Self {
        BodyProblem::Malformed(detail)
    }
}

enum Outcome<T> {
    Done(T),
    Retry {
        after: Option<Duration>,
        error: ClientError,
    },
    Fail(ClientError),
}

/// Query parameters whose values never reach an error message or a log line (compared
/// without case).
const SECRET_PARAMS: [&str; 14] = [
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "oauth_token",
    "auth_token",
    "private_key",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "signature",
    "sig",
];

const REDACTED: &str = "[redacted]";

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The URL with secret query values and any userinfo (user and password) replaced by
/// `[redacted]`.
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    if let Some(query) = url.query() {
        // pair by pair on the raw query, so the other values keep their exact encoding and
        // the marker reads `[redacted]` (not form-encoded)
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| {
                let name = pair.split_once('=').map(|(k, _)| k).unwrap_or(pair);
                let decoded: String = url::form_urlencoded::parse(name.as_bytes())
                    .map(|(k, _)| k.into_owned())
                    .next()
                    .unwrap_or_default();
                if is_secret_param(&decoded) {
                    format!("{name}={REDACTED}")
                } else {
                    pair.to_string()
                }
            })
            .collect();
        u.set_query(Some(&redacted.join("&")));
    }
    let had_userinfo = !u.username().is_empty() || u.password().is_some();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    let text = u.to_string();
    if had_userinfo {
        // keep a trace that credentials were there, without them
        if let Some((scheme, rest)) = text.split_once("://") {
            return format!("{scheme}://{REDACTED}@{rest}");
        }
    }
    text
}

/// `text` (an error message or a body snippet) with the values of secret query parameters
/// (`api_key=...`, `token=...`) and the userinfo of URLs (`https://user:pw@host`) replaced
/// by `[redacted]`: whatever a library or a provider echoes back, no credential survives.
pub fn redact_text(text: &str) -> String {
    let userinfo_free = redact_userinfo(text);
    redact_params(&userinfo_free)
}

/// Ends a secret value: the delimiters of query strings, JSON, headers and prose.
fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '&' | '"' | '\'' | ')' | ']' | '>' | '<' | ',' | ';' | '}' | '#'
        )
}

fn redact_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map(|i| i + 1)
            .unwrap_or(0);
        let name = &before[name_start..];
        out.push_str(before);
        out.push('=');
        let value = &after[1..];
        if is_secret_param(name) {
            let end = value.find(ends_value).unwrap_or(value.len());
            if end > 0 {
                out.push_str(REDACTED);
            }
            rest = &value[end..];
        } else {
            rest = value;
        }
    }
    out.push_str(rest);
    out
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || ends_value(c))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// A transport error's message without its URL (reqwest appends the full URL, query and
/// all) and with its causes, which carry the useful part ("connection refused").
fn transport_message(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    redact_text(&message)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

/// Invoca answers both missing permissions and invalid parameters with 403, the latter with
/// a body `{"errors": {...}}` naming the invalid fields or `invalid_data`. Only a 403 whose
/// body names an authorization problem (or is not Invoca's error JSON) is a credentials
/// failure.
pub fn invoca_forbidden_is_auth(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return true;
    };
    let Some(errors) = value.get("errors").and_then(|e| e.as_object()) else {
        return true;
    };
    if errors.is_empty() {
        return true;
    }
    let class = errors
        .get("class")
        .and_then(|c| c.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    ["auth", "permission", "forbidden", "access"]
        .iter()
        .any(|word| class.contains(word))
}

fn snippet(body: &[u8]) -> String {
    let s = redact_text(&String::from_utf8_lossy(body));
    let s = s.trim();
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

impl ProviderHttp {
    /// Full-jitter exponential backoff for attempt `n` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry.base_delay_ms as f64;
        let cap = self.retry.max_delay_ms as f64;
        let exp = (base * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(cap);
        Duration::from_millis(rand::thread_rng().gen_range(0.0..=exp.max(1.0)) as u64)
    }

    /// Sends the request `build` makes (called again for each attempt) and hands a 2xx
    /// response to `parse`; a parse error counts as a malformed page and is retried, a
    /// [`BodyProblem::RateLimited`] as a 429.
    pub async fn execute<T, E: Into<BodyProblem>>(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(&HttpResponse) -> Result<T, E>,
    ) -> Result<T, ClientError> {
        let mut attempt: u32 = 0;
        let mut rate_limited: u32 = 0;
        loop {
            attempt += 1;
            if self.shutdown.is_triggered() {
                return Err(ClientError::Cancelled {
                    provider: self.provider,
                    account: self.account.clone(),
                });
            }
            match self.breaker.try_acquire() {
                Ok(()) => {}
                Err(denied) if denied.probing => {
                    // another request is probing a half-open circuit: wait for its outcome
                    attempt -= 1;
                    tokio::select! {
                        _ = tokio::time::sleep(denied.retry_in) => continue,
                        _ = self.shutdown.wait() => {
                            return Err(ClientError::Cancelled { provider: self.provider, account: self.account.clone() });
                        }
                    }
                }
                Err(denied) => {
                    return Err(ClientError::CircuitOpen {
                        provider: self.provider,
                        account: self.account.clone(),
                        retry_in: denied.retry_in,
                    });
                }
            }
            let permit = tokio::select! {
                p = self.limiter.acquire() => p,
                _ = self.shutdown.wait() => {
                    self.breaker.record_neutral();
                    return Err(ClientError::Cancelled { provider: self.provider, account: self.account.clone() });
                }
            };
            let request = match build(&self.client).build() {
                Ok(r) => r,
                Err(e) => {
                    self.breaker.record_neutral();
                    return Err(ClientError::Rejected {
                        provider: self.provider,
                        account: self.account.clone(),
                        url: String::from("(request could not be built)"),
                        status: 0,
                        body: transport_message(e),
                    });
                }
            };
            let url = redact_url(request.url());
            let span = tracing::debug_span!("provider_request", provider = %self.provider, account = %self.account, what, url = %url, attempt);
            let outcome = self
                .attempt(request, &url, attempt, &parse)
                .instrument(span)
                .await;
            drop(permit);
            match outcome {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(e),
                Outcome::Retry { after, error } => {
                    let is_429 = matches!(error, ClientError::RateLimited { .. });
                    let limit = if is_429 {
                        self.retry.max_rate_limited
                    } else {
                        self.retry.max_attempts
                    };
                    let count = if is_429 {
                        rate_limited += 1;
                        attempt -= 1; // a 429 does not use up an error attempt
                        rate_limited
                    } else {
                        attempt
                    };
                    if count >= limit {
                        return Err(error);
                    }
                    self.stats
                        .retried
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let wait = after.unwrap_or_else(|| self.backoff(count));
                    tracing::debug!(provider = %self.provider, account = %self.account, ?wait, error = %error, "retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.wait() => {
                            return Err(ClientError::Cancelled { provider: self.provider, account: self.account.clone() });
                        }
                    }
                }
            }
        }
    }

    /// A rate-limited answer (429 or a 2xx body saying so): counted, the account slows down.
    fn rate_limited<T>(&self, url: &str, attempt: u32, after: Option<Duration>) -> Outcome<T> {
        self.breaker.record_neutral();
        self.stats
            .rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(PROVIDER_RATE_LIMITED_TOTAL, "provider" => self.provider.as_str(), "account" => self.account.clone())
            .increment(1);
        self.limiter.on_rate_limited(after);
        tracing::warn!(provider = %self.provider, account = %self.account, ?after, "rate limited");
        Outcome::Retry {
            after,
            error: ClientError::RateLimited {
                provider: self.provider,
                account: self.account.clone(),
                url: url.to_string(),
                attempts: attempt,
            },
        }
    }

    async fn attempt<T, E: Into<BodyProblem>>(
        &self,
        request: reqwest::Request,
        url: &str,
        attempt: u32,
        parse: &impl Fn(&HttpResponse) -> Result<T, E>,
    ) -> Outcome<T> {
        let provider = self.provider;
        let account = self.account.clone();
        let started = Instant::now();
        self.stats
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.client.execute(request).await;
        let (status_label, outcome) = match result {
            Err(e) => {
                self.breaker.record_failure();
                let label = if e.is_timeout() { "timeout" } else { "error" };
                (
                    label.to_string(),
                    Outcome::Retry {
                        after: None,
                        error: ClientError::Transport {
                            provider,
                            account,
                            url: url.to_string(),
                            attempts: attempt,
                            message: transport_message(e),
                        },
                    },
                )
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        self.breaker.record_failure();
                        let outcome = Outcome::Retry {
                            after: None,
                            error: ClientError::Transport {
                                provider,
                                account,
                                url: url.to_string(),
                                attempts: attempt,
                                message: format!("reading body: {}", transport_message(e)),
                            },
                        };
                        self.observe(started, "body_error");
                        return outcome;
                    }
                };
                let outcome = match status {
                    200..=299 => {
                        let after = retry_after(&headers);
                        let response = HttpResponse {
                            status,
                            headers,
                            body,
                            url: url.to_string(),
                        };
                        match parse(&response).map_err(Into::into) {
                            Ok(v) => {
                                self.breaker.record_success();
                                self.limiter.on_success();
                                Outcome::Done(v)
                            }
                            Err(BodyProblem::RateLimited(_)) => {
                                self.rate_limited(url, attempt, after)
                            }
                            Err(BodyProblem::Malformed(detail)) => {
                                self.breaker.record_failure();
                                Outcome::Retry {
                                    after: None,
                                    error: ClientError::Malformed {
                                        provider,
                                        account,
                                        url: url.to_string(),
                                        attempts: attempt,
                                        detail: redact_text(&detail),
                                    },
                                }
                            }
                        }
                    }
                    403 if provider == Provider::Invoca && !invoca_forbidden_is_auth(&body) => {
                        self.breaker.record_neutral();
                        Outcome::Fail(ClientError::Rejected {
                            provider,
                            account,
                            url: url.to_string(),
                            status,
                            body: snippet(&body),
                        })
                    }
                    401 | 403 => {
                        self.breaker.record_neutral();
                        Outcome::Fail(ClientError::Auth {
                            provider,
                            account,
                            url: url.to_string(),
                            status,
                            body: snippet(&body),
                        })
                    }
                    429 => self.rate_limited(url, attempt, retry_after(&headers)),
                    500..=599 => {
                        self.breaker.record_failure();
                        Outcome::Retry {
                            after: None,
                            error: ClientError::Server {
                                provider,
                                account,
                                url: url.to_string(),
                                status,
                                attempts: attempt,
                                body: snippet(&body),
                            },
                        }
                    }
                    _ => {
                        self.breaker.record_neutral();
                        Outcome::Fail(ClientError::Rejected {
                            provider,
                            account,
                            url: url.to_string(),
                            status,
                            body: snippet(&body),
                        })
                    }
                };
                (status.to_string(), outcome)
            }
        };
        self.observe(started, &status_label);
        outcome
    }

    fn observe(&self, started: Instant, status: &str) {
        metrics::counter!(PROVIDER_REQUESTS_TOTAL, "provider" => self.provider.as_str(), "status" => status.to_string())
            .increment(1);
        metrics::histogram!(PROVIDER_REQUEST_SECONDS, "provider" => self.provider.as_str())
            .record(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_urls() {
        let u = reqwest::Url::parse(
            "https://api.retreaver.com/api/v2/calls.json?api_key=s3cret&page=2",
        )
        .unwrap();
        let r = redact_url(&u);
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("api_key=[redacted]&page=2"), "{r}");

        let u = reqwest::Url::parse(
            "https://alice:pw0rd@acme.invoca.net/api?OAuth_Token=t0k&Key=k3y&company_id=7",
        )
        .unwrap();
        let r = redact_url(&u);
        for secret in ["alice", "pw0rd", "t0k", "k3y"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(
            r.contains("company_id=7") && r.contains("[redacted]@acme"),
            "{r}"
        );
    }

    #[test]
    fn secrets_are_redacted_from_free_text() {
        let text = "error sending request for url (http://127.0.0.1:1/api/v2/calls.json?\
                    api_key=S3CRET&company_id=9): {\"token\":\"x\", \"url\": \"https://u:PW@h/x?sig=SIG\"} \
                    apikey=K2, password=P3;";
        let r = redact_text(text);
        for secret in ["S3CRET", "PW", "SIG", "K2", "P3", "u:"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(
            r.contains("company_id=9") && r.contains("127.0.0.1:1"),
            "{r}"
        );
        // nothing to redact: unchanged
        let plain = "HTTP 500: upstream timed out (a=b, c = d)";
        assert_eq!(redact_text(plain), plain);
    }

    #[tokio::test]
    async fn a_refused_connection_does_not_print_the_url() {
        let client = reqwest::Client::new();
        let error = client
            .get("http://127.0.0.1:1/calls.json?api_key=REFUSED-KEY")
            .send()
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("REFUSED-KEY"),
            "reqwest shows the URL"
        );
        let message = transport_message(error);
        assert!(!message.contains("REFUSED-KEY"), "{message}");
        assert!(message.to_lowercase().contains("connect"), "{message}");
    }

    #[test]
    fn invoca_validation_403s_are_not_credential_failures() {
        assert!(!invoca_forbidden_is_auth(
            br#"{"errors": {"class": "invalid_data", "invalid_data": "from must be a date"}}"#
        ));
        assert!(!invoca_forbidden_is_auth(
            br#"{"errors": {"start_after_transaction_id": ["is not a transaction"]}}"#
        ));
        assert!(invoca_forbidden_is_auth(
            br#"{"errors": {"class": "unauthorized", "invalid_data": "no access"}}"#
        ));
        assert!(invoca_forbidden_is_auth(b"Forbidden"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
