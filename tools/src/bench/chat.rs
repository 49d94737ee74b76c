//! `tim bench chat`: N pairs of friends; in each pair one side sends 1:1 messages at a fixed
//! offered rate or flat out, the other acks them. Every message carries its sequence number
//! (as its client `id`), so loss, duplication and reordering are counted, not assumed.
//!
//! Clients behave as a careful TIM client does when the cluster changes under them: a message
//! refused with 5102 (try again) is sent again with the same `id`, and so is every message not
//! yet echoed when the connection drops; a client whose server goes away logs in again on
//! another one; the receiver drains its offline queue after each login, and again while
//! messages are missing at the end. A message delivered twice with the same `mid` is a repeat
//! the client drops; one stored twice (two `mid`s) is a duplicate. A message is reordered when
//! its `mid` is out of the order the sender sent it in.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use hdrhistogram::Histogram;
use tim_net::client::Client;
use tim_net::proto::{ErrorCode, Tid, TimAck, TimMessage, TimMessageList, TimNodes, TimReq};
use tim_net::{FrameType, ServerFrame};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout, Instant};

use super::{BenchArgs, Relogin, Report, WAIT};

/// How long deliveries may trail the end of sending.
const GRACE: Duration = Duration::from_secs(10);
/// How long a sender waits before it sends again what was refused with 5102, at first and
/// at most.
const RESEND_AFTER: Duration = Duration::from_millis(20);
const RESEND_MAX: Duration = Duration::from_secs(1);
/// How often a receiver still missing messages at the end asks for its offline queue.
const OFFLINE_AGAIN: Duration = Duration::from_secs(1);
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
    /// Seconds of sending before the measured `duration`: messages sent then are checked for
    /// loss and order but not measured (the server's first messages find cold caches and
    /// sessions that allocate as they go), and the server's CPU is counted from its end.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
}

/// What one pair's sender and receiver share: when each sequence number was sent.
struct PairLog {
    origin: Instant,
    /// The client `id` of message 0; message `seq` has `ids_from + seq`. Random per run, so a
    /// run that repeats an earlier one's pairs sends new messages, not repeats the server
    /// stores once, and takes nothing the earlier run left for its own.
    ids_from: i64,
    /// Messages sent from this long after `origin` on are measured.
    warmup: Duration,
    /// Nanoseconds since `origin` + 1; 0 = not sent.
    sent_at: Vec<AtomicU64>,
    sent: AtomicU64,
    /// Distinct messages the receiver got; `progress` wakes a sender waiting for it.
    delivered: AtomicU64,
    progress: Notify,
    done: AtomicBool,
}

impl PairLog {
    fn id_of(&self, seq: usize) -> i64 {
        self.ids_from + seq as i64
    }

    /// The sequence number of a message of this run with client `id`.
    fn seq_of(&self, id: Option<i64>) -> Option<usize> {
        id.and_then(|id| usize::try_from(id.checked_sub(self.ids_from)?).ok()).filter(|s| *s < self.sent_at.len())
    }

