//! The wire proof: frames from `geneve::encap` are written to a pcap file and decoded by
//! Wireshark's own Geneve dissector (tshark). Every field it reads must be what Skein
//! meant — the OVN format, so that standard capture tools read Skein's tunnels — and
//! `geneve::decap` must give back each inner frame byte for byte.
//!
//! Needs `tshark` on the PATH (CI installs it); without it the test fails, never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use skein_datapath::geneve::{self, EncapParams, TunnelMeta};
use skein_datapath::key::{eth_type, ip_proto};
use skein_datapath::packet::{checksums_valid, fill_checksums};
use skein_datapath::pcap::write_pcap;

/// An inner Ethernet/IPv4 frame with an L4 header of `proto` and valid checksums.
fn inner_ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0x0a, 0x58, dst[0], dst[1], dst[2], dst[3], 0x0a, 0x58, src[0], src[1], src[2], src[3]];
    f.extend_from_slice(&eth_type::IPV4.to_be_bytes());
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 63, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    fill_checksums(&mut f);
    f
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    h[12] = 0x50;
    h[13] = 0x02;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![8, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(b"skein ping payload");
    h
}

struct Case {
    inner: Vec<u8>,
    params: EncapParams,
}

fn params(src: [u8; 4], dst: [u8; 4], vni: u32, ingress: u16, egress: u16) -> EncapParams {
    with_identity(src, dst, vni, ingress, egress, 0)
}

fn with_identity(src: [u8; 4], dst: [u8; 4], vni: u32, ingress: u16, egress: u16, identity: u32) -> EncapParams {
    EncapParams {
        outer_eth_src: [0x02, 0x42, src[0], src[1], src[2], src[3]],
        outer_eth_dst: [0x02, 0x42, dst[0], dst[1], dst[2], dst[3]],
        src: u32::from_be_bytes(src),
        dst: u32::from_be_bytes(dst),
        ttl: 64,
        vni,
        ingress,
        egress,
        identity,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            inner: inner_ipv4(ip_proto::TCP, [10, 244, 1, 5], [10, 244, 2, 9], &tcp_syn(43210, 8080)),
            params: params([192, 0, 2, 11], [192, 0, 2, 12], 1, 2, 3),
        },
        Case {
            inner: inner_ipv4(ip_proto::UDP, [10, 244, 1, 6], [10, 96, 0, 10], &udp(5353, 53, b"\x12\x34query")),
            params: params([192, 0, 2, 11], [192, 0, 2, 13], 0x00ab_cdef, 0x7fff, 0xffff),
        },
        Case {
            inner: inner_ipv4(ip_proto::ICMP, [10, 244, 3, 7], [10, 244, 1, 5], &icmp_echo(0x77, 1)),
            params: params([198, 51, 100, 1], [192, 0, 2, 11], 0x00ff_ffff, 0, 32768),
        },
        Case {
            inner: inner_ipv4(ip_proto::UDP, [10, 244, 1, 5], [239, 1, 2, 3], &udp(1000, 2000, b"to a group")),
            params: params([192, 0, 2, 11], [192, 0, 2, 12], 4242, 0x1234, 40000),
        },
        // A pod's packet while NetworkPolicies are in use: its identity rides along.
        Case {
            inner: inner_ipv4(ip_proto::TCP, [10, 244, 2, 9], [10, 244, 1, 5], &tcp_syn(8080, 43210)),
            params: with_identity([192, 0, 2, 12], [192, 0, 2, 11], 1, 3, 2, 0x0100_5007),
        },
    ]
}

/// A capture file of our own name (other runs may be going on at the same time), removed
/// when dropped — also when an assertion fails.
struct TempPcap(PathBuf);

impl TempPcap {
    fn new() -> TempPcap {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        TempPcap(std::env::temp_dir().join(format!("skein-geneve-{}-{nanos}.pcap", std::process::id())))
    }
}

impl Drop for TempPcap {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ipv4(a: u32) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// Runs tshark on `path` and returns one row of fields per frame. Fails the test, with
/// what to do, if tshark is missing.
fn tshark_fields(path: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(path).args(["-o", "ip.check_checksum:TRUE", "-T", "fields"]);
    cmd.args(["-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "tshark is not installed, and this test needs it to prove the Geneve wire format: \
             install it (`apt-get install -y tshark`); CI installs it"
        ),
        Err(e) => panic!("running tshark failed: {e}"),
    };
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>()).collect()
}

