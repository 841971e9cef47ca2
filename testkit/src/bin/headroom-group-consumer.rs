//! A plain librdkafka group consumer with no Headroom code, the baseline of
//! the consumer-group fault tests: it subscribes to a topic in a group and
//! prints one line per event on standard output, `assigned P,P,…`,
//! `revoked P,P,…` and `read PARTITION OFFSET`, storing each offset only
//! after its line is written (at-least-once; offsets auto-committed).
//!
//! `headroom-group-consumer BROKERS TOPIC GROUP SESSION_MS HEARTBEAT_MS`
//! (a test helper started by `headroom_testkit::group::PlainConsumer`; its
//! arguments are positional).

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message as _, TopicPartitionList,
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
};

/// Prints rebalances as they happen.
struct Printer;

impl ClientContext for Printer {}

fn partitions(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| e.partition().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerContext for Printer {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            println!("revoked {}", partitions(tpl));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            println!("assigned {}", partitions(tpl));
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, group, session_ms, heartbeat_ms] = args.as_slice() else {
        eprintln!(
            "usage: headroom-group-consumer BROKERS TOPIC GROUP SESSION_MS HEARTBEAT_MS (got {args:?})"
        );
        std::process::exit(2);
    };
    let consumer: BaseConsumer<Printer> = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("session.timeout.ms", session_ms)
        .set("heartbeat.interval.ms", heartbeat_ms)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .create_with_context(Printer)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("headroom-group-consumer: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = consumer.subscribe(&[topic]) {
        eprintln!("headroom-group-consumer: subscribe to {topic}: {e}");
        std::process::exit(1);
    }
    let mut last_error = Instant::now() - Duration::from_secs(60);
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                println!("read {} {}", m.partition(), m.offset());
                let _ = std::io::stdout().flush();
                let _ = consumer.store_offset(topic, m.partition(), m.offset());
            }
            Some(Err(e)) if last_error.elapsed() > Duration::from_secs(5) => {
                eprintln!("headroom-group-consumer: {e}");
                last_error = Instant::now();
            }
            _ => {}
        }
    }
}
