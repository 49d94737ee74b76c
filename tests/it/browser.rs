//! The chat page and the console in a real headless browser (Debian's Chromium, driven by
//! chromedriver over WebDriver): two people chat on the page, each on another node of a
//! cluster, and an operator's console shows them online and its message count moves.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::admin::tim_admin;
use crate::cluster::TestCluster;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page has to show what the test waits for (pages poll and push; a slow CI
/// machine runs three browsers and two nodes on two cores).
const UI_WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process, stopped with the test.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Driver {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        // Ready once it accepts connections.
        let deadline = Instant::now() + UI_WAIT;
        while TcpStream::connect(driver.addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A new headless browser.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let options = serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--no-first-run"],
        });
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("a browser session")
    }
}

async fn find(page: &Client, css: &str) -> Element {
    page.wait().at_most(UI_WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"))
}

/// Clicks `css`, found anew when a page redrew it between finding and clicking.
async fn click(page: &Client, css: &str) {
    let deadline = Instant::now() + UI_WAIT;
    loop {
        match find(page, css).await.click().await {
            Ok(_) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => continue,
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

/// An attribute of `css`, read where it is (lists redraw as pushes come).
async fn attr(page: &Client, css: &str, name: &str) -> String {
    find(page, css).await;
    let script = "return document.querySelector(arguments[0]).getAttribute(arguments[1]);";
    let value = page.execute(script, vec![css.into(), name.into()]).await.unwrap();
    value.as_str().unwrap_or_else(|| panic!("{css} has no {name}")).to_owned()
}

async fn fill(page: &Client, css: &str, text: &str) {
    let field = find(page, css).await;
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// The text of `css` once `done` accepts it.
async fn text_when(page: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + UI_WAIT;
    loop {
        let text = find(page, css).await.text().await.unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{css} shows {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers and logs in on the chat page at `node`; the user's node id.
async fn sign_up(page: &Client, node: SocketAddr, name: &str) -> String {
    page.goto(&format!("http://{node}/")).await.unwrap();
    fill(page, "#reg-name", name).await;
    fill(page, "#reg-password", "a password").await;
    click(page, "#reg-button").await;
    text_when(page, "#reg-result", |t| t.contains("registered")).await;
    fill(page, "#login-name", name).await;
    fill(page, "#login-password", "a password").await;
    click(page, "#login-button").await;
    text_when(page, "#status", |t| t.contains("online")).await;
    text_when(page, "#me", |t| !t.trim().is_empty()).await.trim().to_owned()
}

/// Opens a conversation from the side bar and sends `text`; waits for its echo.
async fn say(page: &Client, conversation: &str, text: &str) {
    click(page, conversation).await;
    fill(page, "#message-input", text).await;
    click(page, "#send-button").await;
    text_when(page, "#messages", |t| t.contains(text)).await;
}

/// The console's message count.
async fn stored(console: &Client) -> u64 {
    text_when(console, "#m-messages", |t| t.trim().parse::<u64>().is_ok()).await.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_on_the_page_and_the_console_sees_them() {
    let cluster = TestCluster::start(2, &[]);
    let admin = cluster.nodes[0].admin.unwrap();
    let out = tim_admin(
        &["create-user", "operator", "--role", "read"],
        admin,
        &cluster.secret_file(),
        Some("operator password"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let driver = Driver::start();
    let (ann, ben) = (driver.browser().await, driver.browser().await);

    // Each signs up on another node.
    let ann_node = sign_up(&ann, cluster.nodes[0].addr, "ann").await;
    let ben_node = sign_up(&ben, cluster.nodes[1].addr, "ben").await;

    // A friend request, accepted: both list the other, online.
    fill(&ann, "#friend-node", &ben_node).await;
    click(&ann, "#friend-add").await;
    click(&ben, &format!("#requests li[data-node='{ann_node}'] .accept")).await;
    find(&ann, &format!("#friends li[data-node='{ben_node}'].online")).await;
    find(&ben, &format!("#friends li[data-node='{ann_node}'].online")).await;

    // 1:1 both ways.
    say(&ann, &format!("#friends li[data-node='{ben_node}']"), "hello ben").await;
    click(&ben, &format!("#friends li[data-node='{ann_node}']")).await;
    text_when(&ben, "#messages", |t| t.contains("hello ben")).await;
    say(&ben, &format!("#friends li[data-node='{ann_node}']"), "hi ann").await;
    text_when(&ann, "#messages", |t| t.contains("hi ann")).await;

    // A group: made by ann, ben pulled in; a message each way.
    fill(&ann, "#group-topic", "team").await;
    click(&ann, "#group-create").await;
    let group = attr(&ann, "#groups li.group[data-node]", "data-node").await;
    let in_group = format!("#groups li[data-node='{group}']");
    click(&ann, &in_group).await;
    fill(&ann, "#group-user", &ben_node).await;
    click(&ann, "#group-add").await;
    find(&ben, &in_group).await;
    say(&ann, &in_group, "welcome to the team").await;
    click(&ben, &in_group).await;
    text_when(&ben, "#messages", |t| t.contains("welcome to the team")).await;

    // History: ann logs out and in again; the chat with ben comes back from the server.
    click(&ann, "#logout").await;
    fill(&ann, "#login-name", "ann").await;
    fill(&ann, "#login-password", "a password").await;
    click(&ann, "#login-button").await;
    text_when(&ann, "#status", |t| t.contains("online")).await;
    click(&ann, &format!("#friends li[data-node='{ben_node}']")).await;
    text_when(&ann, "#messages", |t| t.contains("hello ben") && t.contains("hi ann")).await;

    // The console: both online, and the message count moves with one more message.
    let console = driver.browser().await;
    console.goto(&format!("http://{admin}/")).await.unwrap();
    fill(&console, "#signin-name", "operator").await;
    fill(&console, "#signin-password", "operator password").await;
    click(&console, "#signin-button").await;
    text_when(&console, "#whoami", |t| t.contains("operator")).await;
    click(&console, "#online-refresh").await;
    find(&console, &format!("#online li[data-node='{ann_node}']")).await;
    find(&console, &format!("#online li[data-node='{ben_node}']")).await;
    find(&console, "#cluster tr[data-node]").await;
    fill(&console, "#lookup-input", "ann").await;
    click(&console, "#lookup-button").await;
    text_when(&console, "#lookup-result", |t| t.contains(&ann_node)).await;
    // Messages are counted by the node their sender is connected to: ann's, the console's.
    let before = stored(&console).await;
    say(&ann, &format!("#friends li[data-node='{ben_node}']"), "one more").await;
    text_when(&console, "#m-messages", |t| t.trim().parse::<u64>().is_ok_and(|n| n > before)).await;
    for page in [ann, ben, console] {
        page.close().await.unwrap();
    }
}
