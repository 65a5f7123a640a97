//! Cron schedules per provider account and the deterministic id of each slot.
//!
//! Expressions are the standard 5-field form (`minute hour day-of-month month day-of-week`,
//! Vixie semantics: when both day fields are restricted, either may match), evaluated in a
//! configurable time zone, so `0 2 * * *` in `America/New_York` fires at 02:00 local time
//! through daylight-saving changes.

use std::str::FromStr;
use std::time::Duration;

use callsync_schemas::{Provider, SyncMode};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::Deserialize;
use uuid::Uuid;

/// The default schedule of full syncs: every day at 02:00.
pub const DEFAULT_FULL_CRON: &str = "0 2 * * *";
/// The default schedule of incremental syncs: every 15 minutes.
pub const DEFAULT_INCREMENTAL_CRON: &str = "*/15 * * * *";

/// The UUIDv5 namespace of scheduled sync ids (a fixed random UUID; never change it, or the
/// ids of slots already written change with it).
pub const SYNC_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_3b0e_9d2a_4f5c_8e71_0a4b_2c9d_7e15);

/// A schedule could not be built from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression {expression:?} for {what}: {reason} (expected 5 fields: minute hour day-of-month month day-of-week)")]
    InvalidCron {
        what: String,
        expression: String,
        reason: String,
    },
    #[error("unknown time zone {0:?} (expected an IANA name such as UTC or America/New_York)")]
    UnknownTimeZone(String),
    #[error("account {provider}/{account}: the account id must be non-empty and contain no '/'")]
    InvalidAccount { provider: Provider, account: String },
}

/// `[scheduler]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// IANA time zone the cron expressions are read in (default `UTC`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// Default full-sync schedule (default `0 2 * * *`).
    #[serde(default = "default_full")]
    pub full: String,
    /// Default incremental-sync schedule (default `*/15 * * * *`).
    #[serde(default = "default_incremental")]
    pub incremental: String,
    /// How far back a starting scheduler looks for a missed slot (seconds, default one day).
    /// Only the latest missed slot of each schedule runs, once.
    #[serde(default = "default_catch_up_secs")]
    pub catch_up_secs: u64,
    /// The provider accounts to schedule.
    #[serde(default)]
    pub accounts: Vec<AccountScheduleConfig>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            time_zone: default_time_zone(),
            full: default_full(),
            incremental: default_incremental(),
            catch_up_secs: default_catch_up_secs(),
            accounts: Vec::new(),
        }
    }
}

fn default_time_zone() -> String {
    "UTC".to_string()
}
fn default_full() -> String {
    DEFAULT_FULL_CRON.to_string()
}
fn default_incremental() -> String {
    DEFAULT_INCREMENTAL_CRON.to_string()
}
fn default_catch_up_secs() -> u64 {
    24 * 3600
}

/// One provider account's schedules; unset fields take the `[scheduler]` defaults, and
/// `"off"` disables one mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountScheduleConfig {
    pub provider: Provider,
    pub account_id: String,
    #[serde(default)]
    pub full: Option<String>,
    #[serde(default)]
    pub incremental: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl SchedulerConfig {
    /// Every (account, mode) schedule the config describes, validated.
    pub fn schedules(&self) -> Result<Vec<Schedule>, ScheduleError> {
        let mut schedules = Vec::new();
        for account in &self.accounts {
            if account.account_id.is_empty() || account.account_id.contains('/') {
                return Err(ScheduleError::InvalidAccount {
                    provider: account.provider,
                    account: account.account_id.clone(),
                });
            }
            let tz = parse_time_zone(account.time_zone.as_deref().unwrap_or(&self.time_zone))?;
            for (mode, expression) in [
                (
                    SyncMode::Full,
                    account.full.as_deref().unwrap_or(&self.full),
                ),
                (
                    SyncMode::Incremental,
                    account.incremental.as_deref().unwrap_or(&self.incremental),
                ),
            ] {
                if expression.trim().eq_ignore_ascii_case("off") {
                    continue;
                }
                schedules.push(Schedule::new(
                    account.provider,
                    &account.account_id,
                    mode,
                    expression,
                    tz,
                )?);
            }
        }
        Ok(schedules)
    }

    pub fn catch_up(&self) -> Duration {
        Duration::from_secs(self.catch_up_secs)
    }
}

