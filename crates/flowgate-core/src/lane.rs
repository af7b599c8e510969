//! A lane's lease, held for a run: one run per lane at a time, across processes
//! and machines.
//!
//! A lane is a pipeline, or a pipeline and one matrix combination. Its lease is
//! taken in the state store (expiry judged by the store's clock), renewed in the
//! background, and every position written under it carries its [`Fence`]: the
//! store refuses a write whose claim is gone. Locally, the claim also counts as
//! lost once renewals have failed for a whole time-to-live (measured on this
//! process's monotonic clock, from the last renewal it sent that succeeded): the
//! run is cancelled and [`Claim::check`] fails before any write to a sink the
//! state store cannot fence (objects, HTTP deliveries).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorClass, ErrorKind, StepError};
use crate::state::{Fence, StateStore};

/// Why a claim was lost.
const LOST: &str = "the run lost its claim on its lane (its lease expired, or another worker took it over); it stopped writing";

/// A held lane lease; renewal stops when it is dropped (the lease then expires).
pub struct Claim {
    fence: Fence,
    lost: Arc<AtomicBool>,
    /// Cancelled when the claim is lost (a child of the engine's token).
    pub cancel: CancellationToken,
    /// Until when this process may count on holding it (monotonic clock).
    valid_until: Arc<Mutex<Instant>>,
    renew: tokio::task::JoinHandle<()>,
    state: Arc<dyn StateStore>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl Claim {
    /// Take `lane` if nobody holds it; renew it every `ttl / 3` from then on.
    pub async fn take(
        state: &Arc<dyn StateStore>,
        lane: &str,
        worker: &str,
        ttl: Duration,
        parent: &CancellationToken,
    ) -> Result<Option<Claim>, crate::state::StateError> {
        // The holder is unique to this claim: two runs in one process never share it.
        let holder = format!("{worker}/{}", uuid::Uuid::now_v7().simple());
        let asked = Instant::now();
        let Some(fence) = state.acquire_lease(lane, &holder, ttl).await? else {
            return Ok(None);
        };
        let lost = Arc::new(AtomicBool::new(false));
        let cancel = parent.child_token();
        let valid_until = Arc::new(Mutex::new(asked + margin(ttl)));
        let renew = tokio::spawn(renew_loop(
            state.clone(),
            fence.clone(),
            ttl,
            lost.clone(),
            cancel.clone(),
            valid_until.clone(),
        ));
        Ok(Some(Claim {
            fence,
            lost,
            cancel,
            valid_until,
            renew,
            state: state.clone(),
        }))
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The claim was lost (the run must stop writing).
    pub fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return true;
        }
        let until = *self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if Instant::now() >= until {
            self.mark_lost();
            return true;
        }
        false
    }

    /// Count the claim as lost (a write under it was refused): the run stops.
    pub fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Fails (kind [`ErrorKind::ClaimLost`]) once the claim is lost: called before
    /// each write to a sink the state store cannot fence.
    pub fn check(&self) -> Result<(), StepError> {
        if self.is_lost() {
            return Err(lost_error());
        }
        Ok(())
    }

    /// Give the lane back at once (best effort: otherwise it expires).
    pub async fn release(self) {
        self.renew.abort();
        if !self.lost.load(Ordering::SeqCst)
            && let Err(e) = self.state.release_lease(&self.fence).await
        {
            tracing::warn!(lane = %self.fence.lease, error = %e, "could not release the lane; it expires by itself");
        }
    }
}

/// A step error for a lost claim: not retried, and the run ends interrupted.
pub fn lost_error() -> StepError {
    StepError::new(ErrorClass::EXTERNAL_FATAL, LOST).with_kind(ErrorKind::ClaimLost)
}

/// How long after a renewal was sent this process counts on the lease: the lease
/// runs `ttl` from when the store received it, which is later; a tenth of the
/// time-to-live is kept in hand for clock rates and scheduling.
fn margin(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

async fn renew_loop(
    state: Arc<dyn StateStore>,
    fence: Fence,
    ttl: Duration,
    lost: Arc<AtomicBool>,
    cancel: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
) {
    let every = ttl / 3;
    loop {
        let until = *valid_until.lock().unwrap_or_else(|p| p.into_inner());
        // Wake for the next renewal, or when the claim runs out unrenewed.
        let wake = (Instant::now() + every).min(until);
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= until {
            tracing::warn!(lane = %fence.lease, "the lane's lease could not be renewed in time; stopping the run");
            lost.store(true, Ordering::SeqCst);
            cancel.cancel();
            return;
        }
        let sent = Instant::now();
        // A renewal that hangs (an unreachable store) must not outlive the claim.
        let budget = until.saturating_duration_since(sent);
        match tokio::time::timeout(budget, state.renew_lease(&fence, ttl)).await {
            Ok(Ok(true)) => {
                *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + margin(ttl);
            }
            Ok(Ok(false)) => {
                tracing::warn!(lane = %fence.lease, "the lane was taken over or expired; stopping the run");
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lane = %fence.lease, error = %e, "could not renew the lane's lease; will try again")
            }
            Err(_) => {
                tracing::warn!(lane = %fence.lease, "renewing the lane's lease timed out; will try again")
            }
        }
    }
}
