//! A TCP relay that adds a fixed one-way delay to everything it forwards, in both directions,
//! for latency benchmarks (`knapsec bench net`) on machines whose kernel lacks `tc netem`.
//!
//! Each accepted connection is paired with a connection to the target; every chunk read on
//! one side is stamped with its arrival time and written to the other side `delay` later.
//! Reading never waits for writing, so the relay adds latency, not a bandwidth limit (beyond
//! the copy itself): it behaves like a long, fat link.

use crate::error::{NetError, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running relay with its own small tokio runtime; dropping it stops everything.
#[derive(Debug)]
pub struct DelayRelay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    rt: Option<tokio::runtime::Runtime>,
}

impl DelayRelay {
    /// Listens on `listen` (port 0: any free port) and forwards every connection to
    /// `target` with `delay` added in each direction, on a runtime of its own.
    ///
    /// # Errors
    /// If the runtime cannot start or `listen` cannot be bound.
    pub fn start(listen: &str, target: SocketAddr, delay: Duration) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("knapsec-delay")
            .enable_all()
            .build()
            .map_err(|e| NetError::Invalid(format!("cannot start the relay runtime: {e}")))?;
        let mut relay = rt.block_on(Self::start_in_runtime(listen, target, delay))?;
        relay.rt = Some(rt);
        Ok(relay)
    }

    /// As [`DelayRelay::start`], on the current tokio runtime.
    ///
    /// # Errors
    /// If `listen` cannot be bound.
    pub async fn start_in_runtime(
        listen: &str,
        target: SocketAddr,
        delay: Duration,
    ) -> Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| NetError::Listen {
                address: listen.to_string(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| NetError::Listen {
            address: listen.to_string(),
            source,
        })?;
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Like a path whose far end is not up yet: keep trying (30 s at most).
                    let mut outbound = None;
                    for _ in 0..300 {
                        match TcpStream::connect(target).await {
                            Ok(s) => {
                                outbound = Some(s);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    let Some(outbound) = outbound else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, delay), pump(ro, wi, delay));
                });
            }
        });
        Ok(DelayRelay {
            addr,
            task,
            rt: None,
        })
    }

    /// The address the relay listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Copies `r` to `w`, each chunk `delay` after it was read; closes `w` after the end of `r`.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_delay_each_way_and_keeps_the_bytes() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = echo.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = echo.accept().await.unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
            });
            let relay =
                DelayRelay::start_in_runtime("127.0.0.1:0", target, Duration::from_millis(50))
                    .await
                    .unwrap();
            let mut c = TcpStream::connect(relay.addr()).await.unwrap();
            let msg: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let start = std::time::Instant::now();
            c.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).await.unwrap();
            let rtt = start.elapsed();
            assert_eq!(back, msg);
            assert!(
                rtt >= Duration::from_millis(100),
                "two one-way delays: {rtt:?}"
            );
            assert!(rtt < Duration::from_millis(1000), "{rtt:?}");
        });
    }
}
