//! `herd bench`: a load generator for any OpenAI-compatible server (owned by the bench work).

use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("herd bench is not built yet")
}
