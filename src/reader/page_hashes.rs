//! Page hashes of a replay, computed on a second thread.
//!
//! A replay runs on one core: parse, decode, hash, hand the page on. BLAKE3 of the pages was
//! 45% of a 300 MB restore's time (perf), and it is the one step that needs nothing but the page,
//! so [`PageHashes`] hashes the pages of a long run (a big transaction, a snapshot) on a helper
//! thread in batches, while the caller goes on with the next pages, and gives the hashes back in
//! the order the pages came. The first pages of every run are hashed on the caller's thread: a
//! small transaction, a follower's usual case, never waits for a thread handoff.
//!
//! What the caller does with a page before its hash is back (restore writes it to its temporary
//! file) is tentative anyway: it only counts once the transaction's commit record is checked, and
//! the caller ends each run with [`PageHashes::finish`] before it checks that record.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::record::chain::page_hash;
use crate::record::Hash;

/// Pages of a run hashed on the caller's thread before any is handed to the helper.
const INLINE_PAGES: usize = 64;
/// Pages per batch handed to the helper.
const BATCH_PAGES: usize = 64;
/// Batches handed to the helper and not taken back yet, at most: with the batch being filled,
/// at most `(MAX_IN_FLIGHT + 1) × BATCH_PAGES` page copies exist at a time.
const MAX_IN_FLIGHT: usize = 2;

/// A page and its computed hash, in the order pages were pushed.
#[derive(Debug)]
pub struct Hashed {
    pub pgno: u32,
    /// Offset of the page's record in its object (for error reports).
    pub offset: u64,
    /// The hash the stream records for the page.
    pub recorded: Bytes,
    /// BLAKE3 of the page as read.
    pub actual: Hash,
}

struct Job {
    pgno: u32,
    offset: u64,
    recorded: Bytes,
    data: Vec<u8>,
    actual: Hash,
}

impl Job {
    fn hashed(&self) -> Hashed {
        Hashed {
            pgno: self.pgno,
            offset: self.offset,
            recorded: self.recorded.clone(),
            actual: self.actual,
        }
    }
}

