//! The lazily generated data set.
//!
//! Call `i` of an account is a pure function of (seed, provider, account id, i). Calls are
//! time-ordered: call `i` is created inside `[first + i·interval, first + (i+1)·interval)`,
//! so a created-at range maps to an index range in O(1) and nothing is materialised.
//!
//! Each call has up to five stages, each at a deterministic instant:
//! created (in progress) → completed (final status; immediate conversions carry revenue)
//! → conversion posted later (some converting calls) → revenue adjusted (some converted
//! calls, about a day later) → adjusted again weeks later (a few converted calls: payouts
//! and chargebacks that arrive long after the call). "The call as of T" is the latest stage
//! at or before T.

use callsync_schemas::{CallStatus, Provider};
use serde::{Deserialize, Serialize};

use crate::config::{AccountConfig, LifecycleConfig, SimulatorConfig};
use crate::format;
use crate::names;
use crate::rng::{self, hash_str, mix, unit, Draws};

/// The latest a call completes after it was created (ms): IVR + ring + talk + wrap-up.
pub(crate) const COMPLETION_MAX_MS: u64 = 1_620_000;

/// Late-change delay spreads are capped at this many call intervals (see
/// [`LifecycleConfig`]).
pub(crate) const MAX_SPREAD_CALLS: i64 = 5_000;

const SALT_CREATED: u64 = 0x01;
const SALT_FACTS: u64 = 0x02;
const SALT_OUTCOME: u64 = 0x03;
const SALT_CONVERTS: u64 = 0x04;
const SALT_LATE: u64 = 0x05;
const SALT_ADJUST: u64 = 0x06;
const SALT_BAD: u64 = 0x07;
const SALT_IDS: u64 = 0x08;
const SALT_LATE_ADJUST: u64 = 0x09;

/// A stage in a call's life. The discriminant is the Invoca row number within a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Created = 0,
    Completed = 1,
    ConversionPosted = 2,
    RevenueAdjusted = 3,
    /// A second adjustment weeks after the call (past any lookback and the nightly full
    /// window).
    LateAdjusted = 4,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Created,
        Stage::Completed,
        Stage::ConversionPosted,
        Stage::RevenueAdjusted,
        Stage::LateAdjusted,
    ];

    pub(crate) fn from_number(number: u64) -> Option<Stage> {
        Stage::ALL.get(usize::try_from(number).ok()?).copied()
    }
}

/// How a deliberately broken record is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRecordKind {
    /// The start-time field holds a value no parser accepts.
    UnparseableStartTime,
    /// The field that becomes `call_id` is missing, null or empty.
    MissingId,
}

/// The final outcome of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Answered,
    NoAnswer,
    Busy,
    Failed,
}

impl Outcome {
    pub(crate) fn status(self) -> CallStatus {
        match self {
            Outcome::Answered => CallStatus::Completed,
            Outcome::NoAnswer => CallStatus::NoAnswer,
            Outcome::Busy => CallStatus::Busy,
            Outcome::Failed => CallStatus::Failed,
        }
    }
}

/// Credentials of one simulated account. Per provider:
/// - Retreaver: `api_key` query parameter, `account_id` is the `company_id`.
/// - Ringba: `Authorization: Token {api_key}`, `account_id` is the path's `{accountId}`.
/// - Invoca: `Authorization: {api_key}` or `?oauth_token={api_key}`; `account_id` is the
///   network (or advertiser/affiliate) id in the path.
/// - CallRail: `Authorization: Token token="{api_key}"`; `account_id` is the path's
///   `{account_id}`.
/// - TrackDrive: `Authorization: Basic base64({api_key}:{api_secret})` (public key, private
///   key); `account_id` is the account's subdomain, known to the server from the keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountCredentials {
    pub account_id: String,
    pub api_key: String,
    pub api_secret: Option<String>,
}

/// Lifecycle parameters in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifecycle {
    answered_share: f64,
    conversion_share: f64,
    late_conversion_share: f64,
    late_min_ms: i64,
    late_max_ms: i64,
    adjustment_share: f64,
    adjustment_min_ms: i64,
    adjustment_max_ms: i64,
    late_adjustment_share: f64,
    late_adjustment_min_ms: i64,
    late_adjustment_max_ms: i64,
}

