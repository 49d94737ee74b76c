//! Golden vectors G1–G17 of tim-protocol.md §6, byte for byte (G18 lives with the engine's
//! node derivation), plus property tests: no input panics, and encode → decode is identity.

use bytes::Bytes;
use proptest::prelude::*;

use crate::codec::{decode_body, Binary, DecodeError, Encoding, TimStruct};
use crate::frame::*;
use crate::proto::*;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// `hex` bytes, then ASCII text, then more `hex` bytes.
fn hex_text(head: &str, text: &str, tail: &str) -> Vec<u8> {
    let mut out = hex(head);
    out.extend_from_slice(text.as_bytes());
    out.extend(hex(tail));
    out
}

fn json_frame(head: u8, json: &str) -> Bytes {
    let mut out = vec![head];
    out.extend_from_slice(json.as_bytes());
    Bytes::from(out)
}

fn client(bytes: &[u8]) -> ClientFrame {
    ClientFrame::parse(Bytes::copy_from_slice(bytes), 1 << 20).unwrap()
}

fn assert_json_eq(frame: &[u8], head: u8, expected: &str) {
    assert_eq!(frame[0], head);
    let got: serde_json::Value = serde_json::from_slice(&frame[1..]).unwrap();
    let want: serde_json::Value = serde_json::from_str(expected).unwrap();
    assert_eq!(got, want);
}

fn login_auth() -> TimAuth {
    TimAuth {
        name: Some("u1".into()),
        pwd: Some("p1".into()),
        domain: Some("d".into()),
        resource: Some("web".into()),
        termtyp: Some(1),
        ..TimAuth::default()
    }
}

#[test]
fn g1_ping() {
    let f = client(&hex("0D"));
    assert_eq!((f.kind, f.encoding, f.body.len()), (FrameType::Ping, Encoding::Compact, 0));
    let f = client(&hex("8D"));
    assert_eq!((f.kind, f.encoding), (FrameType::Ping, Encoding::Json));
    assert_eq!(&encode_server_empty(FrameType::Ping)[..], &hex("0D")[..]);
}

#[test]
fn g2_client_ack() {
    for raw in ["0C 00 00 00 07", "8C 00 00 00 07", "0C 00 00 00 07 00 00"] {
        let f = client(&hex(raw));
        assert_eq!(f.kind, FrameType::Ack);
        assert_eq!(f.ack_id().unwrap(), 7);
    }
    assert_eq!(client(&hex("0C 00 07")).ack_id(), Err(DecodeError::Truncated));
}

#[test]
fn g3_g4_login() {
    let g3 = hex("10 18 02 75 31 18 02 70 31 18 01 64 18 03 77 65 62 13 01 00");
    let f = client(&g3);
    assert_eq!((f.kind, f.encoding), (FrameType::Auth, Encoding::Compact));
    assert_eq!(f.decode::<TimAuth>().unwrap(), login_auth());
    assert_eq!(&encode_client(FrameType::Auth, Encoding::Compact, &login_auth())[..], &g3[..]);

    let g4 = json_frame(
        0x90,
        r#"{"name":"u1","pwd":"p1","domain":"d","resource":"web","termtyp":1,"token":null,"extend":null}"#,
    );
    let f = ClientFrame::parse(g4, 1 << 20).unwrap();
    assert_eq!((f.kind, f.encoding), (FrameType::Auth, Encoding::Json));
    assert_eq!(f.decode::<TimAuth>().unwrap(), login_auth());
}

