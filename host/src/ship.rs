//! Shipping a layer to the worker: its bytes decompressed (once: the blob's digest was checked
//! before, its diff_id and the uncompressed budget are checked here as the bytes pass) and
//! streamed as `LayerBegin`, data frames and `LayerEnd`. `LayerEnd` is sent only after the
//! diff_id matched: a layer that fails its check ends the job, and the output (built in an
//! unnamed file) is never placed.

use std::io::{self, Write};

use rootbox_proto::{Control, ProtoError, Writer};

use crate::source::verify::{Checked, Unpacking, Verified};
use crate::source::{Layer, SourceError};

/// Why shipping stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("reading the layer again")]
    Read(#[source] io::Error),
    #[error("sending to the worker")]
    Send(#[source] ProtoError),
    /// The bytes did not check out (diff_id, budget, decompression).
    #[error(transparent)]
    Source(SourceError),
}

/// One layer to ship: which, how far it was checked, and how it is named in errors.
pub struct Shipment<'a> {
    pub layer: &'a Layer,
    pub checked: &'a Checked,
    pub what: &'a str,
    pub index: u32,
}

/// Streams the layer's uncompressed bytes as `LayerBegin`, data frames, `LayerEnd`, charging
/// them to `budget` (of `limit`). `between` runs after every data frame (the job shows the
/// worker's progress there and may say stop: the worker has given its verdict); `Ok(None)`
/// when it said stop, else what the layer turned out to be.
pub fn ship<W: Write>(
    s: &Shipment<'_>,
    budget: &mut u64,
    limit: u64,
    wr: &mut Writer<W>,
    between: &mut dyn FnMut() -> bool,
) -> Result<Option<Verified>, ShipError> {
    wr.send(&Control::LayerBegin { index: s.index }).map_err(ShipError::Send)?;
    let mut unpack =
        Unpacking::open(s.layer, s.checked, *budget, limit).map_err(ShipError::Read)?;
    let mut buf = vec![0u8; rootbox_proto::DATA_MAX as usize];
    let mut sent = 0u64;
    loop {
        let n = match unpack.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(ShipError::Source(unpack.error(e, s.what))),
        };
        wr.send_data(&buf[..n]).map_err(ShipError::Send)?;
        buf = unpack.hash(buf, n);
        sent += n as u64;
        if !between() {
            return Ok(None);
        }
    }
    let v = unpack.finish(s.what).map_err(ShipError::Source)?;
    *budget = budget.saturating_sub(sent);
    wr.send(&Control::LayerEnd { index: s.index, bytes: sent }).map_err(ShipError::Send)?;
    Ok(Some(v))
}