impl Lifecycle {
    /// The delay spreads are capped at [`MAX_SPREAD_CALLS`] call intervals, so a scan for
    /// the changes in a time window never visits more than that many extra calls.
    fn from_config(config: &LifecycleConfig, interval_ms: i64) -> Self {
        let secs = |value: u64| i64::try_from(value.saturating_mul(1000)).unwrap_or(i64::MAX);
        let max_spread = interval_ms.saturating_mul(MAX_SPREAD_CALLS);
        let late_min_ms = secs(config.late_conversion_delay_secs[0]);
        let adjustment_min_ms = secs(config.adjustment_delay_secs[0]);
        let late_adjustment_min_ms = secs(config.late_adjustment_delay_secs[0]);
        Lifecycle {
            answered_share: config.answered_share,
            conversion_share: config.conversion_share,
            late_conversion_share: config.late_conversion_share,
            late_min_ms,
            late_max_ms: secs(config.late_conversion_delay_secs[1])
                .min(late_min_ms.saturating_add(max_spread)),
            adjustment_share: config.adjustment_share,
            adjustment_min_ms,
            adjustment_max_ms: secs(config.adjustment_delay_secs[1])
                .min(adjustment_min_ms.saturating_add(max_spread)),
            late_adjustment_share: config.late_adjustment_share,
            late_adjustment_min_ms,
            late_adjustment_max_ms: secs(config.late_adjustment_delay_secs[1])
                .min(late_adjustment_min_ms.saturating_add(max_spread)),
        }
    }

    /// `[min, max]` delay of a stage after the call was created.
    fn stage_delay_bounds(&self, stage: Stage) -> (i64, i64) {
        let completion_max = COMPLETION_MAX_MS as i64;
        match stage {
            Stage::Created => (0, 0),
            Stage::Completed => (0, completion_max),
            Stage::ConversionPosted => (self.late_min_ms, completion_max + self.late_max_ms),
            Stage::RevenueAdjusted => (self.adjustment_min_ms, self.adjustment_max_ms),
            Stage::LateAdjusted => (self.late_adjustment_min_ms, self.late_adjustment_max_ms),
        }
    }
}

/// One simulated account and its calls.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub provider: Provider,
    pub id: String,
    pub key: u64,
    /// Calls in total, including those created after the clock start.
    pub calls: u64,
    pub first_ms: i64,
    pub interval_ms: i64,
    pub utc_offset_minutes: i32,
    pub zone_name: &'static str,
    pub bad_record_share: f64,
    /// Money strings in the account's locale use a decimal comma (`25,50`).
    pub decimal_comma: bool,
    pub credentials: AccountCredentials,
    pub lifecycle: Lifecycle,
}

/// Everything about one call that does not depend on time.
#[derive(Debug, Clone)]
pub(crate) struct CallFacts {
    pub index: u64,
    pub created_ms: i64,
    /// When the call started ringing (a little before the record was created).
    pub start_ms: i64,
    pub outcome: Outcome,
    pub ivr_secs: u32,
    pub ring_secs: u32,
    pub talk_secs: u32,
    pub hold_secs: u32,
    pub total_secs: u32,
    pub completed_ms: i64,
    pub converts: bool,
    pub late_conversion_ms: Option<i64>,
    pub adjustment_ms: Option<i64>,
    pub revenue_cents: i64,
    pub payout_cents: i64,
    pub adjusted_revenue_cents: i64,
    pub adjusted_payout_cents: i64,
    /// The second adjustment, weeks after the call.
    pub late_adjustment_ms: Option<i64>,
    pub late_revenue_cents: i64,
    /// Telephony cost (what Retreaver calls charge_total).
    pub cost_cents: i64,
    pub campaign: usize,
    pub publisher: usize,
    pub buyer: usize,
    pub city: usize,
    pub caller_national: u64,
    pub keys_pressed: u8,
    pub id_words: [u64; 2],
    pub bad: Option<BadRecordKind>,
}

/// A call as of some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallState {
    pub stage: Stage,
    pub updated_ms: i64,
    pub status: CallStatus,
    pub converted: bool,
    pub revenue_cents: i64,
    pub payout_cents: i64,
}

