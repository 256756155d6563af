//! Bringing the agent up and running it: the probes loaded and attached
//! with the kernel's gfp names beside them, then the event loop over a
//! fresh engine until its duration ends or a signal comes. `watch`,
//! `monitor` and `record` differ only in their sink.

use std::time::Duration;

use anyhow::Result;

use super::{
    refresh::Refresher,
    run::{EventLoop, RunOptions},
    session::{Session, SessionOptions},
};
use crate::{
    detect::{engine::Engine, index::StorageIndex},
    names::{self, GfpNames, GfpSource},
    output::{sink::Sink, summary::Summary},
};

/// Loads and attaches the probes; returns them with the running kernel's
/// names of gfp flags (the built-in table's, said in the log, when its
/// tracefs does not print them).
pub fn start(opts: &SessionOptions) -> Result<(Session, GfpNames)> {
    let session = Session::start(opts)?;
    let (gfp, source) = names::load(session.tracefs.root());
    if let GfpSource::Builtin { reason } = source {
        log::warn!("GFP names from the built-in 6.18 table: {reason}");
    }
    Ok((session, gfp))
}

/// Runs the loop over `sink`, with findings of servicers blocked in
/// reclaim for `deadlock_after`, and returns the final summary.
pub async fn run(
    session: &mut Session,
    sink: &mut dyn Sink,
    refresher: &Refresher,
    deadlock_after: Duration,
    opts: &RunOptions,
) -> Result<Summary> {
    let mut engine = Engine::new(StorageIndex::default(), deadlock_after);
    engine.set_behaviour(session.behaviour);
    let mut l = EventLoop::new(session, engine, sink, refresher);
    l.run(opts).await?;
    Ok(l.summary.clone())
}
