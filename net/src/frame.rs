//! TIM frames: one type byte, then a body (tim-protocol.md §2).
//!
//! Client → server, the 0x80 bit of byte 0 means "JSON body"; server → client it means "ack
//! requested" and four bytes of ack id follow. Big-data frames (95–97) carry raw bytes.

use bytes::{Buf, Bytes};

use crate::codec::{decode_body, decode_server_body, encode_body, DecodeError, Encoding, TimStruct, Writer};

/// Frame type codes (`sys/timEg.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Ack = 12,
    Ping = 13,
    Register = 14,
    Token = 15,
    Auth = 16,
    OfflineMsg = 17,
    OfflineMsgEnd = 18,
    BroadPresence = 19,
    Logout = 20,
    PullMessage = 21,
    VRoom = 22,
    Business = 41,
    Nodes = 42,
    Message = 90,
    Presence = 91,
    RevokeMessage = 92,
    BurnMessage = 93,
    Stream = 94,
    BigString = 95,
    BigBinary = 96,
    BigBinaryStream = 97,
}

impl TryFrom<u8> for FrameType {
    type Error = DecodeError;
    fn try_from(code: u8) -> Result<Self, DecodeError> {
        use FrameType::*;
        Ok(match code {
            12 => Ack,
            13 => Ping,
            14 => Register,
            15 => Token,
            16 => Auth,
            17 => OfflineMsg,
            18 => OfflineMsgEnd,
            19 => BroadPresence,
            20 => Logout,
            21 => PullMessage,
            22 => VRoom,
            41 => Business,
            42 => Nodes,
            90 => Message,
            91 => Presence,
            92 => RevokeMessage,
            93 => BurnMessage,
            94 => Stream,
            95 => BigString,
            96 => BigBinary,
            97 => BigBinaryStream,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }
}

impl FrameType {
    /// Big-data frames carry raw bytes and may be split over several WebSocket messages.
    pub fn is_big_data(self) -> bool {
        matches!(self, Self::BigString | Self::BigBinary | Self::BigBinaryStream)
    }
}

const HIGH_BIT: u8 = 0x80;

/// The frame type of byte 0 and whether its high bit is set.
fn head(msg: &[u8]) -> Result<(FrameType, bool), DecodeError> {
    let Some(&head) = msg.first() else {
        return Err(DecodeError::Empty);
    };
    Ok((FrameType::try_from(head & !HIGH_BIT)?, head & HIGH_BIT != 0))
}

impl Encoding {
    /// The body encoding a client frame declares in its first byte.
    pub fn of_client_head(head: u8) -> Self {
        if head & HIGH_BIT != 0 {
            Encoding::Json
        } else {
            Encoding::Compact
        }
    }
}

/// A frame as a client sent it: its type, its body's encoding and the body bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub kind: FrameType,
    pub encoding: Encoding,
    pub body: Bytes,
}

impl ClientFrame {
    /// Splits a received message into type, encoding and body, in O(1) (the body shares the
    /// buffer). The size limit is the listener's; this checks it again for direct callers.
    pub fn parse(mut msg: Bytes, max_frame: usize) -> Result<Self, DecodeError> {
        if msg.len() > max_frame {
            return Err(DecodeError::TooLarge { len: msg.len(), max: max_frame });
        }
        let (kind, json) = head(&msg)?;
        let encoding = if json { Encoding::Json } else { Encoding::Compact };
        msg.advance(1);
        Ok(Self { kind, encoding, body: msg })
    }

    /// Decodes the body as `T` in the frame's encoding.
    pub fn decode<T: TimStruct>(&self) -> Result<T, DecodeError> {
        decode_body(self.body.clone(), self.encoding)
    }

    /// The ack id of a type-12 frame: bytes 1..5, big-endian; what follows is ignored.
    pub fn ack_id(&self) -> Result<u32, DecodeError> {
        let Some(id) = self.body.first_chunk::<4>() else {
            return Err(DecodeError::Truncated);
        };
        Ok(u32::from_be_bytes(*id))
    }
}

/// Byte 0 of a client frame: `kind` with the JSON bit when `encoding` is JSON.
pub fn client_head(kind: FrameType, encoding: Encoding) -> u8 {
    kind as u8 | if encoding == Encoding::Json { HIGH_BIT } else { 0 }
}

/// Encodes a client frame: its head byte, then the body.
pub fn encode_client<T: TimStruct>(kind: FrameType, encoding: Encoding, value: &T) -> Bytes {
    let mut w = Writer::with_prefix(&[client_head(kind, encoding)]);
    encode_body(&mut w, value, encoding);
    w.finish()
}

/// Encodes a server frame without ack request: `kind`, then the body in the session's encoding.
pub fn encode_server<T: TimStruct>(kind: FrameType, encoding: Encoding, value: &T) -> Bytes {
    let mut w = Writer::with_prefix(&[kind as u8]);
    encode_body(&mut w, value, encoding);
    w.finish()
}

/// Encodes a server frame with an empty body (ping reply `0D`, offline end `12`).
pub fn encode_server_empty(kind: FrameType) -> Bytes {
    Bytes::copy_from_slice(&[kind as u8])
}

/// Encodes a server frame that asks for an ack: `kind | 0x80`, the ack id, then the body.
pub fn encode_server_with_ack<T: TimStruct>(kind: FrameType, ack_id: u32, encoding: Encoding, value: &T) -> Bytes {
    let mut w = Writer::with_prefix(&ack_head(kind, ack_id));
    encode_body(&mut w, value, encoding);
    w.finish()
}

/// A frame that asks for an ack around an already encoded body (fan-out encodes a body once
/// and sends it under a new ack id per session and attempt).
pub fn ack_frame(kind: FrameType, ack_id: u32, body: &[u8]) -> Bytes {
    let mut w = Writer::with_prefix(&ack_head(kind, ack_id));
    w.bytes(body);
    w.finish()
}

fn ack_head(kind: FrameType, ack_id: u32) -> [u8; 5] {
    let id = ack_id.to_be_bytes();
    [kind as u8 | HIGH_BIT, id[0], id[1], id[2], id[3]]
}

/// A frame as the server sent it (client side of the codec).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFrame {
    pub kind: FrameType,
    /// Set when the server asks for an ack of this frame.
    pub ack_id: Option<u32>,
    pub body: Bytes,
}

