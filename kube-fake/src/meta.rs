//! Server-assigned metadata values: RFC 3339 timestamps, UIDs and `generateName` suffixes,
//! without pulling in a time or UUID crate.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 unpredictable bits: a freshly keyed SipHash of a process-wide counter.
pub(crate) fn random_u64() -> u64 {
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A version-4 UUID string, as the API server assigns to `metadata.uid`.
pub(crate) fn new_uid() -> String {
    let high = random_u64();
    let low = random_u64();
    let bytes: Vec<u8> = high.to_be_bytes().into_iter().chain(low.to_be_bytes()).collect();
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Five characters from the alphabet Kubernetes uses for `generateName` suffixes.
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize];
            bits /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

/// The current time as `2006-01-02T15:04:05Z` (Kubernetes `Time`, second precision).
pub(crate) fn now_rfc3339() -> String {
    format_time(SystemTime::now(), false)
}

/// `time` as `2006-01-02T15:04:05Z`.
pub(crate) fn format_rfc3339(time: SystemTime) -> String {
    format_time(time, false)
}

fn format_time(time: SystemTime, micros: bool) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if micros {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}Z", since.subsec_micros())
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_dates() {
        assert_eq!(format_time(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199) + Duration::from_micros(42);
        assert_eq!(format_time(t, false), "2024-02-29T23:59:59Z");
        assert_eq!(format_time(t, true), "2024-02-29T23:59:59.000042Z");
    }

    #[test]
    fn uids_look_like_v4_and_differ() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uid());
        assert_eq!(name_suffix().len(), 5);
    }
}
