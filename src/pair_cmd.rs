//! `hafill pair`: camera inventories matched by IP into `[[camera]]`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use hafill_engine::pair;

use crate::{args, print_json, CmdResult, Outcome};

#[derive(Debug, Args)]
pub struct PairArgs {
    /// A server's camera inventory, SERVER=FILE, CSV (header row: id, name,
    /// ip, ha) or JSON (repeatable; the first listed is each camera's
    /// primary where it has one).
    #[arg(long = "inventory", value_name = "SERVER=FILE", value_parser = args::inventory, required = true)]
    inventories: Vec<(String, PathBuf)>,
    /// Write the `[[camera]]` section here (atomically) instead of to
    /// standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the groups and findings as JSON on standard output (with
    /// `--out` for the TOML).
    #[arg(long)]
    json: bool,
}

pub fn run(a: PairArgs) -> CmdResult {
    let inventories = a
        .inventories
        .iter()
        .map(|(server, path)| pair::read_inventory(server, path))
        .collect::<Result<Vec<_>, _>>()?;
    let pairing = pair::pair(&inventories)?;
    for f in &pairing.findings {
        eprintln!("{f}");
    }
    let toml = pairing.to_toml();
    match &a.out {
        Some(out) => {
            crate::write_atomically(out, toml.as_bytes())?;
            eprintln!(
                "wrote {} cameras to {} ({} findings)",
                pairing.cameras.len(),
                out.display(),
                pairing.findings.len()
            );
        }
        None if a.json => {}
        None => {
            std::io::stdout().write_all(toml.as_bytes())?;
        }
    }
    if a.json {
        print_json(&pairing)?;
    }
    Ok(if pairing.findings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Problems
    })
}
