//! The link's bandwidth limit.

use std::time::{Duration, Instant};

/// A token bucket over bytes per second (one second of burst).
#[derive(Debug)]
pub(super) struct Limiter {
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    pub(super) fn new(rate: Option<u64>) -> Self {
        Self {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Waits until `bytes` may be sent.
    #[expect(clippy::cast_precision_loss, reason = "rates and sizes far below 2^52")]
    pub(super) fn take(&mut self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let rate = rate as f64;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / rate));
        }
    }
}
