//! Frame codec: an 8-byte little-endian header followed by the payload.
//!
//! ```text
//! offset 0  u32  payload length
//! offset 4  u8   kind (1 = control JSON, 2 = data)
//! offset 5  u8   flags (0; reserved)
//! offset 6  u16  reserved (0)
//! ```
//! The length is checked against the kind's maximum before any allocation.

use std::io::{self, Read, Write};

use crate::{Control, ProtoError};

pub const HEADER_LEN: usize = 8;
/// Largest control (JSON) frame accepted.
pub const CONTROL_MAX: u32 = 256 * 1024;
/// Largest data frame accepted.
pub const DATA_MAX: u32 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Control = 1,
    Data = 2,
}

impl FrameKind {
    fn from_u8(v: u8) -> Result<Self, ProtoError> {
        match v {
            1 => Ok(Self::Control),
            2 => Ok(Self::Data),
            other => Err(ProtoError::UnknownKind(other)),
        }
    }

    fn max(self) -> u32 {
        match self {
            Self::Control => CONTROL_MAX,
            Self::Data => DATA_MAX,
        }
    }
}

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    Control(Control),
    /// Raw bytes; the slice lives in the reader's buffer until the next read.
    Data(usize),
}

/// Reads frames, reusing one buffer for data payloads.
pub struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, buf: Vec::new() }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The payload of the last `Frame::Data`.
    pub fn data(&self, len: usize) -> &[u8] {
        &self.buf[..len]
    }

    /// Reads the next frame. A clean EOF before a header is `ProtoError::Closed`.
    pub fn read_frame(&mut self) -> Result<Frame, ProtoError> {
        let mut header = [0u8; HEADER_LEN];
        if let Err(e) = self.inner.read_exact(&mut header) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                ProtoError::Closed
            } else {
                ProtoError::Io(e)
            });
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let kind = FrameKind::from_u8(header[4])?;
        let reserved = u16::from(header[5]) | u16::from_le_bytes([header[6], header[7]]);
        if reserved != 0 {
            return Err(ProtoError::Reserved(reserved));
        }
        if len > kind.max() {
            return Err(ProtoError::TooLarge { kind, len, max: kind.max() });
        }
        let len = len as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        self.inner.read_exact(&mut self.buf[..len]).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ProtoError::Closed
            } else {
                ProtoError::Io(e)
            }
        })?;
        match kind {
            FrameKind::Control => Ok(Frame::Control(serde_json::from_slice(&self.buf[..len])?)),
            FrameKind::Data => Ok(Frame::Data(len)),
        }
    }

    /// Reads the next frame and requires it to be a control message.
    pub fn read_control(&mut self) -> Result<Control, ProtoError> {
        match self.read_frame()? {
            Frame::Control(c) => Ok(c),
            Frame::Data(n) => Err(ProtoError::Unexpected {
                expected: "a control message",
                got: format!("a {n}-byte data frame"),
            }),
        }
    }
}

/// Writes frames.
pub struct Writer<W> {
    inner: W,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn header(kind: FrameKind, len: usize) -> Result<[u8; HEADER_LEN], ProtoError> {
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        if len32 > kind.max() {
            return Err(ProtoError::TooLarge { kind, len: len32, max: kind.max() });
        }
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&len32.to_le_bytes());
        h[4] = kind as u8;
        Ok(h)
    }

    pub fn send(&mut self, msg: &Control) -> Result<(), ProtoError> {
        let body = serde_json::to_vec(msg)?;
        let h = Self::header(FrameKind::Control, body.len())?;
        self.inner.write_all(&h)?;
        self.inner.write_all(&body)?;
        self.inner.flush()?;
        Ok(())
    }

    /// Sends `bytes` as one or more data frames of at most `DATA_MAX` bytes.
    pub fn send_data(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        for chunk in bytes.chunks(DATA_MAX as usize) {
            let h = Self::header(FrameKind::Data, chunk.len())?;
            self.inner.write_all(&h)?;
            self.inner.write_all(chunk)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ProtoError> {
        self.inner.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, PROTOCOL_VERSION};

    fn roundtrip(bytes: &[u8]) -> Result<Frame, ProtoError> {
        Reader::new(bytes).read_frame()
    }

    #[test]
    fn control_roundtrip() {
        let mut out = Vec::new();
        let msg = Control::Hello(Hello { version: PROTOCOL_VERSION, features: vec!["x".into()] });
        Writer::new(&mut out).send(&msg).unwrap();
        assert_eq!(&out[4..8], &[1, 0, 0, 0]);
        match roundtrip(&out).unwrap() {
            Frame::Control(Control::Hello(h)) => {
                assert_eq!(h.version, PROTOCOL_VERSION);
                assert_eq!(h.features, vec!["x".to_string()]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn data_is_chunked_and_reassembled() {
        let payload: Vec<u8> = (0..(DATA_MAX as usize * 2 + 17)).map(|i| i as u8).collect();
        let mut out = Vec::new();
        Writer::new(&mut out).send_data(&payload).unwrap();
        let mut r = Reader::new(out.as_slice());
        let mut got = Vec::new();
        for _ in 0..3 {
            match r.read_frame().unwrap() {
                Frame::Data(n) => got.extend_from_slice(r.data(n)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, payload);
        assert!(matches!(r.read_frame(), Err(ProtoError::Closed)));
    }

    #[test]
    fn oversized_length_rejected_before_allocation() {
        // Header claims 4 GiB - 1 of data; no payload follows.
        let h = [0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0];
        match roundtrip(&h) {
            Err(ProtoError::TooLarge { len, max, .. }) => {
                assert_eq!(len, u32::MAX);
                assert_eq!(max, DATA_MAX);
            }
            other => panic!("unexpected {other:?}"),
        }
        let h = (CONTROL_MAX + 1).to_le_bytes();
        let h = [h[0], h[1], h[2], h[3], 1, 0, 0, 0];
        assert!(matches!(roundtrip(&h), Err(ProtoError::TooLarge { .. })));
    }

    #[test]
    fn unknown_kind_and_reserved_bits_rejected() {
        assert!(matches!(roundtrip(&[0, 0, 0, 0, 9, 0, 0, 0]), Err(ProtoError::UnknownKind(9))));
        assert!(matches!(roundtrip(&[0, 0, 0, 0, 2, 1, 0, 0]), Err(ProtoError::Reserved(1))));
    }

    #[test]
    fn truncated_payload_is_closed_not_garbage() {
        let h = [10, 0, 0, 0, 2, 0, 0, 0, 1, 2, 3];
        assert!(matches!(roundtrip(&h), Err(ProtoError::Closed)));
        assert!(matches!(roundtrip(&[1, 0]), Err(ProtoError::Closed)));
    }

    #[test]
    fn malformed_json_is_an_error() {
        let body = b"{not json";
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&[1, 0, 0, 0]);
        f.extend_from_slice(body);
        assert!(matches!(roundtrip(&f), Err(ProtoError::Json(_))));
    }

    #[test]
    fn works_over_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut w = Writer::new(a);
            w.send_data(b"hello").unwrap();
            w.send(&Control::Finish).unwrap();
        });
        let mut r = Reader::new(b);
        match r.read_frame().unwrap() {
            Frame::Data(n) => assert_eq!(r.data(n), b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(r.read_control().unwrap(), Control::Finish));
        t.join().unwrap();
    }
}
