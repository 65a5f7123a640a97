use async_trait::async_trait;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::value::RawValue;

use super::config::InvocaAccount;
use crate::error::ClientError;
use crate::http::{HttpResponse, ProviderHttp};
use crate::mapping::{MapContext, MappingError};
use crate::providers::{
    bad_token, covering_dates, keep_in_window, peek_field, split_array, Page, PageRequest,
    PageToken, ProviderClient, Scan, DATE_FILTER_MIN_WINDOW,
};

/// Invoca's Transactions API client for one account.
#[derive(Debug)]
pub struct InvocaClient {
    account: InvocaAccount,
    tz: chrono_tz::Tz,
    http: ProviderHttp,
}

fn start_time(raw: &RawValue) -> Option<DateTime<Utc>> {
    peek_field(raw, &["start_time_utc"])
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// One transactions response (asked with `limit`) to its records (in the window unless the
/// scan is by transaction) and the next page token; an error is a malformed body (retried).
pub(crate) fn read_page(
    resp: &HttpResponse,
    req: &PageRequest,
    limit: u32,
) -> Result<Page, String> {
    let rows = split_array(&resp.body)?;
    let fetched = rows.len();
    let last_id = rows.last().and_then(|r| peek_field(r, &["transaction_id"]));
    let next = if fetched >= limit as usize {
        last_id.map(PageToken::AfterTransaction)
    } else {
        None
    };
    let records = if req.scan == Scan::Transactions {
        rows
    } else {
        keep_in_window(rows, req.start, req.end, start_time)
    };
    Ok(Page {
        records,
        next,
        fetched,
    })
}

impl InvocaClient {
    /// Fails when `time_zone` is not an IANA zone name.
    pub fn new(account: InvocaAccount, http: ProviderHttp) -> Result<Self, String> {
        let tz = match &account.time_zone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|e| format!("time_zone {name:?}: {e}"))?,
        };
        Ok(InvocaClient { account, tz, http })
    }
}

#[async_trait]
impl ProviderClient for InvocaClient {
    fn provider(&self) -> Provider {
        Provider::Invoca
    }
    fn account_id(&self) -> &str {
        &self.account.account
    }
    fn http(&self) -> &ProviderHttp {
        &self.http
    }
    fn incremental_scan(&self) -> Scan {
        Scan::Transactions
    }

    fn min_backfill_window(&self) -> std::time::Duration {
        DATE_FILTER_MIN_WINDOW
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let after = match &req.token {
            None => None,
            Some(PageToken::AfterTransaction(id)) => Some(id.clone()),
            Some(other) => return Err(bad_token(self, other)),
        };
        let limit = self.account.limit.clamp(1, 4000);
        let url = format!(
            "{}/api/{}/{}/transactions/{}.json",
            self.account.base_url.trim_end_matches('/'),
            self.account.api_version,
            self.account.role.path(),
            self.account.role_id
        );
        // every transaction type: conversions (Signal, Sale, Post Call Event) are their own
        // rows, folded onto their call by the mapping
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(a) = &after {
            query.push(("start_after_transaction_id", a.clone()));
        }
        if req.scan != Scan::Transactions {
            // inclusive dates in the API user's time zone, which the configured zone may not
            // be: the dates covering the window in any zone, the range fixed while paging;
            // rows outside [start, end) are dropped by read_page
            let (from, last) = covering_dates(req.start, req.end);
            query.push(("from", from.format("%Y-%m-%d").to_string()));
            query.push(("to", last.format("%Y-%m-%d").to_string()));
        }
        let token = self.account.token.expose().to_string();
        self.http
            .execute(
                "transactions",
                |c| c.get(&url).query(&query).header("Authorization", &token),
                |resp| read_page(resp, req, limit),
            )
            .await
    }

    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
        super::map_transaction(raw, ctx)
    }

    fn map_context(&self, source: RecordSource) -> MapContext {
        let mut ctx = MapContext::new(Provider::Invoca, &self.account.account, source);
        ctx.time_zone = self.tz;
        if let Some(c) = &self.account.currency {
            ctx.currency = Some(c.clone());
        }
        ctx
    }

    fn call_id_hint(&self, raw: &RawValue) -> Option<String> {
        peek_field(raw, &["corrects_transaction_id"])
            .or_else(|| peek_field(raw, &["transaction_id"]))
    }
}