/// A stage of one call placed in time: a row of Invoca's stream, a value of Retreaver's
/// updated_at. Ordered by (instant, call index, stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ChangeRef {
    pub at_ms: i64,
    pub index: u64,
    pub stage: Stage,
}

impl Account {
    fn new(
        config: &SimulatorConfig,
        provider: Provider,
        ordinal: usize,
        account_config: &AccountConfig,
    ) -> Account {
        let seed = config.seed;
        let generated_key = mix(seed, mix(hash_str(provider.as_str()), ordinal as u64));
        let id = account_config
            .id
            .clone()
            .unwrap_or_else(|| names::account_id(provider, ordinal, generated_key));
        let key = mix(
            seed,
            hash_str(provider.as_str()) ^ hash_str(&id).rotate_left(17),
        );
        let history_ms =
            i64::try_from(account_config.history_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4);
        let existing_calls = account_config.calls.max(1);
        let interval_ms = (history_ms / i64::try_from(existing_calls).unwrap_or(i64::MAX)).max(1);
        let start_ms = config.clock.start.timestamp_millis();
        let first_ms =
            start_ms - interval_ms.saturating_mul(i64::try_from(account_config.calls).unwrap_or(0));
        let (utc_offset_minutes, zone_name) = match account_config.utc_offset_minutes {
            Some(offset) => (offset, names::zone_name(offset)),
            None => names::US_ZONES[ordinal % names::US_ZONES.len()],
        };
        let credentials = names::credentials(provider, &id, key);
        Account {
            provider,
            id,
            key,
            calls: account_config.calls + account_config.future_calls,
            first_ms,
            interval_ms,
            utc_offset_minutes,
            zone_name,
            bad_record_share: account_config.bad_record_share,
            decimal_comma: account_config
                .decimal_comma
                .unwrap_or(provider == Provider::Invoca),
            credentials,
            lifecycle: Lifecycle::from_config(&config.lifecycle, interval_ms),
        }
    }

    fn draw(&self, salt: u64, index: u64) -> u64 {
        mix(self.key ^ salt.wrapping_mul(0xA076_1D64_78BD_642F), index)
    }

    /// When call `index` was created (its record exists from then on).
    pub fn created_ms(&self, index: u64) -> i64 {
        let slot = self.first_ms + self.interval_ms * index as i64;
        slot + rng::below(self.draw(SALT_CREATED, index), self.interval_ms as u64) as i64
    }

    /// The first call index created at or after `instant_ms` (`calls` when none is).
    pub fn first_index_at_or_after(&self, instant_ms: i64) -> u64 {
        if instant_ms <= self.first_ms {
            return 0;
        }
        let estimate = (instant_ms - self.first_ms) / self.interval_ms;
        let estimate = u64::try_from(estimate).unwrap_or(u64::MAX);
        if estimate >= self.calls {
            return self.calls;
        }
        if self.created_ms(estimate) < instant_ms {
            estimate + 1
        } else {
            estimate
        }
    }

    /// How many calls exist (were created) at `now_ms`.
    pub fn calls_created_by(&self, now_ms: i64) -> u64 {
        self.first_index_at_or_after(now_ms.saturating_add(1))
    }

    /// Indices of calls created in `[from_ms, to_ms)` and by `now_ms`.
    pub fn index_range(&self, from_ms: i64, to_ms: i64, now_ms: i64) -> std::ops::Range<u64> {
        let low = self.first_index_at_or_after(from_ms);
        let high = self
            .first_index_at_or_after(to_ms)
            .min(self.calls_created_by(now_ms));
        low..high.max(low)
    }

    fn answered(&self, index: u64) -> bool {
        unit(self.draw(SALT_OUTCOME, index)) < self.lifecycle.answered_share
    }

    fn converts(&self, index: u64) -> bool {
        self.answered(index)
            && unit(self.draw(SALT_CONVERTS, index)) < self.lifecycle.conversion_share
    }

    fn may_have_stage(&self, stage: Stage, index: u64) -> bool {
        match stage {
            Stage::Created | Stage::Completed => true,
            Stage::ConversionPosted => {
                unit(self.draw(SALT_LATE, index)) < self.lifecycle.late_conversion_share
                    && self.converts(index)
            }
            Stage::RevenueAdjusted => {
                unit(self.draw(SALT_ADJUST, index)) < self.lifecycle.adjustment_share
                    && self.converts(index)
            }
            Stage::LateAdjusted => {
                unit(self.draw(SALT_LATE_ADJUST, index)) < self.lifecycle.late_adjustment_share
                    && self.converts(index)
            }
        }
    }

