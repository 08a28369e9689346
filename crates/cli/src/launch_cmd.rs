//! `corenet launch --nproc N -- train RECIPE …`: torchrun's job without Python. Starts N copies
//! of this binary with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
//! MASTER_PORT, forwards their output line by line with a `[rank r]` prefix, and if one rank
//! fails kills the others and exits non-zero. On one machine the rendezvous is 127.0.0.1 on a
//! free port; on several, run one launcher per node with `--nnodes`, `--node-rank`,
//! `--master-addr` (node 0's address) and `--master-port` (default 29500, as torchrun's).
//!
//! Exit status: 0 when every rank finished; 128 + the signal (130 SIGINT, 143 SIGTERM) when a
//! signal stopped the run after its checkpoint, as `corenet train` reports it; 1 on a failure.
//!
//! The ranks run in their own process group, so a terminal's Ctrl-C reaches only the launcher,
//! which forwards one SIGTERM to every rank (they agree on a step, checkpoint and stop); a second
//! SIGINT/SIGTERM kills them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use corenet_ffi::process::{send_signal, Signal};

#[derive(Args)]
pub struct LaunchArgs {
    /// Ranks (processes) to start on this machine.
    #[arg(long)]
    nproc: usize,
    /// Machines taking part; each runs one launcher with the same --nproc.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This machine's index, 0..nnodes; node 0 hosts the rendezvous.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of node 0 (default 127.0.0.1 on one machine; required with --nnodes > 1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Rendezvous port (default: a free one on one machine, 29500 across machines).
    #[arg(long)]
    master_port: Option<u16>,
    /// The corenet command every rank runs, after `--`, e.g. `-- train recipes/tiny.yaml`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free MASTER_PORT")?;
    Ok(listener.local_addr()?.port())
}

/// Copies `from` to the launcher's stdout or stderr, one `[rank r] `-prefixed line at a time.
fn forward(from: impl Read + Send + 'static, rank: usize, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    let prefix = format!("[rank {rank}] ");
                    let _ = if to_stderr {
                        let mut e = std::io::stderr().lock();
                        e.write_all(prefix.as_bytes())
                            .and_then(|()| e.write_all(&line))
                    } else {
                        let mut o = std::io::stdout().lock();
                        o.write_all(prefix.as_bytes())
                            .and_then(|()| o.write_all(&line))
                    };
                }
            }
        }
    })
}

/// Where the ranks meet, and which global ranks this node's processes take.
struct Layout {
    addr: String,
    port: u16,
    world: usize,
    first_rank: usize,
}

fn layout(args: &LaunchArgs) -> anyhow::Result<Layout> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if args.nnodes == 0 || args.node_rank >= args.nnodes {
        bail!(
            "--node-rank {} must be in 0..{} (--nnodes)",
            args.node_rank,
            args.nnodes
        );
    }
    let multi_node = args.nnodes > 1;
    let addr = match (&args.master_addr, multi_node) {
        (Some(addr), _) => addr.clone(),
        (None, false) => "127.0.0.1".into(),
        (None, true) => bail!(
            "--nnodes {} needs --master-addr: the address of node 0, which every node can reach",
            args.nnodes
        ),
    };
    let port = match (args.master_port, multi_node) {
        (Some(0), _) => bail!("--master-port 0 is not a port; leave it out to pick a free one"),
        (Some(p), _) => p,
        // Every node must name the same port, so none can pick a free one alone.
        (None, true) => 29500,
        (None, false) => free_port()?,
    };
    Ok(Layout {
        addr,
        port,
        world: args.nnodes * args.nproc,
        first_rank: args.node_rank * args.nproc,
    })
}

/// A rank that exited after the launcher forwarded a signal, with the status a preempted
/// `corenet train` reports (128 + SIGINT/SIGTERM), stopped as asked; it did not fail.
fn stopped_as_asked(status: &ExitStatus, signals_sent: usize) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let preempted = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]
        .map(|s| 128 + s)
        .contains(&status.code().unwrap_or(-1));
    let killed = status.signal() == Some(signal_hook::consts::SIGKILL);
    signals_sent > 0 && (preempted || (signals_sent > 1 && killed))
}

pub fn run(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let Layout {
        addr,
        port,
        world,
        first_rank,
    } = layout(&args)?;
    if args.command.first().map(String::as_str) == Some("launch") {
        bail!("`corenet launch -- launch …` would start launchers, not ranks");
    }
    let exe = std::env::current_exe().context("locating the corenet binary")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(&received), sig as usize)
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("installing signal handlers")?;
    }
    tracing::info!(nproc = args.nproc, world, first_rank, %addr, port, command = ?args.command, "launching ranks");
    let mut children: Vec<Child> = Vec::with_capacity(args.nproc);
    let mut forwarders = Vec::new();
    for local in 0..args.nproc {
        let rank = first_rank + local;
        let spawned = Command::new(&exe)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        };
        if let Some(out) = child.stdout.take() {
            forwarders.push(forward(out, rank, false));
        }
        if let Some(err) = child.stderr.take() {
            forwarders.push(forward(err, rank, true));
        }
        children.push(child);
    }

    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut terms_sent = 0;
    let failure = loop {
        for (rank, child) in children.iter_mut().enumerate() {
            if statuses[rank].is_none() {
                statuses[rank] = child
                    .try_wait()
                    .with_context(|| format!("waiting for rank {rank}"))?;
            }
        }
        if let Some(local) = statuses
            .iter()
            .position(|s| s.is_some_and(|s| !s.success() && !stopped_as_asked(&s, terms_sent)))
        {
            break Some(local);
        }
        if statuses.iter().all(Option::is_some) {
            break None;
        }
        if interrupted.swap(false, Ordering::SeqCst) {
            terms_sent += 1;
            let sig = if terms_sent == 1 {
                Signal::Terminate
            } else {
                Signal::Kill
            };
            tracing::warn!(
                "signal received: sending {} to the ranks",
                match sig {
                    Signal::Terminate => "SIGTERM (checkpoint and stop)",
                    Signal::Kill => "SIGKILL",
                }
            );
            for (rank, child) in children.iter().enumerate() {
                if statuses[rank].is_none() {
                    send_signal(child, sig);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if failure.is_some() {
        for (r, child) in children.iter_mut().enumerate() {
            if statuses[r].is_none() {
                let _ = child.kill();
                statuses[r] = child.wait().ok();
            }
        }
    }
    for f in forwarders {
        let _ = f.join();
    }
    if let Some(local) = failure {
        let status = statuses[local].map_or("an unknown status".into(), |s| s.to_string());
        bail!(
            "rank {} of {world} failed ({status}); stopped the other ranks",
            first_rank + local
        );
    }
    if terms_sent > 0 {
        return Ok(ExitCode::from(crate::train_cmd::interrupted_exit_code(
            received.load(Ordering::SeqCst),
        )));
    }
    Ok(ExitCode::SUCCESS)
}