#[test]
fn g5_login_failed() {
    let ack = encode_server(FrameType::Ack, Encoding::Compact, &TimAck::error(16, ErrorCode::PermissionDenied));
    assert_eq!(&ack[..], &hex_text("0C 12 13 10 1C 15 92 40 18 11", "permission denied", "00 00")[..]);
    let json = encode_server(FrameType::Ack, Encoding::Json, &TimAck::error(16, ErrorCode::PermissionDenied));
    assert_json_eq(&json, 0x0C, r#"{"ok":false,"timType":16,"error":{"code":4105,"info":"permission denied"}}"#);
    for (code, text, varint) in [
        (ErrorCode::Token, "error token", "15 A6 40 18 0B"),
        (ErrorCode::OverEntry, "over entry", "15 9E 40 18 0A"),
        (ErrorCode::ParamIncorrect, "parameter incorrect", "15 90 40 18 13"),
    ] {
        let got = encode_server(FrameType::Ack, Encoding::Compact, &TimAck::error(16, code));
        assert_eq!(&got[..], &hex_text(&format!("0C 12 13 10 1C {varint}"), text, "00 00")[..]);
    }
}

#[test]
fn g6_login_ok() {
    let ack = TimAck { t: Some(123), n: Some("NODE".into()), n2: Some("WS".into()), ..TimAck::ok(16) };
    let bytes = encode_server(FrameType::Ack, Encoding::Compact, &ack);
    assert_eq!(&bytes[..], &hex("0C 11 13 10 26 F6 01 18 04 4E 4F 44 45 28 02 57 53 00")[..]);
    let json = encode_server(FrameType::Ack, Encoding::Json, &ack);
    assert_json_eq(&json, 0x0C, r#"{"ok":true,"timType":16,"t":123,"n":"NODE","n2":"WS"}"#);
    let again = encode_server(FrameType::Ack, Encoding::Compact, &TimAck::ok(16));
    assert_eq!(&again[..], &hex("0C 11 13 10 00")[..]);
    assert_json_eq(
        &encode_server(FrameType::Ack, Encoding::Json, &TimAck::ok(16)),
        0x0C,
        r#"{"ok":true,"timType":16}"#,
    );
}

fn hi_to_b() -> TimMessage {
    TimMessage {
        ms_type: 2,
        od_type: 1,
        to_tid: Some(Tid { node: "B".into(), ..Tid::default() }),
        data_string: Some("hi".into()),
        ..TimMessage::default()
    }
}

#[test]
fn g7_message() {
    let g7 = hex("5A 13 02 13 01 5C 18 01 42 00 38 02 68 69 00");
    assert_eq!(client(&g7).decode::<TimMessage>().unwrap(), hi_to_b());
    assert_eq!(&encode_client(FrameType::Message, Encoding::Compact, &hi_to_b())[..], &g7[..]);
    let g7b = json_frame(
        0xDA,
        r#"{"msType":2,"odType":1,"id":null,"mid":null,"bnType":null,"fromTid":null,"toTid":{"node":"B","domain":null,"resource":null,"termtyp":null},"roomTid":null,"dataString":"hi","dataBinary":null,"isOffline":null,"timestamp":null,"udtype":null,"udshow":null,"extend":null,"extra":null}"#,
    );
    let f = ClientFrame::parse(g7b, 1 << 20).unwrap();
    assert_eq!((f.kind, f.encoding), (FrameType::Message, Encoding::Json));
    assert_eq!(f.decode::<TimMessage>().unwrap(), hi_to_b());
}

#[test]
fn g8_message_refused() {
    let cases = [
        (ErrorCode::PermissionDenied, "15 92 40 18 11", "permission denied"),
        (ErrorCode::AccountIncorrect, "15 94 40 18 11", "account incorrect"),
        (ErrorCode::HeavyLoad, "15 E0 4F 18 11", "heavy server load"),
    ];
    for (code, varint, text) in cases {
        let got = encode_server(FrameType::Ack, Encoding::Compact, &TimAck::error(90, code));
        assert_eq!(&got[..], &hex_text(&format!("0C 12 13 5A 1C {varint}"), text, "00 00")[..]);
    }
}

#[test]
fn g9_g10_roster() {
    let req = TimReq { rtype: Some(1), ..TimReq::default() };
    assert_eq!(client(&hex("29 15 02 00")).decode::<TimReq>().unwrap(), req);
    assert_eq!(&encode_client(FrameType::Business, Encoding::Compact, &req)[..], &hex("29 15 02 00")[..]);
    let timjs = json_frame(
        0xA9,
        r#"{"rtype":1,"node":null,"node2":null,"reqInt":null,"reqInt2":null,"reqStr":null,"reqStr2":null}"#,
    );
    assert_eq!(ClientFrame::parse(timjs, 1 << 20).unwrap().decode::<TimReq>().unwrap(), req);
    let nodes = TimNodes { ntype: 1, nodelist: Some(vec!["A".into(), "B".into()]), ..TimNodes::default() };
    let bytes = encode_server(FrameType::Nodes, Encoding::Compact, &nodes);
    assert_eq!(&bytes[..], &hex("2A 15 02 19 28 01 41 01 42 00")[..]);
}

#[test]
fn g11_pull() {
    let req =
        TimReq { rtype: Some(1), node: Some("B".into()), req_int: Some(0), req_int2: Some(10), ..TimReq::default() };
    let g11 = hex("15 15 02 18 01 42 26 00 16 14 00");
    assert_eq!(client(&g11).decode::<TimReq>().unwrap(), req);
    assert_eq!(&encode_client(FrameType::PullMessage, Encoding::Compact, &req)[..], &g11[..]);
    let timjs =
        json_frame(0x95, r#"{"rtype":1,"node":"B","node2":null,"reqInt":0,"reqInt2":10,"reqStr":null,"reqStr2":null}"#);
    assert_eq!(ClientFrame::parse(timjs, 1 << 20).unwrap().decode::<TimReq>().unwrap(), req);
}

#[test]
fn g12_offline_batch() {
    let msg = TimMessage { ms_type: 2, od_type: 1, data_string: Some("hi".into()), ..TimMessage::default() };
    let list = TimMessageList { id: Some(5), message_list: Some(vec![msg]) };
    let bytes = encode_server_with_ack(FrameType::OfflineMsg, 7, Encoding::Compact, &list);
    let g12 = hex("91 00 00 00 07 16 0A 19 1C 13 02 13 01 88 02 68 69 00 00");
    assert_eq!(&bytes[..], &g12[..]);
    let parsed = ServerFrame::parse(bytes).unwrap();
    assert_eq!((parsed.kind, parsed.ack_id), (FrameType::OfflineMsg, Some(7)));
    assert_eq!(parsed.decode::<TimMessageList>(Encoding::Compact).unwrap(), list);
    assert_eq!(&encode_server_empty(FrameType::OfflineMsgEnd)[..], &hex("12")[..]);
}

#[test]
fn g13_presence() {
    let p = TimPresence {
        to_tid: Some(Tid { node: "B".into(), ..Tid::default() }),
        show: Some(1),
        status: Some("on".into()),
        ..TimPresence::default()
    };
    let g13 = hex("5B 5C 18 01 42 00 24 02 18 02 6F 6E 00");
    assert_eq!(client(&g13).decode::<TimPresence>().unwrap(), p);
    assert_eq!(&encode_client(FrameType::Presence, Encoding::Compact, &p)[..], &g13[..]);
}

#[test]
fn g14_g15_vroom() {
    let ack = TimAck { t: Some(1), n: Some("V".into()), ..TimAck::ok(22) };
    assert_eq!(&encode_server(FrameType::Ack, Encoding::Compact, &ack)[..], &hex("0C 11 13 16 26 02 18 01 56 00")[..]);
    let stream = TimStream {
        id: 1,
        vnode: "V".into(),
        body: Some(Binary(Bytes::from_static(&[1, 2]))),
        from_node: "A".into(),
        ..TimStream::default()
    };
    let g15 = hex("5E 16 02 18 01 56 28 02 01 02 18 01 41 00");
    assert_eq!(&encode_server(FrameType::Stream, Encoding::Compact, &stream)[..], &g15[..]);
    let json = encode_server(FrameType::Stream, Encoding::Json, &stream);
    assert_json_eq(&json, 0x5E, r#"{"id":1,"VNode":"V","body":"AQI=","fromNode":"A"}"#);
    // timjs sends `vNode`: keys match case-insensitively.
    let lower: TimStream =
        decode_body(Bytes::from_static(br#"{"id":1,"vNode":"V","body":"AQI=","fromNode":"A"}"#), Encoding::Json)
            .unwrap();
    assert_eq!(lower, stream);
}

#[test]
fn g16_big_data() {
    let g16 = Bytes::from(hex("E0 00 00 00 0C 61 62 63 83 01 02 03"));
    assert_eq!(big_data_length(&g16), BigDataLength::Complete);
    let big = BigData::parse(g16).unwrap();
    assert_eq!((big.kind, big.target.as_str(), &big.data[..]), (FrameType::BigBinary, "abc", &[1u8, 2, 3][..]));

    for raw in ["DF 00 00 00 0B 61 62 63 7C 68 69", "DF 00 00 00 0B 61 62 63 00 68 69"] {
        let big = BigData::parse(Bytes::from(hex(raw))).unwrap();
        assert_eq!((big.kind, big.target.as_str(), &big.data[..]), (FrameType::BigString, "abc", &b"hi"[..]));
    }
    // timgo/atim: no length field.
    let legacy = BigData::parse(Bytes::from(hex("60 61 62 63 83 01 02 03"))).unwrap();
    assert_eq!((legacy.target.as_str(), &legacy.data[..]), ("abc", &[1u8, 2, 3][..]));
    assert_eq!(big_data_length(&hex("60 61 62 63 83 01")), BigDataLength::Legacy);
    assert_eq!(big_data_length(&hex("E0 00 00 00 20 61 62 63 83 01")), BigDataLength::Incomplete(32));
    assert_eq!(big_data_length(&hex("E0 00 00 00 06 61 62 63 83 01")), BigDataLength::Overrun);

    assert_eq!(&BigData::encode_delivery(FrameType::BigString, "A", b"hi")[..], &hex("5F 41 7C 68 69")[..]);
    assert_eq!(&BigData::encode_delivery(FrameType::BigBinary, "A", &[1, 2, 3])[..], &hex("60 41 83 01 02 03")[..]);
}

#[test]
fn g17_register() {
    let auth =
        TimAuth { name: Some("u1".into()), pwd: Some("p1".into()), domain: Some("d".into()), ..TimAuth::default() };
    let req = hex("0E 18 02 75 31 18 02 70 31 18 01 64 00");
    let f = client(&req);
    assert_eq!((f.kind, f.decode::<TimAuth>().unwrap()), (FrameType::Register, auth.clone()));
    assert_eq!(&encode_client(FrameType::Register, Encoding::Compact, &auth)[..], &req[..]);
    let ack = TimAck { n: Some("YpzSs1zsa8j".into()), ..TimAck::ok(14) };
    let reply = encode_server(FrameType::Ack, Encoding::Compact, &ack);
    assert_eq!(&reply[..], &hex_text("0C 11 13 0E 38 0B", "YpzSs1zsa8j", "00")[..]);
    let json = json_frame(0x8E, r#"{"name":"u1","pwd":"p1","domain":"d"}"#);
    assert_eq!(ClientFrame::parse(json, 1 << 20).unwrap().decode::<TimAuth>().unwrap(), auth);
    assert_json_eq(
        &encode_server(FrameType::Ack, Encoding::Json, &ack),
        0x0C,
        r#"{"ok":true,"timType":14,"n":"YpzSs1zsa8j"}"#,
    );
}

#[test]
fn decoding_rules() {
    // Unknown fields (id 20, a list and a nested struct) are skipped; trailing zero padding ignored.
    let mut raw = hex("13 02 13 01");
    raw.extend(hex("09 28 29 18 01 41 00")); // field 20 (absolute id), list<string> ["A"]
    raw.extend(hex("0C 2A 15 02 00")); // field 21 struct {1: i32 1}
    raw.extend(hex("00 00 00 00"));
    let m: TimMessage = decode_body(Bytes::from(raw), Encoding::Compact).unwrap();
    assert_eq!((m.ms_type, m.od_type), (2, 1));
    // A field of the wrong wire type is skipped, not an error: dataString (10) sent as i32.
    let m: TimMessage = decode_body(Bytes::from(hex("13 02 13 01 85 04 00")), Encoding::Compact).unwrap();
    assert_eq!(m.data_string, None);
    // JSON: case-insensitive keys, unknown keys and nulls ignored, base64 binaries.
    let m: TimMessage = decode_body(
        Bytes::from_static(br#"{"MSTYPE":2,"odtype":1,"whatever":[1,{"a":null}],"dataBinary":"AQID","tolist":["x"]}"#),
        Encoding::Json,
    )
    .unwrap();
    assert_eq!((m.ms_type, m.od_type), (2, 1));
    assert_eq!(m.data_binary, Some(Binary(Bytes::from_static(&[1, 2, 3]))));
    assert_eq!(m.to_list, Some(vec!["x".to_owned()]));
    // An exact key wins over a case-insensitive one whatever the order.
    let a: TimAck = decode_body(Bytes::from_static(br#"{"timType":5,"TIMTYPE":9,"ok":true}"#), Encoding::Json).unwrap();
    assert_eq!(a.tim_type, 5);
    // Errors, not panics.
    assert!(decode_body::<TimMessage>(Bytes::from(hex("13 02 98")), Encoding::Compact).is_err());
    assert!(decode_body::<TimMessage>(Bytes::from_static(b"[1,2]"), Encoding::Json).is_err());
    assert!(decode_body::<TimMessage>(Bytes::from_static(br#"{"msType":300}"#), Encoding::Json).is_err());
    assert_eq!(ClientFrame::parse(Bytes::new(), 10), Err(DecodeError::Empty));
    assert_eq!(ClientFrame::parse(Bytes::from_static(&[0x7F]), 10), Err(DecodeError::UnknownType(0x7F)));
    assert_eq!(
        ClientFrame::parse(Bytes::from_static(&[0x0D; 11]), 10),
        Err(DecodeError::TooLarge { len: 11, max: 10 })
    );
}

#[test]
fn hostile_counts_do_not_allocate() {
    // ToList (field 17) claiming 2^32 - 1 strings in a 12-byte body must fail fast.
    let raw = hex("13 02 13 01 F9 F8 FF FF FF FF 0F 00");
    assert_eq!(decode_body::<TimMessage>(Bytes::from(raw), Encoding::Compact), Err(DecodeError::Truncated));
    // Deeply nested unknown structs stop at the depth limit.
    let mut raw = hex("13 02 13 01");
    raw.extend(std::iter::repeat_n(0xFCu8, 200)); // field +15, struct, over and over
    assert_eq!(decode_body::<TimMessage>(Bytes::from(raw), Encoding::Compact), Err(DecodeError::TooDeep));
}

fn arb_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _|\u{e9}\u{4e2d}]{0,12}"
}

fn arb_tid() -> impl Strategy<Value = Tid> {
    (arb_string(), proptest::option::of(arb_string()), proptest::option::of(any::<i8>()))
        .prop_map(|(node, domain, termtyp)| Tid { node, domain, termtyp, ..Tid::default() })
}

fn arb_message() -> impl Strategy<Value = TimMessage> {
    (
        (any::<i8>(), any::<i8>(), proptest::option::of(any::<i64>()), proptest::option::of(any::<i64>())),
        (proptest::option::of(arb_tid()), proptest::option::of(arb_tid()), proptest::option::of(any::<bool>())),
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(arb_string()),
            proptest::option::of(proptest::collection::btree_map(arb_string(), arb_string(), 0..4)),
            proptest::option::of(proptest::collection::vec(arb_string(), 0..20)),
            proptest::option::of(any::<i16>()),
        ),
    )
        .prop_map(|((ms, od, id, mid), (from, to, off), (bin, s, ext, list, ud))| TimMessage {
            ms_type: ms,
            od_type: od,
            id,
            mid,
            from_tid: from,
            to_tid: to,
            is_offline: off,
            data_binary: bin.map(|b| Binary(Bytes::from(b))),
            data_string: s,
            extend: ext,
            to_list: list,
            udtype: ud,
            ..TimMessage::default()
        })
}

/// The fuzz corpus seeds (golden vectors) replayed as a stable test.
#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frame");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        crate::testsuite::exercise_decoders(&std::fs::read(entry.unwrap().path()).unwrap());
        seen += 1;
    }
    assert!(seen >= 15, "corpus seeds missing: {seen}");
}

fn roundtrip<T: TimStruct + PartialEq + std::fmt::Debug>(value: &T) -> Result<(), TestCaseError> {
    for encoding in [Encoding::Compact, Encoding::Json] {
        let frame = encode_client(FrameType::Message, encoding, value);
        let parsed = ClientFrame::parse(frame, usize::MAX).unwrap();
        prop_assert_eq!(&parsed.decode::<T>().unwrap(), value);
    }
    Ok(())
}

proptest! {
    #[test]
    fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        crate::testsuite::exercise_decoders(&raw);
    }

    #[test]
    fn message_roundtrip(msg in arb_message()) {
        roundtrip(&msg)?;
    }

    #[test]
    fn nodes_roundtrip(list in proptest::collection::vec(arb_string(), 0..30), ntype in any::<i32>()) {
        let mut usermap = std::collections::BTreeMap::new();
        usermap.insert("u".to_owned(), TimUserBean { name: list.first().cloned(), gender: Some(1), ..TimUserBean::default() });
        roundtrip(&TimNodes { ntype, nodelist: Some(list), usermap: Some(usermap), ..TimNodes::default() })?;
    }
}
