//! Times as operators write them: RFC 3339 (`2026-12-31T00:00:00Z`, with a fraction, with any
//! offset: `2026-12-31T05:00:00+05:00` is the same instant), or without an offset, read as UTC
//! (`2026-12-31T00:00:00`, `2026-12-31 00:00:00`). Years 1970 to 9999: what RFC 3339 can write back.

use std::fmt;
use time::format_description::well_known::Rfc3339;

/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999Z, in Unix milliseconds.
pub const LAST_MILLIS: i64 = 253_402_300_799_999;

/// Why a text is not a time this service takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NotATime,
    Before1970,
    After9999,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NotATime => "not an RFC 3339 time",
            Refused::Before1970 => "a time before 1970",
            Refused::After9999 => "a time after 9999-12-31T23:59:59Z",
        })
    }
}

/// Unix milliseconds of `text`.
pub fn parse_millis(text: &str) -> Result<i64, Refused> {
    // Between the date and the time: `T` (either case) or, as RFC 3339 allows, a space.
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return Err(Refused::NotATime);
    }
    let millis = match time::OffsetDateTime::parse(text, &Rfc3339) {
        Ok(time) => i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
            .map_err(|_| Refused::After9999)?,
        // No offset at all: UTC. (With one that the strict parser refused, no guess: the weak
        // parser would drop the offset and be hours off.)
        Err(_) if !has_offset(text) => {
            let time = humantime::parse_rfc3339_weak(text).map_err(|_| Refused::NotATime)?;
            let since = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| Refused::Before1970)?;
            i64::try_from(since.as_millis()).map_err(|_| Refused::After9999)?
        }
        Err(_) => return Err(Refused::NotATime),
    };
    match millis {
        ..0 => Err(Refused::Before1970),
        0..=LAST_MILLIS => Ok(millis),
        _ => Err(Refused::After9999),
    }
}

/// Unix seconds of `text` (its fraction dropped).
pub fn parse_seconds(text: &str) -> Result<u64, Refused> {
    parse_millis(text).map(|millis| millis.unsigned_abs() / 1000)
}

/// Whether the time of day carries an offset (`Z`, `+hh:mm`, `-hh:mm`): past the date's ten
/// characters, whose dashes are not one.
fn has_offset(text: &str) -> bool {
    text.get(10..).is_some_and(|time| time.contains(['Z', 'z', '+', '-']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_name_the_same_instant() {
        let utc = parse_millis("2026-12-31T00:00:00Z").unwrap();
        assert_eq!(parse_millis("2026-12-31T05:00:00+05:00"), Ok(utc));
        assert_eq!(parse_millis("2026-12-31T05:00:00.000+05:00"), Ok(utc));
        assert_eq!(parse_millis("2026-12-30T19:00:00-05:00"), Ok(utc));
        assert_eq!(parse_millis("2026-12-31t00:00:00z"), Ok(utc));
        assert_eq!(parse_millis("2026-12-31T00:00:00.250Z"), Ok(utc + 250));
        // Without an offset: UTC.
        assert_eq!(parse_millis("2026-12-31T00:00:00"), Ok(utc));
        assert_eq!(parse_millis("2026-12-31 00:00:00"), Ok(utc));
    }

    #[test]
    fn what_is_not_a_time_is_refused_with_its_reason() {
        for text in [
            "",
            "tomorrow",
            "2026-12-31T00:00:00+5",
            "2026-12-31T00:00:00 +05:00",
            "2026-13-01T00:00:00Z",
            "2026-12-31x00:00:00Z",
        ] {
            assert_eq!(parse_millis(text), Err(Refused::NotATime), "{text:?}");
        }
        assert_eq!(parse_millis("1969-12-31T23:59:59Z"), Err(Refused::Before1970));
        assert_eq!(parse_millis("1970-01-01T00:30:00+01:00"), Err(Refused::Before1970));
        assert_eq!(parse_millis("9999-12-31T23:59:59.999Z"), Ok(LAST_MILLIS));
        assert_eq!(parse_millis("9999-12-31T23:59:59-01:00"), Err(Refused::After9999));
    }
}
