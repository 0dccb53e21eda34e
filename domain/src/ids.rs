//! Identifiers. Tenant and user ids are derived from their natural keys
//! (organisation slug, username) so that uniqueness is enforced by the event
//! store itself: a second sign-up for a slug lands on the same stream and is
//! rejected by the aggregate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

const TENANT_NAMESPACE: Uuid = Uuid::from_u128(0x5afe_401d_0000_4000_8000_0000_0000_0001);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub Uuid);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub Uuid);

impl TenantId {
    /// The tenant id of an organisation slug (slugs are lowercase already).
    pub fn for_slug(slug: &str) -> Self {
        Self(Uuid::new_v5(&TENANT_NAMESPACE, slug.as_bytes()))
    }
}

impl UserId {
    /// The user id of a username inside a tenant; usernames compare
    /// case-insensitively.
    pub fn for_username(tenant: TenantId, username: &str) -> Self {
        Self(Uuid::new_v5(&tenant.0, username.to_lowercase().as_bytes()))
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Stream id of an aggregate: the tenant comes first so every key of the
/// store starts with it, and a lookup with another tenant's id finds nothing.
pub fn stream_id(tenant: TenantId, entity: Uuid) -> String {
    format!("{tenant}:{entity}")
}

/// Checks an organisation slug: 3–40 characters of a–z, 0–9 and inner hyphens.
pub fn valid_slug(slug: &str) -> bool {
    let len_ok = (3..=40).contains(&slug.len());
    let chars_ok = slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    len_ok && chars_ok && !slug.starts_with('-') && !slug.ends_with('-')
}

/// Checks a username: 1–64 characters of letters, digits and `._@-`.
pub fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_ignore_username_case_and_differ_between_tenants() {
        let a = TenantId::for_slug("acme");
        let b = TenantId::for_slug("globex");
        assert_eq!(
            UserId::for_username(a, "Alice"),
            UserId::for_username(a, "alice")
        );
        assert_ne!(
            UserId::for_username(a, "alice"),
            UserId::for_username(b, "alice")
        );
    }

    #[test]
    fn slug_rules() {
        assert!(valid_slug("acme-corp"));
        assert!(!valid_slug("ac"));
        assert!(!valid_slug("Acme"));
        assert!(!valid_slug("-acme"));
        assert!(!valid_slug("acme corp"));
    }

    #[test]
    fn username_rules() {
        assert!(valid_username("ops.team@acme"));
        assert!(!valid_username(""));
        assert!(!valid_username("has space"));
    }
}
