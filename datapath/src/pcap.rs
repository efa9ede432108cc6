//! Writing frames as a classic libpcap capture file, so that standard tools (tcpdump,
//! Wireshark, tshark) can decode what the datapath builds: the wire-format tests use it,
//! and so will the `skein-dp` tools.

use std::io::{self, Write};

/// Magic number of a microsecond-resolution pcap file (written little-endian; readers
/// detect the byte order from it).
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;

/// Largest number of bytes of one frame the file records; longer frames are cut, with
/// their real length kept in the record header.
pub const SNAPLEN: u32 = 65535;

/// Link type: Ethernet.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Timestamp of the first frame, in seconds since the Unix epoch (2024-01-01T00:00:00Z).
/// The datapath has no clock, and a fixed sequence makes the files reproducible.
pub const FIRST_TIMESTAMP_SECS: u32 = 1_704_067_200;

/// Writes `frames` as a pcap file: the 24-byte global header (version 2.4, snaplen
/// [`SNAPLEN`], Ethernet link type), then one record per frame. Frame `i` is stamped
/// [`FIRST_TIMESTAMP_SECS`] plus `i` milliseconds.
pub fn write_pcap(w: &mut impl Write, frames: &[&[u8]]) -> io::Result<()> {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&PCAP_MAGIC.to_le_bytes());
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone (8..12) and sigfigs (12..16) stay zero: timestamps are UTC, exact.
    header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&header)?;
    for (i, frame) in frames.iter().enumerate() {
        let millis = i as u64;
        let secs = FIRST_TIMESTAMP_SECS as u64 + millis / 1000;
        let micros = (millis % 1000) * 1000;
        let orig_len = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("frame {i} is over 4 GiB")))?;
        let incl_len = orig_len.min(SNAPLEN);
        let mut record = [0u8; 16];
        // Seconds wrap in 2106; a test capture will not get there.
        record[0..4].copy_from_slice(&(secs as u32).to_le_bytes());
        record[4..8].copy_from_slice(&(micros as u32).to_le_bytes());
        record[8..12].copy_from_slice(&incl_len.to_le_bytes());
        record[12..16].copy_from_slice(&orig_len.to_le_bytes());
        w.write_all(&record)?;
        w.write_all(&frame[..incl_len as usize])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn writes_header_and_records() {
        let a = [1u8; 60];
        let b = [2u8; 14];
        let mut out = Vec::new();
        write_pcap(&mut out, &[&a, &b]).expect("write");
        assert_eq!(&out[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&out[4..8], &[2, 0, 4, 0]);
        assert_eq!(le32(&out, 8), 0);
        assert_eq!(le32(&out, 12), 0);
        assert_eq!(le32(&out, 16), 65535);
        assert_eq!(le32(&out, 20), 1);
        assert_eq!(le32(&out, 24), FIRST_TIMESTAMP_SECS);
        assert_eq!(le32(&out, 28), 0);
        assert_eq!((le32(&out, 32), le32(&out, 36)), (60, 60));
        assert_eq!(&out[40..100], &a[..]);
        assert_eq!(le32(&out, 100), FIRST_TIMESTAMP_SECS);
        assert_eq!(le32(&out, 104), 1000, "1 ms later");
        assert_eq!((le32(&out, 108), le32(&out, 112)), (14, 14));
        assert_eq!(&out[116..], &b[..]);
    }

    #[test]
    fn timestamps_carry_into_seconds() {
        let f = [0u8; 1];
        let frames: Vec<&[u8]> = vec![&f; 1001];
        let mut out = Vec::new();
        write_pcap(&mut out, &frames).expect("write");
        let last = 24 + 1000 * 17;
        assert_eq!(le32(&out, last), FIRST_TIMESTAMP_SECS + 1);
        assert_eq!(le32(&out, last + 4), 0);
    }

    #[test]
    fn long_frames_are_cut_to_the_snaplen() {
        let big = vec![7u8; 70_000];
        let mut out = Vec::new();
        write_pcap(&mut out, &[&big]).expect("write");
        assert_eq!(le32(&out, 32), SNAPLEN);
        assert_eq!(le32(&out, 36), 70_000);
        assert_eq!(out.len(), 24 + 16 + SNAPLEN as usize);
    }

    #[test]
    fn empty_capture_is_just_the_header() {
        let mut out = Vec::new();
        write_pcap(&mut out, &[]).expect("write");
        assert_eq!(out.len(), 24);
    }
}