    /// How long ago message `seq` was sent, if it was sent after the warm-up.
    fn measured_elapsed(&self, seq: usize) -> Option<Duration> {
        let at = self.sent_at.get(seq)?.load(Ordering::Acquire);
        let sent = Duration::from_nanos(at.checked_sub(1)?);
        (sent >= self.warmup).then(|| self.origin.elapsed().saturating_sub(sent))
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    echoed: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    /// Messages sent again (refused with 5102, or not echoed before a connection dropped).
    resent: u64,
    /// Logins after a connection dropped.
    relogins: u64,
    /// Messages refused with another code than 5102 (given up).
    refused: u64,
    /// Messages sent after the warm-up and delivered.
    measured: u64,
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
    // How each account logs in again, and on which server it is now.
    let n = args.server.len().max(1);
    let mut relogins =
        names.iter().enumerate().map(|(i, name)| (args.relogin(name, i), (if together { i / 2 } else { i }) % n));
    let relogins: Vec<_> = std::iter::from_fn(|| Some((relogins.next()?, relogins.next()?))).collect();
    let befriended = args
        .in_parallel(pairs.into_iter().map(|((mut s, s_node), (mut r, r_node))| async move {
            befriend(&mut s, &s_node, &mut r, &r_node).await?;
            Ok(((s, s_node), (r, r_node)))
        }))
        .await?;

    let duration = Duration::from_secs(c.duration);
    let per_pair = if c.rate > 0 { c.rate as f64 / c.pairs.max(1) as f64 } else { 0.0 };
    let seconds = (c.duration + c.warmup) as f64;
    let cap = if c.rate > 0 { ((per_pair * seconds) as usize + 16).min(MAX_PER_PAIR) } else { MAX_PER_PAIR };
    let text = "x".repeat(c.size);
    let ids_from = i64::from(rand::random::<u32>()) * MAX_PER_PAIR as i64;
    let server = args.server_process();
    let start = Instant::now();
    let warmup = Duration::from_secs(c.warmup);
    let measured_from = start + warmup;
    let deadline = measured_from + duration;
    // The server's CPU from the end of the warm-up.
    let before = {
        let server = server.clone();
        tokio::spawn(async move {
            sleep_until(measured_from).await;
            server.as_ref().map(|s| s.sample()).transpose()
        })
    };
    // SIGTERM ends the sending early; the run finishes as at its deadline.
    let stopped = Arc::new(AtomicBool::new(false));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = stopped.clone();
    tokio::spawn(async move {
        if term.recv().await.is_some() {
            stop.store(true, Ordering::Release);
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (((sender, _), (receiver, r_node)), ((s_login, s_at), (r_login, r_at))) in befriended.into_iter().zip(relogins)
    {
        let log = Arc::new(PairLog {
            origin: start,
            ids_from,
            warmup,
            sent_at: (0..cap).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            progress: Notify::new(),
            done: AtomicBool::new(false),
        });
        let interval = (per_pair > 0.0).then(|| Duration::from_secs_f64(1.0 / per_pair));
        let window = c.window.max(1);
        let (to, text, stopped) = (r_node, text.clone(), stopped.clone());
        let pair = tasks.len() / 2;
        let first = start + interval.map_or(Duration::ZERO, |i| i.mul_f64(pair as f64 / c.pairs.max(1) as f64));
        let send = Sending { log: log.clone(), to, text, interval, first, window, deadline, stopped, pair };
        tasks.spawn(send.run(Session { client: sender, relogin: s_login, at: s_at }));
        tasks.spawn(receive(Session { client: receiver, relogin: r_login, at: r_at }, log, deadline, pair));
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
        tally.resent += part.tally.resent;
        tally.relogins += part.tally.relogins;
        tally.refused += part.tally.refused;
        tally.measured += part.tally.measured;
        last_delivery = last_delivery.max(part.last);
    }
    let window = last_delivery.saturating_duration_since(measured_from).as_secs_f64().max(1e-9);
    report.add("messages sent", tally.sent as f64, "");
    report.add("messages echoed", tally.echoed as f64, "");
    report.add("messages delivered", tally.delivered as f64, "");
    report.add("messages lost", tally.sent.saturating_sub(tally.delivered) as f64, "");
    report.add("messages duplicated", tally.duplicated as f64, "");
    report.add("messages reordered", tally.reordered as f64, "");
    report.add("messages sent again", tally.resent as f64, "");
    report.add("logins again", tally.relogins as f64, "");
    report.add("messages refused", tally.refused as f64, "");
    report.add("messages measured", tally.measured as f64, "");
    report.add("delivered per second", tally.measured as f64 / window, "msg/s");
    for (name, h) in [("echo", &echo), ("delivery", &delivery)] {
        for (label, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
            report.add(format!("{name} latency {label}"), h.value_at_quantile(q) as f64 / 1000.0, "ms");
        }
        report.add(format!("{name} latency max"), h.max() as f64 / 1000.0, "ms");
    }
    if let (Some(server), Some(before)) = (server, before.await??) {
        let after = server.sample()?;
        let cpu = after.cpu_secs - before.cpu_secs;
        report.add("server cpu time", cpu, "s");
        report.add("server cpu per delivered message", cpu / (tally.measured.max(1) as f64) * 1e6, "us");
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
    /// When the first message goes out: at a set rate the pairs' first sends are spread over
    /// one interval, so the offered load is even rather than every pair sending at once.
    first: Instant,
    window: usize,
    deadline: Instant,
    /// Set when the run is ended early.
    stopped: Arc<AtomicBool>,
    /// The pair's number, for what the run reports on stderr.
    pair: usize,
}

/// A client's session, and how it logs in again.
struct Session {
    client: Client,
    relogin: Relogin,
    /// The server it is on, by index.
    at: usize,
}

impl Session {
    /// Logs in again after the connection dropped (until the run's end).
    async fn again(&mut self, until: Instant, tally: &mut Tally) -> anyhow::Result<()> {
        (self.client, self.at) = self.relogin.login(self.at, until).await?;
        tally.relogins += 1;
        Ok(())
    }
}

/// The error code of a frame that refuses a message.
fn refusal(frame: &ServerFrame, encoding: tim_net::Encoding) -> Option<i32> {
    if frame.kind != FrameType::Ack {
        return None;
    }
    let ack = frame.decode::<TimAck>(encoding).ok()?;
    (!ack.ok && ack.tim_type == FrameType::Message as i8).then(|| ack.error_code().unwrap_or(0))
}

impl Sending {
    async fn run(self, mut session: Session) -> anyhow::Result<Part> {
        let mut part =
            Part { echo: histogram()?, delivery: histogram()?, tally: Tally::default(), last: self.log.origin };
        let mut message = TimMessage {
            ms_type: 2,
            od_type: 1,
            to_tid: Some(Tid { node: self.to.clone(), ..Tid::default() }),
            data_string: Some(self.text.clone()),
            ..TimMessage::default()
        };
        let mut echoed = vec![false; self.log.sent_at.len()];
        // Sent, not echoed yet: sent again after a refusal or a new login.
        let mut unechoed = BTreeSet::new();
        let mut resend_at: Option<Instant> = None;
        // Grows while messages are refused, back to the start once one is echoed.
        let mut backoff = RESEND_AFTER;
        let (mut seq, mut next) = (0usize, self.first);
        let mut until = self.deadline + GRACE;
        // When the sender's server last sent it a frame (shown for messages never echoed).
        let mut last_frame = Instant::now();
        loop {
            let now = Instant::now();
            let stopped = self.stopped.load(Ordering::Acquire);
            if stopped {
                until = until.min(now + GRACE);
            }
            let sending = seq < self.log.sent_at.len() && now < self.deadline && !stopped;
            if (!sending && unechoed.is_empty()) || now > until {
                break;
            }
            let undelivered = (seq as u64).saturating_sub(self.log.delivered.load(Ordering::Acquire));
            let waits_for_peer = undelivered >= self.window as u64;
            let may_send = sending && unechoed.len() < self.window && !waits_for_peer;
            // Biased: messages to send again go before new ones (after a new login, the server
            // keeps a connection's messages in the order they arrive on it).
            tokio::select! {
                biased;
                _ = self.log.progress.notified(), if sending && waits_for_peer => {}
                _ = sleep_until(resend_at.unwrap_or(now)), if resend_at.is_some() => {
                    resend_at = None;
                    for &again in &unechoed {
                        message.id = Some(self.log.id_of(again));
                        if session.client.send(FrameType::Message, &message).await.is_err() {
                            break;
                        }
                        part.tally.resent += 1;
                    }
                }
                _ = sleep_until(next), if may_send => {
                    message.id = Some(self.log.id_of(seq));
                    let at = self.log.origin.elapsed().as_nanos() as u64 + 1;
                    if let Some(slot) = self.log.sent_at.get(seq) {
                        slot.store(at, Ordering::Release);
                    }
                    self.log.sent.fetch_add(1, Ordering::Release);
                    unechoed.insert(seq);
                    seq += 1;
                    next = match self.interval { Some(i) => next + i, None => Instant::now() };
                    // A send that fails is sent again after the new login.
                    let _ = session.client.send(FrameType::Message, &message).await;
                }
                frame = session.client.recv() => {
                    let frame = match frame {
                        Ok(Some(frame)) => {
                            last_frame = Instant::now();
                            frame
                        }
                        Ok(None) | Err(_) => {
                            session.again(until, &mut part.tally).await?;
                            resend_at = Some(Instant::now());
                            continue;
                        }
                    };
                    match refusal(&frame, session.client.encoding()) {
                        Some(code) if code == ErrorCode::BlockingOperation as i32 => {
                            if resend_at.is_none() {
                                resend_at = Some(Instant::now() + backoff);
                                backoff = (backoff * 2).min(RESEND_MAX);
                            }
                            continue;
                        }
                        Some(code) => {
                            // Refused for good: the oldest message waiting (exactly it with
                            // one in flight) is given up.
                            if let Some(s) = unechoed.pop_first() {
                                echoed.get_mut(s).into_iter().for_each(|e| *e = true);
                                eprintln!("pair {}: message {s} refused with {code}", self.pair);
                            }
                            part.tally.refused += 1;
                            continue;
                        }
                        None => {}
                    }
                    if frame.kind != FrameType::Message || frame.ack_id.is_some() {
                        continue;
                    }
                    let echo: TimMessage = frame.decode(session.client.encoding())?;
                    let Some(s) = self.log.seq_of(echo.id) else { continue };
                    let Some(first) = echoed.get_mut(s).filter(|e| !**e) else { continue };
                    *first = true;
                    unechoed.remove(&s);
                    backoff = RESEND_AFTER;
                    if let Some(sent) = self.log.measured_elapsed(s) {
                        part.echo.record(micros(sent))?;
                    }
                    part.tally.echoed += 1;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        part.tally.sent = seq as u64;
        if !unechoed.is_empty() {
            eprintln!(
                "pair {}: messages never echoed: {unechoed:?} (sender on server {} after {} logins again, \
                 last frame from it {:?} ago)",
                self.pair,
                session.at,
                part.tally.relogins,
                last_frame.elapsed()
            );
        }
        self.log.done.store(true, Ordering::Release);
        Ok(part)
    }
}

/// What the receiver saw of each message: its `mid` by sequence number.
struct Received {
    mids: BTreeMap<usize, i64>,
    log: Arc<PairLog>,
}

impl Received {
    /// Counts one delivered message; whether it is new.
    fn take(&mut self, msg: &TimMessage, tally: &mut Tally) -> Option<usize> {
        let seq = self.log.seq_of(msg.id)?;
        let mid = msg.mid.unwrap_or(0);
        match self.mids.get(&seq) {
            Some(seen) if *seen == mid => return None,
            Some(_) => {
                tally.duplicated += 1;
                return None;
            }
            None => {}
        }
        let before = self.mids.range(..seq).next_back().is_some_and(|(_, m)| *m > mid);
        let after = self.mids.range(seq + 1..).next().is_some_and(|(_, m)| *m < mid);
        if before || after {
            tally.reordered += 1;
        }
        self.mids.insert(seq, mid);
        tally.delivered += 1;
        Some(seq)
    }
}

async fn receive(mut session: Session, log: Arc<PairLog>, deadline: Instant, pair: usize) -> anyhow::Result<Part> {
    let mut part = Part { echo: histogram()?, delivery: histogram()?, tally: Tally::default(), last: log.origin };
    let mut received = Received { mids: BTreeMap::new(), log: log.clone() };
    let mut until = deadline + GRACE;
    // When the offline queue was last asked for, while a drain is under way.
    let mut draining: Option<Instant> = None;
    loop {
        let sent = log.sent.load(Ordering::Acquire);
        let done = log.done.load(Ordering::Acquire);
        if done {
            until = until.min(Instant::now() + GRACE);
        }
        if (done && part.tally.delivered >= sent) || Instant::now() > until {
            break;
        }
        // Messages still missing once the sender is done may wait in the offline queue (a
        // push that found the session gone while the cluster changed).
        let stale = draining.is_none_or(|at| at.elapsed() > OFFLINE_AGAIN);
        if done && stale {
            draining = Some(Instant::now());
            if session.client.send_empty(FrameType::OfflineMsg).await.is_err() {
                session.again(until, &mut part.tally).await?;
            }
        }
        let frame = match timeout(Duration::from_millis(100), session.client.recv()).await {
            Err(_) => continue,
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None) | Err(_)) => {
                session.again(until, &mut part.tally).await?;
                draining = Some(Instant::now());
                let _ = session.client.send_empty(FrameType::OfflineMsg).await;
                continue;
            }
        };
        if frame.kind == FrameType::OfflineMsgEnd {
            draining = None;
            continue;
        }
        let Some(ack_id) = frame.ack_id else { continue };
        let _ = session.client.ack(ack_id).await;
        let messages = match frame.kind {
            FrameType::Message => vec![frame.decode::<TimMessage>(session.client.encoding())?],
            FrameType::OfflineMsg => {
                frame.decode::<TimMessageList>(session.client.encoding())?.message_list.unwrap_or_default()
            }
            _ => continue,
        };
        for msg in &messages {
            let Some(seq) = received.take(msg, &mut part.tally) else { continue };
            log.delivered.fetch_add(1, Ordering::Release);
            log.progress.notify_one();
            if let Some(sent) = log.measured_elapsed(seq) {
                part.delivery.record(micros(sent))?;
                part.tally.measured += 1;
            }
            part.last = Instant::now();
        }
    }
    let sent = log.sent.load(Ordering::Acquire) as usize;
    let missing: Vec<usize> = (0..sent).filter(|seq| !received.mids.contains_key(seq)).take(20).collect();
    if !missing.is_empty() {
        eprintln!("pair {pair}: messages never delivered: {missing:?}");
    }
    Ok(part)
}
