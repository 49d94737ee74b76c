//! A Rust client for TIM servers: WebSocket `/tim` sessions and HTTP `/tim2` requests.
//! Used by the end-to-end tests and the load generator.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::codec::{decode_server_body, DecodeError, Encoding, TimStruct};
use crate::frame::{client_head, encode_client, FrameType, ServerFrame};
use crate::proto::{TimAck, TimAuth};

/// The Origin the official clients send.
pub const DEFAULT_ORIGIN: &str = "https://github.com/donnie4w/tim";

/// Largest message or response the client accepts.
const MAX_INBOUND: usize = 64 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting failed")]
    Io(#[from] std::io::Error),
    #[error("websocket failed")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("http request failed")]
    Http(#[from] hyper::Error),
    #[error("http request failed with status {0}")]
    Status(u16),
    #[error("undecodable frame from the server")]
    Decode(#[from] DecodeError),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("expected a {expected:?} frame, got {got:?}")]
    Unexpected { expected: FrameType, got: FrameType },
}

/// One WebSocket session to a TIM server.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    encoding: Encoding,
}

impl Client {
    /// Opens `ws://addr/tim` with the official clients' Origin header.
    pub async fn connect(addr: SocketAddr, encoding: Encoding) -> Result<Self, ClientError> {
        Self::connect_with_origin(addr, encoding, Some(DEFAULT_ORIGIN)).await
    }

    /// Opens `ws://addr/tim` with the given Origin header, or none.
    pub async fn connect_with_origin(
        addr: SocketAddr,
        encoding: Encoding,
        origin: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::open(addr, None, encoding, origin).await
    }

    /// Opens `ws://addr/tim` from the local address `from` (a load generator spreads its
    /// connections over source addresses, each good for ~28k ports).
    pub async fn connect_from(addr: SocketAddr, from: IpAddr, encoding: Encoding) -> Result<Self, ClientError> {
        Self::open(addr, Some(from), encoding, Some(DEFAULT_ORIGIN)).await
    }

    async fn open(
        addr: SocketAddr,
        from: Option<IpAddr>,
        encoding: Encoding,
        origin: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut request: Request<()> = format!("ws://{addr}/tim").into_client_request()?;
        if let Some(origin) = origin {
            let value = HeaderValue::from_str(origin)
                .map_err(|e| ClientError::Ws(tokio_tungstenite::tungstenite::Error::HttpFormat(e.into())))?;
            request.headers_mut().insert("origin", value);
        }
        let tcp = match from {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                // A bound port of an earlier connection may still be in TIME_WAIT (a load
                // generator run after run): without this, bind fails once they run out.
                socket.set_reuseaddr(true)?;
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        tcp.set_nodelay(true)?;
        // Small buffers: a load generator holds thousands of these.
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INBOUND))
            .max_frame_size(Some(MAX_INBOUND))
            .read_buffer_size(4 << 10)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
        Ok(Self { ws, encoding })
    }

    /// The encoding this client sends in, and so the one the server answers in after login.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Sends `value` as a frame of type `kind` in the client's encoding.
    pub async fn send<T: TimStruct>(&mut self, kind: FrameType, value: &T) -> Result<(), ClientError> {
        self.send_raw(encode_client(kind, self.encoding, value)).await
    }

    /// Sends bytes as one binary WebSocket message, as they are.
    pub async fn send_raw(&mut self, frame: Bytes) -> Result<(), ClientError> {
        self.ws.send(Message::Binary(frame)).await?;
        Ok(())
    }

    /// Sends text as one text WebSocket message (TIM accepts text frames too).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends bytes as one WebSocket message split into continuation frames of `chunk` bytes.
    pub async fn send_fragmented(&mut self, frame: &[u8], chunk: usize) -> Result<(), ClientError> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let mut parts = frame.chunks(chunk.max(1)).peekable();
        let mut first = true;
        while let Some(part) = parts.next() {
            let opcode = if first { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Continue) };
            let fin = parts.peek().is_none();
            let piece = Frame::message(Bytes::copy_from_slice(part), opcode, fin);
            self.ws.send(Message::Frame(piece)).await?;
            first = false;
        }
        Ok(())
    }

    /// Writes the start of one binary WebSocket frame that announces `announced` payload
    /// bytes but carries only `sent` of them (zeros, unmasked by a zero mask key): a sender
    /// that stalls mid-frame, for tests of the server's large-frame timeout.
    pub async fn send_partial(&mut self, announced: u64, sent: usize) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let mut raw = vec![0x82, 0x80 | 127];
        raw.extend_from_slice(&announced.to_be_bytes());
        raw.extend_from_slice(&[0; 4]);
        raw.resize(raw.len() + sent, 0);
        self.ws.flush().await?;
        self.ws.get_mut().write_all(&raw).await?;
        Ok(())
    }

    /// Sends a frame without body: ping (13), offline-message request (17).
    pub async fn send_empty(&mut self, kind: FrameType) -> Result<(), ClientError> {
        self.send_raw(Bytes::copy_from_slice(&[client_head(kind, self.encoding)])).await
    }

    /// Sends a ping frame (type 13).
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send_empty(FrameType::Ping).await
    }

    /// Acknowledges a frame that asked for an ack (type 12 + the 4 id bytes).
    pub async fn ack(&mut self, id: u32) -> Result<(), ClientError> {
        let mut frame = vec![client_head(FrameType::Ack, self.encoding)];
        frame.extend_from_slice(&id.to_be_bytes());
        self.send_raw(Bytes::from(frame)).await
    }

    /// The next TIM frame from the server; `Ok(None)` when the server closed the connection.
    pub async fn recv(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        while let Some(msg) = self.ws.next().await {
            match msg? {
                Message::Binary(data) => return Ok(Some(ServerFrame::parse(data)?)),
                Message::Text(text) => return Ok(Some(ServerFrame::parse(Bytes::from(text))?)),
                Message::Close(_) => return Ok(None),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(None)
    }

    /// The next frame within `wait`, failing on close or timeout.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<ServerFrame, ClientError> {
        match tokio::time::timeout(wait, self.recv()).await {
            Err(_) => Err(ClientError::Timeout(wait)),
            Ok(Ok(None)) => Err(ClientError::Closed),
            Ok(Ok(Some(frame))) => Ok(frame),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Waits for the next frame within `wait`, expecting it to be a TIMACK, and decodes it.
    pub async fn recv_ack(&mut self, wait: Duration) -> Result<TimAck, ClientError> {
        let frame = self.recv_within(wait).await?;
        if frame.kind != FrameType::Ack {
            return Err(ClientError::Unexpected { expected: FrameType::Ack, got: frame.kind });
        }
        Ok(frame.decode(self.encoding)?)
    }

    /// Sends a login (type 16) and returns the server's TIMACK.
    pub async fn login(&mut self, auth: &TimAuth, wait: Duration) -> Result<TimAck, ClientError> {
        self.send(FrameType::Auth, auth).await?;
        self.recv_ack(wait).await
    }

    /// Waits until the server closes the connection; `Err(Timeout)` if it stays open past `wait`.
    /// Frames that arrive meanwhile are dropped.
    pub async fn closed_within(&mut self, wait: Duration) -> Result<(), ClientError> {
        let drain = async {
            loop {
                match self.recv().await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::time::timeout(wait, drain).await.map_err(|_| ClientError::Timeout(wait))
    }
}

/// Sends one `POST /tim2` request (register 14 or token 15) and decodes the TimAck answer.
pub async fn post_tim2(
    addr: SocketAddr,
    kind: FrameType,
    encoding: Encoding,
    auth: &TimAuth,
) -> Result<TimAck, ClientError> {
    let body = encode_client(kind, encoding, auth);
    let (status, reply) = post_raw(addr, "/tim2", Some(DEFAULT_ORIGIN), body).await?;
    if status != 200 {
        return Err(ClientError::Status(status));
    }
    let Some((&head, rest)) = reply.split_first() else {
        return Err(ClientError::Decode(DecodeError::Empty));
    };
    if head != FrameType::Ack as u8 {
        return Err(ClientError::Decode(DecodeError::UnknownType(head)));
    }
    Ok(decode_server_body(Bytes::copy_from_slice(rest), encoding)?)
}

/// Sends one HTTP POST with the given body and returns the status and the response body.
pub async fn post_raw(
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
    body: Bytes,
) -> Result<(u16, Bytes), ClientError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn_task = tokio::spawn(conn);
    let mut request = hyper::Request::post(path).header("host", addr.to_string());
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| ClientError::Ws(tokio_tungstenite::tungstenite::Error::HttpFormat(e)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let collected =
        Limited::new(response.into_body(), MAX_INBOUND).collect().await.map_err(|_| ClientError::Status(status))?;
    conn_task.abort();
    Ok((status, collected.to_bytes()))
}
