//! Cluster flags shared by `herd serve` and `herd node` (owned by the cluster work).

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {}
