//! Arbitrary conntrack hand-over files (as a previous datapath process would leave them,
//! or corrupted) taken in by a small table: no panic; a refused file imports nothing; an
//! accepted one never fills the table beyond its limit, survives a sweep and early drop
//! with consistent eviction lists, and exports to a file that imports the same
//! connections again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_datapath::conntrack::{Conntrack, CtConfig, CtRequest, HandoverOrigin};
use skein_datapath::key::FlowKey;
use skein_datapath::parse::parse_frame;

fuzz_target!(|data: &[u8]| {
    // The boot id the file claims is this boot's (so the records are reached), and the
    // wall clock a few seconds after it was written.
    let mut boot_id = [b'0'; 36];
    if let Some(id) = data.get(8..44) {
        boot_id.copy_from_slice(id);
    }
    let written = data.get(44..52).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
    let origin = HandoverOrigin { boot_id, unix_ns: written.saturating_add(3_000_000_000) };
    let config = CtConfig { max_connections: 6, ..CtConfig::default() };
    let mut ct = Conntrack::new(config);
    let now = 1_000;
    match ct.import(data, now, &origin) {
        Err(_) => assert!(ct.is_empty(), "a refused file imported nothing"),
        Ok(r) => {
            assert_eq!(ct.connections(now).count(), r.imported);
            assert!(ct.len() <= 6);
            let (file, n) = ct.export(now, &origin);
            assert_eq!(n, r.imported);
            let mut again = Conntrack::new(config);
            let r2 = again.import(&file, now, &origin).expect("an exported file imports");
            assert_eq!(r2.imported, n);
            // New connections into the imported table: early drop walks its lists.
            for sport in 0..8u16 {
                let mut f = vec![0u8; 54];
                f[12] = 0x08;
                f[14] = 0x45;
                f[16] = 0;
                f[17] = 40;
                f[22] = 64;
                f[23] = 6;
                f[26..30].copy_from_slice(&[10, 0, 0, 1]);
                f[30..34].copy_from_slice(&[10, 0, 0, 2]);
                f[34..36].copy_from_slice(&sport.to_be_bytes());
                f[36..38].copy_from_slice(&80u16.to_be_bytes());
                f[46] = 0x50;
                f[47] = 0x02;
                let mut key = FlowKey::ZERO;
                let offs = parse_frame(&f, &mut key);
                ct.track(&mut f, &offs, &key, &CtRequest::zone(1).commit(), now + 1);
                assert!(ct.len() <= 6);
            }
            ct.sweep(u64::MAX / 2, usize::MAX);
            assert!(ct.is_empty(), "every connection expires and is swept");
        }
    }
});
