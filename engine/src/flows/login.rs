//! A client's login (frame 16) and the end of its session, across the services: the account
//! checked (password or token), the session admitted by the directory of the user's slot
//! (the device limits hold across the cluster), a banned user refused, the sessions the login
//! replaces closed; at the end, the session taken out of the directory, its virtual rooms
//! left, and the user's friends told when it was the user's last session anywhere.

use std::sync::Arc;

use tim_net::proto::TimAuth;

use crate::error::EngineError;
use crate::model::ident::UserId;
use crate::server::Server;
use crate::session::outbound::SessionHandle;

/// Why a login was refused.
pub enum Refused {
    /// The node holds its `--connect-limit` of sessions (5104); the connection closes.
    NodeFull,
    Failed(EngineError),
}

/// Logs this node's session `handle` in as the user `auth` names: the user.
pub async fn log_in(server: &Server, auth: &TimAuth, handle: SessionHandle) -> Result<UserId, Refused> {
    let conn = handle.conn_id();
    let user = authenticate(server, auth).await.map_err(Refused::Failed)?;
    if server.sessions.add(user, handle).is_err() {
        return Err(Refused::NodeFull);
    }
    let replaced = match server.directory.admit(user, conn, auth.termtyp).await {
        Ok(replaced) => replaced,
        Err(e) => {
            server.sessions.remove(user, conn);
            return Err(Refused::Failed(e));
        }
    };
    // Banned users get 4105. Checked once the session is in the directory: a ban writes its
    // row, then logs out the sessions the directory lists, so a login racing it is either
    // listed there or reads the row here. Before the kick: a banned login replaces no session.
    if let Err(e) = server.bans.check_login(user).await {
        server.sessions.remove(user, conn);
        if let Err(left) = server.directory.leave(user, conn).await {
            let _ = left.answer("banned login");
        }
        return Err(Refused::Failed(e));
    }
    server.directory.kick(user, replaced).await;
    Ok(user)
}

/// A token login when a token is given, else a password login.
async fn authenticate(server: &Server, auth: &TimAuth) -> Result<UserId, EngineError> {
    let name = auth.name.as_deref().unwrap_or_default();
    let domain = auth.domain.as_deref().unwrap_or_default();
    match auth.token.as_deref() {
        Some(token) if !token.is_empty() => server.accounts.consume_token(token, name, domain).await,
        _ => server.accounts.verify(name, auth.pwd.as_deref().unwrap_or_default(), domain).await,
    }
}

/// This node's session `conn` ended: `user`'s when it had logged in, subscribed to `rooms`.
/// The directory says whether it was the user's last session anywhere (a session closed for a
/// newer login was replaced already, and tells nobody). In the background.
pub fn log_out(server: &Arc<Server>, conn: u64, user: Option<UserId>, rooms: Vec<String>) {
    if !rooms.is_empty() {
        let server_for_task = server.clone();
        server.tasks.spawn(async move { server_for_task.rooms.leave_all(conn, rooms).await });
    }
    let Some(user) = user else { return };
    server.sessions.remove(user, conn);
    let server_for_task = server.clone();
    server.tasks.spawn(async move {
        match server_for_task.directory.leave(user, conn).await {
            Ok(true) if !server_for_task.cfg.presence_offline_block => {
                crate::flows::presence::spawn_offline(&server_for_task, user)
            }
            Ok(_) => {}
            Err(e) => {
                let _ = e.answer("logout");
            }
        }
    });
}
