//! The rootbox wire protocol: every byte that crosses the host/worker boundary.
//!
//! It owns the frame header, the control messages and the codec, and works on any
//! `Read + Write` (a socketpair in the container sandbox, AF_VSOCK or a Firecracker-style
//! hybrid vsock Unix socket in the microVM). It never allocates more than a frame's checked
//! length, never interprets layer bytes, and depends on no async runtime or syscall crate.
//! The byte layout is documented in `proto/README.md`.

mod codec;
pub mod device;
mod message;
pub mod text;

pub use codec::{Frame, FrameKind, Reader, Writer, CONTROL_MAX, DATA_MAX, HEADER_LEN};
pub use message::{
    Control, Hello, Identity, JobResult, JobSpec, LayerSpec, Limits, Phase, RemoteError, Sanitised,
    SanitisedKind, SizePolicy, PROTOCOL_VERSION, SANITISED_MAX,
};

/// Everything that can go wrong reading or writing the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("transport I/O failed")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("frame of {len} bytes exceeds the {max}-byte limit for {kind:?} frames")]
    TooLarge { kind: FrameKind, len: u32, max: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved header bits set ({0:#x})")]
    Reserved(u16),
    #[error("malformed control message")]
    Json(#[from] serde_json::Error),
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("protocol version mismatch: this side speaks {ours}, peer speaks {theirs}")]
    Version { ours: u32, theirs: u32 },
}
