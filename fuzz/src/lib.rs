//! What the tar-reading fuzz targets share: a mutator that keeps header checksums right.
//!
//! A tar header is refused unless its checksum field holds the sum of its bytes, so nearly
//! every mutation of a header would stop at the checksum and the fuzzer would never see past
//! the first header. [`seal_headers`] walks the blocks as a reader would (header, extension
//! blocks of an old-GNU sparse map, data by the size field) and writes each header's sum;
//! the `tar` and `apply` targets run it after libFuzzer's own mutation, except on one input in
//! eight, so wrong checksums are still tried too.

const BLOCK: usize = 512;

/// Writes the checksum of every header block `data` holds, found as a reader walks them.
pub fn seal_headers(data: &mut [u8]) {
    let mut at = 0usize;
    while let Some(block) = data.get_mut(at..at.saturating_add(BLOCK)) {
        at += BLOCK;
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        seal(block);
        let typeflag = block[156];
        let size = lenient_number(&block[124..136]);
        if typeflag == b'S' && block[482] != 0 {
            // Old GNU sparse extension blocks, each saying whether another follows.
            while let Some(ext) = data.get(at..at.saturating_add(BLOCK)) {
                at += BLOCK;
                if ext[504] == 0 {
                    break;
                }
            }
        }
        // Link, symlink, devices, directory, fifo: no data whatever the size says.
        if !matches!(typeflag, b'1'..=b'6') {
            let blocks = size.div_ceil(BLOCK as u64);
            let skip = blocks.saturating_mul(BLOCK as u64);
            at = at.saturating_add(usize::try_from(skip).unwrap_or(usize::MAX));
        }
    }
}

/// The unsigned sum with the checksum field as spaces, as six octal digits, NUL, space.
fn seal(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(&text.as_bytes()[..8]);
}

/// A size field read loosely: base-256, or the octal digits in it (0 when there are none).
fn lenient_number(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..].iter().fold(0u64, |x, &b| x.wrapping_shl(8) | u64::from(b));
    }
    field
        .iter()
        .filter(|b| (b'0'..=b'7').contains(b))
        .fold(0u64, |x, &b| x.wrapping_mul(8).wrapping_add(u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mutated_header_is_sealed_again_and_data_is_left_alone() {
        let mut tar = vec![0u8; 4 * BLOCK];
        tar[..4].copy_from_slice(b"file");
        tar[124..136].copy_from_slice(b"00000001000\0");
        tar[156] = b'0';
        tar[BLOCK..2 * BLOCK].fill(0xaa);
        tar[2 * BLOCK..2 * BLOCK + 3].copy_from_slice(b"two");
        tar[2 * BLOCK + 156] = b'5';
        seal_headers(&mut tar);
        let sum = |b: &[u8]| -> u32 {
            b.iter()
                .enumerate()
                .map(|(i, &c)| u32::from(if (148..156).contains(&i) { b' ' } else { c }))
                .sum()
        };
        for at in [0, 2 * BLOCK] {
            let stored = std::str::from_utf8(&tar[at + 148..at + 154]).expect("digits");
            assert_eq!(u32::from_str_radix(stored, 8), Ok(sum(&tar[at..at + BLOCK])));
        }
        assert!(tar[BLOCK..2 * BLOCK].iter().all(|&b| b == 0xaa), "data is not a header");
    }
}