struct Helper {
    jobs: Option<SyncSender<Vec<Job>>>,
    done: Receiver<Vec<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Helper {
    fn spawn() -> Option<Self> {
        let (jobs, job_rx) = mpsc::sync_channel::<Vec<Job>>(MAX_IN_FLIGHT);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("walstream-hash".into())
            .spawn(move || {
                for mut batch in job_rx {
                    for job in &mut batch {
                        job.actual = page_hash(&job.data);
                    }
                    if done_tx.send(batch).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing the job channel ends the helper's loop.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hashes a sequence of runs of pages; see the module documentation.
#[derive(Default)]
pub struct PageHashes {
    helper: Option<Helper>,
    /// Spawning the helper failed once: everything is hashed inline from then on.
    inline_only: bool,
    /// Pages pushed since the run began.
    run_pages: usize,
    /// Pages copied for the helper, not handed over yet.
    batch: Vec<Job>,
    /// Batches handed to the helper, not taken back yet.
    in_flight: usize,
    /// Page buffers of batches taken back, for reuse.
    spare: Vec<Vec<u8>>,
}

impl PageHashes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `data`, the page `pgno` recorded with hash `recorded` at `offset`. `on_hashed`
    /// receives this page's or earlier pages' hashes, in push order, now or in a later call.
    pub fn push<E>(
        &mut self,
        pgno: u32,
        offset: u64,
        recorded: Bytes,
        data: &[u8],
        on_hashed: &mut dyn FnMut(Hashed) -> Result<(), E>,
    ) -> Result<(), E> {
        self.run_pages += 1;
        let offloading = !self.batch.is_empty() || self.in_flight > 0;
        if !offloading && (self.run_pages <= INLINE_PAGES || !self.helper_ready()) {
            return on_hashed(Hashed {
                pgno,
                offset,
                recorded,
                actual: page_hash(data),
            });
        }
        let mut copy = self.spare.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(data);
        self.batch.push(Job {
            pgno,
            offset,
            recorded,
            data: copy,
            actual: [0; 32],
        });
        if self.batch.len() < BATCH_PAGES {
            return Ok(());
        }
        if self.in_flight == MAX_IN_FLIGHT {
            self.take_back_one(on_hashed)?;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_PAGES));
        self.hand_over(batch, on_hashed)
    }

    /// Ends the run: delivers every page's hash still outstanding. The next push starts a new
    /// run, whose first pages are hashed inline again.
    pub fn finish<E>(
        &mut self,
        on_hashed: &mut dyn FnMut(Hashed) -> Result<(), E>,
    ) -> Result<(), E> {
        // The last partial batch is hashed here while the helper works on the earlier ones.
        let mut last = std::mem::take(&mut self.batch);
        for job in &mut last {
            job.actual = page_hash(&job.data);
        }
        while self.in_flight > 0 {
            self.take_back_one(on_hashed)?;
        }
        self.deliver(last, on_hashed)?;
        self.run_pages = 0;
        Ok(())
    }

    /// Forgets the current run (a transaction that never committed): nothing is delivered.
    pub fn discard(&mut self) {
        self.batch.clear();
        while self.in_flight > 0 {
            self.in_flight -= 1;
            let back = self.helper.as_ref().and_then(|h| h.done.recv().ok());
            self.recycle(back.unwrap_or_default());
        }
        self.run_pages = 0;
    }

    fn helper_ready(&mut self) -> bool {
        if self.helper.is_none() && !self.inline_only {
            self.helper = Helper::spawn();
            self.inline_only = self.helper.is_none();
        }
        self.helper.is_some()
    }

    /// Gives `batch` to the helper (or, if it is gone, hashes and delivers it here).
    fn hand_over<E>(
        &mut self,
        mut batch: Vec<Job>,
        on_hashed: &mut dyn FnMut(Hashed) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(jobs) = self.helper.as_ref().and_then(|h| h.jobs.as_ref()) {
            match jobs.send(batch) {
                Ok(()) => {
                    self.in_flight += 1;
                    return Ok(());
                }
                Err(mpsc::SendError(b)) => batch = b,
            }
        }
        // Batches already in flight come first.
        while self.in_flight > 0 {
            self.take_back_one(on_hashed)?;
        }
        for job in &mut batch {
            job.actual = page_hash(&job.data);
        }
        self.deliver(batch, on_hashed)
    }

    /// Takes back the oldest batch in flight and delivers its hashes.
    fn take_back_one<E>(
        &mut self,
        on_hashed: &mut dyn FnMut(Hashed) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(self.in_flight > 0);
        self.in_flight -= 1;
        let back = self.helper.as_ref().and_then(|h| h.done.recv().ok());
        match back {
            Some(batch) => self.deliver(batch, on_hashed),
            // The helper is gone (it cannot fail, but if it did): the batch it held is lost, so
            // the run cannot be completed. Start over inline; the caller sees the missing
            // pages as a count mismatch at the commit, never as a wrong hash.
            None => {
                self.helper = None;
                self.inline_only = true;
                Ok(())
            }
        }
    }

    fn deliver<E>(
        &mut self,
        batch: Vec<Job>,
        on_hashed: &mut dyn FnMut(Hashed) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut result = Ok(());
        for job in &batch {
            if result.is_ok() {
                result = on_hashed(job.hashed());
            }
        }
        self.recycle(batch);
        if result.is_err() {
            self.discard();
        }
        result
    }

    fn recycle(&mut self, batch: Vec<Job>) {
        for job in batch {
            if self.spare.len() < BATCH_PAGES * (MAX_IN_FLIGHT + 1) {
                self.spare.push(job.data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    }

    proptest! {
        /// Whatever the run lengths, every page's hash is delivered once, in push order, by the
        /// end of its run, and equals BLAKE3 of the page.
        #[test]
        fn hashes_come_back_in_order_by_the_end_of_each_run(
            runs in proptest::collection::vec(0usize..400, 1..6),
        ) {
            let mut hashes = PageHashes::new();
            let mut next = 0u32;
            for len in runs {
                let first = next;
                let mut got: Vec<Hashed> = Vec::new();
                for _ in 0..len {
                    let data = page(next, 512);
                    let rec = Bytes::from(page_hash(&data).to_vec());
                    hashes
                        .push::<()>(next, u64::from(next), rec, &data, &mut |h| {
                            got.push(h);
                            Ok(())
                        })
                        .unwrap();
                    next += 1;
                }
                hashes.finish::<()>(&mut |h| { got.push(h); Ok(()) }).unwrap();
                prop_assert_eq!(got.len(), len);
                for (i, h) in got.iter().enumerate() {
                    let pgno = first + i as u32;
                    prop_assert_eq!(h.pgno, pgno);
                    prop_assert_eq!(h.offset, u64::from(pgno));
                    prop_assert_eq!(h.actual, page_hash(&page(pgno, 512)));
                    prop_assert_eq!(&h.recorded[..], &h.actual[..]);
                }
            }
        }
    }

    /// An error from the consumer stops delivery; after `discard`, a new run starts clean.
    #[test]
    fn an_error_stops_delivery_and_a_new_run_starts_clean() {
        let mut hashes = PageHashes::new();
        let mut seen = 0u32;
        let mut failed = false;
        for pgno in 0..300u32 {
            let data = page(pgno, 256);
            let r = hashes.push(pgno, 0, Bytes::new(), &data, &mut |h| {
                seen += 1;
                if h.pgno == 100 {
                    Err(h.pgno)
                } else {
                    Ok(())
                }
            });
            if r.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "the failing page was never delivered");
        assert_eq!(seen, 101, "pages after the failing one were delivered");
        hashes.discard();
        let mut got = Vec::new();
        for pgno in 1000..1100u32 {
            let data = page(pgno, 256);
            hashes
                .push::<()>(pgno, 0, Bytes::new(), &data, &mut |h| {
                    got.push(h.pgno);
                    Ok(())
                })
                .unwrap();
        }
        hashes
            .finish::<()>(&mut |h| {
                got.push(h.pgno);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, (1000..1100).collect::<Vec<_>>());
    }
}
