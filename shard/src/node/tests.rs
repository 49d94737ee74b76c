//! Nodes in one process, on loopback, whose links go through proxies the test can cut.

use std::sync::atomic::{AtomicUsize, Ordering};

use tim_kv::{Batch, ColumnDef, Cursor, RocksStore, Row, RowId, SealKey, Slot, StoreConfig, TableDef, TableId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::handover::PART_BYTES;
use crate::placement::Member;
use crate::SLOTS;

const T: TableDef = TableDef { id: 1, name: "t", columns: &[ColumnDef::indexed("k"), ColumnDef::plain("v")] };
/// How long a cluster may take to reach a state the test waits for.
const SETTLE: Duration = Duration::from_secs(60);

/// A TCP proxy in front of a node's link listener: forwards both ways until it is cut, then
/// drops every connection (and refuses new ones) until it is healed. It can cut itself once
/// a number of bytes went towards the node.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Bytes towards the node after which the proxy cuts itself (`usize::MAX`: never).
    cut_after: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(false);
        let proxy = Proxy { addr, cut, cut_after: Arc::new(AtomicUsize::new(usize::MAX)), sent: Arc::default() };
        let (cut, cut_after, sent) = (proxy.cut.clone(), proxy.cut_after.clone(), proxy.sent.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *cut.borrow() {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(to).await else { continue };
                let (cut, cut_after, sent) = (cut.clone(), cut_after.clone(), sent.clone());
                tokio::spawn(forward(inbound, outbound, cut, cut_after, sent));
            }
        });
        proxy
    }

    fn cut_after(&self, bytes: usize) {
        self.cut_after.store(self.sent.load(Ordering::SeqCst) + bytes, Ordering::SeqCst);
    }

    async fn wait_cut(&self) {
        let mut cut = self.cut.subscribe();
        tokio::time::timeout(SETTLE, cut.wait_for(|cut| *cut)).await.expect("the link was cut").unwrap();
    }

    fn heal(&self) {
        self.cut_after.store(usize::MAX, Ordering::SeqCst);
        self.cut.send_replace(false);
    }
}

/// Copies between the two sockets until either closes or the proxy is cut.
async fn forward(
    inbound: TcpStream,
    outbound: TcpStream,
    cut: watch::Sender<bool>,
    cut_after: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let mut cut_seen = cut.subscribe();
    let towards_node = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match in_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if out_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if sent.fetch_add(n, Ordering::SeqCst) + n >= cut_after.load(Ordering::SeqCst) {
                cut.send_replace(true);
            }
        }
    };
    let back = async {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
    };
    tokio::select! {
        _ = towards_node => {}
        _ = back => {}
        _ = cut_seen.wait_for(|cut| *cut) => {}
    }
}

struct TestNode {
    node: ClusterNode,
    cluster: Arc<Cluster>,
    store: Arc<dyn Store>,
    table: TableId,
    gossip: SocketAddr,
    /// The link listener itself, not through the proxy.
    rpc: SocketAddr,
}

/// A node on an in-memory store whose link listener other nodes reach through a proxy.
async fn start_node(id: u64, seeds: Vec<String>) -> (TestNode, Proxy) {
    start_paced_node(id, seeds, None).await
}

