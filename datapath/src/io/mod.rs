//! Port I/O: the switch's contact with real interfaces and sockets. Veth host ends are
//! opened through AF_PACKET with a receive ring and virtio-net headers
//! ([`afpacket`]); the Geneve tunnel endpoint is a UDP socket ([`udp`]); worker threads
//! move batches between them and the datapath ([`switch`]). All `unsafe` code of the
//! crate is in [`sys`].

pub mod afpacket;
pub mod switch;
pub mod sys;
pub mod udp;
pub mod uplinkfilter;

pub use afpacket::{AfPacketPort, PortConfig, PortError, RingKind};
pub use switch::{PortSpec, PortStats, Switch, SwitchConfig, SwitchStats, now_ns};
pub use uplinkfilter::UplinkFilter;

/// Binds a Unix stream socket at `path` that only its owner may use (mode 0600),
/// creating the directory: a control or CNI socket. A socket file nobody listens on (left
/// by a previous run) is replaced; one that answers is refused with `AddrInUse`, saying it
/// is held by `holder`.
pub fn bind_private_socket(path: &std::path::Path, holder: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use: {holder}", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Drives a batched send to completion. `send(from)` hands messages `from..` to the kernel
/// and returns how many it took; a full socket buffer (`EAGAIN`, `ENOBUFS`) is retried a
/// few times, then, like any other refusal, the first remaining message goes to
/// `refused(index)` (which may send it another way, or count it lost) and is skipped.
pub(crate) fn drive_send(
    len: usize,
    mut send: impl FnMut(usize) -> std::io::Result<usize>,
    mut refused: impl FnMut(usize),
) {
    const RETRIES: u32 = 8;
    let (mut done, mut retries) = (0, 0);
    while done < len {
        match send(done) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) && retries < RETRIES => {
                retries += 1;
                std::thread::yield_now();
            }
            Err(_) => {
                refused(done);
                done += 1;
            }
        }
    }
}
