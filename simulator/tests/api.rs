//! The simulated APIs over HTTP: paging, filters, last pages, auth, rate limits, faults,
//! determinism, laziness and ground truth.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine;
use callsync_schemas::Provider;
use callsync_simulator::{
    AccountConfig, BadRecordKind, FaultConfig, RateLimitRule, RunningSimulator, Simulator,
    SimulatorConfig, TruthRecord,
};
use reqwest::header::{AUTHORIZATION, LINK, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn start(config: SimulatorConfig) -> RunningSimulator {
    Simulator::start(config).await.expect("simulator starts")
}

fn first_account(sim: &RunningSimulator, provider: Provider) -> (String, String) {
    let account = sim.accounts(provider)[0].clone();
    let key = sim
        .credentials(provider, &account)
        .expect("credentials")
        .api_key;
    (account, key)
}

fn truth_ids(sim: &RunningSimulator, provider: Provider, account: &str) -> HashSet<String> {
    sim.truth(provider, account, None)
        .expect("truth")
        .map(|record| record.call_id)
        .collect()
}

fn truth_by_id(
    sim: &RunningSimulator,
    provider: Provider,
    account: &str,
) -> BTreeMap<String, TruthRecord> {
    sim.truth(provider, account, None)
        .expect("truth")
        .map(|record| (record.call_id.clone(), record))
        .collect()
}

fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(", ").find_map(|part| {
        let (url, rel) = part.split_once(">; ")?;
        (rel == "rel=\"next\"").then(|| url.trim_start_matches('<').to_string())
    })
}

/// Follows Retreaver's Link rel="next" from `url`; returns the calls in order.
async fn retreaver_all(
    client: &reqwest::Client,
    url: String,
) -> Result<Vec<Value>, reqwest::Error> {
    let mut calls = Vec::new();
    let mut next = Some(url);
    while let Some(url) = next {
        let response = client.get(&url).send().await?.error_for_status()?;
        next = next_link(response.headers());
        let page: Vec<Value> = response.json().await?;
        calls.extend(page.into_iter().map(|wrapper| wrapper["call"].clone()));
    }
    Ok(calls)
}

