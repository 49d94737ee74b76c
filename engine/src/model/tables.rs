//! TIM's tables, with TIM's names (tim-server.md §3.2). Profiles, message bodies and offline
//! stanzas are sealed at rest. User ids are stored as 8 bytes big-endian.

use tim_kv::{ColumnDef, TableDef};

/// Accounts, in the slot of their user id.
pub mod timuser {
    use super::*;
    pub const UUID: usize = 0;
    /// Keyed hash of domain + login name (names are never stored).
    pub const NAMEKEY: usize = 1;
    /// argon2id PHC string.
    pub const PWD: usize = 2;
    /// Creation time, ns since the epoch, 8 bytes big-endian.
    pub const CREATETIME: usize = 3;
    /// The profile, a thrift-compact `TimUserBean` (absent until first set).
    pub const UBEAN: usize = 4;
    pub const DEF: TableDef = TableDef {
        id: 1,
        name: "timuser",
        columns: &[
            ColumnDef::unique("uuid"),
            ColumnDef::plain("namekey"),
            ColumnDef::plain("pwd"),
            ColumnDef::plain("createtime"),
            ColumnDef::sealed("ubean"),
        ],
    };
}

/// Chat history, in the slot of the conversation: the row id is the message's `mid`.
pub mod timmessage {
    use super::*;
    /// Conversation id: for 1:1 chats the larger user id, then the smaller.
    pub const CHATID: usize = 0;
    /// Sender user id.
    pub const FID: usize = 1;
    /// The message, thrift-compact encoded.
    pub const STANZA: usize = 2;
    /// For a message whose client set its `id`: the sender, the id and a digest of what the
    /// client sent (24 bytes), so a message sent again after a lost echo is stored once.
    pub const DEDUP: usize = 4;
    /// The message's `id` (its client's, or the one the server gave it), 8 bytes big-endian:
    /// not in the stanza, which keeps what TIM's history does, but given back with the
    /// message in an offline drain. Absent in rows written before it.
    pub const ID: usize = 5;
    pub const DEF: TableDef = TableDef {
        id: 2,
        name: "timmessage",
        columns: &[
            ColumnDef::indexed("chatid"),
            ColumnDef::plain("fid"),
            ColumnDef::sealed("stanza"),
            ColumnDef::plain("timeseries"),
            ColumnDef::indexed("dedup"),
            ColumnDef::plain("id"),
        ],
    };
}

/// Offline queues, in the slot of the recipient.
pub mod timoffline {
    use super::*;
    /// Recipient.
    pub const UUID: usize = 0;
    /// The message, thrift-compact encoded.
    pub const STANZA: usize = 2;
    /// The message's `mid` (8 bytes big-endian) in entries written before issue 27, indexed:
    /// recall and burn found the queued copies by it. Read still, never written.
    pub const INDEXED_MID: usize = 3;
    /// The message's `mid`, when it has one (8 bytes big-endian). Not indexed: an entry is its
    /// row and its queue's index entry, two keys to write and to delete; recall and burn find
    /// the queued copies by reading the queue.
    pub const MID: usize = 4;
    pub const DEF: TableDef = TableDef {
        id: 3,
        name: "timoffline",
        columns: &[
            ColumnDef::indexed("uuid"),
            ColumnDef::plain("chatid"),
            ColumnDef::sealed("stanza"),
            ColumnDef::indexed("mid"),
            ColumnDef::plain("msgmid"),
        ],
    };
}

/// One row per user pair holding the relation status byte (tim-server.md §3.3), in the slot
/// of the pair id.
pub mod timrelate {
    use super::*;
    /// Pair id: the larger user id, then the smaller.
    pub const UUID: usize = 0;
    pub const STATUS: usize = 1;
    /// Set (`[1]`) while a change of the pair is not finished (its roster and block rows, in the
    /// users' slots, may not match yet); absent otherwise.
    pub const PENDING: usize = 2;
    pub const DEF: TableDef = TableDef {
        id: 4,
        name: "timrelate",
        columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("status"), ColumnDef::indexed("pending")],
    };
}

/// The pair tables (friends, group membership, blocks): one row per owner and other party, in
/// the owner's slot.
pub mod pair {
    use super::*;
    /// Owner id then other id: one row per direction.
    pub const UNIKID: usize = 0;
    /// Owner.
    pub const UUID: usize = 1;
    /// The other party.
    pub const TUUID: usize = 2;
    pub const COLUMNS: &[ColumnDef] =
        &[ColumnDef::unique("unikid"), ColumnDef::indexed("uuid"), ColumnDef::plain("tuuid")];
    /// Friends.
    pub const TIMROSTER: TableDef = TableDef { id: 5, name: "timroster", columns: COLUMNS };
    /// Users a user blocked.
    pub const TIMBLOCK: TableDef = TableDef { id: 8, name: "timblock", columns: COLUMNS };
    /// Group membership, both directions: group → member and member → group.
    pub const TIMMUCROSTER: TableDef = TableDef { id: 7, name: "timmucroster", columns: COLUMNS };
    /// Group blocks: user → group (the user blocked it) and group → user (it blocked them).
    pub const TIMBLOCKROOM: TableDef = TableDef { id: 9, name: "timblockroom", columns: COLUMNS };
}

