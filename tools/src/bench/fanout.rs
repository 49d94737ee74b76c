//! `tim bench group` and `tim bench room`: one sender, N receivers all online. `group`: the
//! sender posts to an open group of N members (acked deliveries, stored); `room`: the sender
//! pushes streams to a virtual room with N subscribers (best effort). Messages go out at a
//! fixed rate, each carrying its sequence number, so every delivery is counted and timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tim_net::client::Client;
use tim_net::codec::Binary;
use tim_net::proto::{Tid, TimAck, TimMessage, TimReq, TimStream};
use tim_net::FrameType;
use tokio::time::{sleep_until, timeout, Instant};

use super::chat::next_of;
use super::{BenchArgs, Report};

/// How long deliveries may trail the last send.
const GRACE: Duration = Duration::from_secs(10);
/// Most messages one run sends.
const MAX_MESSAGES: usize = 1 << 20;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct FanoutArgs {
    /// Receivers: group members besides the sender, or room subscribers.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Messages the sender sends.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Messages per second the sender sends.
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Bytes of payload per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Group,
    Room,
}

/// When each message was sent, in µs since the start + 1 (0: not yet).
struct SendLog {
    origin: Instant,
    sent_at: Vec<AtomicU64>,
}

impl SendLog {
    fn since_sent(&self, seq: usize) -> Option<Duration> {
        let at = self.sent_at.get(seq)?.load(Ordering::Acquire);
        (at > 0).then(|| self.origin.elapsed().saturating_sub(Duration::from_micros(at - 1)))
    }
}

/// What one receiver saw.
struct Seen {
    latency: Histogram<u64>,
    delivered: u64,
    duplicated: u64,
    last: Instant,
}

pub async fn run(args: &BenchArgs, c: &FanoutArgs, kind: Kind) -> anyhow::Result<Report> {
    if c.rate == 0 || c.messages == 0 || c.messages > MAX_MESSAGES {
        bail!("--rate must be at least 1 and --messages between 1 and {MAX_MESSAGES}");
    }
    let name = if kind == Kind::Group { "group" } else { "room" };
    let mut report = Report::new(name, serde_json::to_value(args)?);
    let prefix = if kind == Kind::Group { "g" } else { "v" };
    let names: Vec<String> = (0..=c.members).map(|i| format!("{prefix}{i}")).collect();
    args.register(&names).await?;
    let mut clients = args.logins(&names, 0).await?.into_iter();
    let Some((mut sender, _)) = clients.next() else { bail!("no sender") };
    let target = match kind {
        Kind::Group => open_group(&mut sender).await?,
        Kind::Room => new_room(&mut sender).await?,
    };
    let receivers = args
        .in_parallel(clients.map(|(mut client, _)| {
            let target = target.clone();
            async move {
                match kind {
                    Kind::Group => join_group(&mut client, &target).await?,
                    Kind::Room => subscribe(&mut client, &target).await?,
                }
                Ok(client)
            }
        }))
        .await?;

    let server = args.server_process();
    let before = server.as_ref().map(|s| s.sample()).transpose()?;
    let start = Instant::now();
    let log = Arc::new(SendLog { origin: start, sent_at: (0..c.messages).map(|_| AtomicU64::new(0)).collect() });
    let last_send = start + Duration::from_secs_f64(c.messages as f64 / f64::from(c.rate));
    let mut tasks = tokio::task::JoinSet::new();
    for client in receivers {
        tasks.spawn(receive(client, kind, log.clone(), c.messages, last_send + GRACE));
    }
    let sending = tokio::spawn(send(sender, kind, target, log.clone(), c.clone()));
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut delivered, mut duplicated, mut last) = (0u64, 0u64, start);
    while let Some(joined) = tasks.join_next().await {
        let seen = joined??;
        latency.add(&seen.latency)?;
        delivered += seen.delivered;
        duplicated += seen.duplicated;
        last = last.max(seen.last);
    }
    sending.await??;
    let expected = (c.messages * c.members) as u64;
    let window = last.duration_since(start).as_secs_f64().max(1e-9);
    report.add("receivers", c.members as f64, "");
    report.add("messages sent", c.messages as f64, "");
    report.add("deliveries expected", expected as f64, "");
    report.add("deliveries", delivered as f64, "");
    report.add("deliveries lost", expected.saturating_sub(delivered) as f64, "");
    report.add("deliveries duplicated", duplicated as f64, "");
    report.add("deliveries per second", delivered as f64 / window, "/s");
    for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        report.add(format!("delivery latency {label}"), latency.value_at_quantile(q) as f64 / 1000.0, "ms");
    }
    report.add("delivery latency max", latency.max() as f64 / 1000.0, "ms");
    if let (Some(server), Some(before)) = (server, before) {
        let after = server.sample()?;
        let cpu = after.cpu_secs - before.cpu_secs;
        report.add("server cpu per delivery", cpu / (delivered.max(1) as f64) * 1e6, "us");
        report.add("server rss after", after.rss_kib as f64, "KiB");
    }
    Ok(report)
}

