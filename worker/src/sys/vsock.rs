//! AF_VSOCK: the microVM's only channel to the host. The worker connects out to the host
//! (CID 2); nothing listens inside the guest.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, socket, sockopt, AddressFamily, SockFlag, SockType, VsockAddr};
use nix::sys::time::TimeVal;

use super::SysError;

/// The host's context id, as every guest sees it.
pub const HOST_CID: u32 = 2;

/// Where an address is described in errors (vsock has no path).
fn name(cid: u32, port: u32) -> PathBuf {
    PathBuf::from(format!("vsock:{cid}:{port}"))
}

/// Connects a stream socket to `cid:port` once.
pub fn connect_once(cid: u32, port: u32) -> Result<OwnedFd, SysError> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| SysError::new("creating an AF_VSOCK socket for", name(cid, port), e))?;
    socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .map_err(|e| SysError::new("connecting to", name(cid, port), e))?;
    Ok(fd)
}

/// Connects to `cid:port`, retrying until `patience` has passed: the vsock transport may
/// still be probing, and a refused or timed-out connect is retried. Returns the last error.
pub fn connect(cid: u32, port: u32, patience: Duration) -> Result<OwnedFd, SysError> {
    let deadline = Instant::now() + patience;
    loop {
        match connect_once(cid, port) {
            Ok(fd) => return Ok(fd),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Ends the connection so that nothing sent is lost: shuts the sending side, then waits, at
/// most `patience`, for the host to close its side. The host closes only once it has the
/// session's last message, and the vsock device answers in order, so after this returns
/// normally nothing the session wrote is still inside the VM; powering off earlier could drop
/// bytes the device had not yet taken (seen with a busy host). Anything the host still sends
/// is discarded.
pub fn linger(fd: &OwnedFd, patience: Duration) -> Result<(), SysError> {
    let here = || PathBuf::from("vsock connection");
    socket::shutdown(fd.as_raw_fd(), socket::Shutdown::Write)
        .map_err(|e| SysError::new("shutting down the sending side of", here(), e))?;
    let deadline = Instant::now() + patience;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SysError::new(
                "waiting for the host to close",
                here(),
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ));
        }
        let tv = TimeVal::new(left.as_secs() as _, left.subsec_micros().max(1) as _);
        socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| SysError::new("setting a receive timeout on", here(), e))?;
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            // Reset by the peer, or already torn down: closed too.
            Err(nix::errno::Errno::ECONNRESET | nix::errno::Errno::ENOTCONN) => return Ok(()),
            Err(e) => return Err(SysError::new("waiting for the host to close", here(), e)),
        }
    }
}
