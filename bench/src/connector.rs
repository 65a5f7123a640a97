//! `connector`: a backfill against the simulator at 600 requests/min, as a share
//! of the rate-limit ceiling (requests/min x page size), with the 429s counted.

use anyhow::Context;
use callsync_connectors::ConnectorsConfig;
use callsync_schemas::{Provider, SyncMode, SyncRequest};
use callsync_simulator::{RateLimitRule, Simulator, SimulatorConfig};
use chrono::Utc;
use serde_json::json;

use crate::report::{BenchOutcome, Figure};
use crate::services;

const CEILING_PER_MINUTE: u32 = 600;
const PAGE_SIZE: u32 = 100;

pub async fn run(seconds: u64) -> anyhow::Result<BenchOutcome> {
    let provider = Provider::Retreaver;
    // enough calls that the run is bounded by the rate limit, not by the data
    let pages = (u64::from(CEILING_PER_MINUTE) * seconds / 60).max(10);
    let calls = pages * u64::from(PAGE_SIZE);
    let sim =
        Simulator::start(SimulatorConfig::for_tests(11).with_accounts(provider, 1, calls + 1_000))
            .await
            .context("starting the simulator")?;
    sim.set_rate_limits(
        provider,
        vec![RateLimitRule::new(CEILING_PER_MINUTE, 60)],
        false,
    )
    .map_err(|e| anyhow::anyhow!("setting the simulator's rate limit: {e}"))?;
    let account = sim
        .accounts(provider)
        .first()
        .cloned()
        .context("the simulator has no Retreaver account")?;
    let info = sim
        .account_info(provider, &account)
        .context("simulator account info")?;
    let config: ConnectorsConfig = serde_json::from_value(json!({
        "sync": {"backfill_window_secs": 3600 * 6, "backfill_concurrency": 4},
        "retreaver": [{
            "account": account,
            "api_key": info.credentials.api_key,
            "company_id": account,
            "per_page": PAGE_SIZE,
            "base_url": sim.base_url(provider),
            "rate_limit": {"per_minute": CEILING_PER_MINUTE, "max_concurrency": 4},
        }],
    }))
    .context("connector benchmark config")?;
    let start = info.first_call_at;
    let end = start + chrono::Duration::milliseconds(info.call_interval_ms * calls as i64);
    let request = SyncRequest {
        id: format!("bench-connector-{}", uuid::Uuid::new_v4().simple()),
        provider,
        account_id: account,
        mode: SyncMode::Backfill,
        window_start: Some(start),
        window_end: Some(end),
        requested_at: Utc::now(),
        requested_by: "bench".to_string(),
        attempt: 1,
        not_before: None,
    };
    let r = callsync_connectors::bench::connector_benchmark(
        &config,
        &request,
        f64::from(CEILING_PER_MINUTE),
        PAGE_SIZE,
    )
    .await?;
    let rss_mib = services::peak_rss_bytes() as f64 / 1024.0 / 1024.0;
    Ok(BenchOutcome {
        name: "connector".into(),
        figures: vec![
            Figure {
                benchmark: "connector".into(),
                name: format!(
                    "backfill records/min vs ceiling ({CEILING_PER_MINUTE} req/min x {PAGE_SIZE}), {} records",
                    r.records
                ),
                target: ">= 95% of ceiling, zero 429s".into(),
                measured: format!("{:.0}/min, {} x 429", r.records_per_minute, r.rate_limited),
                baseline: format!("{:.0}/min ceiling", r.records_ceiling_per_minute),
                ratio: Some(r.records_per_minute / r.records_ceiling_per_minute.max(1e-9)),
                met: Some(r.records_per_minute >= 0.95 * r.records_ceiling_per_minute && r.rate_limited == 0),
            },
            Figure {
                benchmark: "connector".into(),
                name: "peak RSS of the benchmark process (connector + simulator)".into(),
                target: "< 128 MiB through a 1M-call backfill".into(),
                measured: format!("{rss_mib:.0} MiB ({} records)", r.records),
                baseline: "-".into(),
                ratio: None,
                met: None,
            },
        ],
        json: json!({
            "records": r.records,
            "requests": r.requests,
            "rate_limited": r.rate_limited,
            "elapsed_secs": r.elapsed.as_secs_f64(),
            "requests_per_minute": r.requests_per_minute,
            "ceiling_per_minute": r.ceiling_per_minute,
            "ceiling_share": r.ceiling_share,
            "records_per_minute": r.records_per_minute,
            "records_ceiling_per_minute": r.records_ceiling_per_minute,
            "peak_rss_bytes": services::peak_rss_bytes(),
        }),
    })
}
