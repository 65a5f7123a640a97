use async_trait::async_trait;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::config::CallRailAccount;
use crate::error::ClientError;
use crate::http::{HttpResponse, ProviderHttp};
use crate::mapping::{parse_timestamp, MapContext, MappingError};
use crate::providers::{
    bad_token, keep_in_window, peek_field, Page, PageRequest, PageToken, ProviderClient,
};

/// Extra fields asked for with `fields=` (the defaults lack them).
const EXTRA_FIELDS: &str = "company_id,company_name,tracker_id,source,source_name,campaign,medium,keywords,value,lead_status,tags,call_type,created_at";

/// CallRail's calls client for one account.
#[derive(Debug)]
pub struct CallRailClient {
    account: CallRailAccount,
    tz: chrono_tz::Tz,
    http: ProviderHttp,
}

#[derive(Deserialize)]
struct Envelope {
    calls: Vec<Box<RawValue>>,
    #[serde(default)]
    total_pages: Option<u64>,
    #[serde(default)]
    has_next_page: Option<bool>,
}

fn start_time(raw: &RawValue) -> Option<DateTime<Utc>> {
    peek_field(raw, &["start_time"]).and_then(|s| parse_timestamp(&s, chrono_tz::UTC))
}

/// How a CallRail page was asked for: `page` number (from 1) or, with relative pagination,
/// `offset` (from 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRailPosition {
    pub per_page: u32,
    pub relative: bool,
    pub position: u64,
}

/// One calls response to its records in the window and the next page token; an error is a
/// malformed body (retried).
pub(crate) fn read_page(
    resp: &HttpResponse,
    req: &PageRequest,
    at: CallRailPosition,
) -> Result<Page, String> {
    let CallRailPosition {
        per_page,
        relative,
        position,
    } = at;
    let env = serde_json::from_slice::<Envelope>(&resp.body)
        .map_err(|e| format!("expected {{\"calls\": [...], ...}}: {e}"))?;
    let fetched = env.calls.len();
    let next = if fetched == 0 {
        None
    } else if relative {
        env.has_next_page
            .unwrap_or(fetched >= per_page as usize)
            .then(|| PageToken::Offset(position + fetched as u64))
    } else {
        let more = match env.total_pages {
            Some(total) => position < total,
            None => fetched >= per_page as usize,
        };
        more.then(|| PageToken::Page(position as u32 + 1))
    };
    let records = keep_in_window(env.calls, req.start, req.end, start_time);
    Ok(Page {
        records,
        next,
        fetched,
    })
}

impl CallRailClient {
    pub fn new(account: CallRailAccount, http: ProviderHttp) -> Result<Self, String> {
        let tz = match &account.time_zone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|e| format!("time_zone {name:?}: {e}"))?,
        };
        Ok(CallRailClient { account, tz, http })
    }

    pub fn account(&self) -> &CallRailAccount {
        &self.account
    }
}

#[async_trait]
impl ProviderClient for CallRailClient {
    fn provider(&self) -> Provider {
        Provider::CallRail
    }
    fn account_id(&self) -> &str {
        &self.account.account
    }
    fn http(&self) -> &ProviderHttp {
        &self.http
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let per_page = self.account.per_page.clamp(1, 250);
        let url = format!(
            "{}/a/{}/calls.json",
            self.account.base_url.trim_end_matches('/'),
            self.account.account
        );
        // dates are inclusive, in the account's zone; rows outside [start, end) are dropped
        let from = req.start.with_timezone(&self.tz).date_naive();
        let last = (req.end - chrono::Duration::microseconds(1))
            .with_timezone(&self.tz)
            .date_naive();
        let mut query: Vec<(&str, String)> = vec![
            ("per_page", per_page.to_string()),
            ("start_date", from.format("%Y-%m-%d").to_string()),
            ("end_date", last.max(from).format("%Y-%m-%d").to_string()),
            ("sort", "start_time".to_string()),
            ("order", "asc".to_string()),
            ("fields", EXTRA_FIELDS.to_string()),
        ];
        let relative = self.account.relative_pagination;
        let position = match (&req.token, relative) {
            (None, false) => 1,
            (None, true) => 0,
            (Some(PageToken::Page(n)), false) => u64::from(*n),
            (Some(PageToken::Offset(n)), true) => *n,
            (Some(other), _) => return Err(bad_token(self, other)),
        };
        if relative {
            query.push(("relative_pagination", "true".to_string()));
            if position > 0 {
                query.push(("offset", position.to_string()));
            }
        } else {
            query.push(("page", position.to_string()));
        }
        let auth = format!("Token token=\"{}\"", self.account.api_key.expose());
        let at = CallRailPosition {
            per_page,
            relative,
            position,
        };
        self.http
            .execute(
                "calls",
                |c| {
                    c.get(&url)
                        .query(&query)
                        .header("Authorization", &auth)
                        .header("Request-From", "callsync")
                },
                |resp| read_page(resp, req, at),
            )
            .await
    }

    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
        super::map_call(raw, ctx)
    }

    fn map_context(&self, source: RecordSource) -> MapContext {
        let mut ctx = MapContext::new(Provider::CallRail, &self.account.account, source);
        ctx.time_zone = self.tz;
        if let Some(c) = &self.account.currency {
            ctx.currency = Some(c.clone());
        }
        ctx
    }

    fn call_id_hint(&self, raw: &RawValue) -> Option<String> {
        peek_field(raw, &["id"])
    }
}