    /// Everything about call `index` that does not change over time.
    pub fn facts(&self, index: u64) -> CallFacts {
        let created_ms = self.created_ms(index);
        let lifecycle = &self.lifecycle;
        let mut draws = Draws::new(self.draw(SALT_FACTS, index));
        let outcome_word = self.draw(SALT_OUTCOME, index);
        let outcome = if unit(outcome_word) < lifecycle.answered_share {
            Outcome::Answered
        } else {
            match rng::below(outcome_word.rotate_left(29), 10) {
                0..=5 => Outcome::NoAnswer,
                6..=8 => Outcome::Busy,
                _ => Outcome::Failed,
            }
        };
        let answered = outcome == Outcome::Answered;
        let ivr_secs = draws.between(0, 60) as u32;
        let (ring_secs, talk_secs) = if answered {
            let spread = rng::unit(draws.next_word());
            (
                draws.between(2, 30) as u32,
                5 + (spread * spread * 1500.0) as u32,
            )
        } else {
            (draws.between(5, 45) as u32, 0)
        };
        let hold_secs = if answered {
            draws.between(0, u64::from(talk_secs.min(120))) as u32
        } else {
            0
        };
        let total_secs = ivr_secs + ring_secs + talk_secs;
        let wrap_up_ms = draws.between(0, 10_000) as i64;
        let completed_ms = created_ms + i64::from(total_secs) * 1000 + wrap_up_ms;
        let converts = answered && self.converts(index);
        let late_conversion_ms = if self.may_have_stage(Stage::ConversionPosted, index) {
            let delay = rng::between(
                draws.next_word(),
                lifecycle.late_min_ms as u64,
                lifecycle.late_max_ms as u64,
            );
            Some(completed_ms + delay as i64)
        } else {
            draws.next_word();
            None
        };
        let adjustment_ms = if self.may_have_stage(Stage::RevenueAdjusted, index) {
            let delay = rng::between(
                draws.next_word(),
                lifecycle.adjustment_min_ms as u64,
                lifecycle.adjustment_max_ms as u64,
            );
            Some(created_ms + delay as i64)
        } else {
            draws.next_word();
            None
        };
        let revenue_cents = draws.between(20, 600) as i64 * 25;
        let payout_cents = revenue_cents * draws.between(40, 80) as i64 / 100;
        let (adjusted_revenue_cents, adjusted_payout_cents) = if draws.chance(0.3) {
            (0, 0) // chargeback
        } else {
            // 60–140 % but never 100 %: an adjustment changes the revenue. A 100 % one
            // would be a newer version with the same content, which the processor rightly
            // drops as unchanged, so the truth's newer version could never reach Postgres.
            let ratio = match draws.between(60, 139) as i64 {
                r if r >= 100 => r + 1,
                r => r,
            };
            ((revenue_cents * ratio / 100) / 5 * 5, payout_cents)
        };
        let billable_minutes = i64::from(total_secs.div_ceil(60));
        let cost_cents = billable_minutes * 2 + i64::from(answered);
        let city = draws.below(names::CITIES.len() as u64) as usize;
        let line = draws.between(2_000_000, 9_999_999);
        let caller_national = u64::from(names::CITIES[city].area_code) * 10_000_000 + line;
        let bad_word = self.draw(SALT_BAD, index);
        let bad = (unit(bad_word) < self.bad_record_share).then_some({
            if bad_word & (1 << 7) == 0 {
                BadRecordKind::UnparseableStartTime
            } else {
                BadRecordKind::MissingId
            }
        });
        // drawn apart from the sequence above, so that adding the stage changed no other fact
        let mut late_draws = Draws::new(mix(self.draw(SALT_LATE_ADJUST, index), 0x1A7E));
        let late_adjustment_ms = self.may_have_stage(Stage::LateAdjusted, index).then(|| {
            created_ms
                + rng::between(
                    late_draws.next_word(),
                    lifecycle.late_adjustment_min_ms as u64,
                    lifecycle.late_adjustment_max_ms as u64,
                ) as i64
        });
        // the revenue before it: the first adjustment's, else the conversion's; a chargeback
        // (0) is reinstated, anything else moves by 60-139 % but never 100 %
        let before = if adjustment_ms.is_some() {
            adjusted_revenue_cents
        } else {
            revenue_cents
        };
        let late_revenue_cents = if before == 0 {
            revenue_cents
        } else {
            let ratio = match late_draws.between(60, 138) as i64 {
                r if r >= 100 => r + 1,
                r => r,
            };
            match (before * ratio / 100) / 5 * 5 {
                same if same == before => before + 5,
                other => other,
            }
        };
        let id_high = self.draw(SALT_IDS, index);
        let id_low =
            (id_high & 0xFFFF_FFFF_0000_0000) | u64::from(rng::permute32(index as u32, self.key));
        CallFacts {
            index,
            created_ms,
            start_ms: created_ms - draws.between(20, 300) as i64,
            outcome,
            ivr_secs,
            ring_secs,
            talk_secs,
            hold_secs,
            total_secs,
            completed_ms,
            converts,
            late_conversion_ms,
            adjustment_ms,
            revenue_cents,
            payout_cents,
            adjusted_revenue_cents,
            adjusted_payout_cents,
            late_adjustment_ms,
            late_revenue_cents,
            cost_cents,
            campaign: draws.below(names::CAMPAIGNS.len() as u64) as usize,
            publisher: draws.below(names::PUBLISHERS.len() as u64) as usize,
            buyer: draws.below(names::BUYERS.len() as u64) as usize,
            city,
            caller_national,
            keys_pressed: draws.between(1, 4) as u8,
            id_words: [mix(id_high, 0x5EED), id_low],
            bad,
        }
    }

