//! Reads a network interface's Data Center Bridging state (PFC per priority, priority
//! trust) from the kernel over rtnetlink (`RTM_GETDCB`, `DCB_CMD_IEEE_GET`), and parses
//! the kernel's reply.
//!
//! The parser is separate from the socket so that it is tested and fuzzed on bytes.

use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink, recv, sendto, sockopt};

use super::config::TrustMode;

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/dcbnl.h>
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const RTM_GETDCB: u16 = 78;
const DCB_CMD_IEEE_GET: u8 = 21;
const DCB_ATTR_IFNAME: u16 = 1;
const DCB_ATTR_IEEE: u16 = 13;
const DCB_ATTR_IEEE_PFC: u16 = 2;
const DCB_ATTR_IEEE_APP_TABLE: u16 = 3;
const DCB_ATTR_DCB_APP_TRUST_TABLE: u16 = 11;
const DCB_ATTR_IEEE_APP: u16 = 1;
const DCB_ATTR_DCB_APP: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const IEEE_8021QAZ_APP_SEL_DSCP: u8 = 5;
const DCB_APP_SEL_PCP: u8 = 255;
// struct ieee_pfc { u8 pfc_cap; u8 pfc_en; ... }
const IEEE_PFC_EN_OFFSET: usize = 1;
const ENODEV: i32 = 19;
const EOPNOTSUPP: i32 = 95;

/// DCB state of one interface, as far as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DcbState {
    /// Bit `p` set = PFC enabled on priority `p`; `None` if the driver did not say.
    pub pfc_enabled: Option<u8>,
    /// Trust mode from the APP trust table (kernel ≥ 6.2 drivers that implement it),
    /// or else DSCP when the APP table maps DSCP values (drivers such as mlx5 switch to
    /// DSCP trust when DSCP entries exist); `None` if neither says.
    pub trust: Option<TrustMode>,
}

/// Why DCB state could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DcbError {
    /// The interface's driver has no DCB support.
    #[error("the driver of {ifname} does not support DCB")]
    NotSupported {
        /// The interface.
        ifname: String,
    },
    /// No such interface in this network namespace.
    #[error("no network interface {ifname}")]
    NoDevice {
        /// The interface.
        ifname: String,
    },
    /// The kernel returned another error.
    #[error("kernel error {errno} for {ifname}")]
    Kernel {
        /// The interface.
        ifname: String,
        /// Positive errno.
        errno: i32,
    },
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Io(String),
    /// The reply does not parse.
    #[error("malformed DCB reply: {0}")]
    Malformed(String),
}

/// Somewhere DCB state comes from: the kernel, or a test's table.
pub trait DcbSource: Send + Sync {
    /// Reads the DCB state of `ifname`.
    fn query(&self, ifname: &str) -> Result<DcbState, DcbError>;
}

/// Reads DCB state from the kernel of the agent's network namespace (the host's, as the
/// agent runs with host networking).
#[derive(Clone, Copy, Debug, Default)]
pub struct NetlinkDcb;

impl DcbSource for NetlinkDcb {
    fn query(&self, ifname: &str) -> Result<DcbState, DcbError> {
        let io = |e: rustix::io::Errno| DcbError::Io(e.to_string());
        let seq = 1;
        let request = ieee_get_request(ifname, seq)?;
        // Protocol `None` is NETLINK_ROUTE (0) for netlink sockets.
        let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None).map_err(io)?;
        // The kernel answers DCB requests synchronously; the timeout only guards
        // against a reply that never comes.
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, Some(Duration::from_secs(2))).map_err(io)?;
        sendto(&socket, &request, SendFlags::empty(), &netlink::SocketAddrNetlink::new(0, 0)).map_err(io)?;
        let mut buffer = vec![0u8; 32 * 1024];
        let (len, _) = recv(&socket, &mut buffer[..], RecvFlags::empty()).map_err(io)?;
        parse_ieee_get_reply(&buffer[..len.min(buffer.len())], seq, ifname)
    }
}

