use std::sync::atomic::AtomicUsize;

use super::*;

struct Echo {
    calls: AtomicUsize,
    /// The bodies of ordered calls, in the order they were handled.
    ordered: Mutex<Vec<Bytes>>,
}

impl Handler for Echo {
    fn handle_in_order(&self, from: u64, body: Bytes) -> Result<Bytes, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        lock(&self.ordered).push(body.clone());
        let mut out = from.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        Ok(Bytes::from(out))
    }

    fn handle(&self, from: u64, body: Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            match body.as_ref() {
                b"fail" => Err("asked to fail".into()),
                b"hang" => std::future::pending().await,
                _ => {
                    let mut out = from.to_be_bytes().to_vec();
                    out.extend_from_slice(&body);
                    Ok(Bytes::from(out))
                }
            }
        })
    }
}

struct Node {
    addr: SocketAddr,
    echo: Arc<Echo>,
    stop: CancellationToken,
}

async fn server(cfg: RpcConfig) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Arc::new(Echo { calls: AtomicUsize::new(0), ordered: Mutex::default() });
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, cfg, echo.clone(), stop.clone(), TaskTracker::new()));
    Node { addr, echo, stop }
}

fn client(cfg: RpcConfig) -> RpcClient {
    RpcClient::new(cfg, CancellationToken::new(), TaskTracker::new())
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn calls_travel_many_at_once_on_one_link() {
    let node = server(RpcConfig::new("c", 2, [7; 32])).await;
    let client = Arc::new(client(RpcConfig::new("c", 1, [7; 32])));
    let calls: Vec<_> = (0u32..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(
                async move { client.call(node.addr, Some(2), Bytes::from(i.to_be_bytes().to_vec()), WAIT).await },
            )
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap().unwrap();
        assert_eq!(&reply[..8], &1u64.to_be_bytes(), "the server knows the caller");
        assert_eq!(&reply[8..], &(i as u32).to_be_bytes());
    }
    assert_eq!(client.peers.lock().await.len(), 1, "one link");
    assert_eq!(
        client.call(node.addr, Some(2), Bytes::from_static(b"fail"), WAIT).await,
        Err(RpcError::Remote("asked to fail".into()))
    );
    assert_eq!(
        client.call(node.addr, Some(2), Bytes::from_static(b"hang"), Duration::from_millis(100)).await,
        Err(RpcError::Timeout(Duration::from_millis(100)))
    );
    // Another node id at that address is refused.
    let wrong = self::client(RpcConfig::new("c", 1, [7; 32]));
    assert!(matches!(wrong.call(node.addr, Some(3), Bytes::new(), WAIT).await, Err(RpcError::Handshake(_))));
}

#[tokio::test]
async fn another_secret_or_cluster_is_refused_on_both_sides() {
    let node = server(RpcConfig::new("c", 2, [7; 32])).await;
    let other_secret = client(RpcConfig::new("c", 1, [8; 32]));
    let err = other_secret.call(node.addr, None, Bytes::from_static(b"x"), WAIT).await.unwrap_err();
    assert!(matches!(&err, RpcError::Handshake(m) if m.contains("another deployment secret")), "{err}");
    let other_cluster = client(RpcConfig::new("d", 1, [7; 32]));
    assert!(matches!(other_cluster.call(node.addr, None, Bytes::new(), WAIT).await, Err(RpcError::Handshake(_))));
    assert_eq!(node.echo.calls.load(Ordering::Relaxed), 0, "no call got through");
    // Positive control: the right secret is served.
    let right = client(RpcConfig::new("c", 1, [7; 32]));
    assert!(right.call(node.addr, None, Bytes::from_static(b"x"), WAIT).await.is_ok());
    assert_eq!(node.echo.calls.load(Ordering::Relaxed), 1);
}

/// Nodes of two incarnations of a cluster (same secret, same cluster id) never link, and
/// both sides say why; a caller that does not know its incarnation yet (0) links to any.
#[tokio::test]
async fn nodes_of_another_cluster_incarnation_are_refused_both_ways() {
    let with = |node: u64, incarnation: u64| {
        let cfg = RpcConfig::new("c", node, [7; 32]);
        cfg.incarnation.store(incarnation, Ordering::Relaxed);
        cfg
    };
    let node = server(with(2, 5)).await;
    let stranger = client(with(1, 6));
    let err = stranger.call(node.addr, None, Bytes::from_static(b"x"), WAIT).await.unwrap_err();
    assert!(matches!(&err, RpcError::Handshake(m) if m.contains("another cluster")), "{err}");
    assert_eq!(node.echo.calls.load(Ordering::Relaxed), 0, "no call got through");
    // Positive controls: the same incarnation, and one not known yet.
    assert!(client(with(1, 5)).call(node.addr, None, Bytes::from_static(b"x"), WAIT).await.is_ok());
    assert!(client(with(3, 0)).call(node.addr, None, Bytes::from_static(b"x"), WAIT).await.is_ok());
    assert_eq!(node.echo.calls.load(Ordering::Relaxed), 2);
}

/// A recorded handshake, replayed byte for byte, fails: the server's nonce is new.
#[tokio::test]
async fn a_replayed_or_forged_handshake_is_refused() {
    let key = [7; 32];
    let node = server(RpcConfig::new("c", 2, key)).await;
    let cfg = RpcConfig::new("c", 1, key);
    let client_nonce = [1; NONCE];
    // The original: a genuine handshake whose proof is recorded.
    let hello = || handshake::hello(&Hello { node: 1, incarnation: 0, nonce: client_nonce, cluster_id: "c".into() });
    let mut framed = Framed::new(TcpStream::connect(node.addr).await.unwrap(), cfg.codec());
    framed.send(hello()).await.unwrap();
    let challenge = handshake::parse_challenge(&framed.next().await.unwrap().unwrap()).unwrap();
    let transcript = Transcript {
        cluster_id: "c".into(),
        client: 1,
        server: challenge.node,
        client_incarnation: 0,
        server_incarnation: challenge.incarnation,
        client_nonce,
        server_nonce: challenge.nonce,
    };
    let recorded = transcript.client_proof(&key);
    framed.send(Bytes::copy_from_slice(&recorded)).await.unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap().len(), 0, "the genuine handshake is welcomed");
    // The replay: same hello, same proof, on a new connection.
    let mut replay = Framed::new(TcpStream::connect(node.addr).await.unwrap(), cfg.codec());
    replay.send(hello()).await.unwrap();
    replay.next().await.unwrap().unwrap();
    replay.send(Bytes::copy_from_slice(&recorded)).await.unwrap();
    assert!(!matches!(replay.next().await, Some(Ok(w)) if w.is_empty()), "a replayed proof is not welcomed");
    // A forgery: a proof made without the key.
    let mut forged = Framed::new(TcpStream::connect(node.addr).await.unwrap(), cfg.codec());
    forged.send(hello()).await.unwrap();
    forged.next().await.unwrap().unwrap();
    forged.send(Bytes::copy_from_slice(&[0u8; 32])).await.unwrap();
    assert!(!matches!(forged.next().await, Some(Ok(w)) if w.is_empty()), "a forged proof is not welcomed");
    // Junk instead of a hello.
    let mut junk = Framed::new(TcpStream::connect(node.addr).await.unwrap(), cfg.codec());
    junk.send(Bytes::from_static(b"GET / HTTP/1.1")).await.unwrap();
    assert!(junk.next().await.is_none_or(|r| r.is_err()), "closed");
    assert_eq!(node.echo.calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_broken_link_fails_its_calls_and_is_made_again() {
    let cfg = RpcConfig::new("c", 2, [7; 32]);
    let node = server(cfg.clone()).await;
    let client = Arc::new(client(RpcConfig::new("c", 1, [7; 32])));
    let hanging = {
        let client = client.clone();
        tokio::spawn(async move { client.call(node.addr, None, Bytes::from_static(b"hang"), WAIT).await })
    };
    // Wait until the hanging call reached the server, then stop it.
    while node.echo.calls.load(Ordering::Relaxed) == 0 {
        tokio::task::yield_now().await;
    }
    node.stop.cancel();
    assert_eq!(hanging.await.unwrap(), Err(RpcError::Broken));
    // A new server on the same address: the next call dials again.
    let listener = loop {
        match TcpListener::bind(node.addr).await {
            Ok(l) => break l,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let echo = Arc::new(Echo { calls: AtomicUsize::new(0), ordered: Mutex::default() });
    tokio::spawn(serve(listener, cfg, echo, CancellationToken::new(), TaskTracker::new()));
    let reply = loop {
        match client.call(node.addr, None, Bytes::from_static(b"again"), WAIT).await {
            Ok(reply) => break reply,
            Err(RpcError::Broken | RpcError::Connect { .. }) => tokio::time::sleep(REDIAL_PAUSE).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&reply[8..], b"again");
}

#[tokio::test]
async fn frames_over_the_limit_are_refused_before_sending() {
    let node = server(RpcConfig::new("c", 2, [7; 32])).await;
    let mut cfg = RpcConfig::new("c", 1, [7; 32]);
    cfg.max_frame = 1024;
    let client = client(cfg);
    let err = client.call(node.addr, None, Bytes::from(vec![0; 2000]), WAIT).await.unwrap_err();
    assert!(matches!(err, RpcError::TooLarge(2000)) && err.not_sent());
}

#[tokio::test]
async fn ordered_calls_are_answered_in_sending_order_before_later_ones() {
    let node = server(RpcConfig::new("c", 2, [7; 32])).await;
    let client = Arc::new(client(RpcConfig::new("c", 1, [7; 32])));
    // A hanging call ahead of the ordered ones does not hold them up.
    let hanging = {
        let client = client.clone();
        tokio::spawn(async move { client.call(node.addr, None, Bytes::from_static(b"hang"), WAIT).await })
    };
    // Sent together: the link carries them in this order and the peer handles them so.
    let calls = (0u32..200).map(|i| client.call_in_order(node.addr, None, Bytes::from(i.to_be_bytes().to_vec()), WAIT));
    let replies = futures_util::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(&reply.unwrap()[8..], &(i as u32).to_be_bytes());
    }
    let handled: Vec<u32> =
        lock(&node.echo.ordered).iter().map(|b| u32::from_be_bytes(b[..4].try_into().unwrap())).collect();
    assert_eq!(handled, (0u32..200).collect::<Vec<_>>());
    hanging.abort();
}
