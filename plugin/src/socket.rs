//! One Kong connection's socket, registered with the runtime for readability only.
//!
//! A tokio `UnixStream` asks epoll for both readability and writability, edge-triggered. Every
//! time Kong reads one of our replies, the kernel then signals writability and wakes this thread
//! for nothing, so a log-phase event (two requests, two replies) can cost four wakeups instead of
//! two. [`KongSocket`] registers for readability alone; replies are small and go out with one
//! non-blocking write. Only when Kong stops reading and the socket buffer fills does
//! [`KongSocket::write_all`] wait for writability, on a duplicate of the descriptor registered
//! for that alone and dropped right after.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

/// A Kong connection.
pub struct KongSocket {
    fd: AsyncFd<StdUnixStream>,
}

/// Registers `stream` with the current runtime for `interest`.
fn register(stream: StdUnixStream, interest: Interest) -> io::Result<AsyncFd<StdUnixStream>> {
    stream.set_nonblocking(true)?;
    // SAFETY: `register_with_interest` needs the descriptor to stay open and the same for the
    // life of the `AsyncFd`. A std `UnixStream` owns its descriptor, closes it only on drop (which
    // the `AsyncFd` does after deregistering), and `as_raw_fd` always returns that descriptor.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(stream, interest) };
    registered.map_err(|e| e.into_parts().1)
}

impl KongSocket {
    /// Takes over an accepted connection.
    pub fn new(stream: UnixStream) -> io::Result<KongSocket> {
        Ok(KongSocket {
            fd: register(stream.into_std()?, Interest::READABLE)?,
        })
    }

    /// Reads what Kong sent into `buf`, waiting until something arrives; `Ok(0)` at end of
    /// stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let room = buf.len();
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|s| s.get_ref().read(buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        // A short read drained the socket: what Kong sends next is a new edge,
                        // so the next read can wait for it without first failing with EAGAIN.
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `bytes`, waiting for writability only if the socket buffer is full.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        let mut writer: Option<AsyncFd<StdUnixStream>> = None;
        while !bytes.is_empty() {
            match self.fd.get_ref().write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let w = match &writer {
                        Some(w) => w,
                        None => writer.insert(register(
                            self.fd.get_ref().try_clone()?,
                            Interest::WRITABLE,
                        )?),
                    };
                    w.writable().await?.clear_ready();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