/// Builds the `RTM_GETDCB` / `DCB_CMD_IEEE_GET` request for `ifname`.
pub fn ieee_get_request(ifname: &str, seq: u32) -> Result<Vec<u8>, DcbError> {
    // IFNAMSIZ is 16 including the NUL.
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('\0') {
        return Err(DcbError::NoDevice { ifname: ifname.to_owned() });
    }
    let name_len = ifname.len() + 1;
    let attr_len = 4 + name_len;
    let total = NLMSG_HDRLEN + 4 + align4(attr_len);
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_GETDCB.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct dcbmsg { u8 dcb_family; u8 cmd; u16 dcb_pad; }
    msg.extend_from_slice(&[0, DCB_CMD_IEEE_GET, 0, 0]);
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&DCB_ATTR_IFNAME.to_ne_bytes());
    msg.extend_from_slice(ifname.as_bytes());
    msg.push(0);
    msg.resize(total, 0);
    Ok(msg)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn malformed(what: &str) -> DcbError {
    DcbError::Malformed(what.to_owned())
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates over the netlink attributes in `buf`: `(type without flags, payload)`.
fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DcbError>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 4 > buf.len() {
            return None;
        }
        let (Some(len), Some(kind)) = (u16_at(buf, at), u16_at(buf, at + 2)) else {
            return None;
        };
        let len = usize::from(len);
        if len < 4 || at + len > buf.len() {
            at = buf.len();
            return Some(Err(malformed("attribute length out of bounds")));
        }
        let payload = &buf[at + 4..at + len];
        at += align4(len);
        Some(Ok((kind & NLA_TYPE_MASK, payload)))
    })
}

/// Parses the kernel's answer to [`ieee_get_request`].
pub fn parse_ieee_get_reply(buf: &[u8], seq: u32, ifname: &str) -> Result<DcbState, DcbError> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(|| malformed("short header"))? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(|| malformed("short header"))?;
        let msg_seq = u32_at(buf, at + 8).ok_or_else(|| malformed("short header"))?;
        if len < NLMSG_HDRLEN || at.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(malformed("message length out of bounds"));
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        at += align4(len);
        if msg_seq != seq {
            continue;
        }
        match kind {
            NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| malformed("short error message"))?;
                let errno = code.checked_neg().unwrap_or(i32::MAX);
                return Err(match errno {
                    0 => malformed("acknowledgement instead of a DCB reply"),
                    EOPNOTSUPP => DcbError::NotSupported { ifname: ifname.to_owned() },
                    ENODEV => DcbError::NoDevice { ifname: ifname.to_owned() },
                    errno => DcbError::Kernel { ifname: ifname.to_owned(), errno },
                });
            }
            NLMSG_DONE => break,
            RTM_GETDCB => return parse_dcb_body(body),
            _ => continue,
        }
    }
    Err(malformed("no DCB reply"))
}

