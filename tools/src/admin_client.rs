//! Calls to a node's admin listener, signed with the deployment secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use tim_engine::export_wire::{ExportFrame, ImportOutcome, ImportRequest, Source, MAX_FRAME, MAX_IMPORT_BODY};
use tim_net::admin_auth;

/// How long connecting and a call without a stream may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest an export may go without a byte from the node.
const FRAME_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read whole (JSON answers and error texts).
const MAX_ANSWER: usize = 16 << 20;

/// The node whose admin listener a tool talks to, and the deployment secret it proves.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Admin listener (`--admin-listen`) of any node of the cluster.
    #[arg(long, default_value = "127.0.0.1:20002")]
    pub server: SocketAddr,
    /// The deployment secret of the cluster.
    #[arg(long, env = "TIM_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Data dir of a node of the cluster, whose `secret.key` is used without `--secret-file`.
    #[arg(long, env = "TIM_DATA_DIR", default_value = "./tim-data")]
    pub data_dir: PathBuf,
}

/// The admin key of a target (derived from its deployment secret), from the caller.
pub type AdminKey<'a> = &'a dyn Fn(&Target) -> anyhow::Result<[u8; 32]>;

/// A node's admin listener.
#[derive(Clone)]
pub struct Admin {
    addr: SocketAddr,
    key: [u8; 32],
}

impl Admin {
    pub fn new(addr: SocketAddr, key: [u8; 32]) -> Self {
        Self { addr, key }
    }

    async fn call(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<hyper::Response<Incoming>> {
        let addr = self.addr;
        let tcp = tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("connecting to the admin listener at {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("authorization", admin_auth::sign(&self.key, method, path, &body))
            .body(Full::new(body))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| anyhow::anyhow!("{addr} did not answer {method} {path} in time"))?
            .with_context(|| format!("{method} {path} at {addr}"))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = Limited::new(response.into_body(), 4096).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("{addr} refused {method} {path} ({status}): {}", String::from_utf8_lossy(&text).trim())
    }

    /// A call whose answer is read whole.
    pub async fn whole(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let response = self.call(method, path, body).await?;
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the answer to {method} {path}: {e}"))?;
        Ok(body.to_bytes())
    }

    /// What the cluster is.
    pub async fn info(&self) -> anyhow::Result<Source> {
        let raw = self.whole("GET", "/v1/info", Bytes::new()).await?;
        serde_json::from_slice(&raw).context("the node's /v1/info does not decode")
    }

    /// Starts an export: its frames, read as they come.
    pub async fn export(&self) -> anyhow::Result<Frames> {
        let response = self.call("GET", "/v1/export", Bytes::new()).await?;
        Ok(Frames { body: response.into_body(), buf: BytesMut::new() })
    }

    /// Finishes an import: the relation changes its rows caught half done.
    pub async fn finish_import(&self) -> anyhow::Result<()> {
        self.whole("POST", "/v1/import/finish", Bytes::new()).await.map(|_| ())
    }

    /// Writes rows back.
    pub async fn import(&self, request: &ImportRequest) -> anyhow::Result<ImportOutcome> {
        let body = Bytes::from(postcard::to_stdvec(request)?);
        anyhow::ensure!(body.len() <= MAX_IMPORT_BODY, "an import request of {} bytes is too large", body.len());
        let raw = self.whole("POST", "/v1/import", body).await?;
        serde_json::from_slice(&raw).context("the node's import answer does not decode")
    }
}

/// The frames of an export, as the node streams them.
pub struct Frames {
    body: Incoming,
    buf: BytesMut,
}

impl Frames {
    /// The next frame; `None` when the stream ends (the caller checks that it ended with
    /// `End`).
    pub async fn next(&mut self) -> anyhow::Result<Option<ExportFrame>> {
        loop {
            if let Some(len) =
                self.buf.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()).map(|h| u32::from_be_bytes(h) as usize)
            {
                anyhow::ensure!(len <= MAX_FRAME, "the node sent a frame of {len} bytes");
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let body = self.buf.split_to(len);
                    return Ok(Some(postcard::from_bytes(&body).context("an export frame does not decode")?));
                }
            }
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("the node sent nothing for {} s", FRAME_TIMEOUT.as_secs()))?;
            match frame {
                Some(frame) => {
                    if let Ok(data) = frame.context("the export stream broke")?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                None if self.buf.is_empty() => return Ok(None),
                None => bail!("the export stream ended inside a frame"),
            }
        }
    }
}
