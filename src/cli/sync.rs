//! `callsync sync` and `callsync backfill`: one sync run in this process with a progress bar,
//! or handed to the workers (`--enqueue`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use callsync_connectors::{run_sync, Connectors, Progress, SyncOutcome};
use callsync_runtime::topics::names;
use callsync_runtime::{KafkaClientFactory, Shutdown};
use callsync_schemas::{Provider, SyncEvent, SyncEventKind, SyncMode, SyncRequest};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::CallsyncConfig;
use crate::ops::time::datetime_arg;
use crate::roles::sync_deps;
use crate::scheduler::trigger::build_request;
use crate::scheduler::{AvroSyncCodec, KafkaSyncPublisher, SyncPublisher, TriggerRequest};

/// `callsync sync`: an incremental or full sync of one provider account.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    /// retreaver, ringba, invoca, callrail or trackdrive.
    #[arg(long)]
    pub provider: Provider,
    /// The account id as configured in `[connectors]`.
    #[arg(long)]
    pub account: String,
    /// incremental (from the stored cursor) or full (the trailing window).
    #[arg(long, default_value = "incremental")]
    pub mode: SyncMode,
    /// Continue this failed sync id from its committed cursor.
    #[arg(long)]
    pub resume: Option<String>,
    /// Write the request to `callsync.sync-requests` for the workers instead of running it here.
    #[arg(long)]
    pub enqueue: bool,
}

/// `callsync backfill`: a date range of one provider account, split into resumable windows.
#[derive(Debug, Clone, clap::Args)]
pub struct BackfillArgs {
    #[arg(long)]
    pub provider: Provider,
    #[arg(long)]
    pub account: String,
    /// Start of the range (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = datetime_arg)]
    pub from: DateTime<Utc>,
    /// End of the range, exclusive (default: now).
    #[arg(long, value_parser = datetime_arg)]
    pub to: Option<DateTime<Utc>>,
    /// Continue this failed backfill id: windows already done are skipped, the others resume
    /// from their committed cursors.
    #[arg(long)]
    pub resume: Option<String>,
    /// Write the request to `callsync.sync-requests` for the workers instead of running it here.
    #[arg(long)]
    pub enqueue: bool,
}

impl From<&SyncArgs> for TriggerRequest {
    fn from(a: &SyncArgs) -> Self {
        TriggerRequest {
            provider: a.provider,
            account_id: a.account.clone(),
            mode: a.mode,
            window_start: None,
            window_end: None,
            resume: a.resume.clone(),
        }
    }
}

impl From<&BackfillArgs> for TriggerRequest {
    fn from(a: &BackfillArgs) -> Self {
        TriggerRequest {
            provider: a.provider,
            account_id: a.account.clone(),
            mode: SyncMode::Backfill,
            window_start: Some(a.from),
            window_end: a.to,
            resume: a.resume.clone(),
        }
    }
}

