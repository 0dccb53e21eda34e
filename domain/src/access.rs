//! Who may see and do what. Every request acts as one [`Actor`]; handlers ask
//! it before reading another user's data or issuing a command.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{TenantId, UserId};

/// What a delegate may do beyond viewing; all denied unless granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegatePermissions {
    pub allow_recovery: bool,
    pub allow_account_changes: bool,
    pub allow_backup_changes: bool,
}

/// The kind of a user account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserKind {
    Root,
    Independent,
    /// Managed by the root user, or by the independent user named here.
    Managed {
        manager_id: Option<UserId>,
    },
    /// Acts for another user with limited permissions.
    Delegate {
        of: UserId,
        permissions: DelegatePermissions,
    },
}

impl UserKind {
    pub fn name(&self) -> &'static str {
        match self {
            UserKind::Root => "root",
            UserKind::Independent => "independent",
            UserKind::Managed { .. } => "managed",
            UserKind::Delegate { .. } => "delegate",
        }
    }
}

/// The non-delegate kinds: whose data a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    Root,
    Independent,
    Managed { manager_id: Option<UserId> },
}

/// Operations that need more than the right to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ChangeAccounts,
    ChangeBackup,
    Recover,
    /// Create, edit, reset and delete other users (root only, never a delegate).
    ManageUsers,
    /// Tenant-wide general settings (root only, never a delegate).
    ChangeGeneralSettings,
    /// Notification targets and rules (never a delegate).
    ChangeNotifications,
    /// The actor's own password and API keys.
    ManageOwnCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    pub reason: &'static str,
}

/// The identity a request acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub tenant_id: TenantId,
    /// The user whose environment is acted on (for a delegate: its user).
    pub user_id: UserId,
    pub kind: PrincipalKind,
    pub delegate: Option<(UserId, DelegatePermissions)>,
}

impl Actor {
    pub fn delegate_id(&self) -> Option<UserId> {
        self.delegate.map(|(id, _)| id)
    }

    /// The user that logged in: the delegate when there is one.
    pub fn signed_in_user(&self) -> UserId {
        self.delegate_id().unwrap_or(self.user_id)
    }

    pub fn is_root(&self) -> bool {
        self.kind == PrincipalKind::Root
    }

    pub fn authorize(&self, action: Action) -> Result<(), Denied> {
        let delegate = self.delegate.map(|(_, p)| p);
        let denied = |reason| Err(Denied { reason });
        match (action, delegate) {
            (Action::ManageOwnCredentials, _) => Ok(()),
            (Action::ManageUsers | Action::ChangeGeneralSettings, _) if !self.is_root() => {
                denied("only the root user may do this")
            }
            (
                Action::ManageUsers | Action::ChangeGeneralSettings | Action::ChangeNotifications,
                Some(_),
            ) => denied("delegates may not do this"),
            (Action::ChangeAccounts, Some(p)) if !p.allow_account_changes => {
                denied("this delegate is not allowed to change accounts")
            }
            (Action::ChangeBackup, Some(p)) if !p.allow_backup_changes => {
                denied("this delegate is not allowed to change policies and schedules")
            }
            (Action::Recover, Some(p)) if !p.allow_recovery => {
                denied("this delegate is not allowed to run recoveries")
            }
            _ => Ok(()),
        }
    }

    /// Whether data owned by `owner` (whose kind is `owner_kind`) is visible:
    /// one's own; root also sees managed users; an independent user sees the
    /// managed users assigned to it.
    pub fn can_see_owner(&self, owner: UserId, owner_kind: PrincipalKind) -> bool {
        if owner == self.user_id {
            return true;
        }
        match (self.kind, owner_kind) {
            (PrincipalKind::Root, PrincipalKind::Managed { .. }) => true,
            (PrincipalKind::Independent, PrincipalKind::Managed { manager_id }) => {
                manager_id == Some(self.user_id)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn actor(kind: PrincipalKind, delegate: Option<DelegatePermissions>) -> Actor {
        Actor {
            tenant_id: TenantId(Uuid::nil()),
            user_id: UserId(Uuid::from_u128(1)),
            kind,
            delegate: delegate.map(|p| (UserId(Uuid::from_u128(2)), p)),
        }
    }

    #[test]
    fn each_delegate_flag_denies_exactly_its_action() {
        let none = actor(
            PrincipalKind::Independent,
            Some(DelegatePermissions::default()),
        );
        for action in [
            Action::ChangeAccounts,
            Action::ChangeBackup,
            Action::Recover,
        ] {
            assert!(none.authorize(action).is_err(), "{action:?}");
        }
        let recovery = DelegatePermissions {
            allow_recovery: true,
            ..Default::default()
        };
        let a = actor(PrincipalKind::Independent, Some(recovery));
        assert!(a.authorize(Action::Recover).is_ok());
        assert!(a.authorize(Action::ChangeAccounts).is_err());
        assert!(a.authorize(Action::ChangeBackup).is_err());

        let accounts = DelegatePermissions {
            allow_account_changes: true,
            ..Default::default()
        };
        let a = actor(PrincipalKind::Independent, Some(accounts));
        assert!(a.authorize(Action::ChangeAccounts).is_ok());
        assert!(a.authorize(Action::Recover).is_err());
        assert!(a.authorize(Action::ChangeBackup).is_err());

        let backup = DelegatePermissions {
            allow_backup_changes: true,
            ..Default::default()
        };
        let a = actor(PrincipalKind::Independent, Some(backup));
        assert!(a.authorize(Action::ChangeBackup).is_ok());
        assert!(a.authorize(Action::Recover).is_err());
        assert!(a.authorize(Action::ChangeAccounts).is_err());
    }

    #[test]
    fn a_fully_allowed_root_delegate_still_cannot_manage_users_or_settings() {
        let all = DelegatePermissions {
            allow_recovery: true,
            allow_account_changes: true,
            allow_backup_changes: true,
        };
        let a = actor(PrincipalKind::Root, Some(all));
        assert!(a.authorize(Action::ManageUsers).is_err());
        assert!(a.authorize(Action::ChangeGeneralSettings).is_err());
        assert!(a.authorize(Action::ChangeNotifications).is_err());
        assert!(a.authorize(Action::Recover).is_ok());
        assert!(actor(PrincipalKind::Root, None)
            .authorize(Action::ManageUsers)
            .is_ok());
    }

    #[test]
    fn only_root_manages_users() {
        let a = actor(PrincipalKind::Independent, None);
        assert!(a.authorize(Action::ManageUsers).is_err());
        assert!(a.authorize(Action::ChangeAccounts).is_ok());
    }

    #[test]
    fn visibility_follows_management() {
        let me = UserId(Uuid::from_u128(1));
        let other = UserId(Uuid::from_u128(9));
        let root = actor(PrincipalKind::Root, None);
        assert!(root.can_see_owner(other, PrincipalKind::Managed { manager_id: None }));
        assert!(!root.can_see_owner(other, PrincipalKind::Independent));

        let indep = actor(PrincipalKind::Independent, None);
        assert!(indep.can_see_owner(
            other,
            PrincipalKind::Managed {
                manager_id: Some(me)
            }
        ));
        assert!(!indep.can_see_owner(other, PrincipalKind::Managed { manager_id: None }));

        let managed = actor(PrincipalKind::Managed { manager_id: None }, None);
        assert!(managed.can_see_owner(me, managed.kind));
        assert!(!managed.can_see_owner(other, PrincipalKind::Managed { manager_id: None }));
    }
}