/// Parses an IANA time zone name.
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name.trim()).map_err(|_| ScheduleError::UnknownTimeZone(name.to_string()))
}

/// Parses a standard 5-field cron expression.
pub fn parse_cron(expression: &str, what: &str) -> Result<Cron, ScheduleError> {
    let invalid = |reason: String| ScheduleError::InvalidCron {
        what: what.to_string(),
        expression: expression.to_string(),
        reason,
    };
    if expression.split_whitespace().count() != 5 {
        return Err(invalid(format!(
            "{} fields",
            expression.split_whitespace().count()
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| invalid(e.to_string()))
}

/// The cron schedule of one mode of one provider account.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub provider: Provider,
    pub account_id: String,
    pub mode: SyncMode,
    pub expression: String,
    pub time_zone: Tz,
    cron: Cron,
}

impl Schedule {
    pub fn new(
        provider: Provider,
        account_id: &str,
        mode: SyncMode,
        expression: &str,
        time_zone: Tz,
    ) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expression, &format!("{provider}/{account_id} {mode}"))?;
        Ok(Schedule {
            provider,
            account_id: account_id.to_string(),
            mode,
            expression: expression.trim().to_string(),
            time_zone,
            cron,
        })
    }

    /// The latest slot in `(after, upto]`, if any: the one slot a scheduler that last looked
    /// at `after` runs now (older missed slots are not run).
    pub fn latest_slot_in(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if upto <= after {
            return None;
        }
        let local = upto.with_timezone(&self.time_zone);
        let slot = self.cron.find_previous_occurrence(&local, true).ok()?;
        let slot = slot.with_timezone(&Utc);
        (slot > after).then_some(slot)
    }

    /// The first slot strictly after `t`.
    pub fn next_slot_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.time_zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|slot| slot.with_timezone(&Utc))
    }

    /// The deterministic sync id of this schedule's `slot`.
    pub fn sync_id(&self, slot: DateTime<Utc>) -> String {
        scheduled_sync_id(self.provider, &self.account_id, self.mode, slot)
    }
}

