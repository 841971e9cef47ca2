//! What the example services share: a `/healthz` endpoint (for probes and
//! for peers to find each other), a run length, and a clock.
//!
//! - `hr-cruncher`: CPU-bound in phases (warm-up, steady, a burst, a
//!   cool-down), and about 1.7× harder while `hr-cache` answers beside it
//!   (every unit of work then also "serialises" for the cache).
//! - `hr-cache`: memory that grows in steps to a plateau and stays.
//! - `hr-ingest`: IO-heavy, writing, syncing and reading back files.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

/// Options every example takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Where `/healthz` answers.
    #[arg(long, env = "HR_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// How long to run ("0s": until killed).
    #[arg(long, env = "HR_DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Scale of the work (1.0: the documented profile).
    #[arg(long, env = "HR_INTENSITY", default_value_t = 1.0)]
    pub intensity: f64,
}

/// Serves `GET /healthz` with 200 on `listen` from a thread; returns the
/// bound address (printed, so a launcher can find it).
pub fn serve_health(listen: SocketAddr, name: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    println!("{name}: healthz on http://{addr}/healthz");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
            );
        }
    });
    Ok(addr)
}

/// Whether a peer answers `/healthz` at `addr`.
pub fn peer_alive(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: peer\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// The run's clock: seconds since start, and whether the run is over.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    duration: Duration,
}

impl Clock {
    /// Starts now.
    pub fn start(duration: Duration) -> Self {
        Self {
            start: Instant::now(),
            duration,
        }
    }

    /// Seconds since start.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Whether the run length has passed (never, for a zero duration).
    pub fn done(&self) -> bool {
        !self.duration.is_zero() && self.start.elapsed() >= self.duration
    }
}

/// Burns CPU for about `busy` of every `period`: a duty cycle.
pub fn duty_cycle(busy: f64, period: Duration) {
    let period = period.as_secs_f64();
    let work = period * busy.clamp(0.0, 1.0);
    let t = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    while t.elapsed().as_secs_f64() < work {
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    std::hint::black_box(x);
    let rest = period - t.elapsed().as_secs_f64();
    if rest > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(rest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers_and_peers_find_it() {
        let addr = serve_health("127.0.0.1:0".parse().unwrap(), "test").unwrap();
        assert!(peer_alive(addr));
        let closed: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(!peer_alive(closed));
    }

    #[test]
    fn a_zero_duration_never_ends() {
        assert!(!Clock::start(Duration::ZERO).done());
        assert!(Clock::start(Duration::from_nanos(1)).done() || cfg!(miri));
    }
}
