//! The host end of a microVM's vsock, in its two forms.
//!
//! **Hybrid vsock** (Firecracker's own device, and `vhost-device-vsock` serving QEMU's
//! vhost-user-vsock device): the VM's vsock is a Unix socket `UDS` on the host.
//! - guest → host: the guest's `connect(CID 2, port P)` arrives as a connection to the Unix
//!   socket `UDS_P`, which the host must be listening on (before boot: with no listener the
//!   guest's connect fails);
//! - host → guest (`CONNECT P` on `UDS`) exists in the device but rootbox never uses it: the
//!   worker connects out.
//!
//! **Kernel vsock** (`/dev/vhost-vsock`, QEMU's vhost-vsock device): the host listens on an
//! AF_VSOCK socket and accepts the guest's connection like any other. Every guest of the host
//! shares that address space, so the listener takes a free port and the accepted peer's CID
//! is checked.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, VsockAddr};

/// The port the worker connects to (the host's side of the hybrid socket is per VM, so a
/// fixed port never collides).
pub const WORKER_PORT: u32 = 1024;

/// `UDS_P`: where a guest's connection to host port `port` arrives.
pub fn guest_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Listens for the guest's connections to host port `port` (non-blocking accept).
pub fn listen_for_guest(uds: &Path, port: u32) -> io::Result<UnixListener> {
    let l = UnixListener::bind(guest_port_path(uds, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// An AF_VSOCK listener on a free port of every CID (kernel vhost-vsock).
pub struct KernelListener {
    fd: OwnedFd,
    pub port: u32,
}

impl KernelListener {
    pub fn bind() -> io::Result<KernelListener> {
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, libc::VMADDR_PORT_ANY))?;
        socket::listen(&fd, Backlog::new(4).map_err(io::Error::from)?)?;
        let port = socket::getsockname::<VsockAddr>(fd.as_raw_fd())?.port();
        Ok(KernelListener { fd, port })
    }

    /// Accepts one pending connection from `cid`, if any; connections from other CIDs are
    /// closed. The stream is an AF_VSOCK socket: it is handed out as a `UnixStream`, which
    /// only reads, writes and shuts down its descriptor, all of which AF_VSOCK supports.
    pub fn accept_from(&self, cid: u32) -> io::Result<Option<UnixStream>> {
        loop {
            let raw = match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let fd = crate::sys::adopt(raw)?;
            let peer = socket::getpeername::<VsockAddr>(fd.as_raw_fd())?;
            if peer.family() == Some(AddressFamily::Vsock) && peer.cid() == cid {
                return Ok(Some(UnixStream::from(fd)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_paths() {
        assert_eq!(guest_port_path(Path::new("/t/vm.vsock"), 1024), Path::new("/t/vm.vsock_1024"));
    }

    #[test]
    fn guest_connections_arrive_at_the_port_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vm.vsock");
        let l = listen_for_guest(&uds, WORKER_PORT).expect("listen");
        assert!(matches!(l.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        // What the device does for a guest connect(2, 1024):
        let _guest = UnixStream::connect(dir.path().join("vm.vsock_1024")).expect("connect");
        assert!(l.accept().is_ok());
    }
}
