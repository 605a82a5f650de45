//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, ...), read from `/proc/self` at each scrape as the Prometheus clients'
//! process collectors do; on a system without `/proc` they are absent.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

use super::family;

/// Linux's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat`, 100 on every
/// architecture (`sysconf(_SC_CLK_TCK)`).
const TICKS_PER_SECOND: f64 = 100.0;

/// (name, help, type) of each process metric, in the order they are rendered.
pub(super) const PROCESS_METRICS: [(&str, &str, MetricType); 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        MetricType::COUNTER,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        MetricType::GAUGE,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        MetricType::GAUGE,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        MetricType::GAUGE,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        MetricType::GAUGE,
    ),
    (
        "process_threads",
        "Number of OS threads in the process.",
        MetricType::GAUGE,
    ),
];

/// Renders [`PROCESS_METRICS`] from `/proc/self`.
pub(super) struct ProcessCollector {
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        let descs = PROCESS_METRICS
            .iter()
            .map(|(name, help, _)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    Vec::new(),
                    HashMap::new(),
                )
                .expect("valid metric")
            })
            .collect();
        ProcessCollector { descs }
    }
}

/// The values of [`PROCESS_METRICS`], each `None` when `/proc` did not tell.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ProcessSample {
    pub(super) values: [Option<f64>; 7],
}

/// Reads the process's figures from `/proc/self/stat`, `/proc/self/status`, `/proc/self/fd`,
/// `/proc/self/limits` and `/proc/stat`.
pub(super) fn sample() -> ProcessSample {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let stat = read("/proc/self/stat");
    let status = read("/proc/self/status");
    let (cpu, start_ticks) = stat.as_deref().map(parse_stat).unwrap_or((None, None));
    let boot_time = read("/proc/stat").as_deref().and_then(parse_boot_time);
    let start_time = start_ticks
        .zip(boot_time)
        .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND);
    let status_kib = |field: &str| {
        status
            .as_deref()
            .and_then(|status| status_field(status, field))
            .map(|kib| kib * 1024.0)
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        #[allow(
            clippy::cast_precision_loss,
            reason = "descriptor counts are far below 2^53"
        )]
        let count = dir.count() as f64;
        count
    });
    let max_fds = read("/proc/self/limits").as_deref().and_then(parse_max_fds);
    let threads = status
        .as_deref()
        .and_then(|status| status_field(status, "Threads:"));
    ProcessSample {
        values: [
            cpu,
            status_kib("VmRSS:"),
            status_kib("VmSize:"),
            open_fds,
            max_fds,
            start_time,
            threads,
        ],
    }
}

/// (CPU seconds, start time in ticks after boot) from `/proc/<pid>/stat`, whose second field
/// (the command) may hold spaces and parentheses: the fields are counted after its last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<f64>) {
    let Some((_, after_command)) = stat.rsplit_once(')') else {
        return (None, None);
    };
    // After the command: field 3 (state) is index 0, so field n is index n - 3.
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = field(14)
        .zip(field(15))
        .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
    (cpu, field(22))
}

/// The `btime` line of `/proc/stat`: the boot time in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The number after `field` in `/proc/<pid>/status` (`VmRSS:   1234 kB`).
fn status_field(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`.
fn parse_max_fds(limits: &str) -> Option<f64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sample = sample();
        PROCESS_METRICS
            .iter()
            .zip(sample.values)
            .filter_map(|((name, help, kind), value)| {
                let value = value?;
                let mut metric = Metric::default();
                if *kind == MetricType::COUNTER {
                    let mut counter = Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                } else {
                    let mut gauge = Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
                Some(family(name, help, *kind, vec![metric]))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (cdc server) (x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 12345 100 200";
        assert_eq!(parse_stat(stat), (Some(3.0), Some(12345.0)));
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
        let status = "Name:\tcdc-server\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t5\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1024.0));
        assert_eq!(status_field(status, "Threads:"), Some(5.0));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
    }

    #[test]
    fn this_process_is_measured() {
        let sample = sample();
        for ((name, _, _), value) in PROCESS_METRICS.iter().zip(sample.values) {
            let value = value.unwrap_or_else(|| panic!("{name} from /proc"));
            assert!(value >= 0.0, "{name}: {value}");
        }
        assert!(sample.values[1].unwrap() > 0.0, "resident memory");
        assert!(sample.values[3].unwrap() >= 3.0, "stdin, stdout, stderr");
    }
}