fn parse_dcb_body(body: &[u8]) -> Result<DcbState, DcbError> {
    let attrs = body.get(4..).ok_or_else(|| malformed("short dcbmsg"))?;
    let mut state = DcbState::default();
    for attr in attributes(attrs) {
        let (kind, payload) = attr?;
        if kind != DCB_ATTR_IEEE {
            continue;
        }
        let mut dscp_entries = false;
        for attr in attributes(payload) {
            let (kind, payload) = attr?;
            match kind {
                DCB_ATTR_IEEE_PFC => {
                    state.pfc_enabled =
                        Some(*payload.get(IEEE_PFC_EN_OFFSET).ok_or_else(|| malformed("short ieee_pfc"))?);
                }
                DCB_ATTR_IEEE_APP_TABLE => {
                    for app in attributes(payload) {
                        let (kind, app) = app?;
                        // struct dcb_app { u8 selector; u8 priority; u16 protocol; }
                        if kind == DCB_ATTR_IEEE_APP && app.first() == Some(&IEEE_8021QAZ_APP_SEL_DSCP) {
                            dscp_entries = true;
                        }
                    }
                }
                DCB_ATTR_DCB_APP_TRUST_TABLE => {
                    // Selectors in trust order; the first is the one that decides.
                    let first = attributes(payload)
                        .filter_map(Result::ok)
                        .find(|(kind, _)| matches!(*kind, DCB_ATTR_IEEE_APP | DCB_ATTR_DCB_APP))
                        .and_then(|(_, selector)| selector.first().copied());
                    state.trust = match first {
                        Some(IEEE_8021QAZ_APP_SEL_DSCP) => Some(TrustMode::Dscp),
                        Some(DCB_APP_SEL_PCP) => Some(TrustMode::Pcp),
                        _ => state.trust,
                    };
                }
                _ => {}
            }
        }
        if state.trust.is_none() && dscp_entries {
            state.trust = Some(TrustMode::Dscp);
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    fn ieee_pfc(pfc_en: u8) -> Vec<u8> {
        let mut pfc = vec![0u8; 136];
        pfc[0] = 8;
        pfc[1] = pfc_en;
        pfc
    }

    #[test]
    fn request_layout() {
        let req = ieee_get_request("eth0", 7).unwrap();
        assert_eq!(req.len(), 16 + 4 + 12);
        assert_eq!(u32_at(&req, 0), Some(32));
        assert_eq!(u16_at(&req, 4), Some(RTM_GETDCB));
        assert_eq!(req[17], DCB_CMD_IEEE_GET);
        assert_eq!(&req[24..29], b"eth0\0");
        assert!(ieee_get_request("", 1).is_err());
        assert!(ieee_get_request("a-very-long-interface", 1).is_err());
    }

    #[test]
    fn parses_pfc_and_trust() {
        let mut ieee = attr(DCB_ATTR_IEEE_PFC, &ieee_pfc(0b0000_1000));
        let trust = [attr(DCB_ATTR_IEEE_APP, &[IEEE_8021QAZ_APP_SEL_DSCP]), attr(DCB_ATTR_DCB_APP, &[DCB_APP_SEL_PCP])]
            .concat();
        ieee.extend(attr(DCB_ATTR_DCB_APP_TRUST_TABLE | 0x8000, &trust));
        let mut body = vec![0, DCB_CMD_IEEE_GET, 0, 0];
        body.extend(attr(DCB_ATTR_IFNAME, b"eth0\0"));
        body.extend(attr(DCB_ATTR_IEEE | 0x8000, &ieee));
        let reply = message(RTM_GETDCB, 1, &body);
        let state = parse_ieee_get_reply(&reply, 1, "eth0").unwrap();
        assert_eq!(state.pfc_enabled, Some(0b1000));
        assert_eq!(state.trust, Some(TrustMode::Dscp));
    }

    #[test]
    fn dscp_app_entries_mean_dscp_trust() {
        let apps = [attr(DCB_ATTR_IEEE_APP, &[IEEE_8021QAZ_APP_SEL_DSCP, 3, 26, 0])].concat();
        let ieee = attr(DCB_ATTR_IEEE_APP_TABLE, &apps);
        let mut body = vec![0, DCB_CMD_IEEE_GET, 0, 0];
        body.extend(attr(DCB_ATTR_IEEE, &ieee));
        let state = parse_ieee_get_reply(&message(RTM_GETDCB, 1, &body), 1, "x").unwrap();
        assert_eq!(state, DcbState { pfc_enabled: None, trust: Some(TrustMode::Dscp) });
    }

    #[test]
    fn errors_and_garbage() {
        let error = message(NLMSG_ERROR, 1, &(-EOPNOTSUPP).to_ne_bytes());
        assert!(matches!(parse_ieee_get_reply(&error, 1, "lo"), Err(DcbError::NotSupported { .. })));
        let error = message(NLMSG_ERROR, 1, &(-ENODEV).to_ne_bytes());
        assert!(matches!(parse_ieee_get_reply(&error, 1, "x"), Err(DcbError::NoDevice { .. })));
        assert!(matches!(parse_ieee_get_reply(&[], 1, "x"), Err(DcbError::Malformed(_))));
        let mut truncated = message(RTM_GETDCB, 1, &[0, 0, 0, 0, 200, 0, 13, 0]);
        assert!(matches!(parse_ieee_get_reply(&truncated, 1, "x"), Err(DcbError::Malformed(_))));
        truncated[0] = 255;
        assert!(matches!(parse_ieee_get_reply(&truncated, 1, "x"), Err(DcbError::Malformed(_))));
    }

    #[test]
    fn kernel_says_loopback_has_no_dcb() {
        // A real round trip through the kernel: no DCB ops on `lo`, no root needed.
        match NetlinkDcb.query("lo") {
            Err(DcbError::NotSupported { .. }) => {}
            other => panic!("expected NotSupported from the kernel, got {other:?}"),
        }
        assert!(matches!(NetlinkDcb.query("skein-none0"), Err(DcbError::NoDevice { .. })));
    }
}
