//! A client for a Confluent-compatible schema registry, and a decoder that fetches unknown
//! writer schemas from it.
//!
//! Only the two calls callsync needs: register a schema under a subject
//! (`POST /subjects/{subject}/versions`) and look a schema up by id (`GET /schemas/ids/{id}`).
//! Both are cached for the life of the client (ids are immutable in a registry). Subjects
//! follow the TopicNameStrategy: `{topic}-value`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;

use crate::error::{DecodeError, DetectedFormat};
use crate::records::AvroRecord;
use crate::schema::SchemaError;
use crate::wire::{RecordDecoder, WireFormat};

/// The content type the registry API speaks.
pub const REGISTRY_CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How long a "schema id not found" answer is remembered, so a topic full of values with a
/// bad id does not send one request per value.
const MISSING_TTL: Duration = Duration::from_secs(30);

/// Longest response body quoted in an error.
const BODY_QUOTE_LIMIT: usize = 512;

/// The subject of a topic's values under the TopicNameStrategy: `{topic}-value`.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// " (subject x)" or "", for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectNote(pub Option<String>);

impl fmt::Display for SubjectNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => write!(f, " (subject {s})"),
            None => Ok(()),
        }
    }
}

/// A schema registry call that failed. Each names the method, the URL (credentials removed),
/// the subject where there is one, and the HTTP status and body or the transport error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The configured URL cannot be used.
    #[error("schema registry URL {url:?} is not usable: {reason}")]
    BadUrl {
        /// The URL as configured.
        url: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("schema registry client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request failed before a response (connect, timeout, TLS).
    #[error("schema registry {method} {url}{subject}: request failed: {source}")]
    Request {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// The subject, if the call has one.
        subject: SubjectNote,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with a non-success status.
    #[error("schema registry {method} {url}{subject}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// The subject, if the call has one.
        subject: SubjectNote,
        /// The HTTP status code.
        status: u16,
        /// The response body (the registry's `{"error_code":..,"message":..}`), truncated.
        body: String,
    },
    /// A success status with a body that is not what the API promises.
    #[error("schema registry {method} {url}{subject}: unexpected response: {reason}")]
    BadResponse {
        /// HTTP method.
        method: &'static str,
        /// Request URL.
        url: String,
        /// The subject, if the call has one.
        subject: SubjectNote,
        /// What was wrong, with the body quoted.
        reason: String,
    },
}

/// Credentials for a registry behind HTTP basic auth (Confluent Cloud: API key and secret).
#[derive(Clone)]
struct BasicAuth {
    user: String,
    password: Option<String>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

/// A Confluent-compatible schema registry client with caches.
pub struct SchemaRegistryClient {
    http: Client,
    base: Url,
    auth: Option<BasicAuth>,
    by_id: Mutex<HashMap<u32, Arc<str>>>,
    registered: Mutex<HashMap<(String, String), u32>>,
    missing: Mutex<HashMap<u32, (Instant, u16, String)>>,
}

impl fmt::Debug for SchemaRegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryClient")
            .field("url", &self.base.as_str())
            .field("basic_auth", &self.auth.as_ref().map(|a| a.user.as_str()))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn quote_body(body: &str) -> String {
    if body.len() <= BODY_QUOTE_LIMIT {
        return body.to_string();
    }
    let mut end = BODY_QUOTE_LIMIT;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}

impl SchemaRegistryClient {
    /// A client for the registry at `url` (`http://localhost:8081`, or with a path prefix),
    /// with a 10 s request timeout. Credentials in the URL (`http://key:secret@host`) are moved
    /// to basic auth and kept out of error messages.
    pub fn new(url: &str) -> Result<Self, RegistryError> {
        let http = Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(RegistryError::Client)?;
        Self::with_client(url, http)
    }

    /// A client using `http` (for shared connection pools and custom TLS).
    pub fn with_client(url: &str, http: Client) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let mut base = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!(
                "scheme {} is not http or https",
                base.scheme()
            )));
        }
        if base.cannot_be_a_base() {
            return Err(bad("not a base URL".to_string()));
        }
        let auth = if base.username().is_empty() {
            None
        } else {
            let user = base.username().to_string();
            let password = base.password().map(str::to_string);
            let _ = base.set_username("");
            let _ = base.set_password(None);
            Some(BasicAuth { user, password })
        };
        Ok(SchemaRegistryClient {
            http,
            base,
            auth,
            by_id: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
        })
    }

    /// Uses HTTP basic auth (Confluent Cloud: API key and secret).
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(BasicAuth {
            user: user.into(),
            password: Some(password.into()),
        });
        self
    }

    /// The registry's base URL (without credentials).
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(a) => req.basic_auth(&a.user, a.password.as_ref()),
            None => req,
        }
    }

    /// Sends a request and returns the body of a success response.
    async fn call(
        &self,
        method: &'static str,
        url: &Url,
        subject: Option<&str>,
        req: reqwest::RequestBuilder,
    ) -> Result<String, RegistryError> {
        let note = || SubjectNote(subject.map(str::to_string));
        let req = self
            .authed(req)
            .header(reqwest::header::ACCEPT, REGISTRY_CONTENT_TYPE);
        let resp = req.send().await.map_err(|source| RegistryError::Request {
            method,
            url: url.to_string(),
            subject: note(),
            source: source.without_url(),
        })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|source| RegistryError::Request {
            method,
            url: url.to_string(),
            subject: note(),
            source: source.without_url(),
        })?;
        if !status.is_success() {
            return Err(RegistryError::Status {
                method,
                url: url.to_string(),
                subject: note(),
                status: status.as_u16(),
                body: quote_body(&body),
            });
        }
        Ok(body)
    }

    /// Registers `schema_json` under `subject` and returns its id. The registry returns the
    /// existing id when the schema is already registered; it refuses (HTTP 409) a schema
    /// incompatible with the subject's compatibility setting. Cached per (subject, schema).
    pub async fn register(&self, subject: &str, schema_json: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_string(), schema_json.to_string());
        if let Some(id) = lock(&self.registered).get(&key) {
            return Ok(*id);
        }
        let url = self.endpoint(&["subjects", subject, "versions"]);
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let req = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, REGISTRY_CONTENT_TYPE)
            .body(body);
        let text = self.call("POST", &url, Some(subject), req).await?;
        let parsed: IdResponse =
            serde_json::from_str(&text).map_err(|e| RegistryError::BadResponse {
                method: "POST",
                url: url.to_string(),
                subject: SubjectNote(Some(subject.to_string())),
                reason: format!("{e}: {}", quote_body(&text)),
            })?;
        tracing::info!(registry = %self.base, subject, schema_id = parsed.id, "registered schema");
        lock(&self.registered).insert(key, parsed.id);
        lock(&self.by_id)
            .entry(parsed.id)
            .or_insert_with(|| Arc::from(schema_json));
        Ok(parsed.id)
    }

    /// Registers `T`'s schema under `{topic}-value` and returns its id.
    pub async fn register_record<T: AvroRecord>(&self, topic: &str) -> Result<u32, RegistryError> {
        self.register(&value_subject(topic), T::schema_info().json())
            .await
    }

    /// The schema (JSON text) with registry id `schema_id`. Cached; a 404 is remembered for
    /// 30 s.
    pub async fn schema_by_id(&self, schema_id: u32) -> Result<Arc<str>, RegistryError> {
        if let Some(s) = lock(&self.by_id).get(&schema_id) {
            return Ok(s.clone());
        }
        let url = self.endpoint(&["schemas", "ids", &schema_id.to_string()]);
        if let Some((at, status, body)) = lock(&self.missing).get(&schema_id) {
            if at.elapsed() < MISSING_TTL {
                return Err(RegistryError::Status {
                    method: "GET",
                    url: url.to_string(),
                    subject: SubjectNote(None),
                    status: *status,
                    body: body.clone(),
                });
            }
        }
        let req = self.http.get(url.clone());
        let text = match self.call("GET", &url, None, req).await {
            Ok(t) => t,
            Err(RegistryError::Status {
                method,
                url,
                subject,
                status,
                body,
            }) => {
                if status == StatusCode::NOT_FOUND.as_u16() {
                    lock(&self.missing).insert(schema_id, (Instant::now(), status, body.clone()));
                }
                return Err(RegistryError::Status {
                    method,
                    url,
                    subject,
                    status,
                    body,
                });
            }
            Err(e) => return Err(e),
        };
        let bad = |reason: String| RegistryError::BadResponse {
            method: "GET",
            url: url.to_string(),
            subject: SubjectNote(None),
            reason,
        };
        let parsed: SchemaResponse =
            serde_json::from_str(&text).map_err(|e| bad(format!("{e}: {}", quote_body(&text))))?;
        if let Some(t) = parsed.schema_type.as_deref() {
            if t != "AVRO" {
                return Err(bad(format!(
                    "schema id {schema_id} is a {t} schema, not AVRO"
                )));
            }
        }
        tracing::info!(registry = %self.base, schema_id, "fetched writer schema");
        let schema: Arc<str> = Arc::from(parsed.schema);
        lock(&self.by_id).insert(schema_id, schema.clone());
        Ok(schema)
    }

    /// The wire format for producing `T` to `topic`: registers the schema and returns
    /// `Confluent { schema_id }`.
    pub async fn wire_format<T: AvroRecord>(
        &self,
        topic: &str,
    ) -> Result<WireFormat, RegistryError> {
        let schema_id = self.register_record::<T>(topic).await?;
        Ok(WireFormat::Confluent { schema_id })
    }
}

