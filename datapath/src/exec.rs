//! Datapath actions: what a translated (cached) decision does to a frame. The upcall
//! compiles OpenFlow actions into this short list — header writes with absolute values,
//! VLAN push/pop, outputs, and `clone` for actions that must not affect the rest — and
//! both the first packet and every cached hit run it through the same executor.
//!
//! A megaflow stores its actions encoded as 64-bit words (see [`encode`]) inside the
//! same allocation as its key, which keeps cache entries small.

use crate::key::Field;
use crate::packet;
use crate::parse::HeaderOffsets;

/// Receives the frames a datapath outputs.
pub trait OutputSink {
    /// `frame` (as modified so far) leaves through `port`. `packet` is the index of the
    /// frame in the batch being processed.
    fn output(&mut self, packet: usize, port: u32, frame: &[u8]);
}

/// A sink that collects `(packet, port, frame)` copies; for tests and tools.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CollectSink {
    /// Every output, in order.
    pub outputs: Vec<(usize, u32, Vec<u8>)>,
}

impl OutputSink for CollectSink {
    fn output(&mut self, packet: usize, port: u32, frame: &[u8]) {
        self.outputs.push((packet, port, frame.to_vec()));
    }
}

/// One datapath action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DpAction {
    /// Write a header field (absolute value).
    Set(Field, u128),
    /// Push an 802.1Q tag with this TCI.
    PushVlan(u16),
    /// Pop the 802.1Q tag.
    PopVlan,
    /// Output to a port.
    Output(u32),
    /// Run the nested actions on a copy of the frame.
    Clone(Vec<DpAction>),
}

const TAG_OUTPUT: u64 = 1;
const TAG_SET: u64 = 2;
const TAG_SET_WIDE: u64 = 3;
const TAG_PUSH_VLAN: u64 = 4;
const TAG_POP_VLAN: u64 = 5;
const TAG_CLONE: u64 = 6;

fn field_index(f: Field) -> u64 {
    Field::ALL.iter().position(|x| *x == f).unwrap_or(0) as u64
}

/// Encodes actions as words: the tag in the top byte; `Set` puts the field index in the
/// next byte and a value of up to 48 bits below (wider values follow in two words);
/// `Clone` gives the length in words of the nested block that follows.
pub fn encode(actions: &[DpAction], out: &mut Vec<u64>) {
    for a in actions {
        match a {
            DpAction::Output(p) => out.push(TAG_OUTPUT << 56 | *p as u64),
            DpAction::Set(f, v) => {
                if *v < (1 << 48) {
                    out.push(TAG_SET << 56 | field_index(*f) << 48 | *v as u64);
                } else {
                    out.push(TAG_SET_WIDE << 56 | field_index(*f) << 48);
                    out.push((*v >> 64) as u64);
                    out.push(*v as u64);
                }
            }
            DpAction::PushVlan(tci) => out.push(TAG_PUSH_VLAN << 56 | *tci as u64),
            DpAction::PopVlan => out.push(TAG_POP_VLAN << 56),
            DpAction::Clone(inner) => {
                let at = out.len();
                out.push(0);
                encode(inner, out);
                let len = (out.len() - at - 1) as u64;
                out[at] = TAG_CLONE << 56 | len;
            }
        }
    }
}

/// Decodes words produced by [`encode`] (for dumps and tests).
pub fn decode(mut words: &[u64]) -> Vec<DpAction> {
    let mut out = Vec::new();
    while let Some((&w, rest)) = words.split_first() {
        words = rest;
        match w >> 56 {
            TAG_OUTPUT => out.push(DpAction::Output(w as u32)),
            TAG_SET => out.push(DpAction::Set(Field::ALL[((w >> 48) & 0xff) as usize], (w & 0xffff_ffff_ffff) as u128)),
            TAG_SET_WIDE => {
                let v = ((words[0] as u128) << 64) | words[1] as u128;
                out.push(DpAction::Set(Field::ALL[((w >> 48) & 0xff) as usize], v));
                words = &words[2..];
            }
            TAG_PUSH_VLAN => out.push(DpAction::PushVlan(w as u16)),
            TAG_POP_VLAN => out.push(DpAction::PopVlan),
            _ => {
                let n = (w & 0xffff_ffff) as usize;
                out.push(DpAction::Clone(decode(&words[..n])));
                words = &words[n..];
            }
        }
    }
    out
}

/// Runs encoded actions on a frame.
#[inline]
pub fn execute(words: &[u64], frame: &mut Vec<u8>, offs: &mut HeaderOffsets, pkt: usize, sink: &mut impl OutputSink) {
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        match w >> 56 {
            TAG_OUTPUT => sink.output(pkt, w as u32, frame),
            TAG_SET => {
                let f = Field::ALL[((w >> 48) & 0xff) as usize];
                packet::write_field(frame, offs, f, (w & 0xffff_ffff_ffff) as u128);
            }
            TAG_SET_WIDE => {
                let f = Field::ALL[((w >> 48) & 0xff) as usize];
                let v = ((words[i] as u128) << 64) | words[i + 1] as u128;
                i += 2;
                packet::write_field(frame, offs, f, v);
            }
            TAG_PUSH_VLAN => {
                packet::push_vlan(frame, offs, w as u16);
            }
            TAG_POP_VLAN => {
                packet::pop_vlan(frame, offs);
            }
            _ => {
                let n = (w & 0xffff_ffff) as usize;
                let mut copy = frame.clone();
                let mut o = *offs;
                execute(&words[i..i + n], &mut copy, &mut o, pkt, sink);
                i += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let acts = vec![
            DpAction::Set(Field::EthDst, 0x0a58_0a00_0001),
            DpAction::Set(Field::Ipv6Src, 0x2001_0db8_0000_0000_0000_0000_0000_0001),
            DpAction::PushVlan(0x1064),
            DpAction::Clone(vec![DpAction::PopVlan, DpAction::Output(7)]),
            DpAction::Output(3),
        ];
        let mut w = Vec::new();
        encode(&acts, &mut w);
        assert_eq!(decode(&w), acts);
    }

    #[test]
    fn clone_does_not_affect_the_rest() {
        let mut f = crate::parse::tests::ipv4_frame(6, 1, 2, 3, 4, b"");
        let mut key = crate::key::FlowKey::ZERO;
        let mut o = crate::parse::parse_frame(&f, &mut key);
        let acts =
            vec![DpAction::Clone(vec![DpAction::Set(Field::Ipv4Dst, 9), DpAction::Output(1)]), DpAction::Output(2)];
        let mut w = Vec::new();
        encode(&acts, &mut w);
        let orig = f.clone();
        let mut sink = CollectSink::default();
        execute(&w, &mut f, &mut o, 0, &mut sink);
        assert_eq!(sink.outputs.len(), 2);
        assert_ne!(sink.outputs[0].2, orig);
        assert_eq!(sink.outputs[1].2, orig);
    }
}
