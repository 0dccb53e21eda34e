//! The Tenant aggregate: an organisation, its root user and general settings.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::settings::TenantSettings;
use crate::{DomainError, TenantId, UserId};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tenant {
    pub created: Option<TenantState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantState {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub root_user_id: UserId,
    pub settings: TenantSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    SignUp {
        id: TenantId,
        slug: String,
        name: String,
        root_user_id: UserId,
        settings: TenantSettings,
    },
    UpdateSettings {
        settings: TenantSettings,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TenantEvent {
    TenantCreated {
        id: TenantId,
        slug: String,
        name: String,
        root_user_id: UserId,
        settings: TenantSettings,
    },
    SettingsUpdated {
        settings: TenantSettings,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            TenantEvent::TenantCreated { .. } => "TenantCreated",
            TenantEvent::SettingsUpdated { .. } => "SettingsUpdated",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1".into()
    }
}

impl TenantEvent {
    /// A sentence for the audit log.
    pub fn describe(&self) -> String {
        match self {
            TenantEvent::TenantCreated { name, slug, .. } => {
                format!("Organisation {name} ({slug}) signed up")
            }
            TenantEvent::SettingsUpdated { .. } => "General settings changed".into(),
        }
    }
}

fn validated(settings: &TenantSettings) -> Result<(), DomainError> {
    let errors = settings.validate();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::Invalid(errors))
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TenantCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        match command {
            TenantCommand::SignUp {
                id,
                slug,
                name,
                root_user_id,
                settings,
            } => {
                if self.created.is_some() {
                    return Err(DomainError::conflict(
                        "organisation_exists",
                        format!("an organisation named {slug} already exists"),
                    ));
                }
                if !crate::ids::valid_slug(&slug) {
                    return Err(DomainError::invalid(
                        "organisation",
                        "invalid_value",
                        "3-40 characters of a-z, 0-9 and inner hyphens",
                    ));
                }
                if name.trim().is_empty() || name.len() > 200 {
                    return Err(DomainError::invalid(
                        "name",
                        "invalid_value",
                        "must be 1-200 characters",
                    ));
                }
                validated(&settings)?;
                let event = TenantEvent::TenantCreated {
                    id,
                    slug,
                    name,
                    root_user_id,
                    settings,
                };
                sink.write(event, self).await;
            }
            TenantCommand::UpdateSettings { settings } => {
                let state = self
                    .created
                    .as_ref()
                    .ok_or(DomainError::NotFound("organisation"))?;
                validated(&settings)?;
                if state.settings != settings {
                    sink.write(TenantEvent::SettingsUpdated { settings }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: TenantEvent) {
        match event {
            TenantEvent::TenantCreated {
                id,
                slug,
                name,
                root_user_id,
                settings,
            } => {
                self.created = Some(TenantState {
                    id,
                    slug,
                    name,
                    root_user_id,
                    settings,
                })
            }
            TenantEvent::SettingsUpdated { settings } => {
                if let Some(state) = &mut self.created {
                    state.settings = settings;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use uuid::Uuid;

    fn sign_up() -> TenantCommand {
        TenantCommand::SignUp {
            id: TenantId::for_slug("acme"),
            slug: "acme".into(),
            name: "Acme".into(),
            root_user_id: UserId(Uuid::from_u128(1)),
            settings: TenantSettings::default(),
        }
    }

    fn created() -> TenantEvent {
        let TenantCommand::SignUp {
            id,
            slug,
            name,
            root_user_id,
            settings,
        } = sign_up()
        else {
            unreachable!()
        };
        TenantEvent::TenantCreated {
            id,
            slug,
            name,
            root_user_id,
            settings,
        }
    }

    #[test]
    fn sign_up_creates_the_tenant_once() {
        TestFramework::<Tenant>::with(())
            .given_no_previous_events()
            .when(sign_up())
            .then_expect_events(vec![created()]);
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(sign_up())
            .then_expect_error_message("an organisation named acme already exists");
    }

    #[test]
    fn invalid_settings_are_refused() {
        let settings = TenantSettings {
            session_idle_minutes: 1,
            ..Default::default()
        };
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(TenantCommand::UpdateSettings { settings })
            .then_expect_error_message("invalid input");
    }

    #[test]
    fn unchanged_settings_record_nothing() {
        TestFramework::<Tenant>::with(())
            .given(vec![created()])
            .when(TenantCommand::UpdateSettings {
                settings: TenantSettings::default(),
            })
            .then_expect_events(vec![]);
    }
}