    /// Calls every change (stage in `stages`) that happened in `[from_ms, to_ms)`, in no
    /// particular order. Work is proportional to the calls created in the window widened
    /// by each stage's delay spread, never to the account's size.
    pub fn for_each_change_in(
        &self,
        from_ms: i64,
        to_ms: i64,
        stages: &[Stage],
        mut visit: impl FnMut(ChangeRef, &CallFacts),
    ) {
        if from_ms >= to_ms {
            return;
        }
        for &stage in stages {
            let (min_delay, max_delay) = self.lifecycle.stage_delay_bounds(stage);
            let low = self.first_index_at_or_after(from_ms.saturating_sub(max_delay));
            let high = self.first_index_at_or_after(to_ms.saturating_sub(min_delay));
            for index in low..high {
                if !self.may_have_stage(stage, index) {
                    continue;
                }
                let facts = self.facts(index);
                if let Some(at_ms) = facts.stage_ms(stage) {
                    if (from_ms..to_ms).contains(&at_ms) {
                        visit(
                            ChangeRef {
                                at_ms,
                                index,
                                stage,
                            },
                            &facts,
                        );
                    }
                }
            }
        }
    }

    /// The longest delay of any change after its call was created.
    pub fn max_change_delay_ms(&self) -> i64 {
        Stage::ALL
            .iter()
            .map(|&stage| self.lifecycle.stage_delay_bounds(stage).1)
            .max()
            .unwrap_or(0)
    }

    /// Calls whose latest change as of `now_ms` happened in `[lower_ms, upper_ms]`, newest
    /// change first, limited to `indices`; skips `skip` of them and returns up to `take`.
    /// Memory is O(take); work is O((skip + take) + the delay spread).
    pub fn latest_changes_descending(
        &self,
        now_ms: i64,
        lower_ms: i64,
        upper_ms: i64,
        indices: &std::ops::Range<u64>,
        skip: u64,
        take: usize,
    ) -> Vec<ChangeRef> {
        let mut found = Vec::with_capacity(take);
        let mut skipped = 0u64;
        let mut window = self.window_for(take as u64);
        let floor = lower_ms.max(self.first_ms);
        let mut high = upper_ms.min(now_ms).saturating_add(1);
        let mut batch = Vec::new();
        while high > floor && found.len() < take {
            let low = high.saturating_sub(window).max(floor);
            batch.clear();
            self.for_each_change_in(low, high, &Stage::ALL, |change, facts| {
                if indices.contains(&change.index) && facts.stage_at(now_ms) == Some(change.stage) {
                    batch.push(change);
                }
            });
            if batch.is_empty() {
                window = window.saturating_mul(2).min(30 * 86_400_000);
            }
            batch.sort_unstable_by(|a, b| b.cmp(a));
            for change in batch.drain(..) {
                if skipped < skip {
                    skipped += 1;
                } else if found.len() < take {
                    found.push(change);
                } else {
                    break;
                }
            }
            high = low;
        }
        found
    }

