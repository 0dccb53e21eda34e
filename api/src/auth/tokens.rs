//! Short-lived access tokens (JWT, HS256) bound to a server-side session.

use chrono::Utc;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The signed-in user (a delegate signs in as itself).
    pub sub: Uuid,
    pub tid: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
}

pub fn issue(
    secret: &[u8],
    claims_for: (Uuid, Uuid, Uuid),
    minutes: i64,
) -> anyhow::Result<String> {
    let now = Utc::now().timestamp();
    let (sub, tid, sid) = claims_for;
    let claims = Claims {
        sub,
        tid,
        sid,
        iat: now,
        exp: now + minutes * 60,
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

pub fn verify(secret: &[u8], token: &str) -> Option<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .ok()
        .map(|data| data.claims)
}
