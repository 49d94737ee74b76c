//! TIM's tables, with TIM's names (tim-server.md §3.2). Profiles, message bodies and offline
//! stanzas are sealed at rest.

use tim_kv::{ColumnDef, TableDef};

/// Accounts, in the slot of their user id.
pub mod timuser {
    use super::*;
    /// User id, 8 bytes big-endian.
    pub const UUID: usize = 0;
    /// Keyed hash of domain + login name (names are never stored).
    pub const NAMEKEY: usize = 1;
    /// argon2id PHC string.
    pub const PWD: usize = 2;
    /// Creation time, ns since the epoch, 8 bytes big-endian.
    pub const CREATETIME: usize = 3;
    pub const DEF: TableDef = TableDef {
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

const TIMMESSAGE: TableDef = TableDef {
    name: "timmessage",
    columns: &[
        ColumnDef::indexed("chatid"),
        ColumnDef::plain("fid"),
        ColumnDef::sealed("stanza"),
        ColumnDef::plain("timeseries"),
    ],
};
const TIMOFFLINE: TableDef = TableDef {
    name: "timoffline",
    columns: &[
        ColumnDef::indexed("uuid"),
        ColumnDef::plain("chatid"),
        ColumnDef::sealed("stanza"),
        ColumnDef::plain("mid"),
    ],
};
const TIMRELATE: TableDef =
    TableDef { name: "timrelate", columns: &[ColumnDef::unique("uuid"), ColumnDef::plain("status")] };
const TIMGROUP: TableDef = TableDef {
    name: "timgroup",
    columns: &[
        ColumnDef::plain("gtype"),
        ColumnDef::unique("uuid"),
        ColumnDef::plain("createtime"),
        ColumnDef::plain("status"),
        ColumnDef::sealed("rbean"),
    ],
};
/// The pair tables (roster, membership, blocks) share one shape.
const PAIR_COLUMNS: &[ColumnDef] =
    &[ColumnDef::unique("unikid"), ColumnDef::indexed("uuid"), ColumnDef::plain("tuuid")];

/// Every table the engine declares at open.
pub const ALL: &[TableDef] = &[
    timuser::DEF,
    TIMMESSAGE,
    TIMOFFLINE,
    TIMRELATE,
    TableDef { name: "timroster", columns: PAIR_COLUMNS },
    TIMGROUP,
    TableDef { name: "timmucroster", columns: PAIR_COLUMNS },
    TableDef { name: "timblock", columns: PAIR_COLUMNS },
    TableDef { name: "timblockroom", columns: PAIR_COLUMNS },
];
