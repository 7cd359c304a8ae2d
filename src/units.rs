//! Byte counts as a user types and reads them, and text from outside made
//! safe to print.

/// Parses `1048576`, `512k`, `64M`, `2G`, `1T` (powers of 1024; a trailing
/// `B`/`iB` is allowed: `64MiB`), and decimal fractions such as `1.5G` (as
/// lvcreate takes them) when they make a whole number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix("B"))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                _ => {
                    return Err(format!(
                        "{text:?}: unknown unit {c:?} (use k, M, G, T or P)"
                    ))
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let not_a_size =
        || format!("{text:?} is not a size in bytes (examples: 1048576, 512k, 64M, 1.5G)");
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    if !all_digits(whole) || !all_digits(fraction) {
        return Err(not_a_size());
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let fraction = fraction.trim_end_matches('0');
    // fraction / 10^n of a unit is fraction * 2^shift / (2^n * 5^n) bytes:
    // whole when 5^n divides fraction and what is left, times 2^shift,
    // divides by 2^n.
    let n = fraction.len() as u32;
    let part = if n == 0 {
        Some(0)
    } else if n > 38 {
        None
    } else {
        let f: u128 = fraction.parse().map_err(|_| not_a_size())?;
        let five = 5u128.pow(n);
        let g = f.is_multiple_of(five).then(|| (f / five) << shift);
        g.filter(|g| g.is_multiple_of(1u128 << n))
            .map(|g| (g >> n) as u64)
    };
    let Some(part) = part else {
        return Err(format!(
            "{text:?} is not a whole number of bytes (give it in a smaller unit)"
        ));
    };
    whole
        .checked_mul(1u64 << shift)
        .and_then(|n| n.checked_add(part))
        .ok_or_else(too_large)
}

/// Parses a duration in seconds: `90` or `90s`, `5m`, `1h`; at least one
/// second.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m or h: 90, 90s, 5m, 1h)"
            ))
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a duration (examples: 90, 90s, 5m, 1h; a plain number is seconds)"
        ));
    }
    let n: u64 = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if n == 0 {
        return Err(format!("{text:?}: give at least one second"));
    }
    Ok(n)
}

/// A count and its noun, singular for 1: `1 record`, `2 records`,
/// `0 entries` (a noun ending in `y` ends in `ies`).
pub fn counted(n: u64, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {noun}s"),
    }
}

/// `was` for one, `were` for any other count.
pub fn were(n: u64) -> &'static str {
    if n == 1 {
        "was"
    } else {
        "were"
    }
}

/// `1.5 GiB` style, for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `text` with its control characters escaped (`\x1b`, `\u{9b}`), so
/// that what a far end or a file says cannot move the cursor, change
/// colours or rewrite what the terminal shows.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain"), "plain");
        assert_eq!(
            printable("a\u{1b}[2Jb\u{9b}c\td"),
            "a\\x1b[2Jb\\u{9b}c\\x09d"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999P").is_err());
        assert!(parse_size("+5").is_err());
    }

    #[test]
    fn sizes_with_decimal_fractions_parse_when_whole() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5k"), Ok(512));
        assert_eq!(parse_size("2.25M"), Ok(9 << 18));
        assert_eq!(parse_size("1.50GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2.0"), Ok(2));
        // 2^-10 of a k is one byte, written out in full.
        assert_eq!(parse_size("0.0009765625k"), Ok(1));
        for bad in ["1.1k", "1.5", "0.3G", "0.00048828125k"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("not a whole number of bytes"), "{bad}: {err}");
        }
        for bad in [".5G", "1.G", "1..5G", "1.5.5G", "1,5G", "-1.5G"] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("is not a size in bytes"), "{bad}: {err}");
        }
        assert!(parse_size(&format!("0.{}1k", "0".repeat(40))).is_err());
        assert!(parse_size("16383.999999999999999999P").is_err());
        assert!(parse_size("16384.5P").is_err(), "past u64");
        assert_eq!(parse_size("16383.5P"), Ok(u64::MAX - (1 << 49) + 1));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("1h"), Ok(3600));
        for bad in [
            "",
            "m",
            "5x",
            "1.5m",
            "-5",
            "0",
            "0s",
            "5 m",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_agree_with_their_nouns() {
        assert_eq!(counted(1, "record"), "1 record");
        assert_eq!(counted(0, "record"), "0 records");
        assert_eq!(counted(2, "entry"), "2 entries");
        assert_eq!(counted(1, "entry"), "1 entry");
        assert_eq!(were(1), "was");
        assert_eq!(were(3), "were");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(100), "100 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
    }
}
