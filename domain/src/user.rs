//! The User aggregate: root, independent, managed and delegate users, their
//! resource limits, password lifecycle (hashes live outside the event log),
//! API keys and sign-ins.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::{DelegatePermissions, PrincipalKind, UserKind};
use crate::{DomainError, TenantId, UserId};

/// Per-user resource limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    pub max_accounts: Option<u32>,
    pub max_instances: Option<u32>,
    pub max_non_instance_ebs_gib: Option<u32>,
    pub max_rds_gib: Option<u32>,
    pub max_redshift_gib: Option<u32>,
    pub max_dynamodb_gib: Option<u32>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct User {
    pub state: Option<UserState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserState {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub email: Option<String>,
    pub kind: UserKind,
    pub limits: ResourceLimits,
    /// Set when someone else chose the password: it must be changed at the next sign-in.
    pub must_change_password: bool,
    pub api_keys: BTreeMap<Uuid, ApiKeyState>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyState {
    pub name: String,
    pub revoked: bool,
}

impl UserState {
    /// The principal kind of a non-delegate user.
    pub fn principal_kind(&self) -> Option<PrincipalKind> {
        match self.kind {
            UserKind::Root => Some(PrincipalKind::Root),
            UserKind::Independent => Some(PrincipalKind::Independent),
            UserKind::Managed { manager_id } => Some(PrincipalKind::Managed { manager_id }),
            UserKind::Delegate { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    Create {
        id: UserId,
        tenant_id: TenantId,
        username: String,
        email: Option<String>,
        kind: UserKind,
        limits: ResourceLimits,
        /// True when the password was chosen by someone else (root).
        must_change_password: bool,
    },
    Update {
        email: Option<Option<String>>,
        limits: Option<ResourceLimits>,
        /// Only between independent and managed.
        kind: Option<UserKind>,
    },
    SetDelegatePermissions {
        permissions: DelegatePermissions,
    },
    RecordPasswordChange {
        by_someone_else: bool,
    },
    CreateApiKey {
        key_id: Uuid,
        name: String,
        prefix: String,
    },
    RevokeApiKey {
        key_id: Uuid,
    },
    RecordSignIn {
        session_id: Uuid,
        method: String,
    },
    RecordSignOut {
        session_id: Uuid,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserCreated {
        id: UserId,
        tenant_id: TenantId,
        username: String,
        email: Option<String>,
        kind: UserKind,
        limits: ResourceLimits,
        must_change_password: bool,
    },
    UserUpdated {
        email: Option<String>,
        limits: ResourceLimits,
        kind: UserKind,
    },
    DelegatePermissionsChanged {
        permissions: DelegatePermissions,
    },
    PasswordChanged {
        by_someone_else: bool,
    },
    ApiKeyCreated {
        key_id: Uuid,
        name: String,
        prefix: String,
    },
    ApiKeyRevoked {
        key_id: Uuid,
    },
    SignedIn {
        session_id: Uuid,
        method: String,
    },
    SignedOut {
        session_id: Uuid,
    },
    UserDeleted,
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserCreated { .. } => "UserCreated",
            UserEvent::UserUpdated { .. } => "UserUpdated",
            UserEvent::DelegatePermissionsChanged { .. } => "DelegatePermissionsChanged",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::ApiKeyCreated { .. } => "ApiKeyCreated",
            UserEvent::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            UserEvent::SignedIn { .. } => "SignedIn",
            UserEvent::SignedOut { .. } => "SignedOut",
            UserEvent::UserDeleted => "UserDeleted",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl UserEvent {
    /// A sentence for the audit log; `username` is the user the event is about.
    pub fn describe(&self, username: &str) -> String {
        match self {
            UserEvent::UserCreated { kind, .. } => {
                format!("Created {} user {username}", kind.name())
            }
            UserEvent::UserUpdated { kind, .. } => {
                format!("Updated user {username} (now {})", kind.name())
            }
            UserEvent::DelegatePermissionsChanged { permissions: p } => format!(
                "Set permissions of delegate {username}: recovery {}, account changes {}, backup changes {}",
                allow(p.allow_recovery),
                allow(p.allow_account_changes),
                allow(p.allow_backup_changes)
            ),
            UserEvent::PasswordChanged { by_someone_else: true } => {
                format!("Reset the password of {username}")
            }
            UserEvent::PasswordChanged { by_someone_else: false } => {
                format!("{username} changed their password")
            }
            UserEvent::ApiKeyCreated { name, prefix, .. } => {
                format!("Created API key {name} ({prefix}…) for {username}")
            }
            UserEvent::ApiKeyRevoked { key_id } => {
                format!("Revoked API key {key_id} of {username}")
            }
            UserEvent::SignedIn { method, .. } => format!("{username} signed in ({method})"),
            UserEvent::SignedOut { .. } => format!("{username} signed out"),
            UserEvent::UserDeleted => format!("Deleted user {username}"),
        }
    }
}

fn allow(flag: bool) -> &'static str {
    if flag {
        "allowed"
    } else {
        "denied"
    }
}

pub fn valid_email(email: &str) -> bool {
    let mut parts = email.split('@');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None) if !local.is_empty() && domain.contains('.') && email.len() <= 254
    )
}

fn check_email(email: &Option<String>) -> Result<(), DomainError> {
    match email {
        Some(e) if !valid_email(e) => Err(DomainError::invalid(
            "email",
            "invalid_value",
            "must be an e-mail address",
        )),
        _ => Ok(()),
    }
}

impl User {
    fn live(&self) -> Result<&UserState, DomainError> {
        match &self.state {
            Some(state) if !state.deleted => Ok(state),
            _ => Err(DomainError::NotFound("user")),
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        if let UserCommand::Create {
            id,
            tenant_id,
            username,
            email,
            kind,
            limits,
            must_change_password,
        } = command
        {
            if self.state.is_some() {
                return Err(DomainError::conflict(
                    "username_taken",
                    format!("the username {username} is already taken"),
                ));
            }
            if !crate::ids::valid_username(&username) {
                return Err(DomainError::invalid(
                    "username",
                    "invalid_value",
                    "1-64 characters of letters, digits and . _ @ -",
                ));
            }
            check_email(&email)?;
            let event = UserEvent::UserCreated {
                id,
                tenant_id,
                username,
                email,
                kind,
                limits,
                must_change_password,
            };
            sink.write(event, self).await;
            return Ok(());
        }

        let state = self.live()?.clone();
        let event = match command {
            UserCommand::Create { .. } => unreachable!("handled above"),
            UserCommand::Update {
                email,
                limits,
                kind,
            } => {
                let email = email.unwrap_or(state.email.clone());
                check_email(&email)?;
                let kind = match (state.kind, kind) {
                    (current, None) => current,
                    (
                        UserKind::Independent | UserKind::Managed { .. },
                        Some(new @ (UserKind::Independent | UserKind::Managed { .. })),
                    ) => new,
                    (current, Some(new)) if current == new => current,
                    _ => {
                        return Err(DomainError::invalid(
                            "kind",
                            "kind_change_not_allowed",
                            "only independent and managed users can change kind, and only between these two",
                        ))
                    }
                };
                let limits = limits.unwrap_or(state.limits);
                if email == state.email && limits == state.limits && kind == state.kind {
                    return Ok(());
                }
                UserEvent::UserUpdated {
                    email,
                    limits,
                    kind,
                }
            }
            UserCommand::SetDelegatePermissions { permissions } => match state.kind {
                UserKind::Delegate {
                    permissions: current,
                    ..
                } if current == permissions => return Ok(()),
                UserKind::Delegate { .. } => UserEvent::DelegatePermissionsChanged { permissions },
                _ => {
                    return Err(DomainError::conflict(
                        "not_a_delegate",
                        format!("{} is not a delegate", state.username),
                    ))
                }
            },
            UserCommand::RecordPasswordChange { by_someone_else } => {
                UserEvent::PasswordChanged { by_someone_else }
            }
            UserCommand::CreateApiKey {
                key_id,
                name,
                prefix,
            } => {
                if name.trim().is_empty() || name.len() > 100 {
                    return Err(DomainError::invalid(
                        "name",
                        "invalid_value",
                        "must be 1-100 characters",
                    ));
                }
                let active = state.api_keys.values().filter(|k| !k.revoked).count();
                if active >= 20 {
                    return Err(DomainError::conflict(
                        "too_many_api_keys",
                        "a user may hold at most 20 active API keys",
                    ));
                }
                UserEvent::ApiKeyCreated {
                    key_id,
                    name,
                    prefix,
                }
            }
            UserCommand::RevokeApiKey { key_id } => match state.api_keys.get(&key_id) {
                Some(key) if !key.revoked => UserEvent::ApiKeyRevoked { key_id },
                Some(_) => return Ok(()),
                None => return Err(DomainError::NotFound("API key")),
            },
            UserCommand::RecordSignIn { session_id, method } => {
                UserEvent::SignedIn { session_id, method }
            }
            UserCommand::RecordSignOut { session_id } => UserEvent::SignedOut { session_id },
            UserCommand::Delete => {
                if state.kind == UserKind::Root {
                    return Err(DomainError::conflict(
                        "cannot_delete_root",
                        "the root user cannot be deleted",
                    ));
                }
                UserEvent::UserDeleted
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        if let UserEvent::UserCreated {
            id,
            tenant_id,
            username,
            email,
            kind,
            limits,
            must_change_password,
        } = event
        {
            self.state = Some(UserState {
                id,
                tenant_id,
                username,
                email,
                kind,
                limits,
                must_change_password,
                api_keys: BTreeMap::new(),
                deleted: false,
            });
            return;
        }
        let Some(state) = &mut self.state else { return };
        match event {
            UserEvent::UserCreated { .. } => {}
            UserEvent::UserUpdated {
                email,
                limits,
                kind,
            } => {
                state.email = email;
                state.limits = limits;
                state.kind = kind;
            }
            UserEvent::DelegatePermissionsChanged { permissions } => {
                if let UserKind::Delegate { permissions: p, .. } = &mut state.kind {
                    *p = permissions;
                }
            }
            UserEvent::PasswordChanged { by_someone_else } => {
                state.must_change_password = by_someone_else;
            }
            UserEvent::ApiKeyCreated { key_id, name, .. } => {
                state.api_keys.insert(
                    key_id,
                    ApiKeyState {
                        name,
                        revoked: false,
                    },
                );
            }
            UserEvent::ApiKeyRevoked { key_id } => {
                if let Some(key) = state.api_keys.get_mut(&key_id) {
                    key.revoked = true;
                }
            }
            UserEvent::SignedIn { .. } | UserEvent::SignedOut { .. } => {}
            UserEvent::UserDeleted => state.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn created(kind: UserKind) -> UserEvent {
        UserEvent::UserCreated {
            id: UserId(Uuid::from_u128(7)),
            tenant_id: TenantId(Uuid::from_u128(1)),
            username: "alice".into(),
            email: None,
            kind,
            limits: ResourceLimits::default(),
            must_change_password: false,
        }
    }

    #[test]
    fn a_username_cannot_be_created_twice() {
        let UserEvent::UserCreated {
            id,
            tenant_id,
            username,
            email,
            kind,
            limits,
            must_change_password,
        } = created(UserKind::Independent)
        else {
            unreachable!()
        };
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Independent)])
            .when(UserCommand::Create {
                id,
                tenant_id,
                username,
                email,
                kind,
                limits,
                must_change_password,
            })
            .then_expect_error_message("the username alice is already taken");
    }

    #[test]
    fn root_cannot_be_deleted_and_deleted_users_are_gone() {
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Root)])
            .when(UserCommand::Delete)
            .then_expect_error_message("the root user cannot be deleted");
        TestFramework::<User>::with(())
            .given(vec![
                created(UserKind::Managed { manager_id: None }),
                UserEvent::UserDeleted,
            ])
            .when(UserCommand::RecordPasswordChange {
                by_someone_else: true,
            })
            .then_expect_error_message("user not found");
    }

    #[test]
    fn kind_changes_only_between_independent_and_managed() {
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Independent)])
            .when(UserCommand::Update {
                email: None,
                limits: None,
                kind: Some(UserKind::Managed { manager_id: None }),
            })
            .then_expect_events(vec![UserEvent::UserUpdated {
                email: None,
                limits: ResourceLimits::default(),
                kind: UserKind::Managed { manager_id: None },
            }]);
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Independent)])
            .when(UserCommand::Update {
                email: None,
                limits: None,
                kind: Some(UserKind::Root),
            })
            .then_expect_error_message("invalid input");
    }

    #[test]
    fn only_delegates_have_permissions() {
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Independent)])
            .when(UserCommand::SetDelegatePermissions {
                permissions: DelegatePermissions::default(),
            })
            .then_expect_error_message("alice is not a delegate");
    }

    #[test]
    fn revoking_an_unknown_key_is_not_found() {
        TestFramework::<User>::with(())
            .given(vec![created(UserKind::Independent)])
            .when(UserCommand::RevokeApiKey {
                key_id: Uuid::from_u128(3),
            })
            .then_expect_error_message("API key not found");
    }
}
