//! Presence (frames 91 and 19): ephemeral, delivered to online sessions only, never stored
//! (tim-server.md §2.3.5), and the `offline=true` presence sent to a user's friends when the
//! user's last session in the cluster ends.

use std::sync::Arc;

use rand::Rng;
use tim_net::proto::{ErrorCode, Tid, TimPresence};
use tim_net::report::ErrorChain;
use tim_net::FrameType;
use tracing::warn;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::server::Server;

/// Sends `presence` (as frame 91) to every online session of `users`.
async fn fan_out(server: &Arc<Server>, users: &[UserId], presence: &TimPresence) {
    server.push.frames(users, FrameType::Presence, presence, None).await;
}

/// The targets named by `toTid` and `toList`.
fn named_targets(presence: &TimPresence) -> Vec<&str> {
    presence
        .to_tid
        .iter()
        .map(|t| t.node.as_str())
        .chain(presence.to_list.iter().flatten().map(String::as_str))
        .collect()
}

/// Stamps a client's presence: the server's `fromTid`, an `id` when absent, never `offline`.
fn stamp(from: &Tid, mut presence: TimPresence) -> TimPresence {
    presence.from_tid = Some(from.clone());
    presence.offline = None;
    if presence.id.is_none() {
        presence.id = Some(rand::thread_rng().gen());
    }
    presence
}

/// Frame 91: to `toTid` and/or `toList`, which must all be existing accounts (else 4106).
pub async fn send(server: &Arc<Server>, from: &Tid, presence: TimPresence) -> Result<(), EngineError> {
    let names = named_targets(&presence);
    if names.is_empty() {
        return Err(ErrorCode::AccountIncorrect.into());
    }
    let mut targets = Vec::with_capacity(names.len());
    for name in names {
        let user = UserId::parse(name).ok_or(ErrorCode::AccountIncorrect)?;
        if !server.accounts.exists(user).await? {
            return Err(ErrorCode::AccountIncorrect.into());
        }
        targets.push(user);
    }
    fan_out(server, &targets, &stamp(from, presence)).await;
    Ok(())
}

/// Frame 19: to `toTid`/`toList` when given (unchecked, as TIM), else to all my friends.
pub async fn broadcast(server: &Arc<Server>, me: UserId, from: &Tid, presence: TimPresence) -> Result<(), EngineError> {
    let named: Vec<UserId> = named_targets(&presence).into_iter().filter_map(UserId::parse).collect();
    let targets =
        if presence.to_tid.is_none() && presence.to_list.is_none() { server.rosters.friends(me).await? } else { named };
    fan_out(server, &targets, &stamp(from, presence)).await;
    Ok(())
}

/// Tells `user`'s friends that the user went offline (their last session anywhere ended).
pub fn spawn_offline(server: &Arc<Server>, user: UserId) {
    let server_for_task = server.clone();
    server.tasks.spawn(async move {
        match server_for_task.rosters.friends(user).await {
            Ok(friends) => {
                let presence = TimPresence {
                    id: Some(rand::thread_rng().gen()),
                    offline: Some(true),
                    from_tid: Some(Tid { node: user.node(), ..Tid::default() }),
                    ..TimPresence::default()
                };
                fan_out(&server_for_task, &friends, &presence).await;
            }
            Err(e) => warn!(error = %ErrorChain(&e), "offline presence not sent"),
        }
    });
}
