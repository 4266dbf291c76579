//! Load generator behind `petrel bench`.

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {}

pub async fn run(_args: BenchArgs) -> Result<(), BenchError> {
    Ok(())
}
