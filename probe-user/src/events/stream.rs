//! Reads the EVENTS ring buffer through tokio's AsyncFd: no sleep-polling.

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> Result<EventStream> {
        // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd
        // owns the ring buffer.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("cannot poll the ring buffer")?;
        Ok(EventStream { fd })
    }

    /// Waits until records are ready, then drains them all.
    pub async fn next_batch(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut guard = self.fd.readable_mut().await.context("ring buffer poll failed")?;
        let mut out = Vec::new();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            out.push(item.to_vec());
        }
        guard.clear_ready();
        Ok(out)
    }

    /// Whatever is left at shutdown.
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let ring = self.fd.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(item.to_vec());
        }
        out
    }
}
