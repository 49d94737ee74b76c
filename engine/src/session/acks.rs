//! Frames sent with an ack request: tracked until acked, re-sent with a fresh ack id on
//! timeout, and reported when acked or given up.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tim_net::report::ErrorChain;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::warn;

use super::{Close, Session};
use crate::session::delivery::Delivery;

/// A frame sent with an ack request, waiting for the client's ack.
pub(super) struct Pending {
    delivery: Arc<Delivery>,
    attempt: u32,
    timer: delay_queue::Key,
}

impl Session {
    /// Sends attempt `attempt` of a delivery under a fresh ack id.
    pub(super) async fn send_for_ack(&mut self, delivery: Arc<Delivery>, attempt: u32) -> Result<(), Close> {
        match self.track(delivery, attempt)? {
            Some(frame) => self.send(frame).await,
            None => Ok(()),
        }
    }

    /// Registers attempt `attempt` of a delivery under a fresh ack id; the frame to write
    /// (`None` before login).
    pub(super) fn track(&mut self, delivery: Arc<Delivery>, attempt: u32) -> Result<Option<Bytes>, Close> {
        let Some(login) = &self.login else { return Ok(None) };
        if self.pending.len() >= self.server.cfg.outbound_queue {
            return Err(Close::TooManyUnacked);
        }
        let id = self.server.sessions.next_ack_id();
        let frame = delivery.frame(id, login.encoding);
        let timer = self.ack_timers.get_or_insert_with(Box::default).insert(id, self.server.cfg.ack_timeout());
        self.pending.insert(id, Pending { delivery, attempt, timer });
        Ok(Some(frame))
    }

    pub(super) fn on_ack(&mut self, id: u32) {
        let Some(pending) = self.pending.remove(&id) else { return };
        if let Some(timers) = &mut self.ack_timers {
            timers.remove(&pending.timer);
        }
        self.acked.push(pending.delivery);
    }

    /// Deletes the offline entries of the deliveries acked since the last call, in one write,
    /// then reports the acks (an offline drain reads its next batch only after the deletion).
    pub(super) async fn settle_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let acked = std::mem::take(&mut self.acked);
        let entries: Vec<_> = acked.iter().flat_map(|d| &d.stands().entries).copied().collect();
        let spans: Vec<_> = acked.iter().filter_map(|d| d.stands().span).collect();
        if let Some(login) = &self.login {
            if !entries.is_empty() {
                if let Err(e) = self.server.offline.remove_acked(login.user, &entries).await {
                    warn!(error = %ErrorChain(&e), "deleting acked offline entries failed");
                }
            }
            if !spans.is_empty() {
                self.server.chat_log.acked(login.user, spans).await;
            }
        }
        crate::metrics::add(&self.server.metrics.delivered, acked.len() as u64);
        for delivery in acked {
            delivery.report(true);
        }
    }

    pub(super) async fn on_ack_timeout(&mut self, id: u32) -> Result<(), Close> {
        let Some(pending) = self.pending.remove(&id) else { return Ok(()) };
        if pending.attempt < self.server.cfg.ack_tries {
            self.send_for_ack(pending.delivery, pending.attempt + 1).await
        } else {
            crate::metrics::add(&self.server.metrics.ack_timeouts, 1);
            pending.delivery.report(false);
            Ok(())
        }
    }
}

/// The next expired ack timer; pending forever when there is no timer queue.
pub(super) async fn next_expired(timers: &mut Option<Box<DelayQueue<u32>>>) -> Option<delay_queue::Expired<u32>> {
    match timers {
        Some(timers) => timers.next().await,
        None => std::future::pending().await,
    }
}