/// Sends the messages at the fixed rate; for a group it also acks its own copies (the echo),
/// until all of them came or the grace ran out.
async fn send(mut client: Client, kind: Kind, target: String, log: Arc<SendLog>, c: FanoutArgs) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(c.rate));
    let payload = "x".repeat(c.size);
    let mut next = Instant::now();
    let (mut seq, mut own) = (0, 0);
    let end = log.origin + Duration::from_secs_f64(c.messages as f64 / f64::from(c.rate)) + GRACE;
    loop {
        let sending = seq < c.messages;
        let echoed = kind == Kind::Room || own >= c.messages;
        if !sending && (echoed || Instant::now() > end) {
            return Ok(());
        }
        tokio::select! {
            _ = sleep_until(next), if sending => {
                if let Some(slot) = log.sent_at.get(seq) {
                    slot.store(log.origin.elapsed().as_micros() as u64 + 1, Ordering::Release);
                }
                match kind {
                    Kind::Group => {
                        let msg = TimMessage {
                            ms_type: 3,
                            od_type: 1,
                            id: Some(seq as i64),
                            room_tid: Some(Tid { node: target.clone(), ..Tid::default() }),
                            data_string: Some(payload.clone()),
                            ..TimMessage::default()
                        };
                        client.send(FrameType::Message, &msg).await?;
                    }
                    Kind::Room => {
                        let mut body = (seq as u64).to_be_bytes().to_vec();
                        body.extend_from_slice(payload.as_bytes());
                        let stream = TimStream {
                            id: 0,
                            vnode: target.clone(),
                            dtype: None,
                            body: Some(Binary(Bytes::from(body))),
                            from_node: String::new(),
                        };
                        client.send(FrameType::Stream, &stream).await?;
                    }
                }
                seq += 1;
                next += interval;
            }
            frame = timeout(Duration::from_millis(100), client.recv()) => {
                let Ok(frame) = frame else { continue };
                let Some(frame) = frame? else { return Ok(()) };
                if frame.kind == FrameType::Ack {
                    let ack: TimAck = frame.decode(client.encoding())?;
                    bail!("the server refused a message: {ack:?}");
                }
                if let Some(id) = frame.ack_id {
                    client.ack(id).await?;
                    own += 1;
                }
            }
        }
    }
}

async fn receive(
    mut client: Client,
    kind: Kind,
    log: Arc<SendLog>,
    messages: usize,
    deadline: Instant,
) -> anyhow::Result<Seen> {
    let mut seen = vec![false; messages];
    let mut out =
        Seen { latency: Histogram::new_with_bounds(1, 600_000_000, 3)?, delivered: 0, duplicated: 0, last: log.origin };
    while (out.delivered as usize) < messages && Instant::now() < deadline {
        let frame = match timeout(Duration::from_millis(100), client.recv()).await {
            Err(_) => continue,
            Ok(frame) => match frame? {
                Some(frame) => frame,
                None => break,
            },
        };
        if let Some(id) = frame.ack_id {
            client.ack(id).await?;
        }
        let seq = match (kind, frame.kind) {
            (Kind::Group, FrameType::Message) => frame.decode::<TimMessage>(client.encoding())?.id,
            (Kind::Room, FrameType::Stream) => {
                let stream: TimStream = frame.decode(client.encoding())?;
                let body = stream.body.map(|b| b.0).unwrap_or_default();
                body.get(..8).and_then(|b| b.try_into().ok()).map(|b| u64::from_be_bytes(b) as i64)
            }
            _ => None,
        };
        let Some(seq) = seq.and_then(|s| usize::try_from(s).ok()) else { continue };
        match seen.get_mut(seq) {
            Some(true) => out.duplicated += 1,
            Some(flag) => {
                *flag = true;
                out.delivered += 1;
                out.last = Instant::now();
                if let Some(latency) = log.since_sent(seq) {
                    out.latency.record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1))?;
                }
            }
            None => {}
        }
    }
    Ok(out)
}

async fn business(client: &mut Client, req: TimReq) -> anyhow::Result<TimAck> {
    client.send(FrameType::Business, &req).await?;
    Ok(next_of(client, FrameType::Ack).await?.decode(client.encoding())?)
}

/// A new open group of the sender's; its node.
async fn open_group(client: &mut Client) -> anyhow::Result<String> {
    let req = TimReq { rtype: Some(8), node: Some("bench".into()), req_int: Some(2), ..TimReq::default() };
    match business(client, req).await? {
        TimAck { ok: true, n: Some(group), .. } => Ok(group),
        refused => bail!("creating the group failed: {refused:?}"),
    }
}

/// Joins the open group: the server answers with a PASSROOM notice (acked).
async fn join_group(client: &mut Client, group: &str) -> anyhow::Result<()> {
    let req = TimReq { rtype: Some(9), node: Some(group.into()), req_str: Some("bench".into()), ..TimReq::default() };
    client.send(FrameType::Business, &req).await?;
    let frame = tokio::time::timeout(super::WAIT, client.recv()).await??;
    match frame {
        Some(frame) if frame.kind == FrameType::Message => {
            if let Some(id) = frame.ack_id {
                client.ack(id).await?;
            }
            Ok(())
        }
        Some(frame) if frame.kind == FrameType::Ack => {
            bail!("joining the group failed: {:?}", frame.decode::<TimAck>(client.encoding())?)
        }
        other => bail!("unexpected answer to joining: {other:?}"),
    }
}

async fn vroom(client: &mut Client, req: TimReq) -> anyhow::Result<TimAck> {
    client.send(FrameType::VRoom, &req).await?;
    Ok(next_of(client, FrameType::Ack).await?.decode(client.encoding())?)
}

async fn new_room(client: &mut Client) -> anyhow::Result<String> {
    match vroom(client, TimReq { rtype: Some(1), ..TimReq::default() }).await? {
        TimAck { ok: true, n: Some(room), .. } => Ok(room),
        refused => bail!("creating the room failed: {refused:?}"),
    }
}

async fn subscribe(client: &mut Client, room: &str) -> anyhow::Result<()> {
    let ack = vroom(client, TimReq { rtype: Some(5), node: Some(room.into()), ..TimReq::default() }).await?;
    if !ack.ok {
        bail!("subscribing failed: {ack:?}");
    }
    Ok(())
}
