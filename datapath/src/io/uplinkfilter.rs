//! The uplink's socket filter: a classic BPF program attached to the packet socket of a
//! node's NIC so that the kernel copies into Skein's ring only what Skein answers on the
//! node IP — ARP, TCP/UDP to the node IP on the NodePort and SNAT port ranges, and the
//! ICMP replies and errors that belong to pods' SNAT'ed traffic. The host's own traffic
//! (SSH, the API server, Geneve, which Skein receives on its UDP socket) never reaches
//! the switch, which costs neither a copy nor a lookup.

use std::net::Ipv4Addr;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpfInsn {
    /// Operation.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// What the uplink accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UplinkFilter {
    /// The node IP.
    pub node_ip: Ipv4Addr,
    /// TCP/UDP destination port ranges (inclusive) accepted on the node IP.
    pub port_ranges: [(u16, u16); 2],
}

const LD_H_ABS: u16 = 0x28;
const LD_W_ABS: u16 = 0x20;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LD_B_IND: u16 = 0x50;
const LDX_MSH: u16 = 0xb1;
const JEQ: u16 = 0x15;
const JGE: u16 = 0x35;
const JGT: u16 = 0x25;
const JSET: u16 = 0x45;
const RET: u16 = 0x06;

/// Bytes accepted of each frame (all of a 64 KiB super-frame).
const ACCEPT_BYTES: u32 = 0x40000;

impl UplinkFilter {
    /// The program. Labels are resolved to relative jumps; every path ends in a return.
    pub fn program(&self) -> Vec<BpfInsn> {
        let mut ranges = self.port_ranges;
        ranges.sort();
        let [(a_lo, a_hi), (b_lo, b_hi)] = ranges;
        // Instruction list with symbolic targets; `J(true, false)` as absolute indices.
        #[derive(Clone, Copy)]
        enum T {
            Next,
            Accept,
            Drop,
            At(usize),
        }
        let mut p: Vec<(u16, T, T, u32)> = Vec::new();
        let n = |t| t;
        // 0: EtherType.
        p.push((LD_H_ABS, n(T::Next), T::Next, 12));
        p.push((JEQ, T::Accept, T::Next, 0x0806));
        p.push((JEQ, T::Next, T::Drop, 0x0800));
        // IPv4 destination.
        p.push((LD_W_ABS, T::Next, T::Next, 30));
        p.push((JEQ, T::Next, T::Drop, u32::from(self.node_ip)));
        // Protocol.
        p.push((LD_B_ABS, T::Next, T::Next, 23));
        let icmp_at = 17;
        p.push((JEQ, T::At(icmp_at), T::Next, 1));
        p.push((JEQ, T::At(9), T::Next, 6));
        p.push((JEQ, T::Next, T::Drop, 17));
        // 9: TCP/UDP: not a later fragment, then the destination port.
        p.push((LD_H_ABS, T::Next, T::Next, 20));
        p.push((JSET, T::Drop, T::Next, 0x1fff));
        p.push((LDX_MSH, T::Next, T::Next, 14));
        p.push((LD_H_IND, T::Next, T::Next, 16));
        p.push((JGE, T::Next, T::Drop, u32::from(a_lo)));
        p.push((JGT, T::Next, T::Accept, u32::from(a_hi)));
        p.push((JGE, T::Next, T::Drop, u32::from(b_lo)));
        p.push((JGT, T::Drop, T::Accept, u32::from(b_hi)));
        // 17: ICMP: echo reply, destination unreachable, time exceeded.
        debug_assert_eq!(p.len(), icmp_at);
        p.push((LDX_MSH, T::Next, T::Next, 14));
        p.push((LD_B_IND, T::Next, T::Next, 14));
        p.push((JEQ, T::Accept, T::Next, 0));
        p.push((JEQ, T::Accept, T::Next, 3));
        p.push((JEQ, T::Accept, T::Drop, 11));
        let accept = p.len();
        let drop = accept + 1;
        let rel = |i: usize, t: T| -> u8 {
            let target = match t {
                T::Next => i + 1,
                T::Accept => accept,
                T::Drop => drop,
                T::At(a) => a,
            };
            u8::try_from(target - i - 1).unwrap_or(u8::MAX)
        };
        let mut out: Vec<BpfInsn> = p
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| {
                let jumps = matches!(code, JEQ | JGE | JGT | JSET);
                BpfInsn { code, jt: if jumps { rel(i, jt) } else { 0 }, jf: if jumps { rel(i, jf) } else { 0 }, k }
            })
            .collect();
        out.push(BpfInsn { code: RET, jt: 0, jf: 0, k: ACCEPT_BYTES });
        out.push(BpfInsn { code: RET, jt: 0, jf: 0, k: 0 });
        out
    }
}