impl ServerFrame {
    pub fn parse(mut msg: Bytes) -> Result<Self, DecodeError> {
        let (kind, ack_requested) = head(&msg)?;
        msg.advance(1);
        let ack_id = if ack_requested {
            let Some(id) = msg.first_chunk::<4>() else {
                return Err(DecodeError::Truncated);
            };
            let id = u32::from_be_bytes(*id);
            msg.advance(4);
            Some(id)
        } else {
            None
        };
        Ok(Self { kind, ack_id, body: msg })
    }

    /// Decodes the body in the session's encoding.
    pub fn decode<T: TimStruct>(&self, encoding: Encoding) -> Result<T, DecodeError> {
        decode_server_body(self.body.clone(), encoding)
    }
}

/// Separator between target and data in a big-string frame.
pub const BIG_STRING_SEP: u8 = b'|';
/// timjs writes the big-string separator as 0x00; accepted too.
pub const BIG_STRING_SEP_TIMJS: u8 = 0x00;
/// Separator in big-binary frames (`SEP_BIN`).
pub const BIG_BINARY_SEP: u8 = 0x83;
/// Type byte plus the 4-byte total length of the length-prefixed form.
const BIG_HEADER: usize = 5;

/// How much of a length-prefixed big-data frame has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BigDataLength {
    /// The legacy form (timgo, atim) with no length: the message is the whole frame.
    Legacy,
    /// The declared total equals what arrived.
    Complete,
    /// More WebSocket messages must follow, up to this total length.
    Incomplete(usize),
    /// The declared length is smaller than what arrived (TIM answers 4114).
    Overrun,
}

/// Classifies a big-data message by its declared length. A length-prefixed frame has 0x00 at
/// byte 1 for any size under 16 MiB, where a legacy frame starts its base58 target, so the two
/// forms are told apart unambiguously (tim-protocol.md §7.3).
pub fn big_data_length(msg: &[u8]) -> BigDataLength {
    let declared = msg.get(1..BIG_HEADER).and_then(|s| s.first_chunk::<4>()).map(|b| u32::from_be_bytes(*b));
    match declared {
        Some(declared) if declared < 1 << 24 => {
            let declared = declared as usize;
            match declared.cmp(&msg.len()) {
                std::cmp::Ordering::Equal => BigDataLength::Complete,
                std::cmp::Ordering::Greater => BigDataLength::Incomplete(declared),
                std::cmp::Ordering::Less => BigDataLength::Overrun,
            }
        }
        _ => BigDataLength::Legacy,
    }
}

/// A complete big-data frame from a client: its type, its target node and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct BigData {
    pub kind: FrameType,
    pub target: String,
    pub data: Bytes,
}

impl BigData {
    /// Parses a whole (reassembled) big-data frame in either form.
    pub fn parse(mut frame: Bytes) -> Result<Self, DecodeError> {
        let (kind, _) = head(&frame)?;
        if !kind.is_big_data() {
            return Err(DecodeError::BigData("not a big-data frame type"));
        }
        let header = match big_data_length(&frame) {
            BigDataLength::Legacy => 1,
            BigDataLength::Complete => BIG_HEADER,
            BigDataLength::Incomplete(_) => return Err(DecodeError::Truncated),
            BigDataLength::Overrun => return Err(DecodeError::BigData("declared length too small")),
        };
        frame.advance(header);
        let is_sep = |b: &u8| match kind {
            FrameType::BigString => *b == BIG_STRING_SEP || *b == BIG_STRING_SEP_TIMJS,
            _ => *b == BIG_BINARY_SEP,
        };
        let Some(sep) = frame.iter().position(is_sep) else {
            return Err(DecodeError::BigData("no separator after the target"));
        };
        let target =
            String::from_utf8(frame.split_to(sep).to_vec()).map_err(|_| DecodeError::BigData("target is not text"))?;
        frame.advance(1);
        Ok(Self { kind, target, data: frame })
    }

    /// The server → client form: type, origin node, separator, data (no length, no ack).
    pub fn encode_delivery(kind: FrameType, origin: &str, data: &[u8]) -> Bytes {
        let sep = if kind == FrameType::BigString { BIG_STRING_SEP } else { BIG_BINARY_SEP };
        let mut w = Writer::with_prefix(&[kind as u8]);
        w.bytes(origin.as_bytes());
        w.byte(sep);
        w.bytes(data);
        w.finish()
    }
}
