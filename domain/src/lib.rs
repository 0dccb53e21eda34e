//! Safehold's write-side model: aggregates, their commands and events, and the
//! pure rules they enforce. Nothing here performs IO.

pub mod access;
pub mod account;
pub mod backup;
pub mod cleanup;
pub mod error;
pub mod ids;
pub mod metadata;
pub mod password;
pub mod policy;
pub mod recovery;
pub mod schedule;
pub mod settings;
pub mod source;
pub mod tenant;
pub mod user;

pub use error::DomainError;
pub use ids::{TenantId, UserId};
pub use metadata::CommandMetadata;
