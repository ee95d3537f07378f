//! `chronicle engine ...`: the bundled time-series engine's commands.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum EngineCommand {
    /// Write points in InfluxDB line protocol from FILE (or standard input)
    Write {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        file: Option<PathBuf>,
    },
}

pub fn run(_command: EngineCommand) -> Result<()> {
    bail!("the engine is not part of this build yet")
}
