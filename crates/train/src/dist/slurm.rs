//! What Slurm tells a task about its job, beyond rank and world size: which host holds the
//! rendezvous (the first host of the node list, in Slurm's compressed `prefix[01-04,07]`
//! notation), which port it listens on, and whether the process was started by `srun` at all.

/// Port base for jobs that set no `MASTER_PORT`: `10000 + job id mod 20000`, below Linux's
/// ephemeral range (32768+), so two jobs sharing a node do not pick the same port.
const PORT_BASE: u32 = 10_000;
const PORT_SPAN: u32 = 20_000;

/// The first host of a Slurm node list: `gpu-[003-010,012],cpu7` → `gpu-003`. Every bracket
/// group of the first host contributes its first element, zero padding kept. `None` for an
/// empty or malformed list.
pub fn first_host(nodelist: &str) -> Option<String> {
    let mut host = String::new();
    let mut chars = nodelist.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            ',' => break,
            '[' => {
                let group: String = chars.by_ref().take_while(|&c| c != ']').collect();
                let first = group.split([',', '-']).next()?.trim();
                if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                host.push_str(first);
            }
            ']' => return None,
            c => host.push(c),
        }
    }
    (!host.is_empty()).then_some(host)
}

/// The rendezvous port for Slurm job `job_id` when `MASTER_PORT` is unset (every task of the
/// job computes the same one).
pub fn job_port(job_id: u64) -> u16 {
    let port = PORT_BASE + (job_id % u64::from(PORT_SPAN)) as u32;
    u16::try_from(port).unwrap_or(29_500)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_expands_slurm_brackets() {
        let cases = [
            ("node001", Some("node001")),
            ("node[001-004]", Some("node001")),
            ("gpu-[003-010,012],cpu7", Some("gpu-003")),
            ("a[7,9]b[02-03]", Some("a7b02")),
            ("  n1,n2 ", Some("n1")),
            ("rack[2-3]-node[10-11]", Some("rack2-node10")),
            ("", None),
            ("node[]", None),
            ("node[a-b]", None),
            ("node]", None),
        ];
        for (list, want) in cases {
            assert_eq!(first_host(list).as_deref(), want, "{list}");
        }
    }

    #[test]
    fn job_ports_stay_below_the_ephemeral_range() {
        assert_eq!(job_port(0), 10_000);
        assert_eq!(job_port(123_456), 10_000 + 3_456);
        assert!((0..100_000)
            .map(job_port)
            .all(|p| (10_000..30_000).contains(&p)));
    }
}
