//! `marketing`: the email-campaign service. One binary; each subcommand is a role or a tool.

mod cli;
mod config;
mod dkim;
mod monitoring;
mod report;
mod roles;
mod send;
mod startup;
mod submit;
mod suppressions;
mod task_commands;
mod telemetry;

use clap::Parser;
use std::process::ExitCode;

// Every message allocates (rendering, MIME, SQL rows, tokens): under glibc's allocator
// malloc/free were about a tenth of a send's instructions, under mimalloc a third of that
// (docs/BENCHMARKS.md, "mimalloc"). Built with `no_thp`: mimalloc otherwise asks for
// transparent huge pages, and a 100,000-recipient `send` then peaked at 71-80 MiB instead of
// ~50 MiB (the 64 MB memory goal). `no_thp` only stops the asking: on a host whose THP setting
// is `always` the kernel gives huge pages anyway, and MIMALLOC_ALLOW_THP=0 in the environment
// turns them off for the process (README, "Memory").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // .env is read before the command line is parsed so that its values act as environment
    // variables, which flags then override.
    if let Err(err) = config::load_dotenv() {
        eprintln!("error: {err:#}");
        return ExitCode::from(2);
    }
    let cli = cli::Cli::parse();
    telemetry::init();
    // One thread is a current-thread runtime: the process's tasks run where `block_on` runs,
    // with no second thread to wake.
    let mut builder = match cli.runtime_threads() {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            // A configuration the process refuses to start with is a usage error, like a bad
            // value clap rejects.
            if err.is::<dkim::StartupRefusal>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
