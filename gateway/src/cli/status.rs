//! `herd status`: print the cluster view (owned by the cluster work).

use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {}

pub async fn run(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("herd status is not built yet")
}
