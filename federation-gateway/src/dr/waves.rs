//! A receiver's writes in flight at once (a batch of 4 KiB extents applied
//! one round trip at a time would not keep up with its primary), in order
//! wherever two overlap: a write that overlaps one in flight waits for the
//! whole wave before it, so the later bytes land last.

use std::future::Future;

use tokio::task::JoinSet;

pub(crate) struct Waves {
    set: JoinSet<Result<(), String>>,
    ranges: Vec<(u64, u64)>,
    limit: usize,
}

impl Waves {
    pub fn new(limit: usize) -> Self {
        Self {
            set: JoinSet::new(),
            ranges: Vec::new(),
            limit,
        }
    }

    /// Starts `job`, which writes `range` (offset, length).
    pub async fn push(
        &mut self,
        range: (u64, u64),
        job: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Result<(), String> {
        let overlaps = self
            .ranges
            .iter()
            .any(|(offset, length)| range.0 < offset + length && *offset < range.0 + range.1);
        if overlaps || self.set.len() >= self.limit {
            self.finish().await?;
        }
        self.ranges.push(range);
        self.set.spawn(job);
        Ok(())
    }

    /// Waits for every write started; the first failure.
    pub async fn finish(&mut self) -> Result<(), String> {
        let mut failed = None;
        while let Some(done) = self.set.join_next().await {
            if let Err(err) = done.map_err(|err| err.to_string()).and_then(|done| done) {
                failed.get_or_insert(err);
            }
        }
        self.ranges.clear();
        failed.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn overlapping_writes_land_in_order_and_failures_surface() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut waves = Waves::new(8);
        for (index, range) in [(0, 4096), (4096, 4096), (0, 8192)].into_iter().enumerate() {
            let log = log.clone();
            waves
                .push(range, async move {
                    // The first two take longer: the third must still be last.
                    if index < 2 {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    log.lock().unwrap().push(index);
                    Ok(())
                })
                .await
                .unwrap();
        }
        waves.finish().await.unwrap();
        assert_eq!(log.lock().unwrap().last(), Some(&2));
        waves
            .push((0, 1), async { Err("refused".to_string()) })
            .await
            .unwrap();
        assert_eq!(waves.finish().await, Err("refused".to_string()));
    }
}