/// Runs (or enqueues) one sync; prints a summary to `out`.
pub async fn run_sync_command(
    config: &CallsyncConfig,
    trigger: TriggerRequest,
    enqueue: bool,
    shutdown: Shutdown,
    out: &mut impl Write,
) -> anyhow::Result<Option<SyncOutcome>> {
    let mut request =
        build_request(&trigger, "cli", None, Utc::now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    // the request carries its end, so a resumed backfill reads the same range
    if request.mode == SyncMode::Backfill && request.window_end.is_none() {
        request.window_end = Some(Utc::now());
    }
    let factory = KafkaClientFactory::new(config.kafka.clone());
    let publisher = KafkaSyncPublisher::new(
        factory.producer().context("creating a producer")?,
        Arc::new(AvroSyncCodec::single_object()),
        factory.settings().topic(names::SYNC_REQUESTS),
        factory.settings().topic(names::SYNC_EVENTS),
        Duration::from_secs(30),
    );
    if enqueue {
        if !crate::roles::configured_accounts(config).is_empty()
            && !crate::roles::configured_accounts(config)
                .iter()
                .any(|(p, a)| *p == request.provider && *a == request.account_id)
        {
            anyhow::bail!(
                "no {} account {:?} is configured in [connectors]",
                request.provider,
                request.account_id
            );
        }
        publisher
            .publish_request(&request)
            .await
            .context("writing the sync request")?;
        writeln!(
            out,
            "sync {} requested ({} {} {}); follow it with `callsync status` or GET /api/syncs/{}",
            request.id, request.provider, request.account_id, request.mode, request.id
        )?;
        return Ok(None);
    }

    let connectors = Arc::new(
        Connectors::from_config(&config.connectors, &shutdown)
            .context("invalid [connectors] config")?,
    );
    if connectors
        .get(request.provider, &request.account_id)
        .is_none()
    {
        anyhow::bail!(
            "no {} account {:?} is configured in [connectors]",
            request.provider,
            request.account_id
        );
    }
    let deps = sync_deps(config, connectors, factory, shutdown.clone());
    let bar = progress_bar(&request);
    let started = Instant::now();
    publish_event(&publisher, &request, SyncEventKind::Started, 0, 0, None).await;
    let progress = {
        let bar = bar.clone();
        move |p: &Progress| update_bar(&bar, p)
    };
    let result = run_sync(&request, &deps, progress).await;
    bar.finish_and_clear();
    match result {
        Ok(outcome) => {
            publish_event(
                &publisher,
                &request,
                SyncEventKind::Completed,
                outcome.records,
                outcome.pages,
                None,
            )
            .await;
            write_summary(out, &outcome, started.elapsed())?;
            Ok(Some(outcome))
        }
        Err(e) => {
            publish_event(
                &publisher,
                &request,
                SyncEventKind::Failed,
                0,
                0,
                Some(e.to_string()),
            )
            .await;
            Err(anyhow::Error::new(e).context(format!(
                "sync {} failed; continue it with --resume {}",
                request.id, request.id
            )))
        }
    }
}

async fn publish_event(
    publisher: &KafkaSyncPublisher,
    request: &SyncRequest,
    kind: SyncEventKind,
    records: u64,
    pages: u64,
    error: Option<String>,
) {
    let event = SyncEvent {
        sync_id: request.id.clone(),
        provider: request.provider,
        account_id: request.account_id.clone(),
        mode: request.mode,
        kind,
        records: i64::try_from(records).unwrap_or(i64::MAX),
        pages: i64::try_from(pages).unwrap_or(i64::MAX),
        rate_per_sec: 0.0,
        eta_secs: None,
        error,
        at: Utc::now(),
    };
    if let Err(e) = publisher.publish_event(&event).await {
        tracing::warn!(error = %e, sync_id = %request.id, "could not write the sync event");
    }
}

fn progress_bar(request: &SyncRequest) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(
        "{spinner} {prefix} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} windows  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!(
        "{} {} {} {}",
        request.mode, request.provider, request.account_id, request.id
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Records, rate and ETA on the bar.
pub fn update_bar(bar: &ProgressBar, p: &Progress) {
    bar.set_length(p.windows_total.max(1));
    bar.set_position(p.windows_done);
    let eta = match p.eta_secs {
        Some(s) => format!("ETA {}", format_secs(s)),
        None => "ETA --".to_string(),
    };
    bar.set_message(format!(
        "{} records ({} DLQ), {:.0} records/s, {eta}",
        p.records, p.dlq, p.rate_per_sec
    ));
}

pub fn format_secs(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn write_summary(out: &mut impl Write, o: &SyncOutcome, elapsed: Duration) -> std::io::Result<()> {
    let secs = elapsed.as_secs_f64().max(0.001);
    if let Some(reason) = &o.skipped {
        writeln!(out, "sync {} skipped: {reason}", o.sync_id)?;
        return Ok(());
    }
    writeln!(out, "sync {} completed", o.sync_id)?;
    writeln!(out, "  provider/account  {} {}", o.provider, o.account)?;
    writeln!(out, "  mode              {}", o.mode)?;
    writeln!(out, "  records           {}", o.records)?;
    writeln!(out, "  dead-lettered     {}", o.dlq)?;
    writeln!(out, "  pages             {}", o.pages)?;
    writeln!(
        out,
        "  windows           {} run, {} already done",
        o.windows_run, o.windows_already_done
    )?;
    writeln!(
        out,
        "  requests          {} ({} answered 429)",
        o.requests, o.rate_limited
    )?;
    writeln!(out, "  elapsed           {:.1}s", secs)?;
    writeln!(
        out,
        "  rate              {:.0} records/s",
        o.records as f64 / secs
    )?;
    Ok(())
}