/// The wire format for producing `T` to `topic`: Confluent with the registered schema id when
/// a registry is configured, else Avro single-object encoding (the design's rule).
pub async fn wire_format_for<T: AvroRecord>(
    registry: Option<&SchemaRegistryClient>,
    topic: &str,
) -> Result<WireFormat, RegistryError> {
    match registry {
        Some(r) => r.wire_format::<T>(topic).await,
        None => Ok(WireFormat::SingleObject),
    }
}

/// A value that could not be decoded, or whose writer schema could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryDecodeError {
    /// The value itself is bad, or its schema is unknown with no registry to ask.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Fetching the writer schema failed.
    #[error("fetching the writer schema of a {record} value: {source}")]
    Registry {
        /// The record type.
        record: &'static str,
        /// What failed.
        #[source]
        source: RegistryError,
    },
    /// The registry's schema cannot be parsed or cannot be read as our record.
    #[error("{source}")]
    Schema {
        /// The schema id.
        schema_id: u32,
        /// Why it cannot be used.
        #[source]
        source: SchemaError,
    },
}

impl RegistryDecodeError {
    /// Whether retrying later may succeed (the registry was unreachable or failed), as opposed
    /// to a value that will never decode (send it to the DLQ).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryDecodeError::Registry { source, .. } => match source {
                RegistryError::Request { .. } => true,
                RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
                _ => false,
            },
            _ => false,
        }
    }
}

