//! What a client frame asks for: each frame type to its handler, after the checks every
//! frame passes (login, rate, pending acks).

use bytes::{Bytes, BytesMut};
use tim_net::codec::Encoding;
use tim_net::frame::{big_data_length, encode_server_empty, BigDataLength};
use tim_net::proto::{ErrorCode, TimAck, TimMessage, TimMessageList, TimNodes, TimPresence, TimReq, TimStream};
use tim_net::{ClientFrame, DecodeError, FrameType};
use tokio::time::Instant;
use tracing::debug;

use super::order::Key;
use super::{Close, Reassembly, Session, READ_BURST};
use crate::flows::message;
use crate::flows::sending::{Next, Sender};
use crate::services::rooms::stream_push;

impl Session {
    pub(super) async fn on_message(&mut self, data: Bytes) -> Result<(), Close> {
        let max = self.server.cfg.max_frame;
        if let Some(mut big) = self.big.take() {
            self.settle_acks().await;
            self.store_burst().await?;
            if big.buf.len() + data.len() > big.declared {
                return self.refuse(FrameType::BigBinary as u8, Encoding::Compact, ErrorCode::BigData).await;
            }
            big.buf.extend_from_slice(&data);
            if big.buf.len() < big.declared {
                self.big = Some(big);
                return Ok(());
            }
            return Box::pin(self.on_big_data(big.buf.freeze())).await;
        }
        let Some(&head) = data.first() else {
            return Ok(());
        };
        let code = head & 0x7F;
        self.server.metrics.frame_in(code);
        // Offline entries of acked deliveries are deleted before any other frame of the
        // client is handled: an ack followed by an offline request must not get them again.
        if code != FrameType::Ack as u8 {
            self.settle_acks().await;
        }
        // Message frames are rate-limited here; big data once it is whole (its continuation
        // messages must still be taken as such).
        if (FrameType::Message as u8..=FrameType::Stream as u8).contains(&code) && self.over_rate() {
            crate::metrics::add(&self.server.metrics.rate_limited, 1);
            return self.refuse(code, Encoding::of_client_head(head), ErrorCode::HeavyLoad).await;
        }
        // Frames other than messages may refer to the burst's messages: store those first.
        if ![FrameType::Message, FrameType::RevokeMessage, FrameType::BurnMessage].map(|k| k as u8).contains(&code) {
            self.store_burst().await?;
        }
        let frame = match ClientFrame::parse(data.clone(), max) {
            Ok(frame) => frame,
            Err(DecodeError::TooLarge { len, .. }) => return Err(Close::Oversize(len)),
            Err(e) => {
                debug!(error = %e, "undecodable frame");
                if self.login.is_none() {
                    return Err(Close::FrameBeforeLogin(code));
                }
                return self.refuse(code, Encoding::of_client_head(head), ErrorCode::ParamIncorrect).await;
            }
        };
        match (frame.kind, self.login.is_some()) {
            (FrameType::Auth, _) => Box::pin(self.on_auth(&frame)).await,
            (FrameType::Ping, false) => Ok(()),
            (FrameType::Ping, true) => {
                self.deadline = Instant::now() + self.server.cfg.ping_timeout();
                self.send(encode_server_empty(FrameType::Ping)).await
            }
            (_, false) => Err(Close::FrameBeforeLogin(code)),
            (FrameType::Ack, true) => {
                if let Ok(id) = frame.ack_id() {
                    self.on_ack(id);
                }
                Ok(())
            }
            (FrameType::OfflineMsg, true) => {
                self.start_offline_drain();
                Ok(())
            }
            (kind, true) if kind.is_big_data() => match big_data_length(&data) {
                BigDataLength::Legacy | BigDataLength::Complete => Box::pin(self.on_big_data(data)).await,
                BigDataLength::Incomplete(declared) if declared > max => Err(Close::Oversize(declared)),
                BigDataLength::Incomplete(declared) => {
                    let mut buf = BytesMut::with_capacity(declared.min(data.len() * 4));
                    buf.extend_from_slice(&data);
                    self.big = Some(Reassembly { buf, declared });
                    Ok(())
                }
                BigDataLength::Overrun => {
                    self.refuse(FrameType::BigBinary as u8, frame.encoding, ErrorCode::BigData).await
                }
            },
            (FrameType::Message | FrameType::RevokeMessage | FrameType::BurnMessage, true) => {
                let Ok(msg) = frame.decode::<TimMessage>() else {
                    return self.refuse(code, frame.encoding, ErrorCode::FormatError).await;
                };
                if !message::joins_burst(&msg) {
                    self.store_burst().await?;
                }
                let key = Key::of(&msg);
                if !self.passes(key.as_ref()) {
                    debug!(id = ?msg.id, "message held behind one refused before it: refused as retryable");
                    return self.refuse(code, frame.encoding, ErrorCode::BlockingOperation).await;
                }
                let Some(login) = &self.login else { return Ok(()) };
                let sender = Sender { user: login.user, tid: login.tid.clone() };
                match message::accept(&self.server, &sender, msg).await {
                    Ok(Next::Store(accepted)) => {
                        self.burst.push((code, frame.encoding, *accepted));
                        if self.burst.len() >= READ_BURST {
                            self.store_burst().await?;
                        }
                        Ok(())
                    }
                    Ok(Next::Done) => Ok(()),
                    Ok(Next::Reply(ack)) => self.reply(FrameType::Ack, frame.encoding, &ack).await,
                    Err(e) => self.refuse_message(key, code, frame.encoding, e.answer("message")).await,
                }
            }
            // Boxed: these handlers' futures (a business request's is about 6 KiB) would
            // otherwise be part of every chat message's and ack's future.
            (_, true) => Box::pin(self.on_request(frame, code)).await,
        }
    }

