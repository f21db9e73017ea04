//! `ferroctl map list|dump` and `ferroctl prog list`: the BPF side, read from
//! the pinned maps and the kernel directly, so they work when the agent is down.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use ferroplane_bpf::pinned::{dump_pinned, list_pinned, list_programs};
use serde_json::{json, Value};

use crate::table::{Align, Table};

/// Where the agent pins its maps by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferroplane";

/// `ferroctl map ...`.
#[derive(Debug, Subcommand)]
pub enum MapCmd {
    /// Maps pinned by the agent.
    List {
        /// Pin directory of the agent (`--pin-dir` of ferroplane-agent).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Entries of one pinned map (hex; per-CPU values concatenated).
    Dump {
        /// Map name (see `map list`).
        name: String,
        /// Pin directory of the agent.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

/// `ferroctl prog ...`.
#[derive(Debug, Subcommand)]
pub enum ProgCmd {
    /// ferroplane's XDP programs loaded in the kernel.
    List,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Run a map command; returns (JSON data, table text).
pub fn map(cmd: &MapCmd) -> Result<(Value, String)> {
    match cmd {
        MapCmd::List { pin_dir } => {
            let maps = list_pinned(pin_dir).with_context(|| hint(pin_dir))?;
            let data = json!(maps
                .iter()
                .map(|m| json!({
                    "name": m.name, "id": m.id, "type": m.map_type,
                    "key_size": m.key_size, "value_size": m.value_size,
                    "max_entries": m.max_entries,
                }))
                .collect::<Vec<_>>());
            let mut t = Table::new(&[
                ("Name", Align::Left),
                ("Id", Align::Right),
                ("Type", Align::Left),
                ("Key", Align::Right),
                ("Value", Align::Right),
                ("Max entries", Align::Right),
            ]);
            for m in &maps {
                t.row(vec![
                    m.name.clone(),
                    m.id.to_string(),
                    m.map_type.clone(),
                    m.key_size.to_string(),
                    m.value_size.to_string(),
                    m.max_entries.to_string(),
                ]);
            }
            Ok((data, t.render()))
        }
        MapCmd::Dump { name, pin_dir } => {
            let path = pin_dir.join(name);
            let (meta, entries) = dump_pinned(&path).with_context(|| hint(pin_dir))?;
            let data = json!({
                "name": meta.name, "id": meta.id, "type": meta.map_type,
                "entries": entries.iter().map(|(k, v)| json!({"key": hex(k), "value": hex(v)})).collect::<Vec<_>>(),
            });
            let mut t = Table::new(&[("Key", Align::Left), ("Value", Align::Left)]);
            for (k, v) in &entries {
                t.row(vec![hex(k), hex(v)]);
            }
            Ok((
                data,
                format!(
                    "{} ({}, id {}): {} entries\n{}",
                    meta.name,
                    meta.map_type,
                    meta.id,
                    entries.len(),
                    t.render()
                ),
            ))
        }
    }
}

fn hint(pin_dir: &Path) -> String {
    format!(
        "reading pinned maps under {} (is bpffs mounted there and did the agent pin with --pin-dir {}?)",
        pin_dir.display(),
        pin_dir.display()
    )
}

/// Run a program command; returns (JSON data, table text).
pub fn prog(cmd: &ProgCmd) -> Result<(Value, String)> {
    match cmd {
        ProgCmd::List => {
            let progs = list_programs().context("listing loaded BPF programs")?;
            let data = json!(progs
                .iter()
                .map(|p| json!({"id": p.id, "name": p.name, "map_ids": p.map_ids, "verified_insns": p.verified_insns}))
                .collect::<Vec<_>>());
            let mut t = Table::new(&[
                ("Id", Align::Right),
                ("Name", Align::Left),
                ("Maps", Align::Left),
                ("Insns", Align::Right),
            ]);
            for p in &progs {
                t.row(vec![
                    p.id.to_string(),
                    p.name.clone(),
                    p.map_ids
                        .iter()
                        .map(|m| m.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    p.verified_insns.map(|i| i.to_string()).unwrap_or_default(),
                ]);
            }
            Ok((data, t.render()))
        }
    }
}
