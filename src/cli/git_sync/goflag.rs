//! Go's value syntax, as pflag and git-sync's environment parsing take it:
//! `strconv.ParseBool`, `ParseInt` with base prefixes, `ParseFloat`,
//! `time.ParseDuration`, and signal names or numbers.

use std::time::Duration;

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub i64);

impl GoDuration {
    /// As a std duration (negative is zero).
    pub fn std(self) -> Duration {
        Duration::from_nanos(u64::try_from(self.0).unwrap_or(0))
    }

    /// `ms` milliseconds.
    pub fn ms(ms: i64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal) prefix; `_` between digits with a prefix.
pub fn parse_int(s: &str) -> Result<i64, String> {
    let bad = || format!("strconv.ParseInt: parsing {s:?}: invalid syntax");
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    let digits = if prefixed {
        if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
            return Err(bad());
        }
        digits.replace('_', "")
    } else {
        digits
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let v = i128::from_str_radix(&digits, radix).map_err(|_| bad())?;
    let v = if neg { -v } else { v };
    i64::try_from(v).map_err(|_| format!("strconv.ParseInt: parsing {s:?}: value out of range"))
}

/// Go's `strconv.ParseFloat(s, 64)` for the decimal forms people write.
pub fn parse_float(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"))
}

/// Go's `time.ParseDuration`: `300ms`, `-1.5h`, `2h45m`, `0`; units ns, us
/// (µs), ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<GoDuration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(GoDuration(0));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut exact: i128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        match num.split_once('.') {
            None => exact += num.parse::<i128>().map_err(|_| bad())? * scale,
            Some((whole, frac)) => {
                let w: i128 = if whole.is_empty() {
                    0
                } else {
                    whole.parse().map_err(|_| bad())?
                };
                exact += w * scale;
                if !frac.is_empty() {
                    let f: f64 = format!("0.{frac}").parse().map_err(|_| bad())?;
                    total += f * scale as f64;
                }
            }
        }
        rest = tail;
    }
    let ns = exact + total as i128;
    let ns = if neg { -ns } else { ns };
    i64::try_from(ns)
        .map(GoDuration)
        .map_err(|_| format!("time: invalid duration {s:?}"))
}

/// A signal name (`SIGHUP`, `HUP`) or number to its number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = parse_int(s) {
        return i32::try_from(n).ok().filter(|n| *n > 0);
    }
    common::sync::signal_number(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_values() {
        assert_eq!(parse_duration("1m30s"), Ok(GoDuration(90_000_000_000)));
        assert_eq!(parse_duration("100ms"), Ok(GoDuration::ms(100)));
        assert_eq!(parse_duration("1.5h"), Ok(GoDuration(5_400_000_000_000)));
        assert_eq!(parse_duration("-2s"), Ok(GoDuration(-2_000_000_000)));
        assert_eq!(parse_duration("0"), Ok(GoDuration(0)));
        assert_eq!(parse_duration("10µs"), Ok(GoDuration(10_000)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_int("0x10"), Ok(16));
        assert_eq!(parse_int("010"), Ok(8));
        assert_eq!(parse_int("-1"), Ok(-1));
        assert_eq!(
            parse_int("1_000"),
            Err("strconv.ParseInt: parsing \"1_000\": invalid syntax".into())
        );
        assert!(parse_int("").is_err());
        assert_eq!(parse_bool("T"), Ok(true));
        assert!(parse_bool("yes").is_err());
        assert_eq!(parse_signal("SIGHUP"), Some(1));
        assert_eq!(parse_signal("HUP"), Some(1));
        assert_eq!(parse_signal("1"), Some(1));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
