//! The identity of a reproducible build: the filesystem UUID, the directory hash seed and the
//! epoch the worker uses instead of chance and the clock (`rootbox_proto::Identity`), derived
//! from the build's inputs alone, so the same inputs give the same bytes and different inputs
//! give different UUIDs.
//!
//! The inputs are what changes the output bytes: the image (its digest and its layers' in
//! order), the size policy, the label, the injected files (the digest of the inject layer's
//! tar) and the epoch. What does not change them (the isolation mode, limits, `--json`,
//! progress, cache settings, the source's spelling) never enters, and neither does
//! `canonicalise`: a build with the pass off keeps the same UUID and seed, so `rootbox diff`
//! shows only what the pass fixes.
//!
//! Derivation (version 1; changing it changes every UUID, so the pinned vector in the tests
//! must change with it): sha256 over a domain tag and the inputs in a fixed order, each
//! length-prefixed (u64 little-endian), the first 16 bytes, with the RFC 9562 version 8
//! (custom) nibble and variant bits set, written as a hyphenated lower-case UUID. The UUID and
//! the hash seed differ only in their domain tag.

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// The domain tag of the UUID: versioned, so a future derivation can never collide with it.
const UUID_TAG: &str = "rootbox identity v1 uuid";
/// The domain tag of the directory hash seed.
const HASH_SEED_TAG: &str = "rootbox identity v1 hash_seed";

/// How big the filesystem is made: the part of the size options that reaches the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `--size auto`: the minimum plus this headroom, in percent.
    Auto { headroom_pct: u32 },
    /// `--size N`: exactly this many bytes (the headroom does not matter).
    Exact { bytes: u64 },
}

/// Everything that changes the output bytes of a build.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The manifest digest, or a flat tar's sha256.
    pub image: &'a Digest,
    /// The layers' digests, in order.
    pub layers: &'a [Digest],
    pub size: Size,
    pub label: &'a str,
    /// The digest of the injected files' tar, `None` when nothing is injected.
    pub injected: Option<&'a Digest>,
    /// Seconds since 1970-01-01 UTC (see [`source_date_epoch`]).
    pub epoch: u64,
}

/// `$SOURCE_DATE_EPOCH` is not a non-negative integer (a usage error, exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("SOURCE_DATE_EPOCH={value:?} is not a non-negative integer (seconds since 1970-01-01 UTC)")]
pub struct BadEpoch {
    pub value: String,
    #[source]
    pub source: Option<std::num::ParseIntError>,
}

/// The build's epoch: `$SOURCE_DATE_EPOCH` when set (see reproducible-builds.org), else 0, so
/// that a build without it is reproducible too and its times say plainly that they are not
/// the build's. Set but not a non-negative integer (empty included) is an error, not 0.
pub fn source_date_epoch() -> Result<u64, BadEpoch> {
    parse_epoch(std::env::var_os("SOURCE_DATE_EPOCH").as_deref())
}

fn parse_epoch(value: Option<&std::ffi::OsStr>) -> Result<u64, BadEpoch> {
    let Some(raw) = value else { return Ok(0) };
    let shown = raw.to_string_lossy().into_owned();
    let Some(text) = raw.to_str() else { return Err(BadEpoch { value: shown, source: None }) };
    // u64's parser takes a leading `+`; the variable is digits only.
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadEpoch { value: shown, source: None });
    }
    text.parse::<u64>().map_err(|e| BadEpoch { value: shown, source: Some(e) })
}

/// The identity the worker builds with.
pub fn derive(inputs: &Inputs<'_>, canonicalise: bool) -> rootbox_proto::Identity {
    let encoded = encode(inputs);
    rootbox_proto::Identity {
        uuid: uuid_v8(UUID_TAG, &encoded),
        hash_seed: uuid_v8(HASH_SEED_TAG, &encoded),
        epoch: inputs.epoch,
        canonicalise,
    }
}

