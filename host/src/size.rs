//! Human units. Sizes: `4GiB`, `512MiB`, `4G`, `4096M`, `123` (bytes). K/M/G/T and KiB/MiB/GiB/TiB
//! are all powers of 1024, as disk-image tools use them (truncate, qemu-img).

/// Parses a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("size {s:?} does not start with a number"));
    }
    let n: u64 = num.parse().map_err(|_| format!("size {s:?} is too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "size {s:?} has an unknown unit {other:?} (use K, M, G, T or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("size {s:?} is too large"))
}

/// `auto` or an exact size that is a whole number of 4 KiB blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeArg {
    Auto,
    Exact(u64),
}

pub fn parse_size_arg(s: &str) -> Result<SizeArg, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(SizeArg::Auto);
    }
    let n = parse_size(s)?;
    if n == 0 || n % 4096 != 0 {
        return Err(format!("--size {s} must be a positive multiple of 4 KiB"));
    }
    if n < 8 << 20 {
        return Err(format!("--size {s} is below the 8 MiB minimum for an ext4 image"));
    }
    Ok(SizeArg::Exact(n))
}

/// Short human form for messages: 1.5 GiB, 300 MiB, 12 KiB.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// `30d`, `12h`, `90m`, `3600s`, `2w` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(format!(
                "duration {s:?} has an unknown unit {other:?} (use s, m, h, d or w)"
            ))
        }
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_duration("12"), Ok(std::time::Duration::from_secs(12)));
        assert!(parse_duration("3y").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999w").is_err());
    }

    #[test]
    fn size_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("4GiB", Some(4 << 30)),
            ("512MiB", Some(512 << 20)),
            ("4G", Some(4 << 30)),
            ("4096M", Some(4096 << 20)),
            ("4096m", Some(4096 << 20)),
            ("1T", Some(1 << 40)),
            ("64KiB", Some(64 << 10)),
            ("123", Some(123)),
            ("123B", Some(123)),
            (" 2 GiB ", Some(2 << 30)),
            ("", None),
            ("GiB", None),
            ("4X", None),
            ("-4G", None),
            ("1.5G", None),
            ("99999999999999999999G", None),
            ("17179869184G", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).ok(), *want, "parse_size({s:?})");
        }
    }

    #[test]
    fn size_arg_table() {
        assert_eq!(parse_size_arg("auto"), Ok(SizeArg::Auto));
        assert_eq!(parse_size_arg("AUTO"), Ok(SizeArg::Auto));
        assert_eq!(parse_size_arg("1GiB"), Ok(SizeArg::Exact(1 << 30)));
        assert!(parse_size_arg("1000000").is_err(), "not a multiple of 4 KiB");
        assert!(parse_size_arg("4M").is_err(), "below the minimum");
        assert!(parse_size_arg("0").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(300 << 20), "300.0 MiB");
    }
}
