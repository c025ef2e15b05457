//! One layer's bytes as a `Read`: data frames until `LayerEnd`, whose length is checked
//! against what arrived (the host checked the diff_id before sending it; the transport is host
//! memory, so the bytes are not hashed again here). Also enforces the all-layers
//! uncompressed-bytes bound.

use std::io::{self, Read};

use rootbox_proto::{Control, Frame, ProtoError, Reader};

/// Why a layer stream stopped early; carried inside `io::Error` through the tar reader.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "layer content exceeds the {max}-byte limit on uncompressed bytes (--max-uncompressed)"
    )]
    Limit { max: u64 },
    #[error("the host aborted the job: {0}")]
    Aborted(String),
    #[error("layer stream of {got} bytes does not match the {want} bytes the host sent")]
    Length { got: u64, want: u64 },
    #[error("protocol error in layer stream")]
    Proto(#[source] ProtoError),
    #[error("expected layer data, got {0}")]
    Unexpected(String),
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        io::Error::other(e)
    }
}

pub struct LayerStream<'a, R> {
    rd: &'a mut Reader<R>,
    index: u32,
    avail: usize,
    off: usize,
    done: bool,
    bytes: u64,
    budget: &'a mut u64,
    max: u64,
}

impl<'a, R: Read> LayerStream<'a, R> {
    pub fn new(rd: &'a mut Reader<R>, index: u32, budget: &'a mut u64, max: u64) -> Self {
        Self { rd, index, avail: 0, off: 0, done: false, bytes: 0, budget, max }
    }

    fn next_frame(&mut self) -> Result<(), StreamError> {
        match self.rd.read_frame().map_err(StreamError::Proto)? {
            Frame::Data(n) => {
                self.avail = n;
                self.off = 0;
                Ok(())
            }
            Frame::Control(Control::LayerEnd { index, bytes }) if index == self.index => {
                self.done = true;
                if bytes != self.bytes {
                    return Err(StreamError::Length { got: self.bytes, want: bytes });
                }
                Ok(())
            }
            Frame::Control(Control::Abort { reason }) => Err(StreamError::Aborted(reason)),
            Frame::Control(other) => Err(StreamError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Reads and checks whatever the tar reader left (end-of-archive padding) up to `LayerEnd`.
    pub fn finish(mut self) -> io::Result<()> {
        let mut sink = [0u8; 64 * 1024];
        while self.read(&mut sink)? > 0 {}
        Ok(())
    }
}

impl<R: Read> Read for LayerStream<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.done && self.off == self.avail {
            self.next_frame()?;
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(self.avail - self.off);
        if (n as u64) > *self.budget {
            return Err(StreamError::Limit { max: self.max }.into());
        }
        *self.budget -= n as u64;
        buf[..n].copy_from_slice(&self.rd.data(self.avail)[self.off..self.off + n]);
        self.off += n;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Finds a `StreamError` inside an `io::Error` chain.
pub fn stream_cause(e: &io::Error) -> Option<&StreamError> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<StreamError>())
}
