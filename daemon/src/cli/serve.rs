//! `qwenedge serve`: the library [`Daemon`] under a service manager. Configuration → daemon
//! (model, listeners, engine, transports, READY), then signals until it ends: SIGTERM drains
//! (running requests get `service.shutdown_grace_ms`), SIGINT stops at once, SIGHUP reloads
//! the configuration file (an invalid one is logged and the current one kept). Any start-up
//! failure is one line and exit status 1, before READY; an engine failure ends with status 1
//! so that systemd restarts the daemon.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qwenedge::{service, Daemon};
use qwenedge_config as config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// Arguments of `qwenedge serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default /etc/qwenedge/config.toml when it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Print the effective configuration (file + QWENEDGE__ variables) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Runs `serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref(), &config::process_env())?;
    if args.print_config {
        print!("{}", loaded.settings.to_toml());
        return Ok(());
    }
    service::init_logging("info");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The handlers go in before the daemon starts: a SIGHUP or SIGTERM that comes as soon as
    // READY is sent (a service manager's reload) is then queued, not the default action (exit).
    let handlers = {
        let _context = runtime.enter();
        Handlers { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup: signal(SignalKind::hangup())? }
    };
    let mut daemon = Daemon::start(loaded, service::activated_listener())?;
    runtime.block_on(signals(&mut daemon, handlers, args.config))?;
    Ok(daemon.wait()?)
}

/// The signals the daemon answers.
struct Handlers {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Maps signals onto the daemon until it ends.
async fn signals(daemon: &mut Daemon, handlers: Handlers, config_path: Option<PathBuf>) -> std::io::Result<()> {
    let Handlers { mut term, mut int, mut hup } = handlers;
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!(grace_ms = daemon.grace().as_millis() as u64, "SIGTERM: finishing running requests, then exiting");
                daemon.begin_shutdown(daemon.grace());
            }
            _ = int.recv() => {
                info!("SIGINT: cancelling everything and exiting");
                daemon.begin_shutdown(Duration::ZERO);
            }
            _ = hup.recv() => match config::load(config_path.as_deref(), &config::process_env()) {
                Ok(loaded) => {
                    info!("SIGHUP: reloading the configuration");
                    daemon.reload(loaded);
                }
                Err(e) => error!(error = %e, "SIGHUP: the new configuration is invalid; keeping the current one"),
            },
            () = daemon.ended() => return Ok(()),
        }
    }
}
