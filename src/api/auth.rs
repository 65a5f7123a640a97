//! Bearer tokens of the control API (`[[api.tokens]]`), each with scopes.
//!
//! - `read`: `GET` of `/api/*`, `/readyz` and `/metrics`;
//! - `operate`: `POST /api/syncs` (triggering syncs).
//!
//! A token is configured by its SHA-256 (`sha256 = "<hex>"`, what `callsync secrets token`
//! prints) or as the token itself (`token = "enc:..."`); either way only its hash is kept in
//! memory, and a presented token is hashed and compared with every configured hash in constant
//! time. A missing or unknown token answers 401 with no detail, a known token without the
//! route's scope 403.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use callsync_runtime::Secret;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted in `token = ...` (a generated one has 43 characters).
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read: syncs, providers, readiness, metrics.
    Read,
    /// Act: trigger syncs.
    Operate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[api.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    /// Who holds it (logs name it, never the token).
    pub name: String,
    /// Hex SHA-256 of the token.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The token itself (store it as an `enc:` value).
    #[serde(default)]
    pub token: Option<Secret>,
    pub scopes: Vec<Scope>,
}

impl ApiTokenConfig {
    /// The problems of this entry, as `(key under the entry, problem)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push(("name", "must not be empty".to_string()));
        }
        match (&self.sha256, &self.token) {
            (Some(_), Some(_)) => out.push((
                "sha256",
                "give either sha256 or token, not both".to_string(),
            )),
            (None, None) => out.push((
                "sha256",
                "missing: give sha256 (from `callsync secrets token`) or token".to_string(),
            )),
            (Some(hash), None) => {
                if decode_sha256(hash).is_none() {
                    out.push((
                        "sha256",
                        "must be 64 hexadecimal characters (the SHA-256 of the token)".to_string(),
                    ));
                }
            }
            (None, Some(token)) => {
                if token.expose().chars().count() < MIN_TOKEN_LEN {
                    out.push((
                        "token",
                        format!("must be at least {MIN_TOKEN_LEN} characters (use `callsync secrets token`)"),
                    ));
                }
            }
        }
        if self.scopes.is_empty() {
            out.push(("scopes", "must list read, operate or both".to_string()));
        }
        out
    }
}

fn decode_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let hex_digest = hex_digest.trim();
    if hex_digest.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_digest.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lowercase hex SHA-256 of a token: the value of `sha256 = ...`.
