//! The host end of a microVM's vsock, in its two forms.
//!
//! **Hybrid vsock** (Firecracker's own device, and `vhost-device-vsock` serving QEMU's
//! vhost-user-vsock device): the VM's vsock is a Unix socket `UDS` on the host.
//! - guest → host: the guest's `connect(CID 2, port P)` arrives as a connection to the Unix
//!   socket `UDS_P`, which the host must be listening on (before boot: with no listener the
//!   guest's connect fails);
//! - host → guest: connect to `UDS`, send `CONNECT P\n`, read `OK <n>\n`; then the stream is
//!   the connection. EOF instead of `OK` means nothing listens on P in the guest (yet).
//!
//! The job flow only uses guest → host (the worker connects out); the host → guest helper is
//! here for completeness and is unit-tested against a fake peer speaking the same bytes.
//!
//! **Kernel vsock** (`/dev/vhost-vsock`, QEMU's vhost-vsock device): the host listens on an
//! AF_VSOCK socket and accepts the guest's connection like any other. Every guest of the host
//! shares that address space, so the listener takes a free port and the accepted peer's CID
//! is checked.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, VsockAddr};

/// The port the worker connects to (the host's side of the hybrid socket is per VM, so a
/// fixed port never collides).
pub const WORKER_PORT: u32 = 1024;
/// Longest `OK <n>\n` line accepted.
#[allow(dead_code)]
const MAX_REPLY: usize = 32;

// Host → guest is not used by the job flow (the worker connects out); kept, and tested.
#[allow(dead_code)]
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("connecting to the VM's vsock socket {0:?}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("asking the VM's vsock socket {0:?} for port {1}")]
    Handshake(PathBuf, u32, #[source] io::Error),
    #[error("the VM's vsock socket {path:?} answered {reply:?} to CONNECT {port}")]
    BadReply { path: PathBuf, port: u32, reply: String },
    #[error("nothing listened on vsock port {1} in the VM within {2:?} ({0:?})")]
    NoListener(PathBuf, u32, Duration),
}

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

// Host → guest is not used by the job flow (the worker connects out); kept, and tested.
#[allow(dead_code)]
/// Parses `OK <n>\n` (n: the host-side port number the device assigned).
pub fn parse_ok(reply: &str) -> Option<u32> {
    reply.strip_suffix('\n')?.strip_prefix("OK ")?.parse().ok()
}

// Host → guest is not used by the job flow (the worker connects out); kept, and tested.
#[allow(dead_code)]
/// Connects to port `port` in the guest through the hybrid socket `uds`, retrying while the
/// guest has no listener, until `patience` has passed.
pub fn connect_to_guest(
    uds: &Path,
    port: u32,
    patience: Duration,
) -> Result<UnixStream, VsockError> {
    let deadline = Instant::now() + patience;
    loop {
        match connect_once(uds, port)? {
            Some(s) => return Ok(s),
            None if Instant::now() >= deadline => {
                return Err(VsockError::NoListener(uds.to_path_buf(), port, patience))
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// Host → guest is not used by the job flow (the worker connects out); kept, and tested.
#[allow(dead_code)]
/// One `CONNECT P` attempt: `None` when the guest is not listening (EOF before `OK`).
fn connect_once(uds: &Path, port: u32) -> Result<Option<UnixStream>, VsockError> {
    let mut s = UnixStream::connect(uds).map_err(|e| VsockError::Connect(uds.to_path_buf(), e))?;
    let hs = |e| VsockError::Handshake(uds.to_path_buf(), port, e);
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(hs)?;
    // Byte by byte: anything after the newline already belongs to the connection.
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Ok(None),
            Ok(_) => {
                reply.push(b[0]);
                if b[0] == b'\n' || reply.len() >= MAX_REPLY {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(hs(e)),
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    match parse_ok(&reply) {
        Some(_) => Ok(Some(s)),
        None => Err(VsockError::BadReply { path: uds.to_path_buf(), port, reply }),
    }
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
            // SAFETY: accept4 just returned this descriptor; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
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
    use std::io::BufRead;

    #[test]
    fn port_paths_and_replies() {
        assert_eq!(guest_port_path(Path::new("/t/vm.vsock"), 1024), Path::new("/t/vm.vsock_1024"));
        assert_eq!(parse_ok("OK 1073741824\n"), Some(1_073_741_824));
        assert_eq!(parse_ok("OK 5"), None, "needs the newline");
        assert_eq!(parse_ok("NOK 5\n"), None);
        assert_eq!(parse_ok("OK x\n"), None);
    }

    /// A fake hybrid-vsock device: refuses the first `refuse` connections (EOF, as when the
    /// guest has nothing listening yet), then answers `OK` and echoes one line.
    fn fake_device(
        uds: PathBuf,
        refuse: usize,
        reply: &'static str,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let l = UnixListener::bind(&uds).expect("bind fake device");
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            for (i, conn) in l.incoming().enumerate() {
                let conn = conn.expect("accept");
                let mut r = io::BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                r.read_line(&mut line).expect("read CONNECT");
                requests.push(line);
                if i < refuse {
                    continue; // dropped: EOF for the client
                }
                let mut w = conn;
                w.write_all(reply.as_bytes()).expect("reply");
                let mut payload = String::new();
                if r.read_line(&mut payload).is_ok() {
                    let _ = w.write_all(payload.to_uppercase().as_bytes());
                }
                break;
            }
            requests
        })
    }

    #[test]
    fn connect_handshake_then_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vm.vsock");
        let peer = fake_device(uds.clone(), 2, "OK 1073741824\n");
        let mut s = connect_to_guest(&uds, 52, Duration::from_secs(5)).expect("connect");
        s.write_all(b"ping\n").expect("write");
        let mut back = String::new();
        io::BufReader::new(s).read_line(&mut back).expect("read");
        assert_eq!(back, "PING\n", "bytes after OK belong to the connection");
        let reqs = peer.join().expect("peer");
        assert_eq!(reqs, vec!["CONNECT 52\n"; 3], "two refusals, then the accepted attempt");
    }

    #[test]
    fn bad_reply_and_no_listener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = dir.path().join("vm.vsock");
        let _peer = fake_device(uds.clone(), 0, "ERR nope\n");
        let e = connect_to_guest(&uds, 7, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&e, VsockError::BadReply { reply, .. } if reply == "ERR nope\n"), "{e}");

        let uds2 = dir.path().join("vm2.vsock");
        let _peer2 = fake_device(uds2.clone(), usize::MAX, "OK 1\n");
        let e = connect_to_guest(&uds2, 7, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, VsockError::NoListener(_, 7, _)), "{e}");

        let e = connect_to_guest(&dir.path().join("absent"), 7, Duration::from_millis(10));
        assert!(matches!(e, Err(VsockError::Connect(..))));
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
