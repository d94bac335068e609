//! `2026-12-31T00:00:00Z` to Unix seconds, without a date library: the guest has no clock and no
//! time zone, so only UTC (`Z`) is accepted.

/// Seconds since the Unix epoch of an RFC 3339 UTC time with a `Z` (fractions are ignored).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't') {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' || !matches!(bytes[bytes.len() - 1], b'Z' | b'z') {
        return None;
    }
    if bytes.len() > 20 && (bytes[19] != b'.' || !bytes[20..bytes.len() - 1].iter().all(u8::is_ascii_digit)) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if year < 1970 || !(1..=12).contains(&month) || day == 0 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if day > month_days[(month - 1) as usize] {
        return None;
    }
    // Days before the year, then before the month.
    let years = year - 1970;
    let leap_days = (year - 1 - 1968) / 4 - (year - 1 - 1900) / 100 + (year - 1 - 1600) / 400;
    let before_month: u64 = month_days[..(month - 1) as usize].iter().sum();
    let days = years * 365 + leap_days + before_month + day - 1;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2026-12-31T00:00:00Z"), Some(1_798_675_200));
        assert_eq!(parse_rfc3339("2024-02-29T12:30:15.250Z"), Some(1_709_209_815));
        for bad in
            ["2026-02-30T00:00:00Z", "2026-12-31T00:00:00+01:00", "2026-12-31", "", "1969-12-31T23:59:59Z"]
        {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
