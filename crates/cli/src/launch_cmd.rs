//! `corenet launch --nproc N -- train RECIPE …`: torchrun's job on one machine without Python.
//! Starts N copies of this binary with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
//! MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, forwards their output line by line with a
//! `[rank r]` prefix, and if one rank fails kills the others and exits non-zero.
//!
//! The ranks run in their own process group, so a terminal's Ctrl-C reaches only the launcher,
//! which forwards one SIGTERM to every rank (they agree on a step, checkpoint and stop); a second
//! SIGINT/SIGTERM kills them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Rendezvous port on 127.0.0.1 (default: a free one).
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

pub fn run(args: LaunchArgs) -> anyhow::Result<()> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if args.command.first().map(String::as_str) == Some("launch") {
        bail!("`corenet launch -- launch …` would start launchers, not ranks");
    }
    let exe = std::env::current_exe().context("locating the corenet binary")?;
    let port = match args.master_port {
        Some(0) => bail!("--master-port 0 is not a port; leave it out to pick a free one"),
        Some(p) => p,
        None => free_port()?,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&interrupted))
            .context("installing signal handlers")?;
    }
    tracing::info!(nproc = args.nproc, port, command = ?args.command, "launching ranks");
    let mut children: Vec<Child> = Vec::with_capacity(args.nproc);
    let mut forwarders = Vec::new();
    for rank in 0..args.nproc {
        let spawned = Command::new(&exe)
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
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
        if let Some(rank) = statuses
            .iter()
            .position(|s| s.is_some_and(|s| !s.success()))
        {
            break Some(rank);
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
    if let Some(rank) = failure {
        let status = statuses[rank].map_or("an unknown status".into(), |s| s.to_string());
        bail!(
            "rank {rank} of {} failed ({status}); stopped the other ranks",
            args.nproc
        );
    }
    Ok(())
}
