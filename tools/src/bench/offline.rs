//! `tim bench offline`: fill the offline queues of N users, then log them in and drain them
//! (frame 17, acking every batch): the drain rate, and every message counted.

use std::time::Duration;

use anyhow::bail;
use tim_net::proto::{Tid, TimMessage, TimMessageList};
use tim_net::FrameType;
use tokio::time::Instant;

use super::chat::{befriend, next_of};
use super::{BenchArgs, Report, WAIT};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct OfflineArgs {
    /// Users whose queues are filled and drained.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Messages queued for each user.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

pub async fn run(args: &BenchArgs, c: &OfflineArgs) -> anyhow::Result<Report> {
    let mut report = Report::new("offline", serde_json::to_value(args)?);
    let receivers: Vec<String> = (0..c.users).map(|i| format!("q{i}")).collect();
    let mut names = vec!["q-sender".to_owned()];
    names.extend(receivers.iter().cloned());
    args.register(&names).await?;
    let mut clients = args.logins(&names, 0).await?.into_iter();
    let Some((mut sender, sender_node)) = clients.next() else { bail!("no sender") };
    let mut nodes = Vec::with_capacity(c.users);
    for (mut receiver, node) in clients {
        befriend(&mut sender, &sender_node, &mut receiver, &node).await?;
        nodes.push(node);
    }
    // The receivers are gone (their clients dropped above); let the server see it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let text = "x".repeat(c.size);
    // Client ids random per run: a run that repeats an earlier one's users sends new
    // messages, not repeats the server stores once.
    let ids_from = i64::from(rand::random::<u32>()) << 20;
    let ids_to = ids_from + c.messages as i64;
    for node in &nodes {
        for seq in 0..c.messages {
            let msg = TimMessage {
                ms_type: 2,
                od_type: 1,
                id: Some(ids_from + seq as i64),
                to_tid: Some(Tid { node: node.clone(), ..Tid::default() }),
                data_string: Some(text.clone()),
                ..TimMessage::default()
            };
            sender.send(FrameType::Message, &msg).await?;
            let echo = next_of(&mut sender, FrameType::Message).await?;
            if echo.ack_id.is_some() {
                bail!("expected the echo of a message, got a delivery");
            }
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();

    let server = args.server_process();
    let before = server.as_ref().map(|s| s.sample()).transpose()?;
    let started = Instant::now();
    let receivers = args.logins(&receivers, 0).await?;
    let counts = args
        .in_parallel(receivers.into_iter().map(|(mut client, _)| async move {
            client.send_empty(FrameType::OfflineMsg).await?;
            let mut seen = Vec::new();
            loop {
                let frame = client.recv_within(WAIT).await?;
                match (frame.kind, frame.ack_id) {
                    (FrameType::OfflineMsgEnd, _) => return Ok(seen),
                    (FrameType::OfflineMsg, Some(id)) => {
                        client.ack(id).await?;
                        let list: TimMessageList = frame.decode(client.encoding())?;
                        let listed = list.message_list.unwrap_or_default().into_iter().filter_map(|m| m.id);
                        seen.extend(listed.filter(|id| (ids_from..ids_to).contains(id)));
                    }
                    _ => {}
                }
            }
        }))
        .await?;
    let drain_secs = started.elapsed().as_secs_f64();
    let queued = (c.users * c.messages) as f64;
    let drained: usize = counts.iter().map(Vec::len).sum();
    let in_order = counts.iter().filter(|ids| ids.is_sorted_by(|a, b| a < b)).count();
    let complete = counts.iter().filter(|ids| ids.len() == c.messages).count();
    report.add("messages queued", queued, "");
    report.add("fill rate", queued / fill_secs.max(1e-9), "msg/s");
    report.add("messages drained", drained as f64, "");
    report.add("users drained completely and in order", complete.min(in_order) as f64, "");
    report.add("drain rate (login + drain)", drained as f64 / drain_secs.max(1e-9), "msg/s");
    if let (Some(server), Some(before)) = (server, before) {
        let after = server.sample()?;
        report.add(
            "server cpu per drained message",
            (after.cpu_secs - before.cpu_secs) / (drained.max(1) as f64) * 1e6,
            "us",
        );
    }
    Ok(report)
}
