//! Codec micro benchmarks: decode and encode of the common frames, compact and JSON.
//! Run: `cargo bench -p tim-net --bench codec` (see benches/README.md).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use tim_net::codec::Encoding;
use tim_net::frame::{encode_client, encode_server_with_ack};
use tim_net::proto::{Tid, TimAuth, TimMessage};
use tim_net::{ClientFrame, FrameType};

const MAX_FRAME: usize = 8 << 20;

/// A typical chat message as a client sends it (target, text, client id).
fn chat() -> TimMessage {
    TimMessage {
        ms_type: 2,
        od_type: 1,
        id: Some(1_700_000_000_123),
        to_tid: Some(Tid { node: "LPabwAA4mm4".into(), ..Tid::default() }),
        data_string: Some("hello there, this is a short chat message of typical size".into()),
        ..TimMessage::default()
    }
}

/// The same message as the server delivers it (sender set, mid and timestamp assigned).
fn delivered() -> TimMessage {
    TimMessage {
        mid: Some(8_589_934_593),
        timestamp: Some(1_790_000_000_000_000_000),
        from_tid: Some(Tid {
            node: "YpzSs1zsa8j".into(),
            domain: Some("example.org".into()),
            resource: Some("web".into()),
            termtyp: Some(1),
            ..Tid::default()
        }),
        ..chat()
    }
}

fn login() -> TimAuth {
    TimAuth {
        name: Some("alice".into()),
        pwd: Some("correct horse battery staple".into()),
        domain: Some("example.org".into()),
        resource: Some("web".into()),
        termtyp: Some(1),
        ..TimAuth::default()
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for encoding in [Encoding::Compact, Encoding::Json] {
        let name = format!("{encoding:?}").to_lowercase();
        let msg = encode_client(FrameType::Message, encoding, &chat());
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("message/{name}"), |b| {
            b.iter(|| ClientFrame::parse(black_box(msg.clone()), MAX_FRAME).and_then(|f| f.decode::<TimMessage>()))
        });
        let auth = encode_client(FrameType::Auth, encoding, &login());
        group.bench_function(format!("auth/{name}"), |b| {
            b.iter(|| ClientFrame::parse(black_box(auth.clone()), MAX_FRAME).and_then(|f| f.decode::<TimAuth>()))
        });
    }
    let ping = Bytes::from_static(&[0x0D]);
    group.bench_function("ping", |b| b.iter(|| ClientFrame::parse(black_box(ping.clone()), MAX_FRAME)));
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let msg = delivered();
    for encoding in [Encoding::Compact, Encoding::Json] {
        let name = format!("{encoding:?}").to_lowercase();
        group.bench_function(format!("delivery/{name}"), |b| {
            b.iter(|| encode_server_with_ack(FrameType::Message, 7, encoding, black_box(&msg)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
