//! The `Retry-After` header (RFC 9110, section 10.2.3): a number of seconds or an
//! HTTP date.

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value into a delay.
///
/// An HTTP date is measured against the response's `Date` header when there is one, so
/// a worker whose clock is off still waits as long as the server meant; otherwise
/// against `now`. A date in the past means no delay.
pub fn parse_retry_after(
    value: &str,
    date_header: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }

    let target = httpdate::parse_http_date(value).ok()?;
    let reference = date_header
        .and_then(|date| httpdate::parse_http_date(date.trim()).ok())
        .unwrap_or(now);
    Some(target.duration_since(reference).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn seconds_are_read() {
        assert_eq!(
            parse_retry_after("2", None, at(0)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(" 120 ", None, at(0)),
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn date_is_measured_against_the_date_header() {
        let target = httpdate::fmt_http_date(at(1_000_007));
        let date = httpdate::fmt_http_date(at(1_000_000));
        // The worker's clock is far off; the Date header decides.
        let delay = parse_retry_after(&target, Some(&date), at(5));
        assert_eq!(delay, Some(Duration::from_secs(7)));
    }

    #[test]
    fn date_without_date_header_uses_the_local_clock() {
        let target = httpdate::fmt_http_date(at(1_000_007));
        assert_eq!(
            parse_retry_after(&target, None, at(1_000_000)),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn past_date_means_no_delay() {
        let target = httpdate::fmt_http_date(at(1_000_000));
        assert_eq!(
            parse_retry_after(&target, None, at(1_000_100)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(parse_retry_after("soon", None, at(0)), None);
        assert_eq!(parse_retry_after("-5", None, at(0)), None);
    }
}