/// A [`RecordDecoder`] that, on a Confluent schema id it does not know, fetches the writer
/// schema from the registry (when one is configured) and then decodes with schema resolution
/// (or the fast path, when the registry's schema is ours).
pub struct RegistryDecoder<T> {
    decoder: RecordDecoder<T>,
    registry: Option<Arc<SchemaRegistryClient>>,
}

impl<T> fmt::Debug for RegistryDecoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryDecoder")
            .field("decoder", &self.decoder)
            .field("registry", &self.registry)
            .finish()
    }
}

impl<T: AvroRecord> RegistryDecoder<T> {
    /// A decoder asking `registry` for unknown schema ids (none: it never fetches).
    pub fn new(registry: Option<Arc<SchemaRegistryClient>>) -> Self {
        RegistryDecoder {
            decoder: RecordDecoder::new(),
            registry,
        }
    }

    /// The synchronous decoder inside (to add schemas, or to decode without fetching).
    pub fn decoder(&self) -> &RecordDecoder<T> {
        &self.decoder
    }

    /// The registry client, if any.
    pub fn registry(&self) -> Option<&Arc<SchemaRegistryClient>> {
        self.registry.as_ref()
    }

    /// Decodes one value, fetching its writer schema first when it is a Confluent value with
    /// an id not seen before. Known ids cost no request and no await.
    pub async fn decode(&self, value: &[u8]) -> Result<T, RegistryDecodeError> {
        if let (Ok(DetectedFormat::Confluent { schema_id }), Some(registry)) =
            (self.decoder.detect(value), &self.registry)
        {
            if !self.decoder.knows_schema_id(schema_id) {
                let json = registry.schema_by_id(schema_id).await.map_err(|source| {
                    RegistryDecodeError::Registry {
                        record: T::NAME,
                        source,
                    }
                })?;
                self.decoder
                    .add_schema_id(schema_id, &json)
                    .map_err(|source| RegistryDecodeError::Schema { schema_id, source })?;
            }
        }
        Ok(self.decoder.decode(value)?)
    }
}
