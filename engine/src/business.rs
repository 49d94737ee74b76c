//! TIMBUSINESS (41) requests, dispatched on `TimReq.rtype` (tim-protocol.md §3.4).
//! Errors of the request itself come as `TimAck{ok:false, timType:41, error}` without `t`;
//! an operation's own answer carries `t = rtype`.

use tim_net::proto::{ErrorCode, TimAck, TimReq};
use tim_net::FrameType;
use tracing::warn;

use crate::ident::UserId;
use crate::server::Server;

const BUSINESS: u8 = FrameType::Business as u8;

/// Business operations by `rtype`.
const MODIFYAUTH: i32 = 21;
/// Operations TIM defines that this server does not offer yet (rosters and groups).
const NOT_YET: &[i32] = &[1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20];

/// Handles one request of `user`; the reply to send.
pub async fn handle(server: &Server, user: UserId, req: &TimReq) -> TimAck {
    match req.rtype {
        Some(MODIFYAUTH) => modify_auth(server, user, req).await,
        Some(rtype) if NOT_YET.contains(&rtype) => TimAck::error(BUSINESS, ErrorCode::InterfaceIncorrect),
        // 5 and 10 are notification codes only; anything else is no operation at all.
        _ => TimAck::error(BUSINESS, ErrorCode::ParamIncorrect),
    }
}

/// MODIFYAUTH: `reqStr` = old password, `reqStr2` = new one.
async fn modify_auth(server: &Server, user: UserId, req: &TimReq) -> TimAck {
    let (Some(old), Some(new)) = (req.req_str.as_deref(), req.req_str2.as_deref()) else {
        return TimAck::error(BUSINESS, ErrorCode::ParamIncorrect);
    };
    let done = TimAck { t: Some(i64::from(MODIFYAUTH)), ..TimAck::ok(BUSINESS) };
    match server.accounts.change_password(user, old, new).await {
        Ok(()) => done,
        Err(e) => {
            if e.is_internal() {
                warn!(error = %e, "password change failed");
            }
            TimAck { ok: false, error: TimAck::error(BUSINESS, e.wire_code()).error, ..done }
        }
    }
}
