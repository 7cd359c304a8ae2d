//! Times as the tool reads and writes them: seconds since the epoch, in
//! UTC, to and from the civil calendar (proleptic Gregorian), lvm2's
//! `lv_time` (`2026-11-26 08:00:00 +0000`), and RFC 3339 stamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The civil date (year, month 1-12, day 1-31) of day `days` after the
/// epoch.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day after the epoch of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The parts of `secs`: (year, month, day, hour, minute, second), UTC.
fn parts(secs: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `YYYYmmddHHMMSS`, UTC.
pub fn compact(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = parts(secs);
    format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}")
}

/// `YYYY-mm-ddTHH:MM:SSZ`.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = parts(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// Seconds since the epoch of lvm2's `lv_time` (`2026-11-26 08:00:00
/// +0000`, or without the zone, read as UTC), or of an RFC 3339 stamp
/// (`2026-11-26T08:00:00Z`).
pub fn parse(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_at_checked(10)?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let rest = rest.strip_prefix([' ', 'T'])?;
    let (clock, zone) = rest.split_at_checked(8)?;
    let mut c = clock.split(':');
    let hh: i64 = c.next()?.parse().ok()?;
    let mm: i64 = c.next()?.parse().ok()?;
    let ss: i64 = c.next()?.parse().ok()?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let zone = zone.trim();
    let offset = match zone {
        "" | "Z" | "UTC" => 0,
        z => {
            let sign = match z.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 {
                return None;
            }
            let h: i64 = digits[..2].parse().ok()?;
            let m: i64 = digits[2..].parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    Some(days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_and_print_back() {
        assert_eq!(compact(0), "19700101000000");
        assert_eq!(compact(951_782_400), "20000229000000");
        assert_eq!(compact(1_795_683_661), "20261126090101");
        assert_eq!(rfc3339(1_795_683_661), "2026-11-26T09:01:01Z");
        for days in [-1000, 0, 59, 60, 11_016, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(parse("2026-11-26 09:01:01 +0000"), Some(1_795_683_661));
        assert_eq!(parse("2026-11-26 10:01:01 +0100"), Some(1_795_683_661));
        assert_eq!(parse("2026-11-26 04:01:01 -05:00"), Some(1_795_683_661));
        assert_eq!(parse("2026-11-26T09:01:01Z"), Some(1_795_683_661));
        assert_eq!(parse("2026-11-26 09:01:01"), Some(1_795_683_661));
        for bad in [
            "",
            "2026-13-01 00:00:00",
            "2026-11-26",
            "yesterday",
            "2026-11-26 09:01:01 +1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