#[tokio::test]
async fn retreaver_pages_every_call_once_with_link_headers() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(1)).await;
    let (account, key) = first_account(&sim, Provider::Retreaver);
    let client = reqwest::Client::new();
    let base = sim.base_url(Provider::Retreaver);
    for order in ["desc", "asc"] {
        let url = format!(
            "{base}/api/v2/calls.json?api_key={key}&company_id={account}&per_page=100&order={order}"
        );
        let calls = retreaver_all(&client, url).await?;
        let ids: Vec<String> = calls
            .iter()
            .map(|call| call["uuid"].as_str().unwrap_or_default().to_string())
            .collect();
        let unique: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(ids.len(), unique.len(), "no call twice");
        assert_eq!(unique, truth_ids(&sim, Provider::Retreaver, &account));
        let created: Vec<&str> = calls
            .iter()
            .map(|call| call["created_at"].as_str().unwrap_or_default())
            .collect();
        let mut sorted = created.clone();
        sorted.sort_unstable();
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(created, sorted, "ordered by created_at {order}");
    }
    // Field shapes: money strings and numbers, v2 record.
    let response = client
        .get(format!(
            "{base}/api/v2/calls.json?api_key={key}&per_page=25"
        ))
        .send()
        .await?;
    let link = response
        .headers()
        .get(LINK)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        link.contains("rel=\"next\"") && link.contains("rel=\"last\""),
        "{link}"
    );
    let page: Vec<Value> = response.json().await?;
    assert_eq!(page.len(), 25);
    let call = &page[0]["call"];
    assert!(
        call["charge_total"].is_string()
            && call["total_cost"].is_string()
            && call["profit_gross"].is_string()
    );
    assert!(call["revenue"].is_number() && call["payout"].is_number());
    assert!(call["number"].is_string() && call["campaign_id"].is_number());
    // v4 shape.
    let v4: Vec<Value> = client
        .get(format!("{base}/api/v4/calls.json?api_key={key}&per_page=1"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        v4[0]["call"]["campaign"]["id"].is_number() && v4[0]["call"].get("campaign_id").is_none()
    );
    assert!(v4[0]["call"]["number"]["number"].is_string());
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn retreaver_updated_at_sort_is_always_descending_and_sees_late_changes() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(2)).await;
    let (account, key) = first_account(&sim, Provider::Retreaver);
    let client = reqwest::Client::new();
    let base = sim.base_url(Provider::Retreaver);
    let url =
        format!("{base}/api/v2/calls.json?api_key={key}&sort_by=updated_at&order=asc&per_page=100");
    let calls = retreaver_all(&client, url).await?;
    let updated: Vec<String> = calls
        .iter()
        .map(|call| call["updated_at"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut sorted = updated.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(updated, sorted, "order=asc is ignored: newest first");
    let ids: HashSet<String> = calls
        .iter()
        .map(|c| c["uuid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), calls.len());
    assert_eq!(ids, truth_ids(&sim, Provider::Retreaver, &account));

    // Incremental: two hours later, updated_at_start = old now gives exactly the calls
    // that changed (or appeared) since.
    let watermark = sim.now();
    sim.clock().advance(Duration::from_secs(2 * 3600));
    let start = watermark.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let url = format!(
        "{base}/api/v2/calls.json?api_key={key}&sort_by=updated_at&per_page=50&updated_at_start={}",
        urlencode(&start)
    );
    let changed = retreaver_all(&client, url).await?;
    let expected: HashSet<String> = sim
        .truth(Provider::Retreaver, &account, None)?
        .filter(|record| record.provider_updated_at.is_some_and(|t| t >= watermark))
        .map(|record| record.call_id)
        .collect();
    let got: HashSet<String> = changed
        .iter()
        .map(|c| c["uuid"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);

    // created_at filters (inclusive) map to exactly the calls created in the range.
    let truth = sim
        .truth(Provider::Retreaver, &account, None)?
        .collect::<Vec<_>>();
    let low = &truth[100];
    let high = &truth[300];
    let created_of = |r: &TruthRecord| {
        let index = r.index;
        (index, r.call_id.clone())
    };
    let _ = created_of(low);
    let calls = retreaver_all(
        &client,
        format!("{base}/api/v2/calls.json?api_key={key}&per_page=100"),
    )
    .await?;
    let created_low = calls
        .iter()
        .find(|c| c["uuid"] == low.call_id.as_str())
        .and_then(|c| c["created_at"].as_str())
        .unwrap_or_default()
        .to_string();
    let created_high = calls
        .iter()
        .find(|c| c["uuid"] == high.call_id.as_str())
        .and_then(|c| c["created_at"].as_str())
        .unwrap_or_default()
        .to_string();
    let url = format!(
        "{base}/api/v2/calls.json?api_key={key}&per_page=100&created_at_start={}&created_at_end={}",
        urlencode(&created_low),
        urlencode(&created_high)
    );
    let ranged = retreaver_all(&client, url).await?;
    assert_eq!(ranged.len(), 201);
    sim.shutdown().await?;
    Ok(())
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn ringba_page(
    client: &reqwest::Client,
    sim: &RunningSimulator,
    account: &str,
    key: &str,
    body: Value,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(format!(
            "{}/{account}/calllogs",
            sim.base_url(Provider::Ringba)
        ))
        .header(AUTHORIZATION, format!("Token {key}"))
        .json(&body)
        .send()
        .await
}

#[tokio::test]
async fn ringba_offset_paging_with_total_count() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(3)).await;
    let (account, key) = first_account(&sim, Provider::Ringba);
    let client = reqwest::Client::new();
    let mut offset = 0;
    let mut ids = Vec::new();
    loop {
        let body = json!({"reportStart": "2020-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z", "offset": offset, "size": 1000});
        let page: Value = ringba_page(&client, &sim, &account, &key, body)
            .await?
            .error_for_status()?
            .json()
            .await?;
        let records = page["report"]["records"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let total = page["report"]["totalCount"].as_u64().unwrap_or_default();
        assert!(records.len() <= 1000);
        for record in &records {
            assert!(record["callDt"].is_i64(), "epoch ms");
            ids.push(
                record["inboundCallId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        offset += records.len();
        if offset as u64 >= total || records.is_empty() {
            break;
        }
    }
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len());
    assert_eq!(unique, truth_ids(&sim, Provider::Ringba, &account));
    // size over 1000 is clamped; a report window filters on callDt.
    let truth = sim
        .truth(Provider::Ringba, &account, None)?
        .collect::<Vec<_>>();
    let start = truth[10]
        .started_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let end = truth[20]
        .started_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let page: Value = ringba_page(&client, &sim, &account, &key, json!({"reportStart": start, "reportEnd": end, "size": 5000, "orderByColumns": [{"column": "callDt", "direction": "asc"}]}))
        .await?
        .json()
        .await?;
    assert_eq!(page["report"]["totalCount"], 10);
    assert_eq!(
        page["report"]["records"][0]["inboundCallId"],
        truth[10].call_id.as_str()
    );
    // Missing reportStart is a 400.
    let response = ringba_page(&client, &sim, &account, &key, json!({"size": 10})).await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    sim.shutdown().await?;
    Ok(())
}

async fn invoca_get(
    client: &reqwest::Client,
    sim: &RunningSimulator,
    account: &str,
    key: &str,
    query: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .get(format!(
            "{}/api/2020-10-01/networks/transactions/{account}.json?{query}",
            sim.base_url(Provider::Invoca)
        ))
        .header(AUTHORIZATION, key)
        .send()
        .await
}

/// Pages Invoca's stream from `cursor` until a short page; returns rows and the last id.
async fn invoca_stream(
    client: &reqwest::Client,
    sim: &RunningSimulator,
    account: &str,
    key: &str,
    mut cursor: Option<String>,
    extra: &str,
) -> Result<(Vec<Value>, Option<String>), reqwest::Error> {
    let mut rows = Vec::new();
    loop {
        let query = match &cursor {
            Some(id) => format!("limit=500&start_after_transaction_id={id}{extra}"),
            None => format!("limit=500{extra}"),
        };
        let page: Vec<Value> = invoca_get(client, sim, account, key, &query)
            .await?
            .error_for_status()?
            .json()
            .await?;
        let short = page.len() < 500;
        if let Some(last) = page.last() {
            cursor = last["transaction_id"].as_str().map(str::to_string);
        }
        rows.extend(page);
        if short {
            return Ok((rows, cursor));
        }
    }
}

fn apply_invoca_rows(rows: &[Value], latest: &mut BTreeMap<String, (i64, Value)>) {
    for row in rows {
        let call_id = row["complete_call_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let version = match (
            row["corrected_at"].as_str(),
            row["signal_occurred_at"].as_i64(),
        ) {
            (Some(text), _) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_micros())
                .unwrap_or_default(),
            (None, Some(secs)) => secs * 1_000_000,
            (None, None) => row["start_time_utc"].as_i64().unwrap_or_default() * 1000,
        };
        let entry = latest.entry(call_id).or_insert((i64::MIN, Value::Null));
        if version > entry.0 {
            *entry = (version, row.clone());
        }
    }
}

#[tokio::test]
async fn invoca_cursor_stream_carries_corrections_and_late_rows() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(4)).await;
    let (account, key) = first_account(&sim, Provider::Invoca);
    let client = reqwest::Client::new();
    let (rows, cursor) = invoca_stream(&client, &sim, &account, &key, None, "").await?;
    let ids: HashSet<&str> = rows
        .iter()
        .filter_map(|r| r["transaction_id"].as_str())
        .collect();
    assert_eq!(ids.len(), rows.len(), "every row once");
    let corrections: Vec<&Value> = rows
        .iter()
        .filter(|r| r["corrects_transaction_id"].is_string())
        .collect();
    assert!(!corrections.is_empty());
    for correction in &corrections {
        let original = correction["corrects_transaction_id"]
            .as_str()
            .unwrap_or_default();
        assert!(ids.contains(original), "a correction names an original row");
        assert!(correction["corrected_at"].is_string());
    }
    assert!(rows[0]["calling_phone_number"]
        .as_str()
        .is_some_and(|n| n.len() == 12 && n.as_bytes()[3] == b'-'));
    // conversions are Signal rows, never in the Call row
    assert!(rows.iter().any(|r| r["transaction_type"] == "Signal"));
    assert!(rows
        .iter()
        .filter(|r| r["transaction_type"] == "Call")
        .all(|r| r["advertiser_payin_localized"] == "0,00"));
    let (calls_only, _) = invoca_stream(
        &client,
        &sim,
        &account,
        &key,
        None,
        "&transaction_type=Call",
    )
    .await?;
    assert!(calls_only.iter().all(|r| r["transaction_type"] == "Call"));
    let mut latest = BTreeMap::new();
    apply_invoca_rows(&rows, &mut latest);
    let check = |latest: &BTreeMap<String, (i64, Value)>| {
        let truth = truth_by_id(&sim, Provider::Invoca, &account);
        assert_eq!(latest.len(), truth.len());
        for (call_id, (version, row)) in latest {
            let record = &truth[call_id];
            assert_eq!(Some(*version), record.version, "{call_id}");
            // the account's locale writes a decimal comma
            let revenue: rust_decimal::Decimal = row["advertiser_payin_localized"]
                .as_str()
                .unwrap_or_default()
                .replace(',', ".")
                .parse()
                .unwrap_or_default();
            assert_eq!(Some(revenue), record.revenue);
        }
    };
    check(&latest);
    // Two days later, continuing from the cursor brings only new rows: new calls and
    // corrections of old ones.
    sim.clock().advance(Duration::from_secs(2 * 86_400));
    let (new_rows, _) = invoca_stream(&client, &sim, &account, &key, cursor, "").await?;
    assert!(new_rows
        .iter()
        .any(|r| r["corrects_transaction_id"].is_string()));
    assert!(new_rows
        .iter()
        .all(|r| !ids.contains(r["transaction_id"].as_str().unwrap_or_default())));
    apply_invoca_rows(&new_rows, &mut latest);
    check(&latest);
    // Date-ranged paging (call start order) sees the same calls.
    let (dated, _) = invoca_stream(
        &client,
        &sim,
        &account,
        &key,
        None,
        "&from=2025-01-01&to=2027-01-01",
    )
    .await?;
    let dated_calls: HashSet<&str> = dated
        .iter()
        .filter_map(|r| r["complete_call_id"].as_str())
        .collect();
    assert_eq!(dated_calls.len(), latest.len());
    // Only one of from/to is a validation error (403 in Invoca's style).
    let response = invoca_get(&client, &sim, &account, &key, "from=2025-01-01").await?;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn callrail_offset_and_relative_pagination() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(5)).await;
    let (account, key) = first_account(&sim, Provider::CallRail);
    let client = reqwest::Client::new();
    let base = format!(
        "{}/a/{account}/calls.json",
        sim.base_url(Provider::CallRail)
    );
    let expected = truth_ids(&sim, Provider::CallRail, &account);
    // Offset style, quoted token.
    let mut ids = Vec::new();
    let mut page_number = 1;
    loop {
        let page: Value = client
            .get(format!(
                "{base}?per_page=250&page={page_number}&fields=value,tags"
            ))
            .header(AUTHORIZATION, format!("Token token=\"{key}\""))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for call in page["calls"].as_array().cloned().unwrap_or_default() {
            assert!(call.get("value").is_some(), "value requested with fields=");
            ids.push(call["id"].as_str().unwrap_or_default().to_string());
        }
        if page["page"].as_u64() >= page["total_pages"].as_u64() {
            break;
        }
        page_number += 1;
    }
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!((unique.len(), &unique), (ids.len(), &expected));
    // Relative style, unquoted token; no `value` unless asked for.
    let mut ids = Vec::new();
    let mut next = Some(format!("{base}?relative_pagination=true&per_page=250"));
    while let Some(url) = next {
        let page: Value = client
            .get(&url)
            .header(AUTHORIZATION, format!("Token token={key}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for call in page["calls"].as_array().cloned().unwrap_or_default() {
            assert!(call.get("value").is_none());
            ids.push(call["id"].as_str().unwrap_or_default().to_string());
        }
        next = if page["has_next_page"] == true {
            page["next_page"].as_str().map(str::to_string)
        } else {
            None
        };
    }
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!((unique.len(), &unique), (ids.len(), &expected));
    // Over the max per_page is clamped to 250; a date range filters.
    let page: Value = client
        .get(format!(
            "{base}?per_page=1000&start_date=2026-01-10&end_date=2026-01-10"
        ))
        .header(AUTHORIZATION, format!("Token token=\"{key}\""))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page["per_page"], 250);
    let total = page["total_records"].as_u64().unwrap_or_default();
    assert!(
        total > 0 && total < 200,
        "one day of ~2000 calls over 30 days: {total}"
    );
    sim.shutdown().await?;
    Ok(())
}

fn basic(public_key: &str, private_key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{public_key}:{private_key}"))
    )
}

#[tokio::test]
async fn trackdrive_cursor_ends_at_zero() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(6)).await;
    let account = sim.accounts(Provider::TrackDrive)[0].clone();
    let credentials = sim
        .credentials(Provider::TrackDrive, &account)
        .ok_or("credentials")?;
    let auth = basic(
        &credentials.api_key,
        credentials.api_secret.as_deref().unwrap_or_default(),
    );
    let client = reqwest::Client::new();
    let base = format!("{}/calls", sim.base_url(Provider::TrackDrive));
    let mut ids = Vec::new();
    let mut cursor: i64 = -1;
    loop {
        let page: Value = client
            .get(format!("{base}?cursor={cursor}&per_page=100"))
            .header(AUTHORIZATION, &auth)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(page["status"], 200);
        assert!(page["errors"].as_object().is_some_and(|e| e.is_empty()));
        for call in page["calls"].as_array().cloned().unwrap_or_default() {
            ids.push(call["uuid"].as_str().unwrap_or_default().to_string());
        }
        cursor = page["metadata"]["next_cursor"]
            .as_i64()
            .ok_or("next_cursor")?;
        if cursor == 0 {
            break;
        }
    }
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len());
    assert_eq!(unique, truth_ids(&sim, Provider::TrackDrive, &account));
    // created_at_from/to in "YYYY-MM-DD HH:MM:SS -0500" (the + of +0000 sent unencoded).
    let page: Value = client
        .get(format!("{base}?per_page=100&created_at_from=2026-01-10 00:00:00 -0500&created_at_to=2026-01-10 23:59:59 -0500"))
        .header(AUTHORIZATION, &auth)
        .send()
        .await?
        .json()
        .await?;
    let calls = page["calls"].as_array().cloned().unwrap_or_default();
    assert!(!calls.is_empty());
    for call in &calls {
        let created =
            chrono::DateTime::parse_from_rfc3339(call["created_at"].as_str().unwrap_or_default())?;
        assert_eq!(
            created
                .with_timezone(&chrono::FixedOffset::west_opt(5 * 3600).ok_or("zone")?)
                .format("%Y-%m-%d")
                .to_string(),
            "2026-01-10"
        );
    }
    assert!(call_has_local_offset(&calls[0]["created_at"]));
    sim.shutdown().await?;
    Ok(())
}

