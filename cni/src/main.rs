//! `skein-cni`: the CNI plugin the container runtime runs for every pod sandbox. Reads the
//! environment and stdin, runs the command against the node agent and the kernel, prints
//! the result or the CNI error JSON on stdout. Logs go to stderr, or to `logFile`.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use skein_cni::agent_client::UnixAgent;
use skein_cni::env::CniEnv;
use skein_cni::error::{CODE_IO_FAILURE, CniError};
use skein_cni::netlink::NetlinkHost;
use skein_cni::version::CniVersion;
use tracing_subscriber::EnvFilter;

/// Stdin larger than this is not a network config.
const MAX_STDIN_BYTES: u64 = 16 << 20;

/// `logFile` from the config, if stdin is a config that names one.
fn log_file(stdin: &[u8]) -> Option<PathBuf> {
    let value: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let path = value.get("logFile")?.as_str()?;
    path.starts_with('/').then(|| PathBuf::from(path))
}

fn init_logging(stdin: &[u8]) {
    let filter = EnvFilter::try_from_env("SKEIN_CNI_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_target(false);
    let file = log_file(stdin).and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
    match file {
        Some(file) => builder.with_writer(Mutex::new(file)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}

fn main() {
    let env = CniEnv::from_process();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().take(MAX_STDIN_BYTES).read_to_end(&mut stdin) {
        Ok(_) => {
            init_logging(&stdin);
            skein_cni::run(&env, &stdin, &UnixAgent, &NetlinkHost)
        }
        Err(e) => {
            init_logging(b"");
            let error =
                CniError::new(CODE_IO_FAILURE, "cannot read the network config from stdin").with_details(e.to_string());
            let mut stdout = serde_json::to_vec(&error.to_json_for(CniVersion::LATEST)).unwrap_or_default();
            stdout.push(b'\n');
            skein_cni::Outcome { stdout, exit_code: 1 }
        }
    };
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done if stdout is gone: the exit status still tells.
    let _ = out.write_all(&outcome.stdout).and_then(|()| out.flush());
    std::process::exit(outcome.exit_code);
}