    /// How many calls' latest change as of `now_ms` happened in `[lower_ms, upper_ms]`,
    /// limited to `indices`. Work is O(calls in the range), memory O(1).
    pub fn count_latest_changes(
        &self,
        now_ms: i64,
        lower_ms: i64,
        upper_ms: i64,
        indices: &std::ops::Range<u64>,
    ) -> u64 {
        let mut count = 0;
        let high = upper_ms.min(now_ms).saturating_add(1);
        let low = lower_ms.max(self.first_ms);
        self.for_each_change_in(low, high, &Stage::ALL, |change, facts| {
            if indices.contains(&change.index) && facts.stage_at(now_ms) == Some(change.stage) {
                count += 1;
            }
        });
        count
    }

    /// The time span in which about `changes` changes happen (a starting window size).
    pub fn window_for(&self, changes: u64) -> i64 {
        (self.interval_ms.saturating_mul(changes.max(1) as i64)).clamp(60_000, 30 * 86_400_000)
    }

    /// Zone-local midnight of a civil date, in epoch ms.
    pub fn local_midnight_ms(&self, year: i64, month: u32, day: u32) -> i64 {
        format::days_from_civil(year, month, day) * 86_400_000
            - i64::from(self.utc_offset_minutes) * 60_000
    }
}

impl CallFacts {
    /// When a stage happened, if the call has that stage at all.
    pub fn stage_ms(&self, stage: Stage) -> Option<i64> {
        match stage {
            Stage::Created => Some(self.created_ms),
            Stage::Completed => Some(self.completed_ms),
            Stage::ConversionPosted => self.late_conversion_ms,
            Stage::RevenueAdjusted => self.adjustment_ms,
            Stage::LateAdjusted => self.late_adjustment_ms,
        }
    }

    /// The latest stage at or before `now_ms` (`None`: the call does not exist yet).
    pub fn stage_at(&self, now_ms: i64) -> Option<Stage> {
        Stage::ALL
            .iter()
            .rev()
            .copied()
            .find(|&stage| self.stage_ms(stage).is_some_and(|at| at <= now_ms))
    }

    /// The call as it was right after `stage`.
    pub fn state_at_stage(&self, stage: Stage) -> CallState {
        let status = if stage == Stage::Created {
            CallStatus::InProgress
        } else {
            self.outcome.status()
        };
        let converted = match stage {
            Stage::Created => false,
            Stage::Completed => self.converts && self.late_conversion_ms.is_none(),
            Stage::ConversionPosted | Stage::RevenueAdjusted | Stage::LateAdjusted => true,
        };
        let adjusted_payout = if self.adjustment_ms.is_some() {
            self.adjusted_payout_cents
        } else {
            self.payout_cents
        };
        let (revenue_cents, payout_cents) = match (converted, stage) {
            (false, _) => (0, 0),
            (true, Stage::RevenueAdjusted) => {
                (self.adjusted_revenue_cents, self.adjusted_payout_cents)
            }
            (true, Stage::LateAdjusted) => (self.late_revenue_cents, adjusted_payout),
            (true, _) => (self.revenue_cents, self.payout_cents),
        };
        CallState {
            stage,
            updated_ms: self.stage_ms(stage).unwrap_or(self.created_ms),
            status,
            converted,
            revenue_cents,
            payout_cents,
        }
    }

    /// The call as of `now_ms` (`None`: it does not exist yet).
    pub fn state_at(&self, now_ms: i64) -> Option<CallState> {
        self.stage_at(now_ms)
            .map(|stage| self.state_at_stage(stage))
    }

    pub fn ended_ms(&self) -> i64 {
        self.created_ms + i64::from(self.total_secs) * 1000
    }

    pub fn answered(&self) -> bool {
        self.outcome == Outcome::Answered
    }
}

/// All accounts of all providers.
#[derive(Debug)]
pub(crate) struct Dataset {
    accounts: Vec<Vec<Account>>,
}

