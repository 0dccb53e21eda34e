//! Group commit of single-event appends.
//!
//! Most commands append one event. Appended one statement (and one commit)
//! each, concurrent commands pay a round trip and a WAL flush apiece; here
//! they queue, and one writer appends everything waiting with one
//! statement. Each command still learns whether its own event went in: a
//! sequence number already taken skips that row (`ON CONFLICT DO NOTHING`)
//! and answers that command with the optimistic-concurrency conflict, as
//! its own statement would have. No command is answered before the
//! statement carrying its event has committed.

use std::collections::{HashSet, VecDeque};

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// Events in one statement at most.
const MAX_BATCH: usize = 256;

struct Pending {
    event: SerializedEvent,
    done: oneshot::Sender<Result<(), PersistenceError>>,
}

/// The queue of single-event appends of one repository.
pub struct AppendQueue {
    pool: PgPool,
    sender: mpsc::UnboundedSender<Pending>,
}

impl AppendQueue {
    /// Starts the writer, on the current runtime; it stops when the queue
    /// is dropped (or that runtime shuts down).
    pub fn start(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(pool.clone(), receiver));
        Self { pool, sender }
    }

    /// Appends one event; answers once it is committed, or
    /// [`PersistenceError::OptimisticLockError`] if its sequence number was
    /// taken.
    pub async fn append(&self, event: SerializedEvent) -> Result<(), PersistenceError> {
        let (done, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(pending)) = self.sender.send(Pending { event, done }) {
            // The writer is gone and never saw the event: append it alone.
            return insert_one(&self.pool, &pending.event).await;
        }
        // Dropped unanswered: the writer stopped during the statement, whose
        // outcome is unknown, as with a connection lost mid-statement.
        answer.await.map_err(|_| {
            PersistenceError::UnknownError("the append writer stopped during the append".into())
        })?
    }
}

async fn write_batches(pool: PgPool, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut waiting = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match receiver.recv().await {
                Some(pending) => waiting.push_back(pending),
                None => return,
            }
        }
        while let Ok(pending) = receiver.try_recv() {
            waiting.push_back(pending);
        }
        // One event per aggregate in a statement, so every row answers for
        // exactly one command; the others wait for the next statement.
        let mut streams = HashSet::new();
        let mut batch = Vec::new();
        let mut later = VecDeque::new();
        for pending in waiting.drain(..) {
            let stream = (
                pending.event.aggregate_type.clone(),
                pending.event.aggregate_id.clone(),
            );
            if batch.len() < MAX_BATCH && streams.insert(stream) {
                batch.push(pending);
            } else {
                later.push_back(pending);
            }
        }
        waiting = later;
        write(&pool, batch).await;
    }
}

/// Appends a batch and answers each of its commands.
async fn write(pool: &PgPool, batch: Vec<Pending>) {
    let events: Vec<&SerializedEvent> = batch.iter().map(|p| &p.event).collect();
    match insert(pool, &events).await {
        Ok(inserted) => {
            for pending in batch {
                let stream = (
                    pending.event.aggregate_type.clone(),
                    pending.event.aggregate_id.clone(),
                );
                let answer = if inserted.contains(&stream) {
                    Ok(())
                } else {
                    Err(PersistenceError::OptimisticLockError)
                };
                let _ = pending.done.send(answer);
            }
        }
        // Whatever failed (a connection lost, one row breaking a
        // constraint), each event is tried on its own so that one command
        // cannot fail the others.
        Err(_) if batch.len() > 1 => {
            for pending in batch {
                let answer = insert_one(pool, &pending.event).await;
                let _ = pending.done.send(answer);
            }
        }
        Err(e) => {
            if let Some(pending) = batch.into_iter().next() {
                let _ = pending
                    .done
                    .send(Err(crate::commands::persistence_error(e)));
            }
        }
    }
}

/// Appends one event in a statement of its own.
async fn insert_one(pool: &PgPool, event: &SerializedEvent) -> Result<(), PersistenceError> {
    match insert(pool, &[event]).await {
        Ok(inserted) if inserted.is_empty() => Err(PersistenceError::OptimisticLockError),
        Ok(_) => Ok(()),
        Err(e) => Err(crate::commands::persistence_error(e)),
    }
}

/// Inserts events of distinct streams in one autocommitted statement;
/// returns the streams (aggregate type and id) whose event went in.
async fn insert(
    pool: &PgPool,
    events: &[&SerializedEvent],
) -> sqlx::Result<HashSet<(String, String)>> {
    let aggregate_types: Vec<&str> = events.iter().map(|e| e.aggregate_type.as_str()).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<&str> = events.iter().map(|e| e.event_version.as_str()).collect();
    let payloads: Vec<String> = events.iter().map(|e| e.payload.to_string()).collect();
    let metadata: Vec<String> = events.iter().map(|e| e.metadata.to_string()).collect();
    let inserted: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
                e.payload::json, e.metadata::json
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                       $7::text[])
                WITH ORDINALITY AS e (aggregate_type, aggregate_id, sequence, event_type,
                                      event_version, payload, metadata, n)
          ORDER BY e.n
         ON CONFLICT (aggregate_type, aggregate_id, sequence) DO NOTHING
         RETURNING aggregate_type, aggregate_id",
    )
    .bind(aggregate_types)
    .bind(ids)
    .bind(sequences)
    .bind(types)
    .bind(versions)
    .bind(payloads)
    .bind(metadata)
    .fetch_all(pool)
    .await?;
    Ok(inserted.into_iter().collect())
}
