//! `tim bench chat`: N pairs of friends; in each pair one side sends 1:1 messages at a fixed
//! offered rate or flat out, the other acks them. Every message carries its sequence number
//! (as its client `id`), so loss, duplication and reordering are counted, not assumed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hdrhistogram::Histogram;
use tim_net::client::Client;
use tim_net::proto::{Tid, TimMessage, TimNodes, TimReq};
use tim_net::{FrameType, ServerFrame};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, Instant};

use super::{BenchArgs, Report, WAIT};

/// How long deliveries may trail the end of sending.
const GRACE: Duration = Duration::from_secs(10);
/// Most messages one pair may send in a run (bounds the generator's memory).
const MAX_PER_PAIR: usize = 1 << 20;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ChatArgs {
    /// Sender/receiver pairs (two accounts and two connections each).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages per second offered across all pairs; 0 sends flat out.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages a sender may have in flight: sent but not yet echoed to it, or not yet received
    /// by its peer (so a receiver slower than the server is not cut off as a slow reader).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// With several servers: both users of a pair on one server (pair `k` on server `k mod
    /// n`); without it, the sender and the receiver are on different servers.
    #[arg(long)]
    pub together: bool,
}

/// What one pair's sender and receiver share: when each sequence number was sent.
struct PairLog {
    origin: Instant,
    /// Nanoseconds since `origin` + 1; 0 = not sent.
    sent_at: Vec<AtomicU64>,
    sent: AtomicU64,
    /// Distinct messages the receiver got; `progress` wakes a sender waiting for it.
    delivered: AtomicU64,
    progress: Notify,
    done: AtomicBool,
}

