//! UTC timestamps without a time-zone database: the proxy's access log and the engine's lock, audit and hook
//! times all print them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as `2026-11-26T15:40:17Z` (Kamal's lock, audit and hook format).
pub fn now_seconds() -> String {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    seconds_since_epoch(seconds)
}

/// Now as `2026-11-26T15:04:05.123Z` (RFC 3339 with milliseconds, for logs).
pub fn now_millis() -> String {
    millis_at(SystemTime::now())
}

/// A time as `2026-11-26T15:04:05.123Z` (sorts as text with [`now_millis`]).
pub fn millis_at(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}Z", seconds_since_epoch(since.as_secs()).trim_end_matches('Z'), since.subsec_millis())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn seconds_since_epoch(seconds: u64) -> String {
    let (days, rem) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_in_utc() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(seconds_since_epoch(0), "1970-01-01T00:00:00Z");
        assert_eq!(seconds_since_epoch(1_795_794_017), "2026-11-27T15:40:17Z");
        assert_eq!(seconds_since_epoch(951_782_400), "2000-02-29T00:00:00Z");
        let now = now_millis();
        assert!(now.len() == 24 && now.ends_with('Z') && now.as_bytes()[19] == b'.', "{now}");
    }
}
