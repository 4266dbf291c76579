//! The byte streams a connection is served over: plain TCP, or a stream
//! that frames the bytes itself (TLS records, WebSocket messages). The
//! connection task is generic over them, so a plain TCP connection pays
//! nothing for the others.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Room offered to one read of a framing stream.
const FRAMED_READ: usize = 8 * 1024;

/// A connected byte stream, polled by hand by the connection task.
pub trait Socket: Send + Unpin + 'static {
    /// Whether a read may find something, asked before a read buffer is
    /// taken, so an idle TCP connection holds none. Framing streams say
    /// yes and are asked by reading.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Appends what has arrived to `input`; `Ok(0)` is the end of the
    /// stream. Pending means the task is woken when more may come.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        input: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;

    /// Writes some of `data`.
    fn poll_write_from(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends what the stream holds back itself (TLS records, WebSocket
    /// frames).
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether written bytes wait in the stream for a flush.
    fn unflushed(&self) -> bool {
        false
    }

    /// Closes the sending side (TLS close_notify, WebSocket close frame,
    /// TCP FIN).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        input: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            // A spurious readiness clears itself: the next poll waits.
            match self.try_read_buf(input) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }

    fn poll_write_from(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match self.try_write(data) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(self), cx)
    }
}

/// A stream that frames what is written (TLS, WebSocket), remembering
/// whether written bytes still wait for a flush. Boxed, so the connection
/// task stays as small for it as for plain TCP.
pub struct Framed<T> {
    stream: T,
    unflushed: bool,
}

impl<T> Framed<T> {
    pub fn new(stream: T) -> Box<Framed<T>> {
        Box::new(Framed {
            stream,
            unflushed: false,
        })
    }
}

impl<T> Socket for Box<Framed<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        input: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let start = input.len();
        input.resize(start + FRAMED_READ, 0);
        let mut room = ReadBuf::new(&mut input[start..]);
        let polled = Pin::new(&mut self.stream).poll_read(cx, &mut room);
        let read = room.filled().len();
        input.truncate(start + read);
        polled.map_ok(|()| read)
    }

    fn poll_write_from(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data))?;
        self.unflushed = true;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn unflushed(&self) -> bool {
        self.unflushed
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
