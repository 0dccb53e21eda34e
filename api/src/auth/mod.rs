//! Authentication: passwords, sessions with short-lived access tokens, API
//! keys, sign-in throttling, and the extractor that turns a request into an
//! [`Actor`](safehold_domain::access::Actor).

pub mod actor;
pub mod api_keys;
pub mod lockout;
pub mod passwords;
pub mod sessions;
pub mod tokens;

pub use actor::{Authenticated, AuthenticatedForPasswordChange};
