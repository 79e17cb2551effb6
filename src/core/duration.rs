//! Durations as users write them in specs and flags (`500ms`, `5s`, `1m30s`, `2h`).

use std::time::Duration;

use crate::core::text::quote;

/// Parse a duration such as `500ms`, `5s`, `1m30s`, `2h`.
///
/// The grammar is the CRD's `DURATION_PATTERN` of the CRD: one or more
/// `<number><unit>` groups with no separators, where a number is digits with an optional
/// decimal part (`1.5s`) and a unit is `ms`, `s`, `m` or `h`. Empty strings, signs, spaces,
/// other units and values beyond what a `Duration` holds are refused. Sub-nanosecond
/// fractions are truncated.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const NANOS_PER_MS: u128 = 1_000_000;
    const NANOS_PER_S: u128 = 1_000_000_000;
    if s.is_empty() {
        return Err("empty duration (expected e.g. 500ms, 5s, 1m30s, 2h)".to_string());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        // Integer part.
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(match bytes[i] {
                b'-' => "negative durations are not allowed".to_string(),
                b'+' => "signs are not allowed in durations".to_string(),
                b' ' | b'\t' => "spaces are not allowed in durations".to_string(),
                c if c.is_ascii_alphabetic() => format!(
                    "unexpected {} after {} (format: <number><unit>..., units ms, s, m, h)",
                    quote(&word_at(&s[i..])),
                    quote(&s[..i])
                ),
                _ => format!(
                    "expected a number at position {} (format: <number><unit>..., units ms, s, m, h)",
                    i + 1
                ),
            });
        }
        let int_digits = &s[start..i];
        // Optional fraction.
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fstart = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == fstart {
                return Err("a decimal point must be followed by digits (e.g. 1.5s)".to_string());
            }
            frac_digits = &s[fstart..i];
        }
        // Unit.
        let rest = &s[i..];
        let (unit_nanos, unit_len) = if rest.starts_with("ms") {
            (NANOS_PER_MS, 2)
        } else if rest.starts_with('s') {
            (NANOS_PER_S, 1)
        } else if rest.starts_with('m') {
            (60 * NANOS_PER_S, 1)
        } else if rest.starts_with('h') {
            (3600 * NANOS_PER_S, 1)
        } else if rest.is_empty() {
            return Err(format!(
                "missing unit after {int_digits} (use ms, s, m or h)"
            ));
        } else if rest.starts_with([' ', '\t']) {
            return Err("spaces are not allowed in durations".to_string());
        } else {
            return Err(format!(
                "unknown unit {} (use ms, s, m or h)",
                quote(&word_at(rest))
            ));
        };
        i += unit_len;

        let too_large = || "duration is too large".to_string();
        let int: u128 = int_digits.parse().map_err(|_| too_large())?;
        let mut group = int.checked_mul(unit_nanos).ok_or_else(too_large)?;
        if !frac_digits.is_empty() {
            // 18 digits keep full nanosecond precision for every unit up to hours.
            let kept = &frac_digits[..frac_digits.len().min(18)];
            let frac: u128 = kept.parse().map_err(|_| too_large())?;
            let scale = 10u128.pow(u32::try_from(kept.len()).unwrap_or(18));
            group = group
                .checked_add(frac.saturating_mul(unit_nanos) / scale)
                .ok_or_else(too_large)?;
        }
        total = total.checked_add(group).ok_or_else(too_large)?;
    }
    let secs =
        u64::try_from(total / NANOS_PER_S).map_err(|_| "duration is too large".to_string())?;
    let nanos = u32::try_from(total % NANOS_PER_S).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// The unit-like word at the start of `rest`, for messages.
fn word_at(rest: &str) -> String {
    let word: String = rest
        .chars()
        .take_while(|c| !c.is_ascii_digit() && *c != '.')
        .take(8)
        .collect();
    if word.is_empty() {
        rest.chars().take(1).collect()
    } else {
        word
    }
}

/// Render a duration the way users write them (`5m`, `1m30s`, `1.5s`, `500ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return if d.is_zero() {
            "0s".to_string()
        } else {
            format!("{}ns", d.as_nanos())
        };
    }
    let h = total_ms / 3_600_000;
    let m = (total_ms / 60_000) % 60;
    let s = (total_ms / 1000) % 60;
    let ms = total_ms % 1000;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || ms > 0 {
        if ms == 0 {
            out.push_str(&format!("{s}s"));
        } else if s == 0 && out.is_empty() {
            out.push_str(&format!("{ms}ms"));
        } else {
            let frac = format!("{ms:03}");
            out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_table() {
        let ok: &[(&str, Duration)] = &[
            ("0s", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25m", Duration::from_secs(15)),
            ("1h2m3s4ms", Duration::from_millis(3_723_004)),
            ("1.5ms", Duration::from_micros(1500)),
            ("90s", Duration::from_secs(90)),
            ("1s1s", Duration::from_secs(2)),
            ("007s", Duration::from_secs(7)),
            ("0.000000001s", Duration::from_nanos(1)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("5x", "unknown unit \"x\""),
            ("5us", "unknown unit \"us\""),
            ("-1s", "negative"),
            ("+1s", "signs"),
            ("1 m", "spaces"),
            (" 1m", "spaces"),
            ("1m ", "spaces"),
            ("5", "missing unit"),
            ("1.s", "decimal point"),
            (".5s", "expected a number"),
            ("s", "unexpected \"s\""),
            ("1sec", "unexpected \"ec\""),
            ("1h-5m", "negative"),
            ("99999999999999999999999999999h", "too large"),
            ("9999999999999999999h", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).expect_err(s);
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }

    #[test]
    fn format_duration_table() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(3_723_004), "1h2m3.004s"),
        ] {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d), "round trip {want}");
        }
    }
}
