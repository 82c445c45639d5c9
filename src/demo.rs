pub async fn run(_s: &crate::config::Sources, _a: DemoArgs) -> anyhow::Result<()> {
    Ok(())
}
#[derive(clap::Args)]
pub struct DemoArgs {}