fn call_has_local_offset(value: &Value) -> bool {
    value.as_str().is_some_and(|text| {
        text.len() == 29 && (text.ends_with(":00") && (text.contains('-') || text.contains('+')))
    })
}

#[tokio::test]
async fn credentials_are_checked_per_provider() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(7)).await;
    let client = reqwest::Client::new();
    let (retreaver, retreaver_key) = first_account(&sim, Provider::Retreaver);
    let base = sim.base_url(Provider::Retreaver);
    let status = |response: reqwest::Response| response.status();
    assert_eq!(
        status(
            client
                .get(format!("{base}/api/v2/calls.json"))
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            client
                .get(format!("{base}/api/v2/calls.json?api_key=nope"))
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(
            client
                .get(format!(
                    "{base}/api/v2/calls.json?api_key={retreaver_key}&company_id=1"
                ))
                .send()
                .await?
        ),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            client
                .get(format!("{base}/api/v2/calls.xml?api_key={retreaver_key}"))
                .send()
                .await?
        ),
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        status(
            client
                .get(format!(
                    "{base}/api/v2/calls.json?api_key={retreaver_key}&company_id={retreaver}"
                ))
                .send()
                .await?
        ),
        StatusCode::OK
    );

    let (ringba, ringba_key) = first_account(&sim, Provider::Ringba);
    let other_ringba = sim.accounts(Provider::Ringba)[1].clone();
    let body = json!({"reportStart": "2020-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z"});
    assert_eq!(
        status(ringba_page(&client, &sim, &ringba, "bad", body.clone()).await?),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(ringba_page(&client, &sim, &other_ringba, &ringba_key, body.clone()).await?),
        StatusCode::FORBIDDEN
    );
    let bearer = client
        .post(format!(
            "{}/{ringba}/calllogs",
            sim.base_url(Provider::Ringba)
        ))
        .header(AUTHORIZATION, format!("Bearer {ringba_key}"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(bearer.status(), StatusCode::UNAUTHORIZED);

    let (invoca, invoca_key) = first_account(&sim, Provider::Invoca);
    assert_eq!(
        status(invoca_get(&client, &sim, &invoca, "wrong", "").await?),
        StatusCode::UNAUTHORIZED
    );
    let via_query = client.get(format!("{}/api/2020-10-01/networks/transactions/{invoca}.json?oauth_token={invoca_key}&limit=5", sim.base_url(Provider::Invoca))).send().await?;
    assert_eq!(via_query.status(), StatusCode::OK);

    let (callrail, callrail_key) = first_account(&sim, Provider::CallRail);
    let url = format!(
        "{}/a/{callrail}/calls.json",
        sim.base_url(Provider::CallRail)
    );
    assert_eq!(
        status(
            client
                .get(&url)
                .header(AUTHORIZATION, format!("Token {callrail_key}"))
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(client.get(&url).send().await?),
        StatusCode::UNAUTHORIZED
    );

    let url = format!("{}/calls", sim.base_url(Provider::TrackDrive));
    assert_eq!(
        status(
            client
                .get(&url)
                .header(AUTHORIZATION, basic("tdpubx", "tdprvx"))
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );

    // Revoked credentials (fault) answer 401 and are counted apart.
    sim.set_faults(
        Provider::Retreaver,
        Some(&retreaver),
        FaultConfig {
            reject_credentials: true,
            ..FaultConfig::default()
        },
    )?;
    assert_eq!(
        status(
            client
                .get(format!("{base}/api/v2/calls.json?api_key={retreaver_key}"))
                .send()
                .await?
        ),
        StatusCode::UNAUTHORIZED
    );
    let stats = sim.stats(Provider::Retreaver, &retreaver).ok_or("stats")?;
    assert_eq!(
        (
            stats.injected_auth_rejected,
            stats.auth_rejected,
            stats.succeeded
        ),
        (1, 1, 1)
    );
    let unattributed = sim.stats(Provider::Retreaver, "").ok_or("stats")?;
    assert_eq!(unattributed.auth_rejected, 2);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_ringba_body() -> TestResult {
    let mut config = SimulatorConfig::for_tests(8);
    config.ringba.rate_limits = vec![RateLimitRule::new(5, 60)];
    config.ringba.retry_after = true;
    // nobody else spends the budget in this test
    config.ringba.shared_consumer_share = 0.0;
    let sim = start(config).await;
    let (account, key) = first_account(&sim, Provider::Ringba);
    let client = reqwest::Client::new();
    let body = json!({"reportStart": "2020-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z", "size": 1});
    for _ in 0..5 {
        assert_eq!(
            ringba_page(&client, &sim, &account, &key, body.clone())
                .await?
                .status(),
            StatusCode::OK
        );
    }
    let throttled = ringba_page(&client, &sim, &account, &key, body.clone()).await?;
    // Ringba throttles with a 2xx body saying isRateLimited (its default here)
    assert_eq!(throttled.status(), StatusCode::OK);
    let retry_after: u64 = throttled
        .headers()
        .get(RETRY_AFTER)
        .ok_or("Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=60).contains(&retry_after));
    let throttle: Value = throttled.json().await?;
    assert_eq!(throttle["isRateLimited"], true);
    assert_eq!(throttle["exceedingRateLimit"], "Minute");
    assert_eq!(throttle["rateLimit"]["perMinute"]["limit"], 5);
    // Another account has its own window.
    let other = sim.accounts(Provider::Ringba)[1].clone();
    let other_key = sim
        .credentials(Provider::Ringba, &other)
        .ok_or("credentials")?
        .api_key;
    assert_eq!(
        ringba_page(&client, &sim, &other, &other_key, body.clone())
            .await?
            .status(),
        StatusCode::OK
    );
    let stats = sim.stats(Provider::Ringba, &account).ok_or("stats")?;
    assert_eq!(
        (stats.requests, stats.succeeded, stats.rate_limited),
        (6, 5, 1)
    );
    assert_eq!(stats.window_peaks[0].peak_admitted, 5);
    // Raised at runtime through the admin endpoint: admitted again.
    let response = client
        .post(format!("{}/_sim/rate-limits", sim.root_url()))
        .json(&json!({"provider": "ringba", "rules": [{"max_requests": 600, "per_secs": 60}], "retry_after": false}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        ringba_page(&client, &sim, &account, &key, body)
            .await?
            .status(),
        StatusCode::OK
    );
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn faults_come_at_their_configured_shares() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(9)).await;
    let (account, key) = first_account(&sim, Provider::CallRail);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()?;
    // Through the admin endpoint.
    let response = client
        .post(format!("{}/_sim/faults", sim.root_url()))
        .json(&json!({"provider": "callrail", "account_id": account, "faults": {"server_error_share": 0.2, "truncated_share": 0.1, "malformed_share": 0.1, "rate_limited_share": 0.05}}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let url = format!(
        "{}/a/{account}/calls.json?per_page=5",
        sim.base_url(Provider::CallRail)
    );
    let (mut server_errors, mut unparseable, mut throttled, mut good) = (0, 0, 0, 0);
    for _ in 0..400 {
        let response = client
            .get(&url)
            .header(AUTHORIZATION, format!("Token token=\"{key}\""))
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => match serde_json::from_slice::<Value>(&response.bytes().await?) {
                Ok(_) => good += 1,
                Err(_) => unparseable += 1,
            },
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            status if status.is_server_error() => server_errors += 1,
            status => return Err(format!("unexpected {status}").into()),
        }
    }
    // Expected: 5% 429; of the rest 20% 5xx; of the rest ~19% unparseable.
    assert!((8..=35).contains(&throttled), "429s {throttled}");
    assert!((50..=110).contains(&server_errors), "5xx {server_errors}");
    assert!(
        (35..=100).contains(&unparseable),
        "bad bodies {unparseable}"
    );
    let stats = sim.stats(Provider::CallRail, &account).ok_or("stats")?;
    assert_eq!(stats.injected_rate_limited, throttled);
    assert_eq!(stats.rate_limited, 0, "no 429 was caused by the client");
    assert_eq!(stats.server_errors, server_errors);
    assert_eq!(stats.truncated + stats.malformed, unparseable);
    assert_eq!(stats.succeeded, good);
    // Timeouts hang past the client's timeout; shutdown releases them.
    sim.set_faults(
        Provider::CallRail,
        None,
        FaultConfig {
            timeout_share: 1.0,
            hang_secs: 30,
            ..FaultConfig::default()
        },
    )?;
    let error = client
        .get(&url)
        .header(AUTHORIZATION, format!("Token token=\"{key}\""))
        .send()
        .await
        .err()
        .ok_or("expected a timeout")?;
    assert!(error.is_timeout());
    assert_eq!(
        sim.stats(Provider::CallRail, &account)
            .ok_or("stats")?
            .timeouts,
        1
    );
    // Latency is added.
    sim.set_faults(
        Provider::CallRail,
        None,
        FaultConfig {
            latency_ms: 100,
            ..FaultConfig::default()
        },
    )?;
    let started = Instant::now();
    let response = client
        .get(&url)
        .header(AUTHORIZATION, format!("Token token=\"{key}\""))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let shutdown_started = Instant::now();
    sim.shutdown().await?;
    assert!(
        shutdown_started.elapsed() < Duration::from_secs(5),
        "hung requests do not hold shutdown"
    );
    Ok(())
}

async fn first_page_bytes(seed: u64) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let sim = start(SimulatorConfig::for_tests(seed)).await;
    let (account, key) = first_account(&sim, Provider::Retreaver);
    let bytes = reqwest::get(format!(
        "{}/api/v2/calls.json?api_key={key}&company_id={account}&per_page=50&page=3",
        sim.base_url(Provider::Retreaver)
    ))
    .await?
    .bytes()
    .await?
    .to_vec();
    sim.shutdown().await?;
    Ok(bytes)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_data() -> TestResult {
    let first = first_page_bytes(11).await?;
    let again = first_page_bytes(11).await?;
    let other = first_page_bytes(12).await?;
    assert_eq!(first, again);
    assert_ne!(first, other);
    Ok(())
}

#[tokio::test]
async fn a_huge_account_serves_pages_from_the_middle_without_generating_the_prefix() -> TestResult {
    // 500 million calls, one every 2 s since 1994: generating the prefix would take many
    // minutes, so these answers prove pages are computed from the index alone (memory is
    // O(page)).
    let mut config = SimulatorConfig::for_tests(13);
    for provider in Provider::ALL {
        config.provider_mut(provider).accounts = vec![AccountConfig {
            calls: 500_000_000,
            future_calls: 0,
            history_secs: 1_000_000_000,
            ..AccountConfig::default()
        }];
    }
    let sim = start(config).await;
    let client = reqwest::Client::new();
    let started = Instant::now();

    let (ringba, ringba_key) = first_account(&sim, Provider::Ringba);
    let body = json!({"reportStart": "1990-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z", "offset": 250_000_000u64, "size": 1000});
    let page: Value = ringba_page(&client, &sim, &ringba, &ringba_key, body)
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(page["report"]["totalCount"], 500_000_000u64);
    assert_eq!(
        page["report"]["records"].as_array().map(Vec::len),
        Some(1000)
    );

    let (retreaver, retreaver_key) = first_account(&sim, Provider::Retreaver);
    let url = format!("{}/api/v2/calls.json?api_key={retreaver_key}&company_id={retreaver}&per_page=100&page=2500000", sim.base_url(Provider::Retreaver));
    let page: Vec<Value> = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(page.len(), 100);

    let (callrail, callrail_key) = first_account(&sim, Provider::CallRail);
    let url = format!(
        "{}/a/{callrail}/calls.json?per_page=250&start_date=2025-01-01&end_date=2025-01-01",
        sim.base_url(Provider::CallRail)
    );
    let page: Value = client
        .get(url)
        .header(AUTHORIZATION, format!("Token token=\"{callrail_key}\""))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(page["calls"].as_array().map(Vec::len), Some(250));

    let (invoca, invoca_key) = first_account(&sim, Provider::Invoca);
    let page: Vec<Value> = invoca_get(
        &client,
        &sim,
        &invoca,
        &invoca_key,
        "from=2010-06-01&to=2010-06-01&limit=1000",
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    assert_eq!(page.len(), 1000);
    let cursor = page[999]["transaction_id"]
        .as_str()
        .ok_or("id")?
        .to_string();
    let next: Vec<Value> = invoca_get(
        &client,
        &sim,
        &invoca,
        &invoca_key,
        &format!("limit=1000&start_after_transaction_id={cursor}"),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    assert_eq!(next.len(), 1000);

    // Incremental by updated_at near now is cheap too.
    let url = format!(
        "{}/api/v2/calls.json?api_key={retreaver_key}&sort_by=updated_at&per_page=100",
        sim.base_url(Provider::Retreaver)
    );
    let page: Vec<Value> = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(page.len(), 100);
    assert!(started.elapsed() < Duration::from_secs(30));
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn bad_records_are_served_broken_and_flagged_in_the_truth() -> TestResult {
    let mut config = SimulatorConfig::for_tests(14);
    for provider in Provider::ALL {
        for account in &mut config.provider_mut(provider).accounts {
            account.bad_record_share = 0.05;
        }
    }
    let sim = start(config).await;
    let (account, key) = first_account(&sim, Provider::Retreaver);
    let truth: Vec<TruthRecord> = sim.truth(Provider::Retreaver, &account, None)?.collect();
    let bad: Vec<&TruthRecord> = truth.iter().filter(|r| r.bad.is_some()).collect();
    assert!(bad.len() > 40 && bad.len() < 160, "about 5%: {}", bad.len());
    assert!(bad.iter().any(|r| r.bad == Some(BadRecordKind::MissingId)));
    assert!(bad
        .iter()
        .any(|r| r.bad == Some(BadRecordKind::UnparseableStartTime)));
    let calls = retreaver_all(
        &reqwest::Client::new(),
        format!(
            "{}/api/v2/calls.json?api_key={key}&per_page=100",
            sim.base_url(Provider::Retreaver)
        ),
    )
    .await?;
    let missing_ids = calls.iter().filter(|c| c.get("uuid").is_none()).count();
    let unparseable = calls
        .iter()
        .filter(|c| {
            chrono::DateTime::parse_from_rfc3339(c["start_time"].as_str().unwrap_or_default())
                .is_err()
        })
        .count();
    let expected_missing = bad
        .iter()
        .filter(|r| r.bad == Some(BadRecordKind::MissingId))
        .count();
    assert_eq!(missing_ids, expected_missing);
    assert_eq!(unparseable, bad.len() - expected_missing);
    let summary = sim.truth_summary(Provider::Retreaver, &account, None)?;
    assert_eq!(summary.bad as usize, bad.len());
    assert_eq!(summary.calls as usize, truth.len() - bad.len());
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn truth_endpoint_streams_ndjson_and_summarises() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(15)).await;
    let account = sim.accounts(Provider::TrackDrive)[0].clone();
    let body = reqwest::get(format!(
        "{}/_sim/truth/trackdrive/{account}",
        sim.root_url()
    ))
    .await?
    .text()
    .await?;
    let streamed: Vec<TruthRecord> = body
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let direct: Vec<TruthRecord> = sim.truth(Provider::TrackDrive, &account, None)?.collect();
    assert_eq!(streamed, direct);
    assert!(direct
        .iter()
        .all(|r| r.version.is_some() && r.call_key.starts_with("trackdrive:")));
    let summary: Value = reqwest::get(format!(
        "{}/_sim/truth/trackdrive/{account}/summary",
        sim.root_url()
    ))
    .await?
    .json()
    .await?;
    let expected = sim.truth_summary(Provider::TrackDrive, &account, None)?;
    assert_eq!(summary["calls"], expected.calls);
    assert_eq!(summary["checksum"], expected.checksum);
    // As of an earlier instant there are fewer calls and older versions.
    let earlier = sim.now() - chrono::Duration::days(10);
    let past = sim.truth_summary(Provider::TrackDrive, &account, Some(earlier))?;
    assert!(past.calls < expected.calls);
    // The clock moves the truth: a day later more calls exist and some changed.
    sim.clock().advance(Duration::from_secs(86_400));
    let later = sim.truth_summary(Provider::TrackDrive, &account, None)?;
    assert!(later.calls > expected.calls);
    assert_ne!(later.checksum, expected.checksum);
    sim.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_page_of_1000_records_is_built_quickly() -> TestResult {
    let mut config = SimulatorConfig::for_tests(16);
    for provider in Provider::ALL {
        let provider_config = config.provider_mut(provider);
        provider_config.accounts = vec![AccountConfig::with_calls(50_000)];
        provider_config.max_page_size = provider_config.max_page_size.max(1000);
    }
    let sim = start(config).await;
    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    let (account, key) = first_account(&sim, Provider::Ringba);
    let body = json!({"reportStart": "2000-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z", "offset": 20_000, "size": 1000});
    requests.push((
        "ringba",
        client
            .post(format!(
                "{}/{account}/calllogs",
                sim.base_url(Provider::Ringba)
            ))
            .header(AUTHORIZATION, format!("Token {key}"))
            .json(&body),
    ));
    let (_, key) = first_account(&sim, Provider::Retreaver);
    requests.push((
        "retreaver",
        client.get(format!(
            "{}/api/v2/calls.json?api_key={key}&per_page=1000&page=20",
            sim.base_url(Provider::Retreaver)
        )),
    ));
    let (account, key) = first_account(&sim, Provider::Invoca);
    requests.push((
        "invoca",
        client
            .get(format!("{}/api/2020-10-01/networks/transactions/{account}.json?limit=1000&from=2026-01-01&to=2026-01-14", sim.base_url(Provider::Invoca)))
            .header(AUTHORIZATION, key),
    ));
    let (account, key) = first_account(&sim, Provider::CallRail);
    requests.push((
        "callrail",
        client
            .get(format!(
                "{}/a/{account}/calls.json?per_page=1000&page=20&fields=value,tags,company_id",
                sim.base_url(Provider::CallRail)
            ))
            .header(AUTHORIZATION, format!("Token token=\"{key}\"")),
    ));
    let account = sim.accounts(Provider::TrackDrive)[0].clone();
    let credentials = sim
        .credentials(Provider::TrackDrive, &account)
        .ok_or("credentials")?;
    requests.push((
        "trackdrive",
        client
            .get(format!(
                "{}/calls?per_page=1000&page=20",
                sim.base_url(Provider::TrackDrive)
            ))
            .header(
                AUTHORIZATION,
                basic(
                    &credentials.api_key,
                    credentials.api_secret.as_deref().unwrap_or_default(),
                ),
            ),
    ));
    for (name, request) in requests {
        let request = request.build()?;
        client
            .execute(request.try_clone().ok_or("clone")?)
            .await?
            .error_for_status()?;
        let started = Instant::now();
        for _ in 0..5 {
            let bytes = client
                .execute(request.try_clone().ok_or("clone")?)
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            assert!(bytes.len() > 300_000, "{name}: {} bytes", bytes.len());
        }
        let per_page = started.elapsed() / 5;
        eprintln!("{name}: a 1000-record page took {per_page:?} end to end");
        // Generous: debug builds of this crate are unoptimised; release takes a few ms.
        assert!(
            per_page < Duration::from_millis(1500),
            "{name}: {per_page:?}"
        );
    }
    sim.shutdown().await?;
    Ok(())
}

/// Ringba's reporting budget is shared with the account's UI users: with a second consumer
/// spending 60% of each window, a client sending at the full limit is throttled well before
/// it, in every window.
#[tokio::test]
async fn a_second_consumer_spends_part_of_a_shared_budget() -> TestResult {
    let mut config = SimulatorConfig::for_tests(8);
    config.ringba.rate_limits = vec![RateLimitRule::new(40, 2)];
    config.ringba.shared_consumer_share = 0.6;
    let sim = start(config).await;
    let (account, key) = first_account(&sim, Provider::Ringba);
    let client = reqwest::Client::new();
    let body = json!({"reportStart": "2020-01-01T00:00:00Z", "reportEnd": "2030-01-01T00:00:00Z", "size": 1});
    let started = Instant::now();
    let mut throttled = 0;
    while started.elapsed() < Duration::from_millis(3900) {
        let page: Value = ringba_page(&client, &sim, &account, &key, body.clone())
            .await?
            .json()
            .await?;
        if page["isRateLimited"] == true {
            throttled += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = sim.stats(Provider::Ringba, &account).ok_or("stats")?;
    assert!(throttled > 0, "{stats:?}");
    assert!(
        stats.window_peaks[0].peak_admitted < 40,
        "the other consumer's share was not available: {stats:?}"
    );
    sim.shutdown().await?;
    Ok(())
}

/// TrackDrive documents `order` as a column name (`order=created_at`); `asc` is refused.
#[tokio::test]
async fn trackdrive_order_takes_a_column_name() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(8)).await;
    let (account, key) = first_account(&sim, Provider::TrackDrive);
    let secret = sim
        .credentials(Provider::TrackDrive, &account)
        .ok_or("credentials")?
        .api_secret
        .ok_or("secret")?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    );
    let client = reqwest::Client::new();
    let get = |order: &'static str| {
        client
            .get(format!(
                "{}/calls?per_page=5&order={order}",
                sim.base_url(Provider::TrackDrive)
            ))
            .header(AUTHORIZATION, auth.clone())
            .send()
    };
    assert_eq!(get("asc").await?.status(), StatusCode::BAD_REQUEST);
    assert_eq!(get("created_at").await?.status(), StatusCode::OK);
    sim.shutdown().await?;
    Ok(())
}

/// The advertiser role's rows name their status column differently and carry none of the
/// network's columns; conversions are Signal rows.
#[tokio::test]
async fn invoca_advertiser_rows_and_transaction_types() -> TestResult {
    let sim = start(SimulatorConfig::for_tests(9)).await;
    let (account, key) = first_account(&sim, Provider::Invoca);
    let client = reqwest::Client::new();
    let rows: Vec<Value> = client
        .get(format!(
            "{}/api/2020-10-01/advertisers/transactions/{account}.json?limit=200",
            sim.base_url(Provider::Invoca)
        ))
        .header(AUTHORIZATION, key.clone())
        .send()
        .await?
        .json()
        .await?;
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(row.get("call_result_description_detail").is_none());
        assert!(row["call_result_description_detail_managed_advertiser"].is_string());
        assert!(row.get("affiliate_payout_localized").is_none());
    }
    let signals: Vec<Value> = invoca_get(
        &client,
        &sim,
        &account,
        &key,
        "limit=500&transaction_type=Signal",
    )
    .await?
    .json()
    .await?;
    assert!(!signals.is_empty());
    assert!(signals
        .iter()
        .all(|r| r["transaction_type"] == "Signal" && r["signal_name"] == "Sale"));
    let bad = invoca_get(&client, &sim, &account, &key, "transaction_type=Nope").await?;
    assert_eq!(
        bad.status(),
        StatusCode::FORBIDDEN,
        "Invoca's validation errors are 403"
    );
    sim.shutdown().await?;
    Ok(())
}