    /// A logged-in client's frame other than a chat message, an ack, a ping or big data.
    async fn on_request(&mut self, frame: ClientFrame, code: u8) -> Result<(), Close> {
        match frame.kind {
            FrameType::Business => {
                let (Some(login), Ok(req)) = (&self.login, frame.decode::<TimReq>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await;
                };
                let reply = crate::flows::business::handle(&self.server, login.user, &req).await;
                self.answer(reply, frame.encoding).await
            }
            FrameType::Presence | FrameType::BroadPresence => {
                let (Some(login), Ok(presence)) = (&self.login, frame.decode::<TimPresence>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::FormatError).await;
                };
                let result = if frame.kind == FrameType::Presence {
                    crate::flows::presence::send(&self.server, &login.tid, presence).await
                } else {
                    crate::flows::presence::broadcast(&self.server, login.user, &login.tid, presence).await
                };
                match result {
                    Ok(()) => Ok(()),
                    Err(e) => self.refuse_with(code, frame.encoding, e).await,
                }
            }
            FrameType::VRoom => {
                let (Some(login), Ok(req)) = (&self.login, frame.decode::<TimReq>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await;
                };
                let (user, termtyp, room) = (login.user, login.tid.termtyp, req.node.clone().unwrap_or_default());
                let rtype = req.rtype.unwrap_or(0);
                if rtype == crate::services::rooms::SUB && self.rooms.len() >= crate::services::rooms::MAX_SUBSCRIPTIONS
                {
                    return self.refuse(code, frame.encoding, ErrorCode::HeavyLoad).await;
                }
                let ack = self.server.rooms.handle(user, self.conn_id, termtyp, &req).await;
                // Subscriptions end with the session: remember them.
                if ack.ok && rtype == crate::services::rooms::SUB && !self.rooms.contains(&room) {
                    self.rooms.push(room);
                } else if ack.ok && matches!(rtype, crate::services::rooms::UNSUB | crate::services::rooms::REMOVE) {
                    self.rooms.retain(|r| *r != room);
                }
                self.reply(FrameType::Ack, frame.encoding, &ack).await
            }
            FrameType::Stream => {
                let (Some(login), Ok(stream)) = (&self.login, frame.decode::<TimStream>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::FormatError).await;
                };
                let room = stream.vnode.clone();
                match self.server.rooms.push(login.user, &room, stream_push(&stream)).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let ack = TimAck { n: Some(room), ..TimAck::error(code, e.answer("stream")) };
                        self.reply(FrameType::Ack, frame.encoding, &ack).await
                    }
                }
            }
            FrameType::Nodes => {
                let (Some(login), Ok(req)) = (&self.login, frame.decode::<TimNodes>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await;
                };
                let reply = crate::flows::profiles::handle(&self.server, login.user, req).await;
                self.answer(reply, frame.encoding).await
            }
            FrameType::PullMessage => {
                let (Some(login), Ok(req)) = (&self.login, frame.decode::<TimReq>()) else {
                    return self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await;
                };
                match crate::flows::message::pull(&self.server, login.user, &req).await {
                    Ok(messages) => {
                        let list = TimMessageList { id: None, message_list: Some(messages) };
                        self.reply(FrameType::PullMessage, frame.encoding, &list).await
                    }
                    Err(e) => self.refuse_with(code, frame.encoding, e).await,
                }
            }
            FrameType::Register | FrameType::Token => {
                self.refuse(code, frame.encoding, ErrorCode::ParamIncorrect).await
            }
            _ => self.refuse(code, frame.encoding, ErrorCode::InterfaceIncorrect).await,
        }
    }

    /// Whether a message-class frame of the logged-in client is over the connection's or the
    /// account's rate (it then gets 5104); takes a token from both otherwise. Counts the frame
    /// in the node's load.
    pub(super) fn over_rate(&mut self) -> bool {
        crate::metrics::add(&self.server.metrics.load, 1);
        let Some(login) = &self.login else { return false };
        !(self.bucket.take(self.server.cfg.connection_rate(), Instant::now().into_std())
            && self.server.sessions.take_token(login.user))
    }
}
