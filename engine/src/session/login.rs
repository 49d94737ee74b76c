//! Login (frame 16) and the offline drain a logged-in client asks for (frame 17).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::try_join_all;
use tim_net::frame::{encode_server, encode_server_empty};
use tim_net::proto::{ErrorCode, Tid, TimAck, TimAuth, TimMessage, TimMessageList};
use tim_net::{ClientFrame, FrameType};
use tokio::time::Instant;
use tracing::{info, Span};

use super::{Close, Login, Session};
use crate::error::EngineError;
use crate::flows::login::Refused;
use crate::flows::offline;
use crate::model::ident::UserId;
use crate::server::Server;
use crate::session::delivery::{Body, Payload, Stands};
use crate::session::outbound::{start, Outbound, SessionHandle};

impl Session {
    pub(super) async fn on_auth(&mut self, frame: &ClientFrame) -> Result<(), Close> {
        const AUTH: u8 = FrameType::Auth as u8;
        if self.login.is_some() {
            return self.reply(FrameType::Ack, frame.encoding, &TimAck::ok(AUTH)).await;
        }
        let Ok(auth) = frame.decode::<TimAuth>() else {
            return self.refuse(AUTH, frame.encoding, ErrorCode::ParamIncorrect).await;
        };
        let handle =
            SessionHandle::new(self.conn_id, auth.termtyp, frame.encoding, self.outlet.clone(), self.kick.clone());
        let user = match crate::flows::login::log_in(&self.server, &auth, handle.clone()).await {
            Ok(user) => user,
            Err(Refused::NodeFull) => {
                self.refuse_login(frame.encoding, ErrorCode::HeavyLoad).await?;
                return Err(Close::NodeFull);
            }
            Err(Refused::Failed(e)) => return self.refuse_login(frame.encoding, e.answer("login")).await,
        };
        Span::current().record("uid", user.node());
        self.inflight.logged_in();
        crate::metrics::add(&self.server.metrics.logins, 1);
        info!(termtyp = ?auth.termtyp, "logged in");
        let tid = Tid {
            node: user.node(),
            domain: auth.domain.clone(),
            resource: auth.resource.clone(),
            termtyp: auth.termtyp,
            extend: auth.extend.clone(),
        };
        self.login = Some(Login { user, tid, encoding: frame.encoding, handle, draining: Arc::default() });
        self.deadline = Instant::now() + self.server.cfg.ping_timeout();
        let ack = TimAck {
            t: Some(self.server.sessions.instance_tag()),
            n: Some(user.node()),
            n2: Some(self.server.sessions.public_session_id(self.conn_id)),
            ..TimAck::ok(AUTH)
        };
        self.reply(FrameType::Ack, frame.encoding, &ack).await
    }

    /// Refuses a login, counted by its code.
    async fn refuse_login(&mut self, encoding: tim_net::Encoding, code: ErrorCode) -> Result<(), Close> {
        self.server.metrics.login_failed(code as i32);
        self.refuse(FrameType::Auth as u8, encoding, code).await
    }

    /// Frame 17: sends the offline queue in batches, each acked before it is deleted and the
    /// next is sent, then the end frame 18. An unacked batch stays for the next request.
    pub(super) fn start_offline_drain(&self) {
        let Some(login) = &self.login else { return };
        if login.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let (server, user, me, draining) =
            (self.server.clone(), login.user, login.handle.clone(), login.draining.clone());
        self.server.tasks.spawn(async move {
            drain_offline(&server, user, &me, &draining).await;
            draining.store(false, Ordering::Release);
        });
    }
}

/// Most messages in one offline batch (TIM's batch size).
const OFFLINE_BATCH: usize = 10;

/// Drains `user`'s queue, then the messages of each of its conversations past its cursors,
/// to the session. The drain counts as over (`draining` cleared) before its last frame goes
/// out: a client that asks again as soon as it reads the end frame starts a new drain rather
/// than finding this one still marked running and being ignored.
async fn drain_offline(server: &Server, user: UserId, me: &SessionHandle, draining: &AtomicBool) {
    let drained = match drain_queue(server, user, me).await {
        Ok(true) => drain_logs(server, user, me).await,
        other => other,
    };
    match drained {
        // Stopped: a batch was not acked; the rest waits for the next request.
        Ok(false) => {}
        Ok(true) => {
            draining.store(false, Ordering::Release);
            let _ = me.push(Outbound::Frame(encode_server_empty(FrameType::OfflineMsgEnd)));
        }
        Err(e) => {
            let ack = TimAck::error(FrameType::OfflineMsg as u8, e.answer("offline drain"));
            draining.store(false, Ordering::Release);
            let _ = me.push(Outbound::Frame(encode_server(FrameType::Ack, me.encoding(), &ack)));
        }
    }
}

/// Sends a batch of offline messages and waits for its ack.
async fn send_batch(me: &SessionHandle, batch_id: Option<i64>, messages: Vec<TimMessage>, stands: Stands) -> bool {
    let list = TimMessageList { id: batch_id, message_list: Some(messages) };
    start(std::slice::from_ref(me), FrameType::OfflineMsg, Body::new(Payload::Batch(list)), stands).acked().await
}

/// The user's offline queue, batch by batch: whether it was drained to its end.
async fn drain_queue(server: &Server, user: UserId, me: &SessionHandle) -> Result<bool, EngineError> {
    loop {
        let rows = server.offline.oldest(user, OFFLINE_BATCH).await?;
        if rows.is_empty() {
            return Ok(true);
        }
        let ids: Vec<_> = rows.iter().map(|(id, _)| *id).collect();
        let batch_id = ids.first().map(|id| id.0 as i64);
        let messages = rows.into_iter().map(|(_, msg)| TimMessage { is_offline: Some(true), ..msg }).collect();
        if !send_batch(me, batch_id, messages, Stands::entries(ids)).await {
            return Ok(false);
        }
    }
}

/// Conversations whose first batch is looked for at once: a user in many, with nothing
/// waiting in most, pays a few round trips to their owners rather than one per conversation
/// in turn, and holds no more than this many batches at a time.
const LOGS_AT_ONCE: usize = 16;

/// The messages of the user's 1:1 conversations (those its inbox names) and groups past its
/// cursors, batch by batch: whether every conversation was drained to its end.
async fn drain_logs(server: &Server, user: UserId, me: &SessionHandle) -> Result<bool, EngineError> {
    let conversations = offline::conversations_of(server, user).await?;
    for chunk in conversations.chunks(LOGS_AT_ONCE) {
        // Every look-up of a chunk finishes before a batch goes out: one paused mid-way could
        // hold its conversation's lock while the client takes its time to ack.
        let first = try_join_all(chunk.iter().map(|&with| async move {
            let Some(membership) = offline::membership(server, user, with).await? else { return Ok(None) };
            let log = with.log(user);
            let waiting = server.chat_log.waiting(log, user, membership, OFFLINE_BATCH).await?;
            Ok::<_, EngineError>(Some((log, membership, waiting)))
        }))
        .await?;
        for (log, membership, mut waiting) in first.into_iter().flatten() {
            while let Some(span) = waiting.span {
                if waiting.messages.is_empty() {
                    // Only the user's own messages, or expired ones: passed over.
                    server.chat_log.acked(user, vec![span]).await;
                    break;
                }
                if !send_batch(me, Some(span.mid), waiting.decoded(), Stands::span(span)).await {
                    return Ok(false);
                }
                waiting = server.chat_log.waiting(log, user, membership, OFFLINE_BATCH).await?;
            }
        }
    }
    Ok(true)
}
