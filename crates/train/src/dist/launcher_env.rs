//! The launcher's description of a data-parallel job, read from the environment: torchrun's
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, or
//! Slurm's `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`/`SLURM_NTASKS`, `SLURM_LOCALID` under `srun`
//! (with `MASTER_ADDR` from the environment, else the first host of `SLURM_JOB_NODELIST`, and
//! `MASTER_PORT` from the environment, else `10000 + SLURM_JOB_ID mod 20000`). A process inside
//! an allocation of several tasks but not started by srun is refused with what to do. [`join`]
//! turns it into a c10d process group (corenet-ffi).

use std::time::Duration;

use corenet_ffi::{Backend, ProcessGroup, Rendezvous};
use tch::Device;

use crate::dist::slurm;
use crate::error::{Error, Result};

/// The port torchrun uses when none is given; also the Slurm fallback.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// A process's place in the job, as the launcher described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn env_err(var: &str, message: impl Into<String>) -> Error {
    Error::Env {
        var: var.into(),
        message: message.into(),
    }
}

impl DistEnv {
    /// Reads the process environment; `Ok(None)` when no launcher variables are set (a plain
    /// single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// As [`DistEnv::from_env`], with variables looked up through `get` (for tests and for
    /// callers that assemble the environment themselves).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let get = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        let parse = |var: &str| -> Result<Option<usize>> {
            get(var)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| env_err(var, format!("`{v}` is not a non-negative integer")))
                })
                .transpose()
        };
        let required = |var: &str, because: &str| -> Result<usize> {
            parse(var)?.ok_or_else(|| env_err(var, format!("is not set, but {because} is")))
        };

        let slurm = get("RANK").is_none() && get("WORLD_SIZE").is_none();
        let env = if !slurm {
            let rank = required("RANK", "WORLD_SIZE")?;
            let world_size = required("WORLD_SIZE", "RANK")?;
            let master_addr = get("MASTER_ADDR")
                .ok_or_else(|| env_err("MASTER_ADDR", "is not set, but RANK is"))?;
            let master_port = parse_port(get("MASTER_PORT"))?
                .ok_or_else(|| env_err("MASTER_PORT", "is not set, but RANK is"))?;
            DistEnv {
                rank,
                world_size,
                local_rank: parse("LOCAL_RANK")?.unwrap_or(rank),
                local_world_size: parse("LOCAL_WORLD_SIZE")?.unwrap_or(world_size),
                master_addr,
                master_port,
            }
        } else if get("SLURM_PROCID").is_some() {
            let rank = required("SLURM_PROCID", "SLURM_PROCID")?;
            // srun sets the step's own task count; a batch script sees only the allocation's.
            let under_srun = get("SLURM_STEP_ID").is_some() || get("SLURM_STEPID").is_some();
            let world_size = match parse("SLURM_STEP_NUM_TASKS")? {
                Some(n) => n,
                None => required("SLURM_NTASKS", "SLURM_PROCID")?,
            };
            if !under_srun {
                if world_size > 1 {
                    return Err(env_err(
                        "SLURM_PROCID",
                        format!(
                            "this process runs inside a Slurm allocation of {world_size} tasks but was not started by srun (no SLURM_STEP_ID), so it would wait forever for {} ranks that never come. Start every rank with `srun corenet train …` (one task per GPU), or run a single process here with `env -u SLURM_PROCID corenet train …`",
                            world_size - 1
                        ),
                    ));
                }
                return Ok(None);
            }
            let local_rank = parse("SLURM_LOCALID")?.unwrap_or(0);
            let local_world_size = match parse("SLURM_NTASKS_PER_NODE") {
                Ok(Some(n)) => n,
                // Heterogeneous layouts ("2(x3),1") or unset: assume one node per task group.
                _ => parse("SLURM_NNODES")
                    .ok()
                    .flatten()
                    .filter(|&nodes| nodes > 0 && world_size % nodes == 0)
                    .map_or(world_size, |nodes| world_size / nodes),
            };
            let job_port = parse("SLURM_JOB_ID")
                .ok()
                .flatten()
                .map(|id| slurm::job_port(id as u64));
            DistEnv {
                rank,
                world_size,
                local_rank,
                local_world_size,
                master_addr: slurm_master_addr(&get)?,
                master_port: parse_port(get("MASTER_PORT"))?
                    .or(job_port)
                    .unwrap_or(DEFAULT_MASTER_PORT),
            }
        } else {
            return Ok(None);
        };
        match env.validate() {
            Ok(()) => Ok(Some(env)),
            // Name the variable the user actually set.
            Err(Error::Env { var, message }) if slurm => {
                let var = match var.as_str() {
                    "RANK" => "SLURM_PROCID",
                    "WORLD_SIZE" => "SLURM_NTASKS",
                    "LOCAL_RANK" => "SLURM_LOCALID",
                    "LOCAL_WORLD_SIZE" => "SLURM_NTASKS_PER_NODE",
                    other => other,
                };
                Err(env_err(var, message))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks that ranks fit their world sizes.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(env_err("WORLD_SIZE", "must be at least 1"));
        }
        if self.rank >= self.world_size {
            return Err(env_err(
                "RANK",
                format!(
                    "rank {} is not below the world size {}",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            return Err(env_err(
                "LOCAL_WORLD_SIZE",
                format!(
                    "{} must be between 1 and the world size {}",
                    self.local_world_size, self.world_size
                ),
            ));
        }
        if self.local_rank >= self.local_world_size {
            return Err(env_err(
                "LOCAL_RANK",
                format!(
                    "local rank {} is not below the local world size {}",
                    self.local_rank, self.local_world_size
                ),
            ));
        }
        if self.master_port == 0 {
            return Err(env_err("MASTER_PORT", "port 0 is not allowed"));
        }
        if self.world_size > i32::MAX as usize {
            return Err(env_err("WORLD_SIZE", "too large"));
        }
        Ok(())
    }
}

/// Node 0's address for a Slurm job: `MASTER_ADDR` when set, else the first host of the job's
/// node list, else (one node) the loopback address.
fn slurm_master_addr(get: &impl Fn(&str) -> Option<String>) -> Result<String> {
    if let Some(addr) = get("MASTER_ADDR") {
        return Ok(addr);
    }
    for var in [
        "SLURM_JOB_NODELIST",
        "SLURM_NODELIST",
        "SLURM_STEP_NODELIST",
    ] {
        if let Some(list) = get(var) {
            return slurm::first_host(&list).ok_or_else(|| {
                env_err(var, format!("`{list}` is not a node list Slurm writes; set MASTER_ADDR to node 0's address"))
            });
        }
    }
    let nodes = get("SLURM_NNODES").and_then(|n| n.trim().parse::<usize>().ok());
    match nodes {
        Some(n) if n > 1 => Err(env_err(
            "MASTER_ADDR",
            format!("is not set and no SLURM_JOB_NODELIST names the {n} nodes; set it to node 0's address"),
        )),
        _ => Ok("127.0.0.1".into()),
    }
}

/// Joins the c10d process group `env` describes (after checking it): blocks until every rank
/// has joined or `timeout` has passed; `timeout` also bounds every later collective.
pub fn join(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
    env.validate()?;
    Ok(ProcessGroup::new(&env.rendezvous(), backend, timeout)?)
}

/// [`join`] with the launcher's environment ([`DistEnv::from_env`]); an [`Error::Env`] naming
/// `RANK` if no launcher variables are set.
pub fn join_from_env(backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
    let env = DistEnv::from_env()?.ok_or_else(|| {
        env_err(
            "RANK",
            "is not set (nor SLURM_PROCID): launch with torchrun, `corenet launch` or srun",
        )
    })?;
    join(&env, backend, timeout)
}

impl DistEnv {
    /// What c10d needs of it.
    pub fn rendezvous(&self) -> Rendezvous {
        Rendezvous {
            master_addr: self.master_addr.clone(),
            master_port: self.master_port,
            rank: self.rank,
            world_size: self.world_size,
            local_rank: self.local_rank,
        }
    }
}

/// The launcher environment of a data-parallel run, or `None` for a single process.
///
/// `dist` is the caller's description (else, with `world_size > 1`, the environment's);
/// `rank` and `world_size` are what the caller expects, checked against the launcher's when
/// `world_size > 1`.
pub(crate) fn trainer_env(
    dist: Option<&DistEnv>,
    rank: usize,
    world_size: usize,
) -> Result<Option<DistEnv>> {
    let env = match dist {
        Some(env) => env.clone(),
        None if world_size > 1 => DistEnv::from_env()?.ok_or_else(|| Error::Env {
            var: "WORLD_SIZE".into(),
            message: format!(
                "the trainer was asked for a world of {} but no launcher variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set",
                world_size
            ),
        })?,
        None => return Ok(None),
    };
    env.validate()?;
    if world_size > 1 && world_size != env.world_size {
        return Err(Error::Env {
            var: "WORLD_SIZE".into(),
            message: format!(
                "the launcher says {}, the trainer options {}",
                env.world_size, world_size
            ),
        });
    }
    if world_size > 1 && rank != env.rank {
        return Err(Error::Env {
            var: "RANK".into(),
            message: format!(
                "the launcher says {}, the trainer options {}",
                env.rank, rank
            ),
        });
    }
    Ok((env.world_size > 1).then_some(env))
}

/// A data-parallel rank on CUDA uses the device of its local rank.
pub(crate) fn rank_device(device: Device, env: Option<&DistEnv>) -> Result<Device> {
    match (device, env) {
        (Device::Cuda(_), Some(env)) => {
            let visible = tch::Cuda::device_count().max(0) as usize;
            if env.local_rank >= visible {
                return Err(Error::Env {
                    var: "LOCAL_RANK".into(),
                    message: format!(
                        "local rank {} needs CUDA device {}, but {visible} are visible",
                        env.local_rank, env.local_rank
                    ),
                });
            }
            Ok(Device::Cuda(env.local_rank))
        }
        (device, _) => Ok(device),
    }
}

fn parse_port(value: Option<String>) -> Result<Option<u16>> {
    value
        .map(|v| match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(env_err(
                "MASTER_PORT",
                format!("`{v}` is not a port number in 1..=65535"),
            )),
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn env_var_of(err: Error) -> String {
        match err {
            Error::Env { var, .. } => var,
            other => panic!("expected an Env error, got {other}"),
        }
    }

    #[test]
    fn no_launcher_is_none() {
        assert_eq!(DistEnv::from_lookup(lookup(&[])).ok(), Some(None));
    }

    #[test]
    fn torchrun_env() {
        let env = DistEnv::from_lookup(lookup(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .expect("valid")
        .expect("set");
        assert_eq!(
            env,
            DistEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "node0".into(),
                master_port: 1234
            }
        );
    }

    #[test]
    fn slurm_env() {
        let env = DistEnv::from_lookup(lookup(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NNODES", "1"),
        ]))
        .expect("valid")
        .expect("set");
        assert_eq!(env.rank, 5);
        assert_eq!(env.world_size, 8);
        assert_eq!(env.local_rank, 1);
        assert_eq!(env.local_world_size, 8);
        assert_eq!(env.master_addr, "127.0.0.1");
        assert_eq!(env.master_port, DEFAULT_MASTER_PORT);
    }

    #[test]
    fn slurm_multi_node_rendezvous_comes_from_the_node_list_and_job_id() {
        let vars = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NNODES", "2"),
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_JOB_NODELIST", "gpu-[017-018]"),
        ];
        let env = DistEnv::from_lookup(lookup(&vars))
            .expect("valid")
            .expect("set");
        assert_eq!(
            (env.rank, env.world_size, env.local_world_size),
            (5, 8, 4),
            "the step's tasks, not the allocation's"
        );
        assert_eq!(env.master_addr, "gpu-017");
        assert_eq!(env.master_port, 14_242);
        // Explicit values win.
        let mut explicit = vars.to_vec();
        explicit.extend([("MASTER_ADDR", "10.0.0.5"), ("MASTER_PORT", "23456")]);
        let env = DistEnv::from_lookup(lookup(&explicit))
            .expect("valid")
            .expect("set");
        assert_eq!(
            (env.master_addr.as_str(), env.master_port),
            ("10.0.0.5", 23456)
        );
        // Several nodes and no way to find node 0.
        let no_list: Vec<_> = vars
            .iter()
            .copied()
            .filter(|(k, _)| *k != "SLURM_JOB_NODELIST")
            .collect();
        let err = DistEnv::from_lookup(lookup(&no_list)).expect_err("must fail");
        assert!(err.to_string().contains("node 0"), "{err}");
        assert_eq!(env_var_of(err), "MASTER_ADDR");
    }

    #[test]
    fn a_batch_script_process_in_a_multi_task_allocation_is_told_to_use_srun() {
        let err = DistEnv::from_lookup(lookup(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_JOB_NODELIST", "node[1-2]"),
        ]))
        .expect_err("would wait forever for 7 ranks");
        let text = err.to_string();
        assert!(
            text.contains("srun corenet train") && text.contains("env -u SLURM_PROCID"),
            "{text}"
        );
        // One task: a plain single-process run.
        let single = DistEnv::from_lookup(lookup(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]));
        assert_eq!(single.ok(), Some(None));
    }

    #[test]
    fn bad_envs_name_the_variable() {
        let base = [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "0"), ("WORLD_SIZE", "-1")], "WORLD_SIZE"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (&[("RANK", "0")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")],
                "LOCAL_RANK",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                &[
                    ("SLURM_PROCID", "4"),
                    ("SLURM_NTASKS", "4"),
                    ("SLURM_STEP_ID", "0"),
                ],
                "SLURM_PROCID",
            ),
            (&[("SLURM_PROCID", "0")], "SLURM_NTASKS"),
        ];
        for (vars, want) in cases {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.retain(|(k, _)| !vars.iter().any(|(vk, _)| vk == k));
            all.extend_from_slice(vars);
            let err = DistEnv::from_lookup(lookup(&all)).expect_err("must fail");
            assert_eq!(env_var_of(err), *want, "{vars:?}");
        }
        let no_addr = DistEnv::from_lookup(lookup(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_PORT", "1"),
        ]))
        .expect_err("must fail");
        assert_eq!(env_var_of(no_addr), "MASTER_ADDR");
    }
}
