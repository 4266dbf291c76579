//! MQTT over WebSocket (MQTT 5.0 §6): the HTTP upgrade on the listener's
//! path with the `mqtt` subprotocol, then binary messages carrying the
//! MQTT byte stream, in whatever pieces the client chose.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The subprotocol MQTT clients ask for [MQTT-6.0.0-3].
const SUBPROTOCOL: &str = "mqtt";

/// Read buffer of one WebSocket connection: small, since an idle
/// connection keeps it.
const READ_BUFFER: usize = 4 * 1024;

/// Upgrades an accepted stream to WebSocket if the request is for `path`
/// and offers the `mqtt` subprotocol. Frames and messages above
/// `max_message` bytes close the connection.
pub async fn upgrade<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<WebSocketStream<S>, WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    #[expect(
        clippy::result_large_err,
        reason = "the shape tungstenite's handshake callback must have"
    )]
    let check = |request: &Request, mut response: Response| {
        if request.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND, "no MQTT endpoint here"));
        }
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim().eq_ignore_ascii_case(SUBPROTOCOL));
        if !offered {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "the `mqtt` subprotocol is required",
            ));
        }
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_string()));
    *response.status_mut() = status;
    response
}

/// The MQTT byte stream inside a WebSocket: binary messages in, one binary
/// message per write out.
pub struct WsBytes<S> {
    socket: WebSocketStream<S>,
    /// What a binary message held beyond the room of the last read.
    left: Bytes,
}

impl<S> WsBytes<S> {
    pub fn new(socket: WebSocketStream<S>) -> WsBytes<S> {
        WsBytes {
            socket,
            left: Bytes::new(),
        }
    }
}

fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> AsyncRead for WsBytes<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.left.is_empty() {
            let message = match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => data,
                // Answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message: MQTT is sent in binary messages",
                    )));
                }
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
            };
            self.left = message;
        }
        let take = self.left.len().min(buf.remaining());
        let piece = self.left.split_to(take);
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncWrite for WsBytes<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = Pin::new(&mut self.socket);
        ready!(Sink::<Message>::poll_ready(socket, cx)).map_err(io_error)?;
        Pin::new(&mut self.socket)
            .start_send(Message::binary(Bytes::copy_from_slice(data)))
            .map_err(io_error)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.socket), cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Sink::<Message>::poll_close(Pin::new(&mut self.socket), cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(io_error(error))),
        }
    }
}
