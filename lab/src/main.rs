//! `skein-lab`: a whole Skein cluster in network namespaces on one Linux host.

#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = skein_lab::cli::Cli::parse();
    match skein_lab::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("skein-lab: {error:#}");
            std::process::exit(1);
        }
    }
}