impl PairLog {
    fn sent_elapsed(&self, seq: usize) -> Option<Duration> {
        let at = self.sent_at.get(seq)?.load(Ordering::Acquire);
        (at > 0).then(|| self.origin.elapsed().saturating_sub(Duration::from_nanos(at - 1)))
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    echoed: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

pub async fn run(args: &BenchArgs, c: &ChatArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("chat", serde_json::to_value(args)?);
    let names: Vec<String> = (0..c.pairs).flat_map(|i| [format!("s{i}"), format!("r{i}")]).collect();
    args.register(&names).await?;
    // Account 2k is pair k's sender, 2k + 1 its receiver.
    let together = c.together;
    let mut clients =
        args.logins_on(&names, 0, |i| args.server_for(if together { i / 2 } else { i })).await?.into_iter();
    let mut pairs = Vec::with_capacity(c.pairs);
    while let (Some(sender), Some(receiver)) = (clients.next(), clients.next()) {
        pairs.push((sender, receiver));
    }
    let befriended = args
        .in_parallel(pairs.into_iter().map(|((mut s, s_node), (mut r, r_node))| async move {
            befriend(&mut s, &s_node, &mut r, &r_node).await?;
            Ok(((s, s_node), (r, r_node)))
        }))
        .await?;

    let duration = Duration::from_secs(c.duration);
    let per_pair = if c.rate > 0 { c.rate as f64 / c.pairs.max(1) as f64 } else { 0.0 };
    let cap = if c.rate > 0 { ((per_pair * c.duration as f64) as usize + 16).min(MAX_PER_PAIR) } else { MAX_PER_PAIR };
    let text = "x".repeat(c.size);
    let server = args.server_process();
    let before = server.as_ref().map(|s| s.sample()).transpose()?;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for ((sender, _), (receiver, r_node)) in befriended {
        let log = Arc::new(PairLog {
            origin: start,
            sent_at: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            progress: Notify::new(),
            done: AtomicBool::new(false),
        });
        let interval = (per_pair > 0.0).then(|| Duration::from_secs_f64(1.0 / per_pair));
        let send =
            Sending { log: log.clone(), to: r_node, text: text.clone(), interval, window: c.window.max(1), deadline };
        tasks.spawn(send.run(sender));
        tasks.spawn(receive(receiver, log, deadline));
    }
    let (mut echo, mut delivery, mut tally) = (histogram()?, histogram()?, Tally::default());
    let mut last_delivery = start;
    while let Some(joined) = tasks.join_next().await {
        let part = joined??;
        echo.add(&part.echo)?;
        delivery.add(&part.delivery)?;
        tally.sent += part.tally.sent;
        tally.echoed += part.tally.echoed;
        tally.delivered += part.tally.delivered;
        tally.duplicated += part.tally.duplicated;
        tally.reordered += part.tally.reordered;
        last_delivery = last_delivery.max(part.last);
    }
    let window = last_delivery.duration_since(start).as_secs_f64().max(1e-9);
    report.add("messages sent", tally.sent as f64, "");
    report.add("messages echoed", tally.echoed as f64, "");
    report.add("messages delivered", tally.delivered as f64, "");
    report.add("messages lost", tally.sent.saturating_sub(tally.delivered) as f64, "");
    report.add("messages duplicated", tally.duplicated as f64, "");
    report.add("messages reordered", tally.reordered as f64, "");
    report.add("delivered per second", tally.delivered as f64 / window, "msg/s");
    for (name, h) in [("echo", &echo), ("delivery", &delivery)] {
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            report.add(format!("{name} latency {label}"), h.value_at_quantile(q) as f64 / 1000.0, "ms");
        }
        report.add(format!("{name} latency max"), h.max() as f64 / 1000.0, "ms");
    }
    if let (Some(server), Some(before)) = (server, before) {
        let after = server.sample()?;
        let cpu = after.cpu_secs - before.cpu_secs;
        report.add("server cpu time", cpu, "s");
        report.add("server cpu per delivered message", cpu / (tally.delivered.max(1) as f64) * 1e6, "us");
        report.add("server rss after", after.rss_kib as f64, "KiB");
    }
    Ok(report)
}

/// Makes the two friends unless they already are (from an earlier run).
pub(super) async fn befriend(s: &mut Client, s_node: &str, r: &mut Client, r_node: &str) -> anyhow::Result<()> {
    s.send(FrameType::Business, &TimReq { rtype: Some(1), ..TimReq::default() }).await?;
    let roster: TimNodes = next_of(s, FrameType::Nodes).await?.decode(s.encoding())?;
    if roster.nodelist.unwrap_or_default().iter().any(|n| n == r_node) {
        return Ok(());
    }
    ask(s, r, r_node).await?;
    ask(r, s, s_node).await
}

/// `asker` asks `target` for friendship; `answerer` (the target's client) acks the notice.
async fn ask(asker: &mut Client, answerer: &mut Client, target: &str) -> anyhow::Result<()> {
    let req = TimReq { rtype: Some(4), node: Some(target.into()), req_str: Some("bench".into()), ..TimReq::default() };
    asker.send(FrameType::Business, &req).await?;
    let push = next_of(answerer, FrameType::Message).await?;
    let Some(id) = push.ack_id else { bail!("expected a friend notice, got a message without ack request") };
    answerer.ack(id).await?;
    Ok(())
}

/// The next frame of `kind`, skipping others (presence of friends coming and going).
pub(super) async fn next_of(client: &mut Client, kind: FrameType) -> anyhow::Result<ServerFrame> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client.recv_within(left).await?;
        if frame.kind == kind {
            return Ok(frame);
        }
    }
}

/// What one task measured.
struct Part {
    echo: Histogram<u64>,
    delivery: Histogram<u64>,
    tally: Tally,
    last: Instant,
}

struct Sending {
    log: Arc<PairLog>,
    to: String,
    text: String,
    interval: Option<Duration>,
    window: usize,
    deadline: Instant,
}

