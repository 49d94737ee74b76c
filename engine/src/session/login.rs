//! Login (frame 16) and the offline drain a logged-in client asks for (frame 17).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tim_net::frame::{encode_server, encode_server_empty};
use tim_net::proto::{ErrorCode, Tid, TimAck, TimAuth, TimMessage, TimMessageList};
use tim_net::{ClientFrame, FrameType};
use tokio::time::Instant;
use tracing::{info, Span};

use super::{Close, Login, Session};
use crate::flows::login::Refused;
use crate::model::ident::UserId;
use crate::server::Server;
use crate::session::delivery::{Body, Payload};
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

/// Drains `user`'s queue to the session. The drain counts as over (`draining` cleared) before
/// its last frame goes out: a client that asks again as soon as it reads the end frame starts
/// a new drain rather than finding this one still marked running and being ignored.
async fn drain_offline(server: &Server, user: UserId, me: &SessionHandle, draining: &AtomicBool) {
    loop {
        let rows = match server.offline.oldest(user, OFFLINE_BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                let ack = TimAck::error(FrameType::OfflineMsg as u8, e.answer("offline drain"));
                draining.store(false, Ordering::Release);
                let _ = me.push(Outbound::Frame(encode_server(FrameType::Ack, me.encoding(), &ack)));
                return;
            }
        };
        if rows.is_empty() {
            draining.store(false, Ordering::Release);
            let _ = me.push(Outbound::Frame(encode_server_empty(FrameType::OfflineMsgEnd)));
            return;
        }
        let ids: Vec<_> = rows.iter().map(|(id, _)| *id).collect();
        let batch_id = ids.first().map(|id| id.0 as i64);
        let messages = rows.into_iter().map(|(_, msg)| TimMessage { is_offline: Some(true), ..msg }).collect();
        let list = TimMessageList { id: batch_id, message_list: Some(messages) };
        let body = Body::new(Payload::Batch(list));
        if !start(std::slice::from_ref(me), FrameType::OfflineMsg, body, ids).acked().await {
            return;
        }
    }
}
