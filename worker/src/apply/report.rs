//! What the applier reports besides a failure: where the ext4 differs from the layers
//! (sanitisation records: the first [`SANITISED_MAX`] kept, every one counted), bounded
//! whatever the layers hold.

use std::collections::BTreeMap;

use rootbox_proto::{Sanitised, SanitisedKind, SANITISED_MAX};

use super::name::ImagePath;

#[derive(Debug, Default)]
pub struct Report {
    layer: u32,
    pub records: Vec<Sanitised>,
    pub counts: BTreeMap<SanitisedKind, u64>,
}

impl Report {
    /// The layer later records are about.
    pub fn set_layer(&mut self, layer: u32) {
        self.layer = layer;
    }

    pub fn sanitised(
        &mut self,
        path: Option<&ImagePath>,
        kind: SanitisedKind,
        what: impl Into<String>,
        why: impl Into<String>,
    ) {
        *self.counts.entry(kind).or_default() += 1;
        if self.records.len() < SANITISED_MAX {
            self.records.push(Sanitised {
                layer: self.layer,
                path: path.map(ToString::to_string).unwrap_or_default(),
                kind,
                what: what.into(),
                why: why.into(),
            });
        }
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_bounded_counts_are_not() {
        let mut r = Report::default();
        for _ in 0..SANITISED_MAX + 5 {
            r.sanitised(None, SanitisedKind::Xattr, "x", "y");
        }
        r.sanitised(None, SanitisedKind::Device, "d", "y");
        assert_eq!(r.records.len(), SANITISED_MAX);
        assert_eq!(r.counts[&SanitisedKind::Xattr], SANITISED_MAX as u64 + 5);
        assert_eq!(r.total(), SANITISED_MAX as u64 + 6);
    }
}