/// The readable name of a slot: `{provider}/{account}/{mode}/{slot, RFC 3339 UTC}`.
pub fn slot_name(
    provider: Provider,
    account_id: &str,
    mode: SyncMode,
    slot: DateTime<Utc>,
) -> String {
    format!(
        "{provider}/{account_id}/{mode}/{}",
        slot.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}

/// The sync id of a scheduled slot: the UUIDv5 of its [`slot_name`]. Every scheduler replica
/// computes the same id for the same slot, which is what lets workers run it once.
pub fn scheduled_sync_id(
    provider: Provider,
    account_id: &str,
    mode: SyncMode,
    slot: DateTime<Utc>,
) -> String {
    Uuid::new_v5(
        &SYNC_ID_NAMESPACE,
        slot_name(provider, account_id, mode, slot).as_bytes(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn the_defaults_fire_at_the_expected_slots() {
        let inc = Schedule::new(
            Provider::Ringba,
            "a1",
            SyncMode::Incremental,
            DEFAULT_INCREMENTAL_CRON,
            Tz::UTC,
        )
        .unwrap();
        assert_eq!(
            inc.next_slot_after(utc(2025, 3, 1, 10, 7, 0)),
            Some(utc(2025, 3, 1, 10, 15, 0))
        );
        assert_eq!(
            inc.next_slot_after(utc(2025, 3, 1, 10, 15, 0)),
            Some(utc(2025, 3, 1, 10, 30, 0))
        );
        let full = Schedule::new(
            Provider::Ringba,
            "a1",
            SyncMode::Full,
            DEFAULT_FULL_CRON,
            Tz::UTC,
        )
        .unwrap();
        assert_eq!(
            full.next_slot_after(utc(2025, 3, 1, 2, 0, 0)),
            Some(utc(2025, 3, 2, 2, 0, 0))
        );
    }

    #[test]
    fn only_the_latest_missed_slot_is_returned() {
        let inc = Schedule::new(
            Provider::Ringba,
            "a1",
            SyncMode::Incremental,
            "*/15 * * * *",
            Tz::UTC,
        )
        .unwrap();
        // down from 09:58 to 11:02: slots 10:00..11:00 were missed; only 11:00 runs
        assert_eq!(
            inc.latest_slot_in(utc(2025, 3, 1, 9, 58, 0), utc(2025, 3, 1, 11, 2, 0)),
            Some(utc(2025, 3, 1, 11, 0, 0))
        );
        // a slot exactly at `upto` counts, one exactly at `after` does not
        assert_eq!(
            inc.latest_slot_in(utc(2025, 3, 1, 10, 45, 0), utc(2025, 3, 1, 11, 0, 0)),
            Some(utc(2025, 3, 1, 11, 0, 0))
        );
        assert_eq!(
            inc.latest_slot_in(utc(2025, 3, 1, 11, 0, 0), utc(2025, 3, 1, 11, 14, 59)),
            None
        );
    }

    #[test]
    fn time_zones_are_honoured_across_dst() {
        let ny = parse_time_zone("America/New_York").unwrap();
        let full = Schedule::new(Provider::Invoca, "x", SyncMode::Full, "0 2 * * *", ny).unwrap();
        // winter: 02:00 EST = 07:00 UTC; summer: 02:00 EDT = 06:00 UTC
        assert_eq!(
            full.next_slot_after(utc(2025, 1, 10, 0, 0, 0)),
            Some(utc(2025, 1, 10, 7, 0, 0))
        );
        assert_eq!(
            full.next_slot_after(utc(2025, 7, 10, 0, 0, 0)),
            Some(utc(2025, 7, 10, 6, 0, 0))
        );
        assert!(matches!(
            parse_time_zone("Mars/Base"),
            Err(ScheduleError::UnknownTimeZone(_))
        ));
    }

    #[test]
    fn ids_are_deterministic_per_provider_account_mode_and_slot() {
        let slot = utc(2025, 3, 1, 10, 15, 0);
        let a = scheduled_sync_id(Provider::Retreaver, "acc", SyncMode::Incremental, slot);
        assert_eq!(
            a,
            scheduled_sync_id(Provider::Retreaver, "acc", SyncMode::Incremental, slot)
        );
        assert_ne!(
            a,
            scheduled_sync_id(Provider::Retreaver, "acc", SyncMode::Full, slot)
        );
        assert_ne!(
            a,
            scheduled_sync_id(Provider::Retreaver, "acc2", SyncMode::Incremental, slot)
        );
        assert_ne!(
            a,
            scheduled_sync_id(Provider::Ringba, "acc", SyncMode::Incremental, slot)
        );
        assert_ne!(
            a,
            scheduled_sync_id(
                Provider::Retreaver,
                "acc",
                SyncMode::Incremental,
                utc(2025, 3, 1, 10, 30, 0)
            )
        );
        assert_eq!(
            slot_name(Provider::Retreaver, "acc", SyncMode::Full, slot),
            "retreaver/acc/full/2025-03-01T10:15:00Z"
        );
        assert!(Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn config_defaults_overrides_and_errors() {
        let cfg: SchedulerConfig = toml::from_str(
            r#"
            time_zone = "Europe/Berlin"
            [[accounts]]
            provider = "callrail"
            account_id = "ACC1"
            [[accounts]]
            provider = "ringba"
            account_id = "RA"
            full = "off"
            incremental = "*/5 * * * *"
            time_zone = "UTC"
            "#,
        )
        .unwrap();
        let schedules = cfg.schedules().unwrap();
        assert_eq!(schedules.len(), 3);
        assert_eq!(schedules[0].expression, DEFAULT_FULL_CRON);
        assert_eq!(schedules[0].time_zone, chrono_tz::Europe::Berlin);
        assert_eq!(schedules[2].expression, "*/5 * * * *");
        assert_eq!(schedules[2].time_zone, Tz::UTC);

        let err = Schedule::new(
            Provider::Ringba,
            "a",
            SyncMode::Full,
            "0 0 2 * * *",
            Tz::UTC,
        )
        .unwrap_err();
        assert!(err.to_string().contains("6 fields"), "{err}");
        assert!(
            Schedule::new(Provider::Ringba, "a", SyncMode::Full, "61 * * * *", Tz::UTC).is_err()
        );
    }
}
