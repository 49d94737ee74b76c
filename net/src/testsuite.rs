//! Helpers shared by this crate's tests and the fuzz target (feature `testsuite`).

use bytes::Bytes;

use crate::codec::{decode_body, Encoding};
use crate::frame::{big_data_length, encode_client, BigData};
use crate::proto::{TimAuth, TimMessage, TimMessageList, TimNodes, TimPresence, TimReq, TimStream};
use crate::{ClientFrame, FrameType, ServerFrame};

/// Runs every decoder on `data`. None may panic; a message that decodes must survive a
/// re-encode unchanged (panics otherwise, which is what a fuzzer looks for).
pub fn exercise_decoders(data: &[u8]) {
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
}
