use async_trait::async_trait;
use callsync_schemas::{CallRecord, Provider, RecordSource};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;

use super::config::RetreaverAccount;
use crate::error::ClientError;
use crate::http::{HttpResponse, ProviderHttp};
use crate::mapping::{parse_timestamp, MapContext, MappingError};
use crate::providers::{
    bad_token, keep_in_window, peek_field, split_array, Page, PageRequest, PageToken,
    ProviderClient, Scan,
};

/// Retreaver's list-calls client for one account.
#[derive(Debug)]
pub struct RetreaverClient {
    account: RetreaverAccount,
    http: ProviderHttp,
}

/// `true` when an RFC 5988 `Link` header has a `rel="next"` entry.
pub(crate) fn link_has_next(headers: &reqwest::header::HeaderMap) -> bool {
    headers.get_all(reqwest::header::LINK).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|part| {
                part.split(';').skip(1).any(|p| {
                    matches!(
                        p.trim().replace(' ', "").as_str(),
                        "rel=\"next\"" | "rel=next"
                    )
                })
            })
        })
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn time_of(raw: &RawValue, field: &str) -> Option<DateTime<Utc>> {
    peek_field(raw, &["call", field])
        .or_else(|| peek_field(raw, &[field]))
        .and_then(|s| parse_timestamp(&s, chrono_tz::UTC))
}

/// One list-calls response (page number `page` of `req`) to its records in the window and
/// the next page token; an error is a malformed body (retried).
pub(crate) fn read_page(resp: &HttpResponse, req: &PageRequest, page: u32) -> Result<Page, String> {
    let records = split_array(&resp.body)?;
    let has_next = link_has_next(&resp.headers);
    let fetched = records.len();
    let (start, end) = (req.start, req.end);
    let (records, next) = match req.scan {
        Scan::Updated => {
            // newest first: once a row is older than the window start, later pages are too
            let reached_start = records
                .iter()
                .any(|r| time_of(r, "updated_at").is_some_and(|t| t < start));
            let kept = keep_in_window(records, start, end, |r| time_of(r, "updated_at"));
            let next =
                (has_next && !reached_start && fetched > 0).then(|| PageToken::Page(page + 1));
            (kept, next)
        }
        _ => {
            let kept = keep_in_window(records, start, end, |r| time_of(r, "created_at"));
            (
                kept,
                (has_next && fetched > 0).then(|| PageToken::Page(page + 1)),
            )
        }
    };
    Ok(Page {
        records,
        next,
        fetched,
    })
}

impl RetreaverClient {
    pub fn new(account: RetreaverAccount, http: ProviderHttp) -> Self {
        RetreaverClient { account, http }
    }

    fn url(&self) -> String {
        format!(
            "{}/api/{}/calls.json",
            self.account.base_url.trim_end_matches('/'),
            self.account.api_version
        )
    }
}

#[async_trait]
impl ProviderClient for RetreaverClient {
    fn provider(&self) -> Provider {
        Provider::Retreaver
    }
    fn account_id(&self) -> &str {
        &self.account.account
    }
    fn http(&self) -> &ProviderHttp {
        &self.http
    }
    fn incremental_scan(&self) -> Scan {
        Scan::Updated
    }

    async fn fetch_page(&self, req: &PageRequest) -> Result<Page, ClientError> {
        let page = match &req.token {
            None => 1,
            Some(PageToken::Page(n)) => *n,
            Some(other) => return Err(bad_token(self, other)),
        };
        let mut query: Vec<(&str, String)> = vec![
            ("api_key", self.account.api_key.expose().to_string()),
            ("page", page.to_string()),
            ("per_page", self.account.per_page.to_string()),
        ];
        if let Some(c) = &self.account.company_id {
            query.push(("company_id", c.clone()));
        }
        match req.scan {
            Scan::Updated => {
                // always newest first, whatever `order` says
                query.push(("sort_by", "updated_at".into()));
                query.push(("order", "desc".into()));
                if self.account.updated_at_filter {
                    query.push(("updated_at_start", rfc3339(req.start)));
                    query.push(("updated_at_end", rfc3339(req.end)));
                }
            }
            Scan::Created | Scan::Transactions => {
                query.push(("sort_by", "created_at".into()));
                query.push(("order", "asc".into()));
                query.push(("created_at_start", rfc3339(req.start)));
                query.push(("created_at_end", rfc3339(req.end)));
            }
        }
        let url = self.url();
        self.http
            .execute(
                "list_calls",
                |c| {
                    c.get(&url)
                        .query(&query)
                        .header("Accept", "application/json")
                },
                |resp| read_page(resp, req, page),
            )
            .await
    }

    fn map_record(&self, raw: &RawValue, ctx: &MapContext) -> Result<CallRecord, MappingError> {
        super::map_call(raw, ctx)
    }

    fn map_context(&self, source: RecordSource) -> MapContext {
        let mut ctx = MapContext::new(Provider::Retreaver, &self.account.account, source);
        if let Some(c) = &self.account.currency {
            ctx.currency = Some(c.clone());
        }
        ctx
    }

    fn call_id_hint(&self, raw: &RawValue) -> Option<String> {
        peek_field(raw, &["call", "uuid"]).or_else(|| peek_field(raw, &["uuid"]))
    }
}