/// Groups, in the slot of the group id.
pub mod timgroup {
    use super::*;
    /// 1 private (joining needs approval), 2 open.
    pub const GTYPE: usize = 0;
    pub const UUID: usize = 1;
    pub const CREATETIME: usize = 2;
    /// 0 active, 1 cancelled.
    pub const STATUS: usize = 3;
    /// The group's profile, a thrift-compact `TimRoomBean` (founder, managers, topic, …).
    pub const RBEAN: usize = 4;
    pub const DEF: TableDef = TableDef {
        id: 6,
        name: "timgroup",
        columns: &[
            ColumnDef::plain("gtype"),
            ColumnDef::unique("uuid"),
            ColumnDef::plain("createtime"),
            ColumnDef::plain("status"),
            ColumnDef::sealed("rbean"),
        ],
    };
}

/// One row per group–user pair holding its status byte (tim-server.md §3.3): low nibble the
/// user's side (1 asked or joined, 2 blocked the group), high nibble the group's (1 accepted,
/// 2 blocked the user). Apart from `timrelate`, so group and user ids can never meet in one
/// key. In the slot of the pair id.
pub mod timgrouprelate {
    use super::*;
    /// Group id then user id.
    pub const UUID: usize = 0;
    pub const STATUS: usize = 1;
    /// Set (`[1]`) while a change of the relation is not finished; absent otherwise.
    pub const PENDING: usize = 2;
    pub const DEF: TableDef = TableDef {
        id: 10,
        name: "timgrouprelate",
        columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("status"), ColumnDef::indexed("pending")],
    };
}

/// Admin accounts of the admin API, all in one slot so they can be listed.
pub mod timadmin {
    use super::*;
    pub const NAME: usize = 0;
    /// argon2id PHC string.
    pub const PWD: usize = 1;
    /// 1 read, 2 write.
    pub const ROLE: usize = 2;
    /// Seconds since the epoch, 8 bytes big-endian.
    pub const CREATETIME: usize = 3;
    /// Random, set anew with the password: a token is valid under the epoch it names.
    pub const EPOCH: usize = 4;
    /// `[1]` on every row: the index that lists them.
    pub const ALL: usize = 5;
    pub const DEF: TableDef = TableDef {
        id: 11,
        name: "timadmin",
        columns: &[
            ColumnDef::unique("name"),
            ColumnDef::plain("pwd"),
            ColumnDef::plain("role"),
            ColumnDef::plain("createtime"),
            ColumnDef::plain("epoch"),
            ColumnDef::indexed("all"),
        ],
    };
}

/// Account bans of the admin API, in the slot of the user.
pub mod timban {
    use super::*;
    pub const UUID: usize = 0;
    /// When the ban ends: seconds since the epoch, 8 bytes big-endian.
    pub const UNTIL: usize = 1;
    pub const DEF: TableDef =
        TableDef { id: 12, name: "timban", columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("until")] };
}

/// How far each member of a group has the group's messages, in the slot of the group's
/// conversation (`services::chat_log`).
pub mod timgroupcursor {
    use super::*;
    /// The group.
    pub const GID: usize = 0;
    /// The member.
    pub const UID: usize = 1;
    /// The member's row of the group (`timmucroster`, group side) when the cursor was made:
    /// a cursor belongs to one membership.
    pub const MEMBERSHIP: usize = 2;
    /// The smallest `mid` of the group the member may not have had (8 bytes big-endian).
    pub const NEXT: usize = 3;
    pub const DEF: TableDef = TableDef {
        id: 13,
        name: "timgroupcursor",
        columns: &[
            ColumnDef::indexed("gid"),
            ColumnDef::plain("uid"),
            ColumnDef::plain("membership"),
            ColumnDef::plain("next"),
        ],
    };
}

/// How far each side of a 1:1 conversation has the other's messages, in the slot of the
/// conversation (`services::chat_log`).
pub mod timchatcursor {
    use super::*;
    /// The conversation (`timmessage::CHATID`).
    pub const CHATID: usize = 0;
    /// The side whose cursor it is.
    pub const UID: usize = 1;
    /// The smallest `mid` of the other side's messages this side may not have had (8 bytes
    /// big-endian).
    pub const NEXT: usize = 2;
    pub const DEF: TableDef = TableDef {
        id: 14,
        name: "timchatcursor",
        columns: &[ColumnDef::indexed("chatid"), ColumnDef::plain("uid"), ColumnDef::plain("next")],
    };
}

/// The peers whose 1:1 messages a user may not have had, in the slot of the user
/// (`services::inbox`).
pub mod timinbox {
    use super::*;
    /// The user.
    pub const UID: usize = 0;
    /// The user then the peer (8 bytes each).
    pub const PAIR: usize = 1;
    /// When the peer was last marked: ns since the epoch, 8 bytes big-endian.
    pub const MARKED: usize = 2;
    pub const DEF: TableDef = TableDef {
        id: 15,
        name: "timinbox",
        columns: &[ColumnDef::indexed("uid"), ColumnDef::unique("pair"), ColumnDef::plain("marked")],
    };
}

/// Every table the engine declares at open. The ids are those the first release allocated in
/// this order, so existing stores keep their keys.
pub const ALL: &[TableDef] = &[
    timuser::DEF,
    timmessage::DEF,
    timoffline::DEF,
    timrelate::DEF,
    pair::TIMROSTER,
    timgroup::DEF,
    pair::TIMMUCROSTER,
    pair::TIMBLOCK,
    pair::TIMBLOCKROOM,
    timgrouprelate::DEF,
    timadmin::DEF,
    timban::DEF,
    timgroupcursor::DEF,
    timchatcursor::DEF,
    timinbox::DEF,
];
