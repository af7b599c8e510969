//! `totesys-generator`: seed and churn the oltp-warehouse example's source database.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Sample data for the oltp-warehouse example.
#[derive(Parser)]
#[command(
    after_help = "Examples:\n  totesys-generator --url sqlite://totesys.db seed --orders 10000\n  totesys-generator --url postgres://localhost/totesys churn --rate 100 --duration 2m"
)]
struct Cli {
    /// postgres://… or sqlite://PATH
    #[arg(long, env = "TOTESYS_URL")]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the schema and insert N sales orders with their reference data.
    Seed {
        #[arg(long, default_value_t = 1000)]
        orders: u64,
    },
    /// Keep inserting and updating sales orders.
    Churn {
        /// Changes per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let db = totesys_generator::Db::connect(&cli.url).await?;
    match cli.command {
        Command::Seed { orders } => {
            totesys_generator::seed(&db, orders).await?;
            println!("seeded {orders} sales orders");
        }
        Command::Churn { rate, duration } => {
            let rounds = totesys_generator::churn(&db, rate, duration).await?;
            println!("{rounds} rounds of changes");
        }
    }
    Ok(())
}