/// Runs a program the way the kernel does (for the instructions [`UplinkFilter`] uses):
/// the bytes accepted, 0 to drop. An out-of-bounds load drops, as in the kernel.
pub fn run(program: &[BpfInsn], frame: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let byte = |off: usize| frame.get(off).copied().map(u32::from);
    let half = |off: usize| Some((byte(off)? << 8) | byte(off + 1)?);
    let word = |off: usize| Some((half(off)? << 16) | half(off + 2)?);
    while let Some(i) = program.get(pc) {
        let k = i.k as usize;
        let loaded = match i.code {
            LD_H_ABS => half(k),
            LD_W_ABS => word(k),
            LD_B_ABS => byte(k),
            LD_H_IND => half(x as usize + k),
            LD_B_IND => byte(x as usize + k),
            LDX_MSH => {
                let Some(b) = byte(k) else { return 0 };
                x = (b & 0xf) * 4;
                pc += 1;
                continue;
            }
            RET => return i.k,
            _ => None,
        };
        if matches!(i.code, LD_H_ABS | LD_W_ABS | LD_B_ABS | LD_H_IND | LD_B_IND) {
            let Some(v) = loaded else { return 0 };
            a = v;
            pc += 1;
            continue;
        }
        let taken = match i.code {
            JEQ => a == i.k,
            JGE => a >= i.k,
            JGT => a > i.k,
            JSET => a & i.k != 0,
            _ => return 0,
        };
        pc += 1 + usize::from(if taken { i.jt } else { i.jf });
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, dst: [u8; 4], proto: u8, l4: &[u8], frag: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1];
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&dst);
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    fn ports(dst: u16) -> Vec<u8> {
        let mut l4 = vec![0x9c, 0x40];
        l4.extend_from_slice(&dst.to_be_bytes());
        l4.extend_from_slice(&[0; 16]);
        l4
    }

    #[test]
    fn accepts_exactly_skeins_traffic_on_the_node_ip() {
        let f = UplinkFilter { node_ip: Ipv4Addr::new(172, 18, 0, 11), port_ranges: [(61000, 65535), (30000, 32767)] };
        let p = f.program();
        let me = [172, 18, 0, 11];
        let yes = |fr: &[u8]| assert_eq!(run(&p, fr), ACCEPT_BYTES, "{fr:?}");
        let no = |fr: &[u8]| assert_eq!(run(&p, fr), 0, "{fr:?}");
        yes(&frame(0x0806, [0; 4], 0, &[0; 28], 0));
        yes(&frame(0x0800, me, 6, &ports(30080), 0));
        yes(&frame(0x0800, me, 17, &ports(32767), 0));
        yes(&frame(0x0800, me, 6, &ports(61000), 0));
        yes(&frame(0x0800, me, 6, &ports(65535), 0));
        yes(&frame(0x0800, me, 1, &[0, 0, 0, 0], 0));
        yes(&frame(0x0800, me, 1, &[3, 1, 0, 0], 0));
        yes(&frame(0x0800, me, 1, &[11, 0, 0, 0], 0));
        no(&frame(0x0800, me, 6, &ports(22), 0));
        no(&frame(0x0800, me, 6, &ports(29999), 0));
        no(&frame(0x0800, me, 6, &ports(32768), 0));
        no(&frame(0x0800, me, 17, &ports(6081), 0));
        no(&frame(0x0800, me, 6, &ports(60999), 0));
        no(&frame(0x0800, me, 1, &[8, 0, 0, 0], 0));
        no(&frame(0x0800, [172, 18, 0, 12], 6, &ports(30080), 0));
        no(&frame(0x86dd, me, 6, &ports(30080), 0));
        no(&frame(0x0800, me, 6, &ports(30080), 0x0010));
        no(&frame(0x0800, me, 47, &ports(30080), 0));
        no(&[0u8; 10]);
        no(&frame(0x0800, me, 6, &[], 0));
        // An IPv4 header with options moves the ports.
        let mut opt = frame(0x0800, me, 6, &[0; 4], 0);
        opt[14] = 0x46;
        opt.extend_from_slice(&ports(30080));
        yes(&opt);
    }

    #[test]
    fn every_jump_stays_inside_the_program() {
        let p = UplinkFilter { node_ip: Ipv4Addr::LOCALHOST, port_ranges: [(1, 2), (3, 4)] }.program();
        for (i, insn) in p.iter().enumerate() {
            assert!(i + 1 + usize::from(insn.jt) < p.len() || insn.code == RET);
            assert!(i + 1 + usize::from(insn.jf) < p.len() || insn.code == RET);
        }
        assert_eq!(p.last().map(|i| (i.code, i.k)), Some((RET, 0)));
    }
}