#[test]
fn tshark_decodes_skein_geneve_as_encoded() {
    let cases = cases();
    let mut frames = Vec::new();
    for c in &cases {
        let mut out = Vec::new();
        geneve::encap(&c.inner, &c.params, geneve::inner_flow_entropy(&c.inner), &mut out).expect("encap");
        assert!(checksums_valid(&out), "outer checksums");
        frames.push(out);
    }

    // Our own decapsulation gives back each inner frame and its metadata.
    for (c, f) in cases.iter().zip(&frames) {
        let (meta, off) = geneve::decap(f).expect("decap");
        assert_eq!(&f[off..], &c.inner[..], "inner frame byte for byte");
        let p = &c.params;
        let want = TunnelMeta {
            vni: p.vni,
            src: p.src,
            dst: p.dst,
            ingress: p.ingress,
            egress: p.egress,
            identity: p.identity,
        };
        assert_eq!(meta, want);
    }

    let pcap = TempPcap::new();
    {
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let mut file = std::fs::File::create(&pcap.0).expect("create pcap");
        write_pcap(&mut file, &refs).expect("write pcap");
    }
    let fields = [
        "geneve.version",
        "geneve.flags.oam",
        "geneve.flags.critical",
        "geneve.proto_type",
        "geneve.vni",
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.type.critical",
        "geneve.option.length",
        "geneve.option.unknown.data",
        "udp.srcport",
        "udp.dstport",
        "udp.checksum",
        "ip.src",
        "ip.dst",
        "ip.flags.df",
        "ip.checksum.status",
        "eth.src",
        "tcp.srcport",
        "tcp.dstport",
        "icmp.type",
    ];
    let rows = tshark_fields(&pcap.0, &fields);
    assert_eq!(rows.len(), cases.len(), "one decoded row per frame: {rows:?}");

    for (i, ((c, f), row)) in cases.iter().zip(&frames).zip(&rows).enumerate() {
        let got = |name: &str| -> &str {
            let at = fields.iter().position(|f| *f == name).expect("field listed");
            row.get(at).map(String::as_str).unwrap_or("")
        };
        let p = &c.params;
        let data = (u32::from(p.ingress) << 16) | u32::from(p.egress);
        let ctx = format!("frame {i}: {row:?}");
        assert_eq!(got("geneve.version"), "0", "{ctx}");
        assert_eq!(got("geneve.flags.oam"), "0", "{ctx}");
        assert_eq!(got("geneve.flags.critical"), "1", "{ctx}");
        assert_eq!(got("geneve.proto_type"), "0x6558", "{ctx}");
        assert_eq!(got("geneve.vni"), format!("{:#08x}", p.vni), "{ctx}");
        if p.identity == 0 {
            assert_eq!(got("geneve.option.class"), "0x0102", "{ctx}");
            assert_eq!(got("geneve.option.type"), "0x80", "{ctx}");
            assert_eq!(got("geneve.option.type.critical"), "1", "{ctx}");
            // Wireshark uses this field twice, both in bytes: the base header's options
            // length (2 words), then the option's own length (4 of header, 4 of data).
            assert_eq!(got("geneve.option.length"), "8,8", "{ctx}");
            assert_eq!(got("geneve.option.unknown.data"), format!("{data:08x}"), "{ctx}");
        } else {
            // The identity option follows, in the experimental class, not critical.
            assert_eq!(got("geneve.option.class"), "0x0102,0xff01", "{ctx}");
            assert_eq!(got("geneve.option.type"), "0x80,0x01", "{ctx}");
            assert_eq!(got("geneve.option.type.critical"), "1,0", "{ctx}");
            assert_eq!(got("geneve.option.length"), "16,8,8", "{ctx}");
            assert_eq!(got("geneve.option.unknown.data"), format!("{data:08x},{:08x}", p.identity), "{ctx}");
        }
        // UDP fields list the outer header first, then the inner UDP header if any.
        let list = |name: &str| got(name).split(',').map(str::to_owned).collect::<Vec<_>>();
        let (sports, dports) = (list("udp.srcport"), list("udp.dstport"));
        let sport: u32 = sports[0].parse().expect("outer source port");
        let entropy = geneve::inner_flow_entropy(&c.inner);
        assert_eq!(sport, u32::from(geneve::SOURCE_PORT_BASE) + entropy % 16384, "{ctx}");
        assert_eq!(dports[0], "6081", "{ctx}");
        assert_eq!(list("udp.checksum")[0], "0x0000", "{ctx}");
        // The inner frame decodes too: its transport header is where it was.
        let inner_ports =
            [u16::from_be_bytes([c.inner[34], c.inner[35]]), u16::from_be_bytes([c.inner[36], c.inner[37]])];
        let inner_ports = inner_ports.map(|p| p.to_string()).join(",");
        match c.inner[23] {
            ip_proto::UDP => {
                let second = |l: &[String]| l.get(1).cloned().unwrap_or_default();
                assert_eq!(format!("{},{}", second(&sports), second(&dports)), inner_ports, "{ctx}")
            }
            ip_proto::TCP => assert_eq!(format!("{},{}", got("tcp.srcport"), got("tcp.dstport")), inner_ports, "{ctx}"),
            _ => assert_eq!(got("icmp.type"), "8", "{ctx}"),
        }
        // ip.src/ip.dst list the outer header first, then the inner one.
        let inner_src = u32::from_be_bytes([c.inner[26], c.inner[27], c.inner[28], c.inner[29]]);
        let inner_dst = u32::from_be_bytes([c.inner[30], c.inner[31], c.inner[32], c.inner[33]]);
        assert_eq!(got("ip.src"), format!("{},{}", ipv4(p.src), ipv4(inner_src)), "{ctx}");
        assert_eq!(got("ip.dst"), format!("{},{}", ipv4(p.dst), ipv4(inner_dst)), "{ctx}");
        assert!(got("ip.flags.df").starts_with('1'), "outer DF set: {ctx}");
        assert_eq!(got("ip.checksum.status"), "1,1", "outer and inner IPv4 checksums verified good: {ctx}");
        let mac = p.outer_eth_src.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        assert!(got("eth.src").starts_with(&mac), "{ctx}");
        assert_eq!(f.len(), c.inner.len() + geneve::encap_overhead_v4(p.identity));
    }
}
