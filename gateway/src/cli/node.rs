//! `herd node`: the agent alone (owned by the cluster work).

use clap::Args;

#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub cluster: super::cluster_args::ClusterArgs,
}

pub async fn run(_args: NodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("herd node is not built yet")
}
