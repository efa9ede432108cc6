//! `skein-dp`: Skein's datapath as a standalone switch. `skein-dp run` opens interfaces
//! (veth host ends) and Geneve endpoints as ports and forwards between them by a flow file;
//! the other subcommands talk to a running switch over its control socket.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use skein_datapath::control::Control;
use skein_datapath::io::{PortConfig, PortSpec, RingKind, Switch, SwitchConfig, SwitchStats, now_ns};
use skein_datapath::service::Service;
use skein_datapath::{Datapath, DatapathConfig, flowtext};

const DEFAULT_CONTROL: &str = "/run/skein/dp.sock";

#[derive(Parser, Debug)]
#[command(
    name = "skein-dp",
    version,
    about = "Skein's userspace datapath as a standalone switch",
    long_about = "Skein's userspace datapath as a standalone switch.\n\n\
        `skein-dp run` opens veth host ends (AF_PACKET rings with virtio-net headers, so TSO \
        super-frames cross whole) and Geneve endpoints (UDP 6081) as numbered ports and \
        forwards between them by a flow file in ovs-ofctl syntax (see docs/flow-syntax.md). \
        The other subcommands ask a running switch through its control socket."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Ring {
    /// TPACKET_V2: every frame handed over as it lands (lowest latency).
    V2,
    /// TPACKET_V3: frames packed in blocks, handed over when a block fills or its timer
    /// fires (fewest wake-ups; adds up to --v3-retire-ms of latency to a lone packet).
    V3,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the switch until killed. Without --port or --geneve it starts with no ports and
    /// waits for them on its control socket: a node agent adds its ports there (`add-port`)
    /// and installs its flows, and the switch keeps forwarding while the agent restarts.
    Run {
        /// Flow file to start with (empty pipeline if not given: everything drops).
        #[arg(long, value_name = "FILE")]
        flows: Option<PathBuf>,
        /// An interface port: NUMBER=IFNAME (repeatable), e.g. --port 1=veth-a.
        #[arg(long = "port", value_name = "N=IFNAME")]
        ports: Vec<String>,
        /// A Geneve endpoint port: NUMBER=LOCAL_IP[:UDP_PORT] (repeatable; UDP port
        /// 6081 by default). Tunnel ports with this underlay_port send through it;
        /// decapsulated packets arrive with this in_port.
        #[arg(long = "geneve", value_name = "N=IP[:PORT]")]
        geneve: Vec<String>,
        /// Forwarding threads (each owns some ports, so at most one per port; default: one
        /// per port, at most half the CPUs — the pods need the rest, and a reply that comes
        /// back to a port of the same worker is forwarded without waking another thread).
        #[arg(long)]
        workers: Option<usize>,
        /// Microseconds a worker keeps polling after its last packet before sleeping
        /// (0: sleep at once). Polling saves a wake-up per round trip; it costs CPU only
        /// while traffic flows.
        #[arg(long, default_value_t = 0)]
        busy_poll_us: u64,
        /// Interrupt moderation, microseconds: while packets arrive steadily a worker
        /// naps this long between batches instead of waking per packet (0: off). Lone
        /// packets are not delayed.
        #[arg(long, default_value_t = 100)]
        coalesce_us: u64,
        /// Receive ring layout.
        #[arg(long, value_enum, default_value_t = Ring::V2)]
        ring: Ring,
        /// TPACKET_V3 block retire timeout in milliseconds.
        #[arg(long, default_value_t = 1)]
        v3_retire_ms: u32,
        /// Receive ring size per interface, MiB.
        #[arg(long, default_value_t = 32)]
        ring_mib: u32,
        /// Control socket (created mode 0600).
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Conntrack's hand-over file: on SIGTERM or SIGINT the switch writes every
        /// connection (NAT bindings, states, lifetimes) here before it exits, and at start
        /// it takes in what a previous process wrote on this boot, then removes the file —
        /// a restart or an upgrade of the switch keeps every connection's state. Default:
        /// the control socket's path with the extension `conntrack` (/run/skein/dp.conntrack).
        #[arg(long, value_name = "FILE")]
        conntrack_handover: Option<PathBuf>,
        /// Nice value of the switch's threads (-20 to 19). Below the default of other
        /// processes (0), forwarding keeps its CPU while the node is busy — e.g. with the
        /// agent's start-up, which would otherwise pause forwarding for tens of
        /// milliseconds on a small node (Open vSwitch's ovs-ctl starts ovs-vswitchd at -10
        /// for the same reason). Needs CAP_SYS_NICE; without it the switch runs at the
        /// nice value it was started with, and says so.
        #[arg(long, default_value_t = -10, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
        nice: i32,
    },
    /// Replace the running switch's flows with a flow file, atomically.
    Reload {
        /// The flow file.
        file: PathBuf,
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Print every flow with its packet and byte counters.
    DumpFlows {
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Print the megaflow cache: masked matches, counters, datapath actions.
    DumpCache {
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Print the connection tracking table.
    DumpConntrack {
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Print counters as name=value lines.
    Stats {
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Show a packet's walk through the tables, e.g.
    /// `skein-dp trace in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=80`.
    Trace {
        /// The packet, in the flow syntax.
        packet: String,
        /// ct_state for the packet after each conntrack recirculation, in order (e.g.
        /// `--ct-next trk,new --ct-next trk,est`; default trk,new). Conntrack is not
        /// consulted, as in `ovs-appctl ofproto/trace`.
        #[arg(long = "ct-next", value_name = "FLAGS")]
        ct_next: Vec<String>,
        /// Control socket.
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
    },
    /// Check a flow file without a running switch; prints what it defines.
    Check {
        /// The flow file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skein-dp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Takes in the connections a previous switch handed over in `file` (if there is one), and
/// removes it: it is read once. A file that cannot be taken in is logged and removed; the
/// switch starts with an empty conntrack then.
fn take_conntrack(dp: &Datapath, file: &Path) {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "conntrack hand-over file unreadable; starting with an empty conntrack");
            return;
        }
    };
    let origin = skein_datapath::conntrack::HandoverOrigin::now();
    match dp.import_conntrack(&data, now_ns(), &origin) {
        Ok(r) => tracing::info!(
            file = %file.display(),
            connections = r.imported,
            expired = r.expired,
            duplicates = r.duplicates,
            no_room = r.no_room,
            "took over the previous switch's conntrack"
        ),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "conntrack hand-over file refused; starting with an empty conntrack")
        }
    }
    if let Err(e) = std::fs::remove_file(file) {
        tracing::warn!(file = %file.display(), error = %e, "cannot remove the conntrack hand-over file");
    }
}

/// Writes every connection to `file` (through a rename: a reader sees the whole file or
/// none) for the next switch.
fn hand_conntrack_over(dp: &Datapath, file: &Path) {
    let (data, records) = dp.export_conntrack(now_ns(), &skein_datapath::conntrack::HandoverOrigin::now());
    let tmp = file.with_extension("conntrack.tmp");
    let written = std::fs::write(&tmp, &data).and_then(|()| std::fs::rename(&tmp, file));
    match written {
        Ok(()) => tracing::info!(file = %file.display(), connections = records, "conntrack handed over"),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot write the conntrack hand-over file; the next switch starts empty")
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Run {
            flows,
            ports,
            geneve,
            workers,
            busy_poll_us,
            coalesce_us,
            ring,
            v3_retire_ms,
            ring_mib,
            control,
            conntrack_handover,
            nice,
        } => {
            // Before any thread starts: they all inherit it.
            if let Err(e) = skein_datapath::io::sys::set_nice(nice) {
                tracing::warn!(nice, error = %e, "cannot set the switch's nice value; forwarding competes for the CPU as any process");
            }
            // SIGTERM and SIGINT wait for the main thread (which hands conntrack over)
            // instead of ending the process; every thread started from here inherits this.
            skein_datapath::io::sys::block_signals(&[libc::SIGTERM, libc::SIGINT]).context("blocking SIGTERM")?;
            let handover = conntrack_handover.unwrap_or_else(|| control.with_extension("conntrack"));
            let mut specs = Vec::new();
            for p in &ports {
                let (n, name) = p.split_once('=').with_context(|| format!("--port {p:?}: expected NUMBER=IFNAME"))?;
                let number = n.parse().with_context(|| format!("--port {p:?}: {n:?} is not a port number"))?;
                if name.is_empty() {
                    bail!("--port {p:?}: empty interface name");
                }
                specs.push(PortSpec::Interface { number, name: name.to_string() });
            }
            for g in &geneve {
                let (n, addr) =
                    g.split_once('=').with_context(|| format!("--geneve {g:?}: expected NUMBER=IP[:PORT]"))?;
                let number = n.parse().with_context(|| format!("--geneve {g:?}: {n:?} is not a port number"))?;
                let local = match addr.parse::<SocketAddrV4>() {
                    Ok(a) => a,
                    Err(_) => SocketAddrV4::new(
                        addr.parse::<Ipv4Addr>()
                            .with_context(|| format!("--geneve {g:?}: {addr:?} is not an IPv4 address[:port]"))?,
                        skein_datapath::io::udp::GENEVE_PORT,
                    ),
                };
                specs.push(PortSpec::Geneve { number, local });
            }
            // Without ports the switch waits for them on its control socket: a node agent
            // adds its node's and pods' ports there (`add-port`) and installs the flows.
            let dp = Arc::new(Datapath::new(DatapathConfig::default()));
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let cfg = SwitchConfig {
                // Started with ports only, `skein-dp` never adds more, so a worker beyond one per
                // port would idle; started without, ports come from the agent.
                workers: if specs.is_empty() {
                    workers.unwrap_or(cpus / 2).max(1)
                } else {
                    workers.unwrap_or(cpus / 2).clamp(1, specs.len())
                },
                busy_poll: Duration::from_micros(busy_poll_us),
                coalesce: Duration::from_micros(coalesce_us),
                batch: 64,
                port: PortConfig {
                    ring: match ring {
                        Ring::V2 => RingKind::V2,
                        Ring::V3 => RingKind::V3 { retire_ms: v3_retire_ms },
                    },
                    ring_bytes: ring_mib.saturating_mul(1 << 20),
                    promiscuous: true,
                    filter: None,
                },
            };
            // The control socket first: it is what makes this the node's only switch, so
            // the hand-over file read below is this switch's to take.
            let listener =
                skein_datapath::io::bind_private_socket(&control, "another skein-dp runs with this control socket")
                    .with_context(|| format!("control socket {}", control.display()))?;
            take_conntrack(&dp, &handover);
            let switch = Arc::new(Switch::start(dp.clone(), &specs, cfg)?);
            let ctl = {
                let sw = switch.clone();
                Arc::new(Control::new(dp.clone(), Box::new(move || sw.stats()), now_ns))
            };
            if let Some(f) = &flows {
                let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
                let r = ctl.reload(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                tracing::info!(file = %f.display(), flows = r.flows_added, "flows installed");
            }
            tracing::info!(
                ports = specs.len(),
                workers = cfg.workers,
                nice,
                ring = ?cfg.port.ring,
                busy_poll_us,
                coalesce_us,
                control = %control.display(),
                "switch running"
            );
            let service = Arc::new(Service::new(ctl.clone(), switch.clone(), &specs));
            tracing::info!(boot_id = %service.hello().boot_id, "control service running");
            std::thread::Builder::new().name("skein-dp-ctl".into()).spawn(move || service.serve(listener))?;
            // Housekeeping: expire idle cache entries and connections, rerank subtables;
            // until told to stop.
            loop {
                let signal =
                    skein_datapath::io::sys::wait_signal(&[libc::SIGTERM, libc::SIGINT], Duration::from_millis(100))
                        .context("waiting for signals")?;
                if let Some(signal) = signal {
                    tracing::info!(signal, "stopping");
                    hand_conntrack_over(&dp, &handover);
                    return Ok(());
                }
                dp.maintain(now_ns());
            }
        }
        Command::Reload { file, control } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            request(&control, &format!("reload\n{text}")).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))
        }
        Command::DumpFlows { control } => request(&control, "dump-flows"),
        Command::DumpCache { control } => request(&control, "dump-cache"),
        Command::DumpConntrack { control } => request(&control, "dump-conntrack"),
        Command::Stats { control } => request(&control, "stats"),
        Command::Trace { packet, ct_next, control } => {
            if packet.contains('\n') || ct_next.iter().any(|c| c.contains('\n')) {
                bail!("the packet description and --ct-next flags must be one line each");
            }
            for c in &ct_next {
                flowtext::parse_ct_state_flags(c).map_err(|e| anyhow::anyhow!("--ct-next {c:?}: {}", e.message))?;
            }
            request(&control, &format!("trace {packet}\n{}", ct_next.join("\n")))
        }
        Command::Check { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
            let f = flowtext::parse_flow_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let ctl = Control::new(
                Arc::new(Datapath::new(DatapathConfig::default())),
                Box::new(SwitchStats::default),
                now_ns,
            );
            ctl.reload(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "flows={} groups={} load_balancers={} tunnels={}",
                f.flows.len(),
                f.groups.len(),
                f.load_balancers.len(),
                f.tunnels.len()
            );
            Ok(())
        }
    }
}

fn request(path: &Path, req: &str) -> anyhow::Result<()> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("connect to {} (is `skein-dp run` running?)", path.display()))?;
    s.write_all(req.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (status, body) = reply.split_once('\n').unwrap_or((reply.as_str(), ""));
    match status {
        "ok" => {
            print!("{body}");
            Ok(())
        }
        "error" => bail!("{}", body.trim_end()),
        _ => bail!("unexpected reply from {}: {reply:?}", path.display()),
    }
}
