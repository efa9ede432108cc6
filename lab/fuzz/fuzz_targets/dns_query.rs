//! Any datagram a pod sends the cluster DNS stand-in gets an answer or nothing, never a
//! panic: an answer carries the query's ID, fits the UDP limit, and is itself a parsable
//! header.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use skein_lab::dns::{MAX_UDP_ANSWER, Zone, respond};

fuzz_target!(|data: &[u8]| {
    let mut zone = Zone::default();
    zone.add("web.demo.svc.cluster.local", IpAddr::from([10, 96, 0, 10]));
    zone.add("a-0.a.ml.svc.cluster.local", IpAddr::from([10, 244, 1, 5]));
    zone.add("a-0.a.ml.svc.cluster.local", "fd00::5".parse().unwrap());
    if let Some(reply) = respond(&zone, data, MAX_UDP_ANSWER) {
        assert!(reply.len() <= MAX_UDP_ANSWER || data.len() > MAX_UDP_ANSWER, "answer too long: {}", reply.len());
        assert!(reply.len() >= 12, "an answer has a header");
        assert_eq!(reply[..2], data[..2], "the answer carries the query's ID");
        assert_eq!(reply[2] & 0x80, 0x80, "the answer is a response");
    }
});
