//! Log output for the command line: stderr, filtered by -v or NOVABOX_LOG.

use tracing_subscriber::EnvFilter;

use super::GlobalArgs;

pub fn init(global: &GlobalArgs) {
    let level = match global.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let mut filter = std::env::var("NOVABOX_LOG").unwrap_or_else(|_| format!("{level},novabox={level}"));
    if global.sql_echo {
        filter.push_str(",novabox::sql=info");
    }
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