impl Sending {
    async fn run(self, mut client: Client) -> anyhow::Result<Part> {
        let mut part =
            Part { echo: histogram()?, delivery: histogram()?, tally: Tally::default(), last: self.log.origin };
        let mut message = TimMessage {
            ms_type: 2,
            od_type: 1,
            to_tid: Some(Tid { node: self.to.clone(), ..Tid::default() }),
            data_string: Some(self.text.clone()),
            ..TimMessage::default()
        };
        let (mut seq, mut outstanding, mut next) = (0usize, 0usize, Instant::now());
        loop {
            let now = Instant::now();
            let sending = seq < self.log.sent_at.len() && now < self.deadline;
            if (!sending && outstanding == 0) || now > self.deadline + GRACE {
                break;
            }
            let undelivered = (seq as u64).saturating_sub(self.log.delivered.load(Ordering::Acquire));
            let waits_for_peer = undelivered >= self.window as u64;
            let may_send = sending && outstanding < self.window && !waits_for_peer;
            tokio::select! {
                _ = self.log.progress.notified(), if sending && waits_for_peer => {}
                _ = sleep_until(next), if may_send => {
                    message.id = Some(seq as i64);
                    let at = self.log.origin.elapsed().as_nanos() as u64 + 1;
                    if let Some(slot) = self.log.sent_at.get(seq) {
                        slot.store(at, Ordering::Release);
                    }
                    client.send(FrameType::Message, &message).await?;
                    self.log.sent.fetch_add(1, Ordering::Release);
                    seq += 1;
                    outstanding += 1;
                    next = match self.interval { Some(i) => next + i, None => Instant::now() };
                }
                frame = client.recv() => {
                    let Some(frame) = frame? else { break };
                    if frame.kind != FrameType::Message || frame.ack_id.is_some() {
                        continue;
                    }
                    let echoed: TimMessage = frame.decode(client.encoding())?;
                    let Some(sent) = echoed.id.and_then(|id| usize::try_from(id).ok()).and_then(|s| self.log.sent_elapsed(s)) else { continue };
                    part.echo.record(micros(sent))?;
                    part.tally.echoed += 1;
                    outstanding = outstanding.saturating_sub(1);
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        part.tally.sent = seq as u64;
        self.log.done.store(true, Ordering::Release);
        Ok(part)
    }
}

async fn receive(mut client: Client, log: Arc<PairLog>, deadline: Instant) -> anyhow::Result<Part> {
    let mut part = Part { echo: histogram()?, delivery: histogram()?, tally: Tally::default(), last: log.origin };
    let mut seen = vec![false; log.sent_at.len()];
    let mut highest: Option<usize> = None;
    loop {
        let all_in = log.done.load(Ordering::Acquire) && part.tally.delivered >= log.sent.load(Ordering::Acquire);
        if all_in || Instant::now() > deadline + GRACE {
            break;
        }
        let frame = match timeout(Duration::from_millis(100), client.recv()).await {
            Err(_) => continue,
            Ok(frame) => match frame? {
                Some(frame) => frame,
                None => break,
            },
        };
        let Some(ack_id) = frame.ack_id else { continue };
        client.ack(ack_id).await?;
        if frame.kind != FrameType::Message {
            continue;
        }
        let msg: TimMessage = frame.decode(client.encoding())?;
        let Some(seq) = msg.id.and_then(|id| usize::try_from(id).ok()) else { continue };
        match seen.get_mut(seq) {
            Some(true) => part.tally.duplicated += 1,
            Some(flag) => {
                *flag = true;
                part.tally.delivered += 1;
                log.delivered.fetch_add(1, Ordering::Release);
                log.progress.notify_one();
                if highest.is_some_and(|h| seq < h) {
                    part.tally.reordered += 1;
                }
                highest = highest.max(Some(seq));
                if let Some(sent) = log.sent_elapsed(seq) {
                    part.delivery.record(micros(sent))?;
                }
                part.last = Instant::now();
            }
            None => {}
        }
    }
    Ok(part)
}
