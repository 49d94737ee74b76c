//! Every decoder of client and server frames, on arbitrary bytes: none may panic, hang or
//! allocate past the input. Compact bodies that decode must re-encode and decode to the same.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tim_net::codec::{decode_body, Encoding};
use tim_net::frame::{big_data_length, encode_client, BigData};
use tim_net::proto::{TimAuth, TimMessage, TimMessageList, TimNodes, TimPresence, TimReq, TimStream};
use tim_net::{ClientFrame, FrameType, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(frame) = ClientFrame::parse(bytes.clone(), 8 << 20) {
        let _ = frame.decode::<TimAuth>();
        let _ = frame.decode::<TimReq>();
        let _ = frame.decode::<TimPresence>();
        let _ = frame.decode::<TimStream>();
        let _ = frame.decode::<TimNodes>();
        let _ = frame.decode::<TimMessageList>();
        let _ = frame.ack_id();
        if let Ok(msg) = frame.decode::<TimMessage>() {
            let again = encode_client(FrameType::Message, frame.encoding, &msg);
            let reparsed = ClientFrame::parse(again, usize::MAX).and_then(|f| f.decode::<TimMessage>());
            assert_eq!(reparsed.as_ref(), Ok(&msg), "re-encoding changed the message");
        }
    }
    let _ = ServerFrame::parse(bytes.clone());
    let _ = big_data_length(data);
    let _ = BigData::parse(bytes.clone());
    let _ = decode_body::<TimMessage>(bytes, Encoding::Json);
});
