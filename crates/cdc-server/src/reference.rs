//! The tables of `docs/operations.md`: every flag of `cdc-server server` (from the flag
//! definitions) and every configuration key (from the configuration's defaults, `[log]` and the
//! inert TiCDC keys), each with its default and whether it acts. `cargo xtask gen-docs` writes
//! them into the document and `cargo xtask tidy` checks that they match.

use std::fmt::Write as _;

use cdc_capture::Config;
use clap::CommandFactory;
use serde_json::Value;

use crate::config::Cli;
use crate::keys::{INERT_KEYS, LOG_KEYS};

/// What a flag or key of the capture's configuration does here, where it is not plainly "yes".
fn acts(name: &str) -> &'static str {
    match name {
        "sort-dir"
        | "sorter-num-workerpool-goroutine"
        | "sorter-num-concurrent-worker"
        | "sorter-chunk-size-limit"
        | "sorter-max-memory-percentage"
        | "sorter-max-memory-consumption" => "no: accepted and logged as unused",
        "gc-ttl" => "checked (not 0); no GC safepoint is kept in etcd",
        "tz" => "checked (the zone must load)",
        "data-dir" => "accepted (a warning when empty); nothing is stored there",
        "log-json" | "debug.span-log" => "yes (not a TiCDC key)",
        "pd" => "yes (from --pd; not a TiCDC file key)",
        _ if name.starts_with("security.") => "see TLS (`[security]`)",
        _ => "yes",
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The leaves of `value` as (dotted path, JSON text).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                leaves(&path, field, out);
            }
        }
        leaf => out.push((prefix.to_owned(), leaf.to_string())),
    }
}

/// The flag table and the key table, in Markdown.
pub(crate) fn tables() -> String {
    let mut out = String::new();
    out.push_str("### Flags of `cdc-server server`\n\n");
    out.push_str("| Flag | Default | Acts | Description |\n|---|---|---|---|\n");
    let cli = Cli::command();
    let server = cli
        .get_subcommands()
        .find(|command| command.get_name() == "server")
        .expect("the server subcommand is defined");
    for arg in server.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" || long == "version" {
            continue;
        }
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let (help, default) = match help.rsplit_once(" [default: ") {
            Some((text, default)) => (
                format!("{}.", text.trim_end_matches('.')),
                default.trim_end_matches(['.', ']']).to_owned(),
            ),
            None => (help, String::new()),
        };
        let mut name = format!("`--{long}`");
        if let Some(aliases) = arg.get_visible_aliases() {
            for alias in aliases {
                let _ = write!(name, ", `--{alias}`");
            }
        }
        if arg.is_hide_set() {
            name.push_str(" (hidden)");
        }
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            cell(&default),
            acts(long),
            cell(&help)
        );
    }
    out.push_str("\n### Configuration keys\n\n");
    out.push_str("| Key | Default | Acts |\n|---|---|---|\n");
    let defaults = serde_json::to_value(Config::default()).expect("the defaults serialize");
    let mut keys = Vec::new();
    leaves("", &defaults, &mut keys);
    keys.push(("debug.span-log".to_owned(), "(unset)".to_owned()));
    for (path, default) in &keys {
        let _ = writeln!(out, "| `{path}` | `{}` | {} |", cell(default), acts(path));
    }
    for (path, default, what) in LOG_KEYS {
        let _ = writeln!(out, "| `{path}` | `{default}` | yes: {what} |");
    }
    for key in INERT_KEYS {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | no (one warning): {} |",
            key.path, key.default, key.why
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_and_key_is_in_the_tables() {
        let tables = tables();
        for flag in [
            "--pd",
            "--addr",
            "--advertise-addr",
            "--config",
            "--cluster-id",
            "--log-level",
            "--log-file",
            "--data-dir",
            "--gc-ttl",
            "--tz",
            "--owner-flush-interval",
            "--processor-flush-interval",
            "--sort-dir",
        ] {
            assert!(tables.contains(&format!("`{flag}`")), "{flag}");
        }
        for key in [
            "capture-session-ttl",
            "owner-flush-interval",
            "debug.messages.server-ack-interval",
            "log.file.max-size",
            "sorter.sort-dir",
            "kv-client.worker-concurrent",
            "gc-tuner-memory-threshold",
        ] {
            assert!(tables.contains(&format!("`{key}`")), "{key}");
        }
        assert!(
            tables.contains("| `--owner-flush-interval` | 50ms |"),
            "{tables}"
        );
    }
}
