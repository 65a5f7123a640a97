//! Static name tables and generated ids in each provider's style.

use callsync_schemas::Provider;

use crate::dataset::AccountCredentials;
use crate::format::{prefixed_hex, push_hex};
use crate::rng::mix;

pub(crate) struct City {
    pub name: &'static str,
    pub state: &'static str,
    pub zip: &'static str,
    pub area_code: u16,
}

pub(crate) const CITIES: [City; 12] = [
    City {
        name: "Rockingham",
        state: "NC",
        zip: "28379",
        area_code: 910,
    },
    City {
        name: "Baltimore",
        state: "MD",
        zip: "21201",
        area_code: 410,
    },
    City {
        name: "Austin",
        state: "TX",
        zip: "78701",
        area_code: 512,
    },
    City {
        name: "Denver",
        state: "CO",
        zip: "80202",
        area_code: 303,
    },
    City {
        name: "Phoenix",
        state: "AZ",
        zip: "85004",
        area_code: 602,
    },
    City {
        name: "Tampa",
        state: "FL",
        zip: "33602",
        area_code: 813,
    },
    City {
        name: "Columbus",
        state: "OH",
        zip: "43215",
        area_code: 614,
    },
    City {
        name: "Seattle",
        state: "WA",
        zip: "98101",
        area_code: 206,
    },
    City {
        name: "Atlanta",
        state: "GA",
        zip: "30303",
        area_code: 404,
    },
    City {
        name: "Chicago",
        state: "IL",
        zip: "60601",
        area_code: 312,
    },
    City {
        name: "Boise",
        state: "ID",
        zip: "83702",
        area_code: 208,
    },
    City {
        name: "Albany",
        state: "NY",
        zip: "12207",
        area_code: 518,
    },
];

/// Campaign name and tracking number (ten digits).
pub(crate) const CAMPAIGNS: [(&str, u64); 8] = [
    ("Auto Insurance", 8_886_064_349),
    ("Medicare Advantage", 8_884_143_472),
    ("Home Services - Plumbing", 8_775_550_142),
    ("Debt Relief", 8_665_550_199),
    ("Final Expense", 8_005_550_123),
    ("Solar Leads", 8_445_550_177),
    ("Personal Injury", 8_335_550_188),
    ("HVAC Repair", 8_555_550_166),
];

pub(crate) const PUBLISHERS: [&str; 6] = [
    "Blue Ocean Media",
    "CallForce Partners",
    "Northwind Leads",
    "Bright Path Digital",
    "Summit Affiliates",
    "Direct",
];

/// Buyer (target) name and destination number (ten digits).
pub(crate) const BUYERS: [(&str, u64); 6] = [
    ("Acme Insurance Agency", 2_263_399_112),
    ("Liberty Health Brokers", 6_317_918_378),
    ("Rapid Rooter Plumbing", 4_155_550_143),
    ("Clear Debt Solutions", 7_025_550_121),
    ("SunPeak Solar", 4_805_550_190),
    ("Lawson & Price LLP", 2_125_550_175),
];

pub(crate) const US_ZONES: [(i32, &str); 4] = [
    (-300, "America/New_York"),
    (-360, "America/Chicago"),
    (-420, "America/Denver"),
    (-480, "America/Los_Angeles"),
];

pub(crate) fn zone_name(offset_minutes: i32) -> &'static str {
    US_ZONES
        .iter()
        .find(|(offset, _)| *offset == offset_minutes)
        .map(|(_, name)| *name)
        .unwrap_or("Etc/UTC")
}

const TRACKDRIVE_COMPANIES: [&str; 6] = [
    "acme",
    "bluewave",
    "summit",
    "northstar",
    "pioneer",
    "keystone",
];

/// A generated account id in the provider's style.
pub(crate) fn account_id(provider: Provider, ordinal: usize, key: u64) -> String {
    match provider {
        Provider::Retreaver => format!("{}", 10_000 + ordinal * 1_000 + (key % 1_000) as usize),
        Provider::Ringba => prefixed_hex("RA", key, mix(key, 1)),
        Provider::Invoca => format!("{}", 1_000 + ordinal * 100 + (key % 100) as usize),
        Provider::CallRail => {
            let mut id = String::from("ACC");
            push_hex(&mut id, mix(key, 2), 16, false);
            push_hex(&mut id, mix(key, 3), 16, false);
            id
        }
        Provider::TrackDrive => format!(
            "{}-{}",
            TRACKDRIVE_COMPANIES[ordinal % TRACKDRIVE_COMPANIES.len()],
            ordinal + 1
        ),
    }
}

fn hex_token(key: u64, salt: u64, digits: u32) -> String {
    let mut token = String::with_capacity(digits as usize);
    let mut remaining = digits;
    let mut round = 0;
    while remaining > 0 {
        let take = remaining.min(16);
        push_hex(&mut token, mix(key ^ salt, round), take, false);
        remaining -= take;
        round += 1;
    }
    token
}

/// The account's credentials (deterministic from its key).
pub(crate) fn credentials(provider: Provider, account_id: &str, key: u64) -> AccountCredentials {
    let (api_key, api_secret) = match provider {
        Provider::Retreaver => (hex_token(key, 0x11, 32), None),
        Provider::Ringba => (hex_token(key, 0x12, 64), None),
        Provider::Invoca => (hex_token(key, 0x13, 40), None),
        Provider::CallRail => (hex_token(key, 0x14, 32), None),
        Provider::TrackDrive => (
            format!("tdpub{}", hex_token(key, 0x15, 32)),
            Some(format!("tdprv{}", hex_token(key, 0x16, 32))),
        ),
    };
    AccountCredentials {
        account_id: account_id.to_string(),
        api_key,
        api_secret,
    }
}