/// The canonical encoding of the inputs: every field length-prefixed, in a fixed order, so
/// no two different inputs encode alike (a label cannot run into the next field).
fn encode(i: &Inputs<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |name: &str, value: &[u8]| {
        put(&mut out, name.as_bytes());
        put(&mut out, value);
    };
    field("image", i.image.to_string().as_bytes());
    let mut layers = Vec::new();
    layers.extend_from_slice(&(i.layers.len() as u64).to_le_bytes());
    for l in i.layers {
        put(&mut layers, l.to_string().as_bytes());
    }
    field("layers", &layers);
    let size = match i.size {
        Size::Auto { headroom_pct } => {
            [&[0u8][..], &u64::from(headroom_pct).to_le_bytes()].concat()
        }
        Size::Exact { bytes } => [&[1u8][..], &bytes.to_le_bytes()].concat(),
    };
    field("size", &size);
    field("label", i.label.as_bytes());
    let injected = match i.injected {
        None => vec![0u8],
        Some(d) => [&[1u8][..], d.to_string().as_bytes()].concat(),
    };
    field("injected", &injected);
    field("epoch", &i.epoch.to_le_bytes());
    out
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// sha256(tag, encoded) cut to 16 bytes, marked as an RFC 9562 version 8 UUID.
fn uuid_v8(tag: &str, encoded: &[u8]) -> String {
    let mut h = Sha256::new();
    let mut prefix = Vec::new();
    put(&mut prefix, tag.as_bytes());
    h.update(&prefix);
    h.update(encoded);
    let full = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&full[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10: RFC 9562
    let x = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes one input differ.
    type Change = fn(&mut Owned);

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    struct Owned {
        image: Digest,
        layers: Vec<Digest>,
        size: Size,
        label: String,
        injected: Option<Digest>,
        epoch: u64,
    }

    impl Owned {
        fn base() -> Self {
            Owned {
                image: d("manifest"),
                layers: vec![d("layer 1"), d("layer 2")],
                size: Size::Auto { headroom_pct: 20 },
                label: "rootfs".into(),
                injected: Some(d("assets")),
                epoch: 0,
            }
        }

        fn inputs(&self) -> Inputs<'_> {
            Inputs {
                image: &self.image,
                layers: &self.layers,
                size: self.size,
                label: &self.label,
                injected: self.injected.as_ref(),
                epoch: self.epoch,
            }
        }

        fn uuid(&self) -> String {
            derive(&self.inputs(), true).uuid
        }
    }

    /// Pinned: an accidental change of the derivation (field order, tags, encoding) changes
    /// every build's UUID and must fail here first. Change it only with the tags' version.
    #[test]
    fn the_derivation_is_pinned() {
        let o = Owned::base();
        let i = o.inputs();
        let id = derive(&i, true);
        assert_eq!(id.uuid, "7538f4d9-2eae-89c1-95f3-5ec815dc219f");
        assert_eq!(id.hash_seed, "e8cc96b3-6857-8115-ba2e-580ae8ae3f59");
        assert_eq!(id.epoch, 0);
        assert!(id.canonicalise);
    }

    #[test]
    fn uuids_are_version_8_rfc_9562() {
        let u = Owned::base().uuid();
        assert_eq!(u.len(), 36);
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert!(u.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(parts[2].starts_with('8'), "version nibble: {u}");
        assert!("89ab".contains(&parts[3][..1]), "variant bits: {u}");
    }

    #[test]
    fn every_input_changes_the_uuid() {
        let base = Owned::base().uuid();
        let changes: Vec<(&str, Change)> = vec![
            ("image", |o| o.image = d("other manifest")),
            ("a layer", |o| o.layers[1] = d("layer 3")),
            ("layer order", |o| o.layers.reverse()),
            ("layer count", |o| o.layers.truncate(1)),
            ("headroom", |o| o.size = Size::Auto { headroom_pct: 21 }),
            ("exact size", |o| o.size = Size::Exact { bytes: 20 }),
            ("label", |o| o.label = "rootfs2".into()),
            ("empty label", |o| o.label = String::new()),
            ("injected files", |o| o.injected = Some(d("other assets"))),
            ("nothing injected", |o| o.injected = None),
            ("epoch", |o| o.epoch = 1),
        ];
        let mut seen = vec![base.clone()];
        for (what, change) in changes {
            let mut o = Owned::base();
            change(&mut o);
            let u = o.uuid();
            assert!(!seen.contains(&u), "changing the {what} did not change the UUID");
            seen.push(u);
        }
        // Same inputs, same UUID; the hash seed is not the UUID.
        assert_eq!(Owned::base().uuid(), base);
        let o = Owned::base();
        let i = o.inputs();
        assert_ne!(derive(&i, true).hash_seed, base);
    }

    #[test]
    fn canonicalise_keeps_the_identity() {
        let o = Owned::base();
        let i = o.inputs();
        let (on, off) = (derive(&i, true), derive(&i, false));
        assert_eq!((on.uuid, on.hash_seed), (off.uuid, off.hash_seed));
        assert!(!off.canonicalise);
    }

    #[test]
    fn source_date_epoch_parses_strictly() {
        use std::ffi::OsStr;
        assert_eq!(parse_epoch(None).unwrap(), 0);
        assert_eq!(parse_epoch(Some(OsStr::new("1700000000"))).unwrap(), 1_700_000_000);
        assert_eq!(parse_epoch(Some(OsStr::new("0"))).unwrap(), 0);
        for bad in ["", "-1", "+5", " 5", "5s", "1.5", "99999999999999999999999"] {
            let e = parse_epoch(Some(OsStr::new(bad))).unwrap_err();
            assert!(e.to_string().contains("SOURCE_DATE_EPOCH"), "{bad:?}: {e}");
        }
    }
}