pub fn token_sha256_hex(token: &str) -> String {
    sha256(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// A new random token (32 bytes from the OS, URL-safe base64 without padding).
pub fn generate_token() -> Secret {
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
    Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

struct KnownToken {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured tokens, hashed. Cheap to clone.
#[derive(Clone, Default)]
pub struct ApiAuth {
    tokens: Arc<Vec<KnownToken>>,
    metrics_public: bool,
}

impl fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiAuth")
            .field(
                "tokens",
                &self.tokens.iter().map(|t| &t.name).collect::<Vec<_>>(),
            )
            .field("metrics_public", &self.metrics_public)
            .finish()
    }
}

/// Who a request is, once its token matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Token { name: String, scopes: Vec<Scope> },
    Nobody,
}

impl ApiAuth {
    /// From `[[api.tokens]]` (entries already validated; an invalid one is skipped).
    pub fn new(tokens: &[ApiTokenConfig], metrics_public: bool) -> Self {
        let known = tokens
            .iter()
            .filter_map(|t| {
                let digest = match (&t.sha256, &t.token) {
                    (Some(hash), _) => decode_sha256(hash)?,
                    (None, Some(token)) => sha256(token.expose()),
                    (None, None) => return None,
                };
                Some(KnownToken {
                    name: t.name.clone(),
                    digest,
                    scopes: t.scopes.clone(),
                })
            })
            .collect();
        ApiAuth {
            tokens: Arc::new(known),
            metrics_public,
        }
    }

    /// A single token with `scopes` (tests, the demo).
    pub fn single(name: &str, token: &Secret, scopes: &[Scope]) -> Self {
        ApiAuth::new(
            &[ApiTokenConfig {
                name: name.to_string(),
                sha256: None,
                token: Some(token.clone()),
                scopes: scopes.to_vec(),
            }],
            false,
        )
    }

    /// Whether any token is configured (without one, every API call answers 401).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller a presented bearer token stands for. Every configured hash is compared, in
    /// constant time, whatever matches first.
    pub fn identify(&self, presented: Option<&str>) -> Caller {
        let Some(presented) = presented else {
            return Caller::Nobody;
        };
        let digest = sha256(presented);
        let mut found: Option<&KnownToken> = None;
        for known in self.tokens.iter() {
            let equal: bool = known.digest.ct_eq(&digest).into();
            if equal && found.is_none() {
                found = Some(known);
            }
        }
        match found {
            Some(t) => Caller::Token {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
            },
            None => Caller::Nobody,
        }
    }
}

/// The scope a request needs: `operate` to change anything, `read` otherwise; `None` for
/// `/metrics` when it is opened to Prometheus.
fn required_scope(auth: &ApiAuth, method: &Method, path: &str) -> Option<Scope> {
    if auth.metrics_public && path == "/metrics" && method == Method::GET {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        Some(Scope::Read)
    } else {
        Some(Scope::Operate)
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// 401 with no detail, and the scheme to use.
fn unauthorized() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "unauthorized" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Middleware: lets a request through only with a token that has the route's scope.
pub async fn require_token(State(auth): State<ApiAuth>, request: Request, next: Next) -> Response {
    let Some(scope) = required_scope(&auth, request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    match auth.identify(bearer(&request)) {
        Caller::Nobody => unauthorized(),
        Caller::Token { name, scopes } => {
            if scopes.contains(&scope) {
                tracing::debug!(token = %name, %scope, "API call authorized");
                next.run(request).await
            } else {
                tracing::info!(token = %name, %scope, path = %request.uri().path(), "API call refused: token lacks the scope");
                (
                    StatusCode::FORBIDDEN,
                    Json(json!({ "error": format!("forbidden: this token lacks the {scope} scope") })),
                )
                    .into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sha: Option<&str>, token: Option<&str>, scopes: &[Scope]) -> ApiTokenConfig {
        ApiTokenConfig {
            name: "t".into(),
            sha256: sha.map(str::to_string),
            token: token.map(Secret::new),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn tokens_match_by_hash_with_their_scopes() {
        let token = generate_token();
        assert!(token.expose().len() >= MIN_TOKEN_LEN);
        let hashed = entry(
            Some(&token_sha256_hex(token.expose())),
            None,
            &[Scope::Read],
        );
        assert!(hashed.problems().is_empty(), "{:?}", hashed.problems());
        let other = generate_token();
        let plain = entry(None, Some(other.expose()), &[Scope::Read, Scope::Operate]);
        let auth = ApiAuth::new(&[hashed, plain], false);
        assert_eq!(
            auth.identify(Some(token.expose())),
            Caller::Token {
                name: "t".into(),
                scopes: vec![Scope::Read]
            }
        );
        assert!(matches!(
            auth.identify(Some(other.expose())),
            Caller::Token { scopes, .. } if scopes.len() == 2
        ));
        assert_eq!(auth.identify(Some("guess")), Caller::Nobody);
        assert_eq!(auth.identify(Some("")), Caller::Nobody);
        assert_eq!(auth.identify(None), Caller::Nobody);
        // the hash of a known token is not a token
        assert_eq!(
            auth.identify(Some(&token_sha256_hex(token.expose()))),
            Caller::Nobody
        );
        assert!(!format!("{auth:?}").contains(token.expose()));
    }

    #[test]
    fn bad_entries_are_named() {
        let keys = |e: ApiTokenConfig| -> Vec<&'static str> {
            e.problems().into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(keys(entry(None, None, &[Scope::Read])), ["sha256"]);
        assert_eq!(keys(entry(Some("abc"), None, &[Scope::Read])), ["sha256"]);
        assert_eq!(keys(entry(None, Some("short"), &[Scope::Read])), ["token"]);
        assert_eq!(
            keys(entry(Some(&"a".repeat(64)), Some("x"), &[])),
            ["sha256", "scopes"]
        );
        let parsed: ApiTokenConfig =
            toml::from_str("name = \"grafana\"\nsha256 = \"00\"\nscopes = [\"read\", \"operate\"]")
                .unwrap();
        assert_eq!(parsed.scopes, [Scope::Read, Scope::Operate]);
        assert!(toml::from_str::<ApiTokenConfig>("name = \"x\"\nscopes = [\"admin\"]").is_err());
    }

    #[test]
    fn the_scope_follows_the_method_and_metrics_may_be_public() {
        let closed = ApiAuth::new(&[], false);
        let open = ApiAuth::new(&[], true);
        assert_eq!(
            required_scope(&closed, &Method::GET, "/metrics"),
            Some(Scope::Read)
        );
        assert_eq!(required_scope(&open, &Method::GET, "/metrics"), None);
        assert_eq!(
            required_scope(&open, &Method::POST, "/metrics"),
            Some(Scope::Operate)
        );
        assert_eq!(
            required_scope(&open, &Method::POST, "/api/syncs"),
            Some(Scope::Operate)
        );
        assert_eq!(
            required_scope(&open, &Method::GET, "/api/syncs"),
            Some(Scope::Read)
        );
    }
}
