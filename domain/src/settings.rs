//! A tenant's general settings and their validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Character classes a password policy can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CharacterClass {
    Lowercase,
    Uppercase,
    Digit,
    Symbol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordPolicy {
    /// When false no rule below is enforced except a minimum length of 1.
    pub rules_enabled: bool,
    pub min_length: u32,
    pub required_classes: Vec<CharacterClass>,
    pub reject_common: bool,
    pub reject_numeric_only: bool,
    /// When false passwords never expire and history is not checked.
    pub expiry_enabled: bool,
    pub expiry_days: u32,
    /// How many previous passwords (current included) may not be reused; at most 10.
    pub history: u32,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            rules_enabled: true,
            min_length: 8,
            required_classes: vec![
                CharacterClass::Lowercase,
                CharacterClass::Uppercase,
                CharacterClass::Digit,
                CharacterClass::Symbol,
            ],
            reject_common: true,
            reject_numeric_only: true,
            expiry_enabled: true,
            expiry_days: 182,
            history: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagScanSettings {
    pub enabled: bool,
    pub interval_hours: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// IANA time zone in which schedules are entered and shown.
    pub time_zone: String,
    pub tag_scan: TagScanSettings,
    /// Local time (HH:MM) of the daily cleanup run.
    pub cleanup_time: String,
    pub audit_retention_days: u32,
    /// How long records of deleted backups stay visible.
    pub record_retention_days: u32,
    /// Days between rotations of an instance's initial AMI; 0 = never.
    pub initial_ami_rotation_days: u32,
    /// Idle time after which a session ends; at least 3 minutes.
    pub session_idle_minutes: u32,
    pub password_policy: PasswordPolicy,
}

impl Default for TenantSettings {
    fn default() -> Self {
        Self {
            time_zone: "UTC".into(),
            tag_scan: TagScanSettings {
                enabled: false,
                interval_hours: 1,
            },
            cleanup_time: "03:00".into(),
            audit_retention_days: 30,
            record_retention_days: 30,
            initial_ami_rotation_days: 90,
            session_idle_minutes: 12 * 60,
            password_policy: PasswordPolicy::default(),
        }
    }
}

/// A rejected setting: the JSON path of the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            detail: detail.into(),
        }
    }
}

pub fn valid_time_zone(tz: &str) -> bool {
    tz.parse::<chrono_tz::Tz>().is_ok()
}

impl TenantSettings {
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &str, detail: &str| {
            if !ok {
                errors.push(FieldError::new(field, "invalid_value", detail));
            }
        };
        check(
            valid_time_zone(&self.time_zone),
            "time_zone",
            "must be an IANA time zone such as Europe/Berlin",
        );
        check(
            chrono::NaiveTime::parse_from_str(&self.cleanup_time, "%H:%M").is_ok(),
            "cleanup_time",
            "must be a time of day as HH:MM",
        );
        check(
            (1..=168).contains(&self.tag_scan.interval_hours),
            "tag_scan.interval_hours",
            "must be between 1 and 168",
        );
        check(
            (1..=3650).contains(&self.audit_retention_days),
            "audit_retention_days",
            "must be between 1 and 3650",
        );
        check(
            (1..=3650).contains(&self.record_retention_days),
            "record_retention_days",
            "must be between 1 and 3650",
        );
        check(
            self.initial_ami_rotation_days <= 3650,
            "initial_ami_rotation_days",
            "must be at most 3650 (0 = never rotate)",
        );
        check(
            (3..=7 * 24 * 60).contains(&self.session_idle_minutes),
            "session_idle_minutes",
            "must be between 3 and 10080",
        );
        let policy = &self.password_policy;
        check(
            (1..=128).contains(&policy.min_length),
            "password_policy.min_length",
            "must be between 1 and 128",
        );
        check(
            (1..=3650).contains(&policy.expiry_days),
            "password_policy.expiry_days",
            "must be between 1 and 3650",
        );
        check(
            (1..=10).contains(&policy.history),
            "password_policy.history",
            "must be between 1 and 10",
        );
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(TenantSettings::default().validate().is_empty());
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut s = TenantSettings {
            time_zone: "Mars/Olympus".into(),
            session_idle_minutes: 2,
            ..Default::default()
        };
        s.password_policy.history = 11;
        let fields: Vec<_> = s.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "time_zone",
                "session_idle_minutes",
                "password_policy.history"
            ]
        );
    }
}
