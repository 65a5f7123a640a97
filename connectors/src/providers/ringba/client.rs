use async_trait::async_trait;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::RingbaAccount;
use crate::error::ClientError;
use crate::http::{BodyProblem, HttpResponse, ProviderHttp};
use crate::mapping::{MapContext, MappingError};
use crate::providers::{
    bad_token, keep_in_window, peek_field, Page, PageRequest, PageToken, ProviderClient,
};

/// Ringba's call-logs client for one account.
#[derive(Debug)]
pub struct RingbaClient {
    account: RingbaAccount,
    tz: chrono_tz::Tz,
    http: ProviderHttp,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default, rename = "isRateLimited")]
    is_rate_limited: bool,
    report: Option<Report>,
}

#[derive(Deserialize)]
struct Report {
    records: Vec<Box<RawValue>>,
    #[serde(rename = "totalCount")]
    total_count: u64,
}

fn call_time(raw: &RawValue) -> Option<DateTime<Utc>> {
    peek_field(raw, &["callDt"])
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// One call-logs response (asked at `offset` with page `size`) to its records in the window
/// and the next page token. A body with `isRateLimited: true` (Ringba may throttle with a
/// 2xx) is a rate-limited answer; any other unreadable body is malformed (retried).
pub(crate) fn read_page(
    resp: &HttpResponse,
    req: &PageRequest,
    offset: u64,
    size: u64,
) -> Result<Page, BodyProblem> {
    let env: Envelope = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("expected {{\"report\": {{\"records\": [...]}}}}: {e}"))?;
    if env.is_rate_limited {
        return Err(BodyProblem::RateLimited(
            "isRateLimited in a 2xx body".to_string(),
        ));
    }
    let report = env
        .report
        .ok_or_else(|| "no `report` in the response".to_string())?;
    let (records, total) = (report.records, report.total_count);
    let fetched = records.len() as u64;
    let next = (fetched > 0 && offset + fetched < total && fetched >= size)
        .then(|| PageToken::Offset(offset + fetched));
    let records = keep_in_window(records, req.start, req.end, call_time);
    Ok(Page {
        records,
        next,
        fetched: fetched as usize,
    })
}

impl RingbaClient {
    /// Fails when `time_zone` is not an IANA zone name.
    pub fn new(account: RingbaAccount, http: ProviderHttp) -> Result<Self, String> {
        let tz = match &account.time_zone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|e| format!("time_zone {name:?}: {e}"))?,
        };
        Ok(RingbaClient { account, tz, http })
    }
}

#[async_trait]
impl ProviderClient for RingbaClient {
    fn provider(&self) -> Provider {
        Provider::Ringba
    }
    fn account_id(&self) -> &str {
        &self.account.account
    }
    fn http(&self) -> &ProviderHttp {
        &self.http
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let offset = match &req.token {
            None => 0,
            Some(PageToken::Offset(n)) => *n,
            Some(other) => return Err(bad_token(self, other)),
        };
        let size = self.account.page_size.clamp(1, 1000) as u64;
        let url = format!(
            "{}/{}/calllogs",
            self.account.base_url.trim_end_matches('/'),
            self.account.account
        );
        // reportEnd is inclusive: ask for the whole window and keep [start, end) ourselves
        let body = serde_json::json!({
            "reportStart": req.start.to_rfc3339_opts(SecondsFormat::Millis, true),
            "reportEnd": req.end.to_rfc3339_opts(SecondsFormat::Millis, true),
            "orderByColumns": [{"column": "callDt", "direction": "asc"}],
            "offset": offset,
            "size": size,
        });
        let auth = format!("Token {}", self.account.token.expose());
        self.http
            .execute(
                "calllogs",
                |c| c.post(&url).header("Authorization", &auth).json(&body),
                |resp| read_page(resp, req, offset, size),
            )
            .await
    }

    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
        super::map_call(raw, ctx)
    }

    fn map_context(&self, source: RecordSource) -> MapContext {
        let mut ctx = MapContext::new(Provider::Ringba, &self.account.account, source);
        ctx.time_zone = self.tz;
        if let Some(c) = &self.account.currency {
            ctx.currency = Some(c.clone());
        }
        ctx
    }

    fn call_id_hint(&self, raw: &RawValue) -> Option<String> {
        peek_field(raw, &["inboundCallId"])
    }
}
