//! The structs of TIM's client protocol (tim-protocol.md §3.2), field ids and JSON keys exact.

use std::collections::BTreeMap;

use crate::codec::{wire_struct, Binary};

/// String-to-string map, as thrift `map<string,string>`.
pub type StrMap = BTreeMap<String, String>;
/// String-to-bytes map, as thrift `map<string,binary>`.
pub type BinMap = BTreeMap<String, Binary>;

wire_struct! {
    /// Error carried by a failed [`TimAck`].
    pub struct TimError {
        1 "code" code: opt i32,
        2 "info" info: opt String,
    }
}

wire_struct! {
    /// Generic reply and error carrier (frame type 12 from the server).
    pub struct TimAck {
        1 "ok" ok: req bool,
        2 "timType" tim_type: req i8,
        3 "error" error: opt TimError,
        4 "t" t: opt i64,
        5 "n" n: opt String,
        6 "t2" t2: opt i64,
        7 "n2" n2: opt String,
    }
}

wire_struct! {
    /// An account, group or room address.
    pub struct Tid {
        1 "node" node: req String,
        2 "domain" domain: opt String,
        3 "resource" resource: opt String,
        4 "termtyp" termtyp: opt i8,
        5 "extend" extend: opt StrMap,
    }
}

wire_struct! {
    /// Login, register and token requests.
    pub struct TimAuth {
        1 "name" name: opt String,
        2 "pwd" pwd: opt String,
        3 "domain" domain: opt String,
        4 "resource" resource: opt String,
        5 "termtyp" termtyp: opt i8,
        6 "token" token: opt String,
        7 "extend" extend: opt StrMap,
    }
}

wire_struct! {
    /// Generic request (business operations, history, virtual rooms).
    pub struct TimReq {
        1 "rtype" rtype: opt i32,
        2 "node" node: opt String,
        3 "node2" node2: opt String,
        4 "reqInt" req_int: opt i64,
        5 "reqInt2" req_int2: opt i64,
        6 "reqStr" req_str: opt String,
        7 "reqStr2" req_str2: opt String,
    }
}

wire_struct! {
    /// A chat message, command or business notification.
    pub struct TimMessage {
        1 "msType" ms_type: req i8,
        2 "odType" od_type: req i8,
        3 "id" id: opt i64,
        4 "mid" mid: opt i64,
        5 "bnType" bn_type: opt i32,
        6 "fromTid" from_tid: opt Tid,
        7 "toTid" to_tid: opt Tid,
        8 "roomTid" room_tid: opt Tid,
        9 "dataBinary" data_binary: opt Binary,
        10 "dataString" data_string: opt String,
        11 "isOffline" is_offline: opt bool,
        12 "timestamp" timestamp: opt i64,
        13 "udtype" udtype: opt i16,
        14 "udshow" udshow: opt i16,
        15 "extend" extend: opt StrMap,
        16 "extra" extra: opt BinMap,
        17 "ToList" to_list: opt Vec<String>,
    }
}

wire_struct! {
    /// Presence, ephemeral.
    pub struct TimPresence {
        1 "id" id: opt i64,
        2 "offline" offline: opt bool,
        3 "subStatus" sub_status: opt i8,
        4 "fromTid" from_tid: opt Tid,
        5 "toTid" to_tid: opt Tid,
        6 "toList" to_list: opt Vec<String>,
        7 "show" show: opt i16,
        8 "status" status: opt String,
        9 "extend" extend: opt StrMap,
        10 "extra" extra: opt BinMap,
    }
}

wire_struct! {
    /// A virtual-room stream frame.
    pub struct TimStream {
        1 "id" id: req i64,
        2 "VNode" vnode: req String,
        3 "dtype" dtype: opt i8,
        4 "body" body: opt Binary,
        5 "fromNode" from_node: req String,
    }
}

wire_struct! {
    /// A user profile.
    pub struct TimUserBean {
        1 "name" name: opt String,
        2 "nickName" nick_name: opt String,
        4 "brithday" brithday: opt String,
        5 "gender" gender: opt i8,
        6 "cover" cover: opt String,
        7 "area" area: opt String,
        8 "createtime" createtime: opt i64,
        9 "photoTidAlbum" photo_tid_album: opt Vec<String>,
        10 "extend" extend: opt StrMap,
        11 "extra" extra: opt BinMap,
    }
}

