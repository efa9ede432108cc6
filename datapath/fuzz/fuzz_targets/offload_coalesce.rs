//! Arbitrary frames through the TCP merging a tunnel's segments get on their way to a pod
//! (`tcp_coalescable`, `TcpSegment::continued_by`, `coalesce_tcp`): no panic, no
//! out-of-bounds access; a run the checks accept merges into a super-frame that segments
//! back into segments carrying the same payload bytes in order, each with valid checksums.
//! Input: frames, each preceded by its length (two bytes, big-endian).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::offload::{self, Offload};
use skein_datapath::packet::checksums_valid;
use skein_datapath::{FlowKey, parse_frame};

fuzz_target!(|data: &[u8]| {
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let [a, b, tail @ ..] = rest {
        let len = (u16::from_be_bytes([*a, *b]) as usize).min(tail.len());
        frames.push(&tail[..len]);
        rest = &tail[len..];
    }
    // Arbitrary parameters must be refused, not trusted.
    if let Some(first) = frames.first() {
        let hdr_len = first.first().copied().unwrap_or(0) as usize;
        let _ = offload::coalesce_tcp(&frames, hdr_len, first.len(), &mut Vec::new());
    }
    let segs: Vec<Option<offload::TcpSegment>> =
        frames.iter().map(|f| offload::tcp_coalescable(f, &Offload::NONE)).collect();
    let Some(Some(first)) = segs.first() else { return };
    let mut end = 1;
    let mut last = *first;
    while let Some(Some(next)) = segs.get(end) {
        if !last.continued_by(next, first.len) {
            break;
        }
        last = *next;
        end += 1;
    }
    if end < 2 {
        return;
    }
    let mut merged = Vec::new();
    let Some(o) = offload::coalesce_tcp(&frames[..end], first.hdr_len, first.len, &mut merged) else { return };
    let mut key = FlowKey::ZERO;
    let offs = parse_frame(&merged, &mut key);
    let mut back: Vec<Vec<u8>> = Vec::new();
    offload::segment(&merged, &offs, &o, &mut Vec::new(), |s| back.push(s.to_vec())).expect("a merged frame segments");
    assert_eq!(back.len(), end);
    for (b, f) in back.iter().zip(&frames[..end]) {
        assert!(checksums_valid(b));
        assert_eq!(b[first.hdr_len..], f[first.hdr_len..]);
    }
});
