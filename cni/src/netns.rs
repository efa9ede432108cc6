//! Running code inside another network namespace. `setns` changes only the calling thread,
//! so the work runs on a dedicated, short-lived OS thread that enters the namespace, opens
//! its own netlink socket there and exits; the caller's thread never changes namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::host::NetError;

/// Opens a network namespace file (`/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
pub fn open(netns: &Path) -> Result<File, NetError> {
    File::open(netns).map_err(|source| NetError::NetnsNotFound { path: netns.to_path_buf(), source })
}

/// Runs `work` on a new thread that first enters the network namespace at `netns`.
pub fn run_in<T, F>(netns: &Path, work: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce() -> Result<T, NetError> + Send,
{
    let file = open(netns)?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("skein-netns".into())
            .spawn_scoped(scope, move || {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| NetError::NetnsNotFound { path: netns.to_path_buf(), source: e.into() })?;
                work()
            })
            .map_err(|e| NetError::Thread(e.to_string()))?;
        worker.join().map_err(|_| NetError::Thread("the worker panicked".into()))?
    })
}
