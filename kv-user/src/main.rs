use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let cfg = kv_user::config::Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(match cfg.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }))
    .init();
    log::info!("config: {cfg:?}");
    Ok(())
}
