//! The extractor giving every handler the acting tenant, user and delegate.

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use safehold_domain::access::{Actor, DelegatePermissions, PrincipalKind};
use safehold_domain::{CommandMetadata, TenantId, UserId};
use uuid::Uuid;

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;

/// How the request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session(Uuid),
    ApiKey,
}

/// An authenticated request whose password needs no change.
pub struct Authenticated {
    pub actor: Actor,
    pub credential: Credential,
    pub request_id: String,
}

/// An authenticated request that may still have to change its password:
/// accepted only by the endpoints that let it do so.
pub struct AuthenticatedForPasswordChange(pub Authenticated);

impl Authenticated {
    pub fn metadata(&self) -> CommandMetadata {
        CommandMetadata {
            tenant_id: self.actor.tenant_id,
            user_id: Some(self.actor.user_id),
            delegate_id: self.actor.delegate_id(),
            request_id: self.request_id.clone(),
            occurred_at: chrono::Utc::now(),
        }
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Resolves the signed-in user into an actor; a delegate acts for its user.
async fn actor_for(state: &AppState, tenant: Uuid, user: Uuid) -> Result<Actor, ApiError> {
    let tenant = TenantId(tenant);
    let unauthenticated = || ApiError::unauthorized("the credentials no longer name a user");
    let signed_in = safehold_projections::users::find_user(&state.pool, tenant, UserId(user))
        .await?
        .ok_or_else(unauthenticated)?;
    if let Some(kind) = signed_in.principal_kind() {
        return Ok(Actor {
            tenant_id: tenant,
            user_id: UserId(signed_in.user_id),
            kind,
            delegate: None,
        });
    }
    let principal_id = signed_in.delegate_of.ok_or_else(unauthenticated)?;
    let principal =
        safehold_projections::users::find_user(&state.pool, tenant, UserId(principal_id))
            .await?
            .ok_or_else(unauthenticated)?;
    let kind: PrincipalKind = principal.principal_kind().ok_or_else(unauthenticated)?;
    Ok(Actor {
        tenant_id: tenant,
        user_id: UserId(principal.user_id),
        kind,
        delegate: Some((
            UserId(signed_in.user_id),
            DelegatePermissions {
                allow_recovery: signed_in.allow_recovery,
                allow_account_changes: signed_in.allow_account_changes,
                allow_backup_changes: signed_in.allow_backup_changes,
            },
        )),
    })
}

async fn authenticate(req: HttpRequest) -> Result<(Authenticated, bool), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("application state missing"))?
        .clone();
    let request_id = RequestId::of(&req);
    let token = bearer(&req).ok_or_else(|| {
        ApiError::unauthorized("send an access token or API key as `Authorization: Bearer …`")
    })?;
    let (tenant, user, credential, must_change) = if token
        .starts_with(crate::auth::api_keys::PREFIX)
    {
        let (tenant, user) = crate::auth::api_keys::authenticate(&state.pool, &token)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API key is invalid or revoked"))?;
        (tenant, user, Credential::ApiKey, false)
    } else {
        let claims = crate::auth::tokens::verify(&state.config.jwt_secret, &token)
            .ok_or_else(|| ApiError::unauthorized("the access token is invalid or expired"))?;
        let session = crate::auth::sessions::touch(&state.pool, claims.tid, claims.sid, claims.sub)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the session has ended; sign in again"))?;
        (
            claims.tid,
            session.user_id,
            Credential::Session(claims.sid),
            session.must_change_password,
        )
    };
    let actor = actor_for(&state, tenant, user).await?;
    Ok((
        Authenticated {
            actor,
            credential,
            request_id,
        },
        must_change,
    ))
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let (auth, must_change) = authenticate(req).await?;
            if must_change {
                return Err(ApiError::forbidden(
                    "password_change_required",
                    "the password must be changed first: POST /v1/me/password",
                ));
            }
            Ok(auth)
        })
    }
}

impl FromRequest for AuthenticatedForPasswordChange {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Ok(Self(authenticate(req).await?.0)) })
    }
}
