//! `event-producer --bootstrap HOST:PORT --topic T --domain DELIVERY --events N [--poison K]`

use clap::Parser;

/// Send the example's sample events to a Kafka topic.
#[derive(Parser)]
struct Args {
    /// The brokers, host:port[,host:port].
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    topic: String,
    /// DELIVERY or ORDERS: which contract's types.
    #[arg(long, default_value = "DELIVERY")]
    domain: String,
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Every K-th event is one its table cannot take (0: none).
    #[arg(long, default_value_t = 0)]
    poison: u64,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    event_producer::produce(&a.bootstrap, &a.topic, &a.domain, a.events, a.poison)
        .map_err(anyhow::Error::msg)?;
    println!("{} events of {} sent to {}", a.events, a.domain, a.topic);
    Ok(())
}
