//! Shipping a verified layer to the worker: its bytes decompressed again and streamed as
//! `LayerBegin`, data frames and `LayerEnd` (with the length and sha256 the worker checks).

use std::io::{self, Read, Write};

use rootbox_proto::{Control, ProtoError, Writer};

use crate::source::verify::{decoder, Verified};
use crate::source::Layer;

/// Why shipping stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("reading the layer again")]
    Read(#[source] io::Error),
    #[error("sending to the worker")]
    Send(#[source] ProtoError),
}

/// Streams the verified layer's uncompressed bytes as `LayerBegin`, data frames, `LayerEnd`.
/// Sends one layer. `between` runs after every data frame (the job shows the worker's
/// progress there and may say stop: the worker has given its verdict); `Ok(false)` when it
/// said stop.
pub fn ship<W: Write>(
    layer: &Layer,
    v: &Verified,
    index: u32,
    wr: &mut Writer<W>,
    between: &mut dyn FnMut() -> bool,
) -> Result<bool, ShipError> {
    wr.send(&Control::LayerBegin { index }).map_err(ShipError::Send)?;
    let raw = layer.blob.open().map_err(ShipError::Read)?;
    let mut dec = decoder(v.compression, raw).map_err(ShipError::Read)?;
    let mut buf = vec![0u8; rootbox_proto::DATA_MAX as usize];
    let mut sent = 0u64;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ShipError::Read(e)),
        };
        wr.send_data(&buf[..n]).map_err(ShipError::Send)?;
        sent += n as u64;
        if !between() {
            return Ok(false);
        }
    }
    if sent != v.uncompressed {
        return Err(ShipError::Read(io::Error::other(format!(
            "the layer changed since it was verified ({sent} bytes now, {} then)",
            v.uncompressed
        ))));
    }
    wr.send(&Control::LayerEnd { index, bytes: sent, sha256: v.diff_id.hex().to_string() })
        .map_err(ShipError::Send)?;
    Ok(true)
}
