//! `qwenedge mqtt-forget`: removes this device from Home Assistant by clearing its retained
//! discovery configurations and sensor state on the configured broker.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qwenedge_config as config;
use qwenedge_mqtt as mqtt;

/// Arguments of `qwenedge mqtt-forget`.
#[derive(Debug, Args)]
pub struct MqttForgetArgs {
    /// Configuration file (default /etc/qwenedge/config.toml when it exists).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

/// Runs `mqtt-forget`.
pub fn run(args: MqttForgetArgs) -> anyhow::Result<()> {
    let loaded = config::load(args.config.as_deref(), &config::process_env())?;
    let m = &loaded.settings.mqtt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cleared = runtime.block_on(mqtt::forget(m, Duration::from_secs(10)))?;
    println!("cleared {cleared} retained topics of device '{}' on {}", m.device(), m.url);
    Ok(())
}