/// The same, sending hand-overs at `rate` bytes per second.
async fn start_paced_node(id: u64, seeds: Vec<String>, rate: Option<NonZeroU64>) -> (TestNode, Proxy) {
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&StoreConfig::in_memory(), SealKey::new(&[1; 32]), &[T]).unwrap());
    let ownership = Arc::new(Ownership::load(store.clone()).unwrap());
    let gossip_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gossip = gossip_socket.local_addr().unwrap();
    let rpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rpc = rpc_listener.local_addr().unwrap();
    let proxy = Proxy::start(rpc).await;
    let founds = seeds.is_empty();
    let cfg = JoinConfig {
        node: NodeId(id),
        generation: 1,
        cluster_id: "test".into(),
        weight: 1,
        gossip_socket,
        gossip_advertise: gossip,
        rpc_listener,
        rpc_advertise: proxy.addr,
        client_advertise: "127.0.0.1:9".parse().unwrap(),
        seeds,
        gossip_key: [3; 32],
        rpc_key: [4; 32],
        gossip_interval: Duration::from_millis(50),
        moves_at_once: 8,
        migration_rate: rate,
        timeouts: Timeouts {
            call: Duration::from_secs(2),
            moving: Duration::from_millis(200),
            lease: Duration::from_secs(4),
        },
        legacy_incarnation: 0x1e9,
        found_after: Duration::from_millis(200),
    };
    let table = store.table("t").unwrap();
    let (node, cluster) = ClusterNode::start(store.clone(), ownership, cfg).await.unwrap();
    let node = TestNode { node, cluster, store, table, gossip, rpc };
    if founds {
        let deadline = Instant::now() + SETTLE;
        let ownership = node.cluster.ownership();
        while ownership.owned().len() < usize::from(SLOTS) || !ownership.gate().is_open() {
            assert!(Instant::now() < deadline, "the founder does not serve");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (node, proxy)
}

/// The nodes that own `slot`, by their own records.
fn owners(nodes: &[&TestNode], slot: Slot) -> Vec<NodeId> {
    let owns = |n: &&&TestNode| matches!(n.cluster.ownership().state(slot), Some(SlotState::Owned { .. }));
    nodes.iter().filter(owns).map(|n| n.cluster.node()).collect()
}

async fn put(node: &TestNode, slot: Slot, key: &'static [u8], value: Vec<u8>) {
    let mut row = Row::new(2);
    row.set(0, bytes::Bytes::from_static(key));
    row.set(1, value);
    let mut batch = Batch::new(slot);
    batch.insert(node.table, row);
    node.cluster.write(batch).await.unwrap();
}

/// The rows of `slot` under `key`, read through `node` (wherever the slot is).
async fn rows(node: &TestNode, slot: Slot, key: &[u8]) -> Vec<(RowId, Row)> {
    let mut out: Vec<(RowId, Row)> = Vec::new();
    loop {
        let cursor = out.last().map_or(Cursor::OLDEST, |(id, _)| Cursor::Asc(RowId(id.0 + 1)));
        let page = node.cluster.page(node.table, slot, 0, key, cursor, 10).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The link to a joining node is cut in the middle of the copy of a slot that takes several
/// parts. Cut before the fence (an online copy), the old owner goes on serving the slot;
/// cut after it (a hand-over fenced before, resumed), nobody serves it. Either way no slot is
/// owned twice, and once the link is back the hand-over completes with every row.
struct CutMidCopy {
    a: TestNode,
    b: TestNode,
    b_proxy: Proxy,
    placement: Placement,
    /// The slot whose copy to B was cut.
    big: Slot,
    /// Its rows before the hand-over.
    before: Vec<(RowId, Row)>,
}

/// Node A founds a cluster and fills a slot that placement gives to B with four parts' worth
/// of rows (and, when `fenced`, fences it towards B, as a hand-over cut short after its fence
/// leaves it); B joins, and its link is cut while that slot is copied to it.
async fn cut_mid_copy(fenced: bool) -> CutMidCopy {
    let (a, _) = start_node(0xA, Vec::new()).await;
    let placement = Placement::new([Member { id: NodeId(0xA), weight: 1 }, Member { id: NodeId(0xB), weight: 1 }], 1);
    let big = placement.owned_by(NodeId(0xB)).next().unwrap();
    for _ in 0..64 {
        put(&a, big, b"big", vec![7u8; 64 << 10]).await;
    }
    let before = rows(&a, big, b"big").await;
    assert_eq!(before.len(), 64);
    if fenced {
        a.cluster.ownership().fence(big, NodeId(0xB)).await.unwrap();
    }

    let (b, b_proxy) = start_node(0xB, vec![a.gossip.to_string()]).await;
    // Every other slot moving to B is a few hundred bytes: the cut falls inside the big one.
    b_proxy.cut_after(2 * PART_BYTES);
    b_proxy.wait_cut().await;
    // B holds some of the slot's rows (written as parts arrive, not served: B owns the slot
    // only with the last part).
    let deadline = Instant::now() + SETTLE;
    loop {
        // Parts carry rows before index entries: count the rows themselves.
        let copied = before.iter().filter(|(id, _)| b.store.get(b.table, *id).unwrap().is_some()).count();
        if copied > 0 {
            assert!(copied < before.len(), "the copy was cut short: {copied} rows arrived");
            break;
        }
        assert!(Instant::now() < deadline, "no part of the big slot arrived before the cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    CutMidCopy { a, b, b_proxy, placement, big, before }
}

/// Waits until every slot is owned, by its nodes' own records, by exactly `owner(slot)`.
async fn wait_owned_once(nodes: &[&TestNode], owner: impl Fn(Slot) -> NodeId) {
    let deadline = Instant::now() + SETTLE;
    while !(0..SLOTS).map(Slot).all(|slot| owners(nodes, slot) == vec![owner(slot)]) {
        assert!(Instant::now() < deadline, "the hand-overs did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every slot ends owned once, by placement's owner, with the big slot's rows (and `more`)
/// read through either node.
async fn completes_with_every_row(cut: &CutMidCopy, more: &[(RowId, Row)]) {
    wait_owned_once(&[&cut.a, &cut.b], |slot| cut.placement.owner(slot).unwrap()).await;
    let want: Vec<_> = cut.before.iter().chain(more).cloned().collect();
    for node in [&cut.a, &cut.b] {
        let after = rows(node, cut.big, b"big").await;
        assert_eq!(after.len(), want.len(), "every row of the slot, read through {}", node.cluster.node());
        assert!(after.iter().zip(&want).all(|(x, y)| x == y), "the same rows, with the same ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_copy_cut_short_leaves_the_old_owner_serving_and_starts_over() {
    let cut = cut_mid_copy(false).await;
    assert_eq!(owners(&[&cut.a, &cut.b], cut.big), vec![NodeId(0xA)], "the old owner still owns it");
    for slot in (0..SLOTS).map(Slot) {
        assert!(owners(&[&cut.a, &cut.b], slot).len() <= 1, "slot {} owned twice while the link is cut", slot.0);
    }
    // The slot serves reads and writes while its copy is broken.
    put(&cut.a, cut.big, b"big", vec![8u8; 10]).await;
    let written = rows(&cut.a, cut.big, b"big").await;
    assert_eq!(written.len(), cut.before.len() + 1);

    cut.b_proxy.heal();
    completes_with_every_row(&cut, &written[cut.before.len()..]).await;
    cut.b.node.shutdown().await;
    cut.a.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_hand_over_cut_mid_copy_resumes_with_one_owner_and_every_row() {
    let cut = cut_mid_copy(true).await;
    assert!(matches!(cut.a.cluster.ownership().state(cut.big), Some(SlotState::Fenced { .. })));
    assert_eq!(
        owners(&[&cut.a, &cut.b], cut.big),
        Vec::<NodeId>::new(),
        "a slot cut after its fence is served by nobody"
    );
    for slot in (0..SLOTS).map(Slot) {
        assert!(owners(&[&cut.a, &cut.b], slot).len() <= 1, "slot {} owned twice while the link is cut", slot.0);
    }
    assert!(cut.a.cluster.get(cut.a.table, cut.before[0].0).await.is_err(), "a fenced slot is not served");

    cut.b_proxy.heal();
    completes_with_every_row(&cut, &[]).await;
    cut.b.node.shutdown().await;
    cut.a.node.shutdown().await;
}

/// A slot moves while a writer keeps writing to it through the old owner's router: writes
/// go on while the copy is under way (B holds part of the slot, A serves it), none fails,
/// and every row written before, during and after the move is on the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_slot_moves_and_all_arrive() {
    // 2 MiB at 1 MiB/s: the copy takes about two seconds.
    let rate = NonZeroU64::new(1 << 20);
    let (a, _) = start_paced_node(0xA, Vec::new(), rate).await;
    let placement = Placement::new([Member { id: NodeId(0xA), weight: 1 }, Member { id: NodeId(0xB), weight: 1 }], 1);
    let big = placement.owned_by(NodeId(0xB)).next().unwrap();
    for _ in 0..32 {
        put(&a, big, b"big", vec![7u8; 64 << 10]).await;
    }
    let a = Arc::new(a);
    let (stop_tx, stop) = watch::channel(false);
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (a, written) = (a.clone(), written.clone());
        tokio::spawn(async move {
            while !*stop.borrow() {
                put(&a, big, b"big", vec![9u8; 100]).await;
                written.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let (b, _b_proxy) = start_node(0xB, vec![a.gossip.to_string()]).await;
    // The writes done while B holds part of the slot and does not own it yet.
    let deadline = Instant::now() + SETTLE;
    let mut copying: Option<(usize, usize)> = None;
    while b.cluster.ownership().state(big).is_none() {
        let mut holds = false;
        b.store
            .export_slot(big, 1, &mut |entries| {
                holds = !entries.is_empty();
                false
            })
            .unwrap();
        if holds {
            let now = written.load(Ordering::SeqCst);
            copying = Some(copying.map_or((now, now), |(first, _)| (first, now)));
        }
        assert!(Instant::now() < deadline, "the slot did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first, last) = copying.expect("B held part of the slot before it owned it");
    assert!(last - first >= 20, "writes went on during the copy: {}", last - first);
    wait_owned_once(&[&a, &b], |slot| placement.owner(slot).unwrap()).await;
    stop_tx.send_replace(true);
    writer.await.unwrap();
    let on_b = rows(&b, big, b"big").await;
    assert_eq!(on_b.len(), 32 + written.load(Ordering::SeqCst), "every row written before, during and after the move");
    assert_eq!(on_b, rows(&a, big, b"big").await, "read through either node");
    b.node.shutdown().await;
    Arc::try_unwrap(a).ok().expect("the writer ended").node.shutdown().await;
}

/// B is asked to leave while a slot is half-copied to it: B waits for that slot (A cannot
/// know how far B got, so it completes the hand-over once the link is back), passes it and
/// every other one back, and only then has left: stopped at once, as `tim serve` does, it
/// leaves A owning every slot, with every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_mid_hand_over_passes_the_slot_on() {
    let CutMidCopy { a, b, b_proxy, big, before, .. } = cut_mid_copy(true).await;
    let (leaving, _) = crate::leave(b.rpc, "test", [4; 32]).await.unwrap();
    assert_eq!(leaving, NodeId(0xB));
    b_proxy.heal();
    assert_eq!(tokio::time::timeout(SETTLE, b.node.ended()).await.expect("B has left"), Ended::Left);
    b.node.shutdown().await;
    wait_owned_once(&[&a], |_| NodeId(0xA)).await;
    assert_eq!(rows(&a, big, b"big").await, before);
    let last = tokio::time::timeout(Duration::from_secs(15), crate::leave(a.rpc, "test", [4; 32])).await.unwrap();
    assert!(last.is_err(), "the last member cannot leave: {last:?}");
    a.node.shutdown().await;
}