wire_struct! {
    /// A group profile.
    pub struct TimRoomBean {
        1 "founder" founder: opt String,
        2 "managers" managers: opt Vec<String>,
        3 "cover" cover: opt String,
        4 "topic" topic: opt String,
        5 "label" label: opt String,
        6 "gtype" gtype: opt i8,
        7 "kind" kind: opt i64,
        8 "createtime" createtime: opt i64,
        9 "extend" extend: opt StrMap,
        10 "extra" extra: opt BinMap,
    }
}

wire_struct! {
    /// Node lists and profile maps.
    pub struct TimNodes {
        1 "ntype" ntype: req i32,
        2 "nodelist" nodelist: opt Vec<String>,
        3 "usermap" usermap: opt BTreeMap<String, TimUserBean>,
        4 "roommap" roommap: opt BTreeMap<String, TimRoomBean>,
        5 "node" node: opt String,
    }
}

wire_struct! {
    /// A batch of messages (offline batches, history pages).
    pub struct TimMessageList {
        1 "id" id: opt i64,
        2 "messageList" message_list: opt Vec<TimMessage>,
    }
}

impl TimAck {
    /// A successful reply to a request of frame type `tim_type`.
    pub fn ok(tim_type: u8) -> Self {
        Self { ok: true, tim_type: tim_type as i8, ..Self::default() }
    }

    /// A failed reply carrying TIM's error `code` and its info string.
    pub fn error(tim_type: u8, code: ErrorCode) -> Self {
        Self {
            ok: false,
            tim_type: tim_type as i8,
            error: Some(TimError { code: Some(code as i32), info: Some(code.info().to_owned()) }),
            ..Self::default()
        }
    }

    /// The error code of a failed ack, when it carries one.
    pub fn error_code(&self) -> Option<i32> {
        self.error.as_ref().and_then(|e| e.code)
    }
}

/// TIM's error codes with their exact info strings (tim-protocol.md §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(i32)]
pub enum ErrorCode {
    HasExist = 4101,
    NoPass = 4102,
    ExpireOperate = 4103,
    ParamIncorrect = 4104,
    PermissionDenied = 4105,
    AccountIncorrect = 4106,
    InterfaceIncorrect = 4107,
    Cancelled = 4108,
    NotExist = 4109,
    Blocked = 4110,
    OverEntry = 4111,
    ModifyAuthFailed = 4112,
    FormatError = 4113,
    BigData = 4114,
    Token = 4115,
    PingCount = 4116,
    Repetitive = 4117,
    Undefined = 5101,
    BlockingOperation = 5102,
    Database = 5103,
    HeavyLoad = 5104,
    FreqOutOfLimit = 5105,
}

impl ErrorCode {
    /// The info string TIM sends with the code.
    pub fn info(self) -> &'static str {
        match self {
            Self::HasExist => "has exist",
            Self::NoPass => "no pass",
            Self::ExpireOperate => "expire operate",
            Self::ParamIncorrect => "parameter incorrect",
            Self::PermissionDenied => "permission denied",
            Self::AccountIncorrect => "account incorrect",
            Self::InterfaceIncorrect => "interface incorrect",
            Self::Cancelled => "must not be a cancle object",
            Self::NotExist => "must not be a no exist object",
            Self::Blocked => "blocked object",
            Self::OverEntry => "over entry",
            Self::ModifyAuthFailed => "modify password failed",
            Self::FormatError => "format error",
            Self::BigData => "big data error",
            Self::Token => "error token",
            Self::PingCount => "error ping count",
            Self::Repetitive => "error repetitive operation",
            Self::Undefined => "undefined error",
            Self::BlockingOperation => "blocking operation",
            Self::Database => "database error",
            Self::HeavyLoad => "heavy server load",
            Self::FreqOutOfLimit => "freq out of limit",
        }
    }
}
