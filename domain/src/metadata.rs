//! Who did what, and when: attached to every event appended to the store.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{TenantId, UserId};

#[derive(Debug, Clone, PartialEq)]
pub struct CommandMetadata {
    pub tenant_id: TenantId,
    /// The user on whose behalf the command runs (None for sign-up before the
    /// root user exists, and for the system's own housekeeping).
    pub user_id: Option<UserId>,
    /// The delegate that acted for `user_id`, if any.
    pub delegate_id: Option<UserId>,
    pub request_id: String,
    pub occurred_at: DateTime<Utc>,
}

impl CommandMetadata {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("tenant_id".to_string(), self.tenant_id.to_string()),
            ("request_id".to_string(), self.request_id.clone()),
            ("occurred_at".to_string(), self.occurred_at.to_rfc3339()),
        ]);
        if let Some(user) = self.user_id {
            map.insert("user_id".into(), user.to_string());
        }
        if let Some(delegate) = self.delegate_id {
            map.insert("delegate_id".into(), delegate.to_string());
        }
        map
    }

    pub fn from_map(map: &HashMap<String, String>) -> Option<Self> {
        let uuid = |key: &str| map.get(key).and_then(|v| Uuid::parse_str(v).ok());
        Some(Self {
            tenant_id: TenantId(uuid("tenant_id")?),
            user_id: uuid("user_id").map(UserId),
            delegate_id: uuid("delegate_id").map(UserId),
            request_id: map.get("request_id").cloned().unwrap_or_default(),
            occurred_at: map
                .get("occurred_at")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?
                .with_timezone(&Utc),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_store_map() {
        let meta = CommandMetadata {
            tenant_id: TenantId(Uuid::new_v4()),
            user_id: Some(UserId(Uuid::new_v4())),
            delegate_id: None,
            request_id: "req-1".into(),
            occurred_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        assert_eq!(CommandMetadata::from_map(&meta.to_map()), Some(meta));
    }
}
