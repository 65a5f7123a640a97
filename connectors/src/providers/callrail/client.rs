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
    bad_token, covering_dates, keep_in_window, peek_field, same_origin_link, Page, PageRequest,
    PageToken, ProviderClient, DATE_FILTER_MIN_WINDOW,
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
    #[serde(default)]
    next_page: Option<String>,
}

fn start_time(raw: &RawValue) -> Option<DateTime<Utc>> {
    peek_field(raw, &["start_time"]).and_then(|s| parse_timestamp(&s, chrono_tz::UTC))
}

/// How a CallRail page was asked for: `page` number (from 1), or with relative pagination
/// the first page (the following ones are the `next_page` links CallRail gives).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRailPosition {
    pub per_page: u32,
    pub relative: bool,
    /// The page number (offset style).
    pub position: u64,
}

/// One calls response to its records in the window and the next page token; an error is a
/// malformed body (retried). Relative pagination follows `next_page` exactly as CallRail
/// gives it (its offset is opaque, and pages shift if it is rebuilt), so `base_url` is needed
/// to check that the link stays on CallRail's host.
pub(crate) fn read_page(
    resp: &HttpResponse,
    req: &PageRequest,
    at: CallRailPosition,
    base_url: &str,
) -> Result<Page, String> {
    let CallRailPosition {
        per_page,
        relative,
        position,
    } = at;
    let env = serde_json::from_slice::<Envelope>(&resp.body)
        .map_err(|e| format!("expected {{\"calls\": [...], ...}}: {e}"))?;
    let fetched = env.calls.len();
    let next = if relative {
        match (env.has_next_page, env.next_page) {
            (Some(false), _) => None,
            (_, Some(link)) if !link.trim().is_empty() && fetched > 0 => Some(PageToken::NextLink(
                same_origin_link(base_url, link.trim())?,
            )),
            (Some(true), _) if fetched > 0 => {
                return Err("has_next_page is true but next_page is missing".to_string())
            }
            _ => None,
        }
    } else if fetched == 0 {
        None
    } else {
        let more = match env.total_pages {
            Some(total) => position < total,
            None => fetched >= per_page as usize,
        };
        more.then(|| PageToken::Page(u32::try_from(position + 1).unwrap_or(u32::MAX)))
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

    fn min_backfill_window(&self) -> std::time::Duration {
        DATE_FILTER_MIN_WINDOW
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let per_page = self.account.per_page.clamp(1, 250);
        let url = format!(
            "{}/a/{}/calls.json",
            self.account.base_url.trim_end_matches('/'),
            self.account.account
        );
        // whole dates in a zone we may not know: ask for the dates covering the window in
        // any zone, keep [start, end) ourselves
        let (from, last) = covering_dates(req.start, req.end);
        let mut query: Vec<(&str, String)> = vec![
            ("per_page", per_page.to_string()),
            ("start_date", from.format("%Y-%m-%d").to_string()),
            ("end_date", last.format("%Y-%m-%d").to_string()),
            ("sort", "start_time".to_string()),
            ("order", "asc".to_string()),
            ("fields", EXTRA_FIELDS.to_string()),
        ];
        let relative = self.account.relative_pagination;
        let (position, link) = match (&req.token, relative) {
            (None, _) => (1, None),
            (Some(PageToken::Page(n)), false) => (u64::from(*n), None),
            (Some(PageToken::NextLink(link)), true) => (0, Some(link.clone())),
            (Some(other), _) => return Err(bad_token(self, other)),
        };
        if relative {
            query.push(("relative_pagination", "true".to_string()));
        } else {
            query.push(("page", position.to_string()));
        }
        let auth = format!("Token token=\"{}\"", self.account.api_key.expose());
        let at = CallRailPosition {
            per_page,
            relative,
            position,
        };
        let base = self.account.base_url.clone();
        self.http
            .execute(
                "calls",
                |c| {
                    let request = match &link {
                        // the next page exactly as CallRail gave it
                        Some(link) => c.get(link),
                        None => c.get(&url).query(&query),
                    };
                    request
                        .header("Authorization", &auth)
                        .header("Request-From", "callsync")
                },
                |resp| read_page(resp, req, at, &base),
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
