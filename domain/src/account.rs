//! The Account aggregate: an AWS account a user registers for backup or as a
//! disaster-recovery vault, and how Safehold reaches it. Secrets (secret
//! access keys) never appear here: events refer to them by credential id.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::settings::FieldError;
use crate::{DomainError, TenantId, UserId};

/// What the account is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AccountKind {
    /// Resources here are backed up.
    Backup,
    /// A disaster-recovery vault. Without `allow_delete`, Safehold never
    /// deletes anything there and tags expired copies instead.
    Vault { allow_delete: bool },
}

/// How Safehold obtains credentials for the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AccessMethod {
    /// An access key; the secret is stored encrypted under `secret_id`.
    AccessKeys {
        access_key_id: String,
        secret_id: Uuid,
    },
    /// The server's own credentials (default provider chain); root only.
    ServerCredentials,
    /// Assume `role_name` in this account with credentials of `via_account`.
    AssumeRole {
        via_account: Uuid,
        role_name: String,
        external_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanSettings {
    /// Whether periodic resource discovery runs for this account.
    pub enabled: bool,
    /// Regions Safehold works in for this account.
    pub regions: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    pub state: Option<AccountState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub owner_id: UserId,
    pub name: String,
    pub number: String,
    pub kind: AccountKind,
    pub access: AccessMethod,
    pub scan: ScanSettings,
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccountCommand {
    Register {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        name: String,
        number: String,
        kind: AccountKind,
        access: AccessMethod,
        scan: ScanSettings,
    },
    Update {
        name: Option<String>,
        kind: Option<AccountKind>,
        scan: Option<ScanSettings>,
    },
    RotateKeys {
        access_key_id: String,
        secret_id: Uuid,
    },
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    AccountRegistered {
        id: Uuid,
        tenant_id: TenantId,
        owner_id: UserId,
        name: String,
        number: String,
        kind: AccountKind,
        access: AccessMethod,
        scan: ScanSettings,
    },
    AccountUpdated {
        name: String,
        kind: AccountKind,
        scan: ScanSettings,
    },
    AccessKeysRotated {
        access_key_id: String,
        secret_id: Uuid,
    },
    AccountRemoved,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::AccountRegistered { .. } => "AccountRegistered",
            AccountEvent::AccountUpdated { .. } => "AccountUpdated",
            AccountEvent::AccessKeysRotated { .. } => "AccessKeysRotated",
            AccountEvent::AccountRemoved => "AccountRemoved",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl AccountEvent {
    pub fn describe(&self, name: &str) -> String {
        match self {
            AccountEvent::AccountRegistered { number, kind, .. } => {
                let kind = match kind {
                    AccountKind::Backup => "backup",
                    AccountKind::Vault { .. } => "vault",
                };
                format!("Registered {kind} account {name} ({number})")
            }
            AccountEvent::AccountUpdated { .. } => format!("Updated account {name}"),
            AccountEvent::AccessKeysRotated { access_key_id, .. } => {
                format!("Rotated the access keys of account {name} (now {access_key_id})")
            }
            AccountEvent::AccountRemoved => format!("Removed account {name}"),
        }
    }
}

/// An AWS account number: exactly 12 digits.
pub fn valid_account_number(number: &str) -> bool {
    number.len() == 12 && number.bytes().all(|b| b.is_ascii_digit())
}

/// IAM role names: 1-64 of letters, digits and `+=,.@_-`.
pub fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// Region names such as `eu-west-1` or `us-gov-west-1`.
pub fn valid_region(region: &str) -> bool {
    let parts: Vec<_> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Why an identity reported by STS cannot be used for an account.
pub fn check_identity(declared_number: &str, account: &str, arn: &str) -> Result<(), DomainError> {
    if arn.ends_with(":root") {
        return Err(DomainError::invalid(
            "access",
            "root_credentials",
            "these are the AWS account's root-user credentials; use an IAM user or role",
        ));
    }
    if account != declared_number {
        return Err(DomainError::invalid(
            "number",
            "account_mismatch",
            format!("the credentials belong to account {account}, not {declared_number}"),
        ));
    }
    Ok(())
}

fn validate(
    name: &str,
    number: &str,
    access: &AccessMethod,
    scan: &ScanSettings,
) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    if name.trim().is_empty() || name.len() > 100 {
        errors.push(FieldError::new(
            "name",
            "invalid_value",
            "must be 1-100 characters",
        ));
    }
    if !valid_account_number(number) {
        errors.push(FieldError::new(
            "number",
            "invalid_value",
            "must be a 12-digit AWS account number",
        ));
    }
    match access {
        AccessMethod::AccessKeys { access_key_id, .. } => {
            let ok = (16..=128).contains(&access_key_id.len())
                && access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                errors.push(FieldError::new(
                    "access.access_key_id",
                    "invalid_value",
                    "not an access key id",
                ));
            }
        }
        AccessMethod::AssumeRole {
            role_name,
            external_id,
            ..
        } => {
            if !valid_role_name(role_name) {
                errors.push(FieldError::new(
                    "access.role_name",
                    "invalid_value",
                    "a role name (not an ARN): 1-64 of letters, digits and +=,.@_-",
                ));
            }
            if external_id
                .as_ref()
                .is_some_and(|e| !(2..=1224).contains(&e.len()))
            {
                errors.push(FieldError::new(
                    "access.external_id",
                    "invalid_value",
                    "must be 2-1224 characters",
                ));
            }
        }
        AccessMethod::ServerCredentials => {}
    }
    errors.extend(validate_scan(scan));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

fn validate_scan(scan: &ScanSettings) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if scan.regions.is_empty() || scan.regions.len() > 40 {
        errors.push(FieldError::new(
            "scan.regions",
            "invalid_value",
            "list 1-40 regions",
        ));
    }
    for (i, region) in scan.regions.iter().enumerate() {
        if !valid_region(region) {
            errors.push(FieldError::new(
                format!("scan.regions[{i}]"),
                "invalid_value",
                "not a region name",
            ));
        }
    }
    errors
}

impl Account {
    fn live(&self) -> Result<&AccountState, DomainError> {
        match &self.state {
            Some(s) if !s.removed => Ok(s),
            _ => Err(DomainError::NotFound("account")),
        }
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        let event = match command {
            AccountCommand::Register {
                id,
                tenant_id,
                owner_id,
                name,
                number,
                kind,
                access,
                scan,
            } => {
                if self.state.is_some() {
                    return Err(DomainError::conflict(
                        "account_exists",
                        "this account is already registered",
                    ));
                }
                if matches!(access, AccessMethod::AssumeRole { via_account, .. } if via_account == id)
                {
                    return Err(DomainError::invalid(
                        "access.via_account",
                        "invalid_value",
                        "an account cannot assume a role through itself",
                    ));
                }
                validate(&name, &number, &access, &scan)?;
                AccountEvent::AccountRegistered {
                    id,
                    tenant_id,
                    owner_id,
                    name,
                    number,
                    kind,
                    access,
                    scan,
                }
            }
            AccountCommand::Update { name, kind, scan } => {
                let state = self.live()?;
                let name = name.unwrap_or_else(|| state.name.clone());
                let scan = scan.unwrap_or_else(|| state.scan.clone());
                let kind = kind.unwrap_or(state.kind);
                let changes_purpose = matches!(
                    (state.kind, kind),
                    (AccountKind::Backup, AccountKind::Vault { .. })
                        | (AccountKind::Vault { .. }, AccountKind::Backup)
                );
                if changes_purpose {
                    return Err(DomainError::invalid("kind", "kind_change_not_allowed", "an account's type (backup or vault) cannot change; only a vault's allow_delete can"));
                }
                validate(&name, &state.number, &state.access, &scan)?;
                if name == state.name && kind == state.kind && scan == state.scan {
                    return Ok(());
                }
                AccountEvent::AccountUpdated { name, kind, scan }
            }
            AccountCommand::RotateKeys {
                access_key_id,
                secret_id,
            } => {
                let state = self.live()?;
                if !matches!(state.access, AccessMethod::AccessKeys { .. }) {
                    return Err(DomainError::conflict(
                        "not_key_based",
                        "this account is not reached with access keys",
                    ));
                }
                let access = AccessMethod::AccessKeys {
                    access_key_id: access_key_id.clone(),
                    secret_id,
                };
                validate(&state.name, &state.number, &access, &state.scan)?;
                AccountEvent::AccessKeysRotated {
                    access_key_id,
                    secret_id,
                }
            }
            AccountCommand::Remove => {
                self.live()?;
                AccountEvent::AccountRemoved
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountRegistered {
                id,
                tenant_id,
                owner_id,
                name,
                number,
                kind,
                access,
                scan,
            } => {
                self.state = Some(AccountState {
                    id,
                    tenant_id,
                    owner_id,
                    name,
                    number,
                    kind,
                    access,
                    scan,
                    removed: false,
                })
            }
            AccountEvent::AccountUpdated { name, kind, scan } => {
                if let Some(s) = &mut self.state {
                    s.name = name;
                    s.kind = kind;
                    s.scan = scan;
                }
            }
            AccountEvent::AccessKeysRotated {
                access_key_id,
                secret_id,
            } => {
                if let Some(s) = &mut self.state {
                    s.access = AccessMethod::AccessKeys {
                        access_key_id,
                        secret_id,
                    };
                }
            }
            AccountEvent::AccountRemoved => {
                if let Some(s) = &mut self.state {
                    s.removed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn register(number: &str, access: AccessMethod) -> AccountCommand {
        AccountCommand::Register {
            id: Uuid::from_u128(5),
            tenant_id: TenantId(Uuid::from_u128(1)),
            owner_id: UserId(Uuid::from_u128(2)),
            name: "production".into(),
            number: number.into(),
            kind: AccountKind::Backup,
            access,
            scan: ScanSettings {
                enabled: true,
                regions: vec!["us-east-1".into()],
            },
        }
    }

    fn keys() -> AccessMethod {
        AccessMethod::AccessKeys {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_id: Uuid::from_u128(9),
        }
    }

    #[test]
    fn account_numbers_must_have_twelve_digits() {
        TestFramework::<Account>::with(())
            .given_no_previous_events()
            .when(register("12345", keys()))
            .then_expect_error(DomainError::invalid(
                "number",
                "invalid_value",
                "must be a 12-digit AWS account number",
            ));
    }

    #[test]
    fn role_names_are_names_not_arns() {
        let access = AccessMethod::AssumeRole {
            via_account: Uuid::from_u128(7),
            role_name: "arn:aws:iam::123456789012:role/x".into(),
            external_id: None,
        };
        let result = TestFramework::<Account>::with(())
            .given_no_previous_events()
            .when(register("123456789012", access))
            .inspect_result();
        let Err(DomainError::Invalid(errors)) = result else {
            panic!("expected invalid")
        };
        assert_eq!(errors[0].field, "access.role_name");
    }

    #[test]
    fn root_credentials_and_other_accounts_are_refused() {
        assert!(check_identity(
            "123456789012",
            "123456789012",
            "arn:aws:iam::123456789012:root"
        )
        .is_err());
        let Err(DomainError::Invalid(e)) = check_identity(
            "123456789012",
            "210987654321",
            "arn:aws:iam::210987654321:user/ops",
        ) else {
            panic!("expected mismatch")
        };
        assert_eq!(e[0].code, "account_mismatch");
        assert!(check_identity(
            "123456789012",
            "123456789012",
            "arn:aws:iam::123456789012:user/ops"
        )
        .is_ok());
    }

    #[test]
    fn a_backup_account_cannot_become_a_vault() {
        let registered = AccountEvent::AccountRegistered {
            id: Uuid::from_u128(5),
            tenant_id: TenantId(Uuid::from_u128(1)),
            owner_id: UserId(Uuid::from_u128(2)),
            name: "prod".into(),
            number: "123456789012".into(),
            kind: AccountKind::Backup,
            access: AccessMethod::ServerCredentials,
            scan: ScanSettings {
                enabled: false,
                regions: vec!["us-east-1".into()],
            },
        };
        TestFramework::<Account>::with(())
            .given(vec![registered.clone()])
            .when(AccountCommand::Update {
                name: None,
                kind: Some(AccountKind::Vault {
                    allow_delete: false,
                }),
                scan: None,
            })
            .then_expect_error_message("invalid input");
        TestFramework::<Account>::with(())
            .given(vec![registered])
            .when(AccountCommand::RotateKeys {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_id: Uuid::nil(),
            })
            .then_expect_error_message("this account is not reached with access keys");
    }

    #[test]
    fn region_names() {
        assert!(valid_region("eu-west-1"));
        assert!(valid_region("us-gov-west-1"));
        assert!(!valid_region("europe"));
        assert!(!valid_region("eu-west-x"));
    }
}
