//! Sizes as Kubernetes quantities (what a CSI driver receives), so `10G`
//! means the same here as in a PersistentVolumeClaim:
//!
//! - binary suffixes `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei` (2^10 …), also
//!   written `KiB`, `MiB`, `GiB`, …;
//! - decimal suffixes `k`, `M`, `G`, `T`, `P`, `E` (10^3 …), also written
//!   `kB`/`KB`, `MB`, `GB`, …;
//! - no suffix (or `B`): bytes; decimals and exponents (`1.5Gi`, `1e9`)
//!   as long as the result is a whole number of bytes.
//!
//! Suffixes are case-sensitive, as in Kubernetes (`m` would be *milli*).

use crate::CommonError;

/// Parses a size in bytes (see the module doc for the syntax).
pub fn parse_size(input: &str) -> Result<u64, CommonError> {
    let bad = || CommonError::BadSize {
        input: input.to_string(),
    };
    let trimmed = input.trim();
    let number_end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, mut suffix) = trimmed.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(bad());
    }
    // An exponent: `1e9`, `5E3` (an `E` alone is exa, below).
    let mut exponent: u32 = 0;
    if let Some(rest) = suffix.strip_prefix(['e', 'E']) {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            exponent = rest.parse().map_err(|_| bad())?;
            suffix = "";
        }
    }
    let (base, power): (u128, u32) = match suffix.trim_start() {
        "" | "B" => (10, 0),
        "k" | "K" | "kB" | "KB" => (10, 3),
        "M" | "MB" => (10, 6),
        "G" | "GB" => (10, 9),
        "T" | "TB" => (10, 12),
        "P" | "PB" => (10, 15),
        "E" | "EB" => (10, 18),
        "Ki" | "KiB" => (2, 10),
        "Mi" | "MiB" => (2, 20),
        "Gi" | "GiB" => (2, 30),
        "Ti" | "TiB" => (2, 40),
        "Pi" | "PiB" => (2, 50),
        "Ei" | "EiB" => (2, 60),
        _ => return Err(bad()),
    };
    let multiplier = base
        .checked_pow(power)
        .and_then(|multiplier| multiplier.checked_mul(10u128.checked_pow(exponent)?))
        .ok_or_else(bad)?;
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().map_err(|_| bad())?;
    let scale = 10u128.checked_pow(fraction.len() as u32).ok_or_else(bad)?;
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(bad)?;
    if scaled % scale != 0 {
        return Err(CommonError::FractionalSize {
            input: input.to_string(),
        });
    }
    u64::try_from(scaled / scale).map_err(|_| bad())
}

/// Formats bytes with the largest binary unit that divides them exactly, else one decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Parses a duration: `500ms`, `2s`, `10m`, `1h`; a bare number is seconds.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, CommonError> {
    let bad = || CommonError::BadDuration {
        input: input.to_string(),
    };
    let trimmed = input.trim();
    let (number, unit) = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((trimmed, "s"), |at| trimmed.split_at(at));
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(bad()),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        for (input, bytes) in [
            ("4096", 4096),
            ("10GiB", 10 << 30),
            ("10Gi", 10 << 30),
            ("10G", 10_000_000_000),
            ("10GB", 10_000_000_000),
            ("1.5GiB", 3 << 29),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("512MiB", 512 << 20),
            ("512Mi", 512 << 20),
            ("1TiB", 1 << 40),
            ("64 KiB", 64 << 10),
            ("100k", 100_000),
            ("1e9", 1_000_000_000),
            ("2E", 2_000_000_000_000_000_000),
            ("1.25M", 1_250_000),
        ] {
            assert_eq!(parse_size(input).unwrap(), bytes, "{input}");
        }
        for input in [
            "",
            "ten",
            "10XB",
            "-1G",
            "99999999999PiB",
            "512mib",
            "1m",
            ".",
            "1.2.3G",
        ] {
            assert!(parse_size(input).is_err(), "{input}");
        }
        assert!(matches!(
            parse_size("1.3"),
            Err(CommonError::FractionalSize { .. })
        ));
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1536 << 20), "1.5GiB");
        assert_eq!(format_size(100), "100B");
    }

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }
}
