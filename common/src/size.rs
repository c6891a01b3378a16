//! Human sizes: `10GiB`, `512MiB`, `1TiB`, `4096`, `1G` (binary units throughout).

use crate::CommonError;

/// Parses a size in bytes. Units are binary (`G` = `GiB` = 2^30); `B` may follow.
pub fn parse_size(input: &str) -> Result<u64, CommonError> {
    let bad = || CommonError::BadSize {
        input: input.to_string(),
    };
    let trimmed = input.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        "p" | "pb" | "pi" | "pib" => 50,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(bad)
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
            ("10G", 10 << 30),
            ("512mib", 512 << 20),
            ("1TiB", 1 << 40),
            ("64 KiB", 64 << 10),
        ] {
            assert_eq!(parse_size(input).unwrap(), bytes, "{input}");
        }
        for input in ["", "ten", "10XB", "-1G", "99999999999PiB"] {
            assert!(parse_size(input).is_err(), "{input}");
        }
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