fn provider_slot(provider: Provider) -> usize {
    match provider {
        Provider::Retreaver => 0,
        Provider::Ringba => 1,
        Provider::Invoca => 2,
        Provider::CallRail => 3,
        Provider::TrackDrive => 4,
    }
}

impl Dataset {
    pub fn new(config: &SimulatorConfig) -> Dataset {
        let accounts = Provider::ALL
            .iter()
            .map(|&provider| {
                config
                    .provider(provider)
                    .accounts
                    .iter()
                    .enumerate()
                    .map(|(ordinal, account_config)| {
                        Account::new(config, provider, ordinal, account_config)
                    })
                    .collect()
            })
            .collect();
        Dataset { accounts }
    }

    pub fn accounts(&self, provider: Provider) -> &[Account] {
        &self.accounts[provider_slot(provider)]
    }

    pub fn account(&self, provider: Provider, account_id: &str) -> Option<&Account> {
        self.accounts(provider)
            .iter()
            .find(|account| account.id == account_id)
    }

    pub fn account_by_key(&self, provider: Provider, api_key: &str) -> Option<&Account> {
        self.accounts(provider)
            .iter()
            .find(|account| account.credentials.api_key == api_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        let config = SimulatorConfig::for_tests(7);
        Dataset::new(&config).accounts(Provider::Retreaver)[0].clone()
    }

    #[test]
    fn created_times_are_strictly_increasing_and_invertible() {
        let account = account();
        let mut previous = i64::MIN;
        for index in 0..account.calls {
            let created = account.created_ms(index);
            assert!(created > previous);
            assert_eq!(account.first_index_at_or_after(created), index);
            assert_eq!(account.first_index_at_or_after(created + 1), index + 1);
            previous = created;
        }
    }

    #[test]
    fn changes_in_windows_match_a_full_scan() {
        let account = account();
        let from = account.created_ms(300);
        let to = account.created_ms(900) + 2 * 86_400_000;
        let mut found = Vec::new();
        account.for_each_change_in(from, to, &Stage::ALL, |change, _| found.push(change));
        found.sort();
        let mut expected = Vec::new();
        for index in 0..account.calls {
            let facts = account.facts(index);
            for stage in Stage::ALL {
                if let Some(at_ms) = facts.stage_ms(stage) {
                    if (from..to).contains(&at_ms) {
                        expected.push(ChangeRef {
                            at_ms,
                            index,
                            stage,
                        });
                    }
                }
            }
        }
        expected.sort();
        assert_eq!(found, expected);
        assert!(found.iter().any(|c| c.stage == Stage::RevenueAdjusted));
        assert!(found.iter().any(|c| c.stage == Stage::ConversionPosted));
    }

    /// Every change a call goes through changes what the call is (status, conversion,
    /// revenue or payout): a newer version with the same content is dropped by the
    /// processor as unchanged, so its version would never reach Postgres (seed 5's chaos
    /// run: a TrackDrive revenue adjustment of exactly 100 %).
    #[test]
    fn every_change_of_a_call_changes_its_content() {
        let content = |s: CallState| (s.status, s.converted, s.revenue_cents, s.payout_cents);
        let mut adjustments = 0;
        for seed in [5, 7] {
            let config = SimulatorConfig::for_tests(seed);
            let dataset = Dataset::new(&config);
            for provider in Provider::ALL {
                for account in dataset.accounts(provider) {
                    for index in 0..account.calls {
                        let facts = account.facts(index);
                        let mut times: Vec<i64> = Stage::ALL
                            .iter()
                            .filter_map(|&s| facts.stage_ms(s))
                            .collect();
                        times.sort_unstable();
                        let states: Vec<CallState> =
                            times.iter().filter_map(|&t| facts.state_at(t)).collect();
                        for pair in states.windows(2) {
                            if pair[0].stage != pair[1].stage {
                                adjustments += u32::from(pair[1].stage == Stage::RevenueAdjusted);
                                assert_ne!(
                                    content(pair[0]),
                                    content(pair[1]),
                                    "seed {seed} {provider} call {index}: {:?} -> {:?}",
                                    pair[0].stage,
                                    pair[1].stage
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(adjustments > 100, "only {adjustments} adjustments checked");
    }
}
