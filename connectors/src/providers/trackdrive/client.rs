use async_trait::async_trait;
use base64::Engine;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::TrackDriveAccount;
use crate::error::ClientError;
use crate::http::{HttpResponse, ProviderHttp};
use crate::mapping::{parse_timestamp, MapContext, MappingError};
use crate::providers::{
    bad_token, keep_in_window, peek_field, Page, PageRequest, PageToken, ProviderClient,
};

/// TrackDrive's calls client for one account.
#[derive(Debug)]
pub struct TrackDriveClient {
    account: TrackDriveAccount,
    base: String,
    http: ProviderHttp,
}

#[derive(Deserialize)]
struct Envelope {
    calls: Vec<Box<RawValue>>,
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    next_cursor: serde_json::Value,
}

fn created_at(raw: &RawValue) -> Option<DateTime<Utc>> {
    peek_field(raw, &["created_at"]).and_then(|s| parse_timestamp(&s, chrono_tz::UTC))
}

/// `2016-01-01 12:25:15 +0000`, the documented filter format.
fn filter_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S %z").to_string()
}

/// One calls response to its records in the window and the next page token (its
/// `metadata.next_cursor`; `0`, `""` or `null` end the scan); an error is a malformed body
/// (retried).
pub(crate) fn read_page(resp: &HttpResponse, req: &PageRequest) -> Result<Page, String> {
    let env = serde_json::from_slice::<Envelope>(&resp.body).map_err(|e| {
        format!("expected {{\"calls\": [...], \"metadata\": {{\"next_cursor\": …}}}}: {e}")
    })?;
    let next = match &env.metadata.next_cursor {
        serde_json::Value::Number(n) if n.as_i64() == Some(0) => None,
        serde_json::Value::String(s) if s == "0" || s.is_empty() => None,
        serde_json::Value::Null => None,
        serde_json::Value::Number(n) => Some(PageToken::Cursor(n.to_string())),
        serde_json::Value::String(s) => Some(PageToken::Cursor(s.clone())),
        _ => None,
    };
    let fetched = env.calls.len();
    let next = if fetched == 0 { None } else { next };
    let records = keep_in_window(env.calls, req.start, req.end, created_at);
    Ok(Page {
        records,
        next,
        fetched,
    })
}

impl TrackDriveClient {
    pub fn new(account: TrackDriveAccount, http: ProviderHttp) -> Result<Self, String> {
        let base = account
            .api_base()
            .ok_or_else(|| "set subdomain or base_url".to_string())?;
        Ok(TrackDriveClient {
            account,
            base,
            http,
        })
    }
}

#[async_trait]
impl ProviderClient for TrackDriveClient {
    fn provider(&self) -> Provider {
        Provider::TrackDrive
    }
    fn account_id(&self) -> &str {
        &self.account.account
    }
    fn http(&self) -> &ProviderHttp {
        &self.http
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let cursor = match &req.token {
            None => "-1".to_string(),
            Some(PageToken::Cursor(c)) => c.clone(),
            Some(other) => return Err(bad_token(self, other)),
        };
        let url = format!("{}/calls", self.base);
        // whole seconds, inclusive: widen the end to the next second, keep [start, end) ourselves
        let end = req.end + chrono::Duration::seconds(1);
        let query: Vec<(&str, String)> = vec![
            ("cursor", cursor),
            ("per_page", self.account.per_page.to_string()),
            ("created_at_from", filter_time(req.start)),
            ("created_at_to", filter_time(end)),
            // the documented form names a column; the cursor keeps paging stable either way
            ("order", "created_at".to_string()),
        ];
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                self.account.public_key,
                self.account.private_key.expose()
            ))
        );
        self.http
            .execute(
                "calls",
                |c| c.get(&url).query(&query).header("Authorization", &auth),
                |resp| read_page(resp, req),
            )
            .await
    }

    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
        super::map_call(raw, ctx)
    }

    fn map_context(&self, source: RecordSource) -> MapContext {
        let mut ctx = MapContext::new(Provider::TrackDrive, &self.account.account, source);
        if let Some(c) = &self.account.currency {
            ctx.currency = Some(c.clone());
        }
        ctx
    }

    fn call_id_hint(&self, raw: &RawValue) -> Option<String> {
        peek_field(raw, &["uuid"]).or_else(|| peek_field(raw, &["id"]))
    }
}
