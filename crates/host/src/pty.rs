//! A shell's PTY master on the runtime's reactor. Reads and writes are
//! non-blocking, so no thread of its own waits on a shell: a keystroke goes
//! from its connection to the PTY, and the echo from the PTY to the log,
//! without waking a thread parked for that one purpose (on a VM whose idle
//! vCPUs halt, each such wake-up costs tens of microseconds of echo).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use filedescriptor::FileDescriptor;
use portable_pty::MasterPty;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, ReadBuf};

/// The most a read asks for, zeroed before each read. Linux mostly hands
/// out its line discipline's 4 KiB a read, now and then up to about 20 KiB,
/// which then takes a few reads; zeroing 64 KiB for every 4 KiB read cost
/// a few percent of a core in a `cat`.
const MAX_READ: usize = 8 << 10;

/// The master side, shared by the output reader and the input writer.
#[derive(Clone)]
pub struct PtyIo(Arc<AsyncFd<File>>);

impl PtyIo {
    /// A non-blocking duplicate of `master`'s descriptor, registered with the
    /// current runtime. The flag is shared with `master`, which is only used
    /// for sizes (ioctls) after this.
    pub fn new(master: &dyn MasterPty) -> io::Result<PtyIo> {
        let raw = master
            .as_raw_fd()
            .ok_or_else(|| io::Error::other("the PTY has no file descriptor"))?;
        let mut fd = FileDescriptor::dup(&raw).map_err(io::Error::other)?;
        fd.set_non_blocking(true).map_err(io::Error::other)?;
        let file = File::from(fd.as_fd().try_clone_to_owned()?);
        // Deprecated because a type could hand out a descriptor it does not
        // own; a File owns its descriptor for as long as the AsyncFd holds
        // it, which is all `register` asks (and it is `unsafe`).
        #[allow(deprecated)]
        let fd = AsyncFd::new(file)?;
        Ok(PtyIo(Arc::new(fd)))
    }

    /// Writes all of `bytes`, waiting while the PTY's input queue is full
    /// (the program is not reading).
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| fd.get_ref().write(bytes)) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// Output: ends (reads 0) when the PTY reports EIO, which is how Linux says
/// that every holder of the slave side is gone.
impl AsyncRead for PtyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.0.poll_read_ready(cx))?;
            // Zeroed before each read (safe code cannot read into
            // uninitialised memory): no more than a PTY read returns.
            let unfilled = buf.initialize_unfilled_to(buf.remaining().min(MAX_READ));
            match ready.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}
