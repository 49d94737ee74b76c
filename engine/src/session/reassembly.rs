//! Big-data frames (TIM's large binary and string frames), reassembled from several
//! WebSocket messages when they arrive split.

use bytes::{Bytes, BytesMut};
use tim_net::codec::Encoding;
use tim_net::frame::BigData;
use tim_net::proto::ErrorCode;
use tim_net::FrameType;
use tracing::debug;

use super::{Close, Session};
use crate::services::rooms::Push;

/// A big-data frame arriving over several WebSocket messages.
pub(super) struct Reassembly {
    pub(super) buf: BytesMut,
    pub(super) declared: usize,
}

impl Session {
    /// A complete big-data frame; a malformed one gets 4104.
    pub(super) async fn on_big_data(&mut self, frame: Bytes) -> Result<(), Close> {
        let code = frame.first().map_or(FrameType::BigBinary as u8, |h| h & 0x7F);
        if self.over_rate() {
            return self.refuse(code, Encoding::Compact, ErrorCode::HeavyLoad).await;
        }
        let (Ok(big), Some(login)) = (BigData::parse(frame), &self.login) else {
            return self.refuse(code, Encoding::Compact, ErrorCode::ParamIncorrect).await;
        };
        debug!(kind = ?big.kind, len = big.data.len(), "big data frame");
        let sent = match big.kind {
            FrameType::BigString | FrameType::BigBinary => {
                crate::flows::big_data::send(&self.server, login.user, &login.tid.node, big).await
            }
            _ => self.server.rooms.push(login.user, &big.target, Push::Raw(big.data)).await,
        };
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.refuse_with(code, Encoding::Compact, e).await,
        }
    }
}
