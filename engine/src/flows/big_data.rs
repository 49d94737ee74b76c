//! Big strings (95) and big binaries (96) between users (tim-protocol.md §2.4): reassembled by
//! the session, then handed raw to the target's online sessions as `[type][sender]sep[data]`;
//! never stored, never acked. Unlike TIM, only between friends (or with `--message-noauth`).

use std::sync::Arc;

use tim_net::frame::BigData;
use tim_net::proto::ErrorCode;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::server::Server;

/// Delivers `big` from `from` (whose node is `from_node`) to its target's online sessions:
/// a malformed or unknown target gets 4106, a target who is no friend 4105.
pub async fn send(server: &Arc<Server>, from: UserId, from_node: &str, big: BigData) -> Result<(), EngineError> {
    let to = UserId::parse(&big.target).ok_or(ErrorCode::AccountIncorrect)?;
    crate::flows::message::may_message(server, from, to).await?;
    // Raw: the same bytes whatever the session's encoding. Online only, best effort.
    let frame = BigData::encode_delivery(big.kind, from_node, &big.data);
    server.push.encoded(&[to], frame.clone(), frame, None).await;
    Ok(())
}
