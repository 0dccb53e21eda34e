//! Read models and the projector runtime that keeps them up to date.
//!
//! Each projection owns its tables and a checkpoint. The runtime feeds it
//! events in a total order that never skips an event committed late (see
//! `migrations/*_event_store.sql`), applying each batch and the new checkpoint
//! in one transaction, so a crash anywhere resumes exactly where it stopped.

pub mod accounts;
pub mod audit;
pub mod backups;
pub mod db;
pub mod dispatch;
pub mod policies;
pub mod recoveries;
pub mod runtime;
pub mod tenants;
pub mod users;

pub use runtime::{all_projections, Projection, Projector, StoredEvent};
