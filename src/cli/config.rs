//! `novabox config show|path`.

use std::process::ExitCode;

use clap::Subcommand;

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults filled in)
    Show {
        /// As JSON instead of TOML
        #[arg(long)]
        json: bool,
    },
    /// Print the path of the config file
    Path,
}

pub fn run(global: &GlobalArgs, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    let home = super::home(global)?;
    match cmd {
        ConfigCommand::Show { json } => {
            let config = super::load_config(&home)?;
            if !home.is_initialized() {
                eprintln!(
                    "note: {} does not exist yet; showing defaults (run `novabox init`)",
                    home.config_file().display()
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&config)?);
            } else {
                print!("{}", toml::to_string(&config)?);
            }
        }
        ConfigCommand::Path => println!("{}", home.config_file().display()),
    }
    Ok(ExitCode::SUCCESS)
}
