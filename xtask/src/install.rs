//! Installs the external tools that building, testing and CI need: Debian's packages through
//! apt-get, and cargo subcommands through `cargo install --locked`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{cargo, run_checked};

/// A tool the project needs, the Debian package that ships it, and the environment variable that
/// may point at a binary elsewhere.
struct Tool {
    binary: &'static str,
    package: &'static str,
    env_override: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        binary: "protoc",
        package: "protobuf-compiler",
        env_override: "PROTOC",
    },
    Tool {
        binary: "etcd",
        package: "etcd-server",
        env_override: "CDC_ETCD_BIN",
    },
    Tool {
        binary: "etcdctl",
        package: "etcd-client",
        env_override: "CDC_ETCDCTL_BIN",
    },
    // The test of the systemd unit in deploy/ runs `systemd-analyze verify`.
    Tool {
        binary: "systemd-analyze",
        package: "systemd",
        env_override: "CDC_SYSTEMD_ANALYZE_BIN",
    },
    // The MySQL sink's tests, benchmark and `run-cluster --sink mysql` start their own
    // `mariadbd` on a data directory made by `mariadb-install-db`; Debian's package also
    // installs a system service, which nothing here uses.
    Tool {
        binary: "mariadbd",
        package: "mariadb-server",
        env_override: "CDC_MARIADBD_BIN",
    },
    Tool {
        binary: "nats-server",
        package: "nats-server",
        env_override: "CDC_NATS_SERVER_BIN",
    },
];

/// Whether `binary` is on the `PATH`, or in `/usr/sbin` where Debian puts daemons such as
/// `mariadbd` and `nats-server` (not on a user's `PATH`).
fn on_path(binary: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {binary} || test -x /usr/sbin/{binary}"),
        ])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure protoc, etcd, etcdctl, systemd-analyze, mariadbd and nats-server are present, installing the missing ones with apt-get
/// when running as root, and otherwise failing with the exact command to run.
#[allow(
    clippy::print_stderr,
    reason = "a foreground command reports the installation on stderr"
)]
pub(crate) fn ensure_tools() -> Result<()> {
    let missing: Vec<&Tool> = TOOLS
        .iter()
        .filter(|tool| std::env::var_os(tool.env_override).is_none() && !on_path(tool.binary))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|tool| tool.package).collect();
    let install = format!("apt-get install -y {}", packages.join(" "));
    if !is_root() {
        bail!(
            "missing tools: {}; install them with: sudo apt-get update && sudo {install}",
            missing
                .iter()
                .map(|tool| tool.binary)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&packages),
    )?;
    for tool in &missing {
        if !on_path(tool.binary) {
            bail!(
                "{} is still missing after installing {}",
                tool.binary,
                tool.package
            );
        }
    }
    Ok(())
}

/// A cargo subcommand CI needs: the crate that provides it and the subcommand's name.
struct CargoTool {
    krate: &'static str,
    subcommand: &'static str,
}

/// `cargo deny check` runs the supply-chain policy of `deny.toml` in `.ci/run`.
const CARGO_TOOLS: &[CargoTool] = &[CargoTool {
    krate: "cargo-deny",
    subcommand: "deny",
}];

/// Makes sure the cargo subcommands CI needs are present, building the missing ones with
/// `cargo install --locked` (crates.io; a few minutes each).
#[allow(
    clippy::print_stderr,
    reason = "a foreground command reports the installation on stderr"
)]
pub(crate) fn ensure_cargo_tools() -> Result<()> {
    for tool in CARGO_TOOLS {
        let present = cargo()
            .args([tool.subcommand, "--version"])
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false);
        if present {
            continue;
        }
        eprintln!(
            "xtask: installing {} with cargo install --locked",
            tool.krate
        );
        run_checked(cargo().args(["install", "--locked", tool.krate]))?;
    }
    Ok(())
}
