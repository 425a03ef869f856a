//! The threads every multi-threaded kernel shares.
//!
//! One team of `n - 1` helper threads per thread count `n`; the calling
//! thread takes a share of each job itself, so a parallel call starts
//! `n - 1` threads' work instead of `n` and leaves no core idle while the
//! caller waits. GEMMs, convolutions and the graph's row-parallel steps
//! ([`super::for_each_part`]) all go through here, so they never compete
//! with a second set of threads.
//!
//! Helpers spin on the team's job counter for [`SPIN`] after each job (or
//! what [`super::set_thread_spin`] set) before they sleep: a model's
//! parallel steps come microseconds apart, and a sleeping thread woken
//! through the OS starts its share tens of microseconds late. With a rayon
//! pool (whose workers sleep after a few dozen yields) ResNet-18 at two
//! threads switched contexts about 24 times per run (`mixprec bench` on it:
//! 6491 futex calls, 2602 context switches; with this team 8 and 85); eight
//! alternated runs, median (best): ResNet-18 18.99 (18.61) -> 18.48 (18.03)
//! ms, the MLP 18.88 (17.15) -> 17.07 (16.49), the transformer 40.12
//! (39.81) -> 40.83 (39.29).
//!
//! A call that finds its team busy (a parallel call made from inside a
//! job, or a second caller thread at the same time) runs on its own thread.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long a helper spins for the next job before it sleeps, by default.
/// A core that spins costs other processes that long after a model's last
/// parallel step; a sleeping helper costs each later step its wake-up.
const SPIN: Duration = Duration::from_millis(2);

/// The spin in force, in nanoseconds ([`super::set_thread_spin`]).
static SPIN_NANOS: AtomicU64 = AtomicU64::new(SPIN.as_nanos() as u64);

/// Sets the helpers' spin (see [`super::set_thread_spin`]).
pub(super) fn set_spin(spin: Duration) {
    let nanos = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
    SPIN_NANOS.store(nanos, Ordering::Relaxed);
}

/// Set in [`Team::entered`] once the job's caller stops waiting for helpers
/// that have not joined.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// A job as the helpers see it: the caller's closure, its lifetime erased
/// (the caller does not return before every helper that joined has left).
type Job<'a> = &'a (dyn Fn() + Sync);

/// The helpers of one thread count and the job they share.
struct Team {
    /// Held by the thread whose job the team runs.
    dispatch: Mutex<()>,
    /// Bumped once per job, after the job is in place.
    epoch: AtomicU64,
    /// Points at the current job (a [`Job`] on the caller's stack).
    job: AtomicPtr<Job<'static>>,
    /// Helpers that joined the current job, with [`CLOSED`] once the caller
    /// stops admitting more.
    entered: AtomicUsize,
    /// Helpers that joined the current job and left it.
    finished: AtomicUsize,
    /// A helper's panic in the current job, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Helpers asleep, or about to check the epoch before sleeping.
    sleepers: AtomicUsize,
    /// Held by a helper from counting itself a sleeper until it waits, and
    /// by a caller notifying sleepers.
    park: Mutex<()>,
    /// Where sleeping helpers wait for the next epoch.
    wake: Condvar,
}

impl Team {
    /// A team with `helpers` threads, started.
    fn start(helpers: usize) -> Arc<Team> {
        let team = Arc::new(Team {
            dispatch: Mutex::new(()),
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            entered: AtomicUsize::new(CLOSED),
            finished: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        for i in 0..helpers {
            let team = team.clone();
            std::thread::Builder::new()
                .name(format!("mixprec-{i}"))
                .spawn(move || team.help())
                .expect("mixprec: cannot start worker threads");
        }
        team
    }

    /// A helper's life: wait for a job, join it unless it closed, run it.
    fn help(&self) {
        let mut seen = 0;
        loop {
            seen = self.next_epoch(seen);
            // A helper late for one job may join the next; either way it
            // joins the job in place and leaves it counted.
            if self.entered.fetch_add(1, Ordering::AcqRel) & CLOSED != 0 {
                continue;
            }
            // SAFETY: the job was stored before `entered` was reset (the
            // AcqRel add above reads that reset, so sees the store), and its
            // caller waits for `finished` to count this helper before its
            // frame, which holds the job, ends.
            let job: Job<'_> = unsafe { *self.job.load(Ordering::Acquire) };
            if let Err(p) = catch_unwind(AssertUnwindSafe(job)) {
                *self.panic.lock().unwrap_or_else(PoisonError::into_inner) = Some(p);
            }
            self.finished.fetch_add(1, Ordering::Release);
        }
    }

    /// The first epoch after `seen`: spun for up to the spin in force, then
    /// slept for.
    fn next_epoch(&self, seen: u64) -> u64 {
        let start = Instant::now();
        let spin = Duration::from_nanos(SPIN_NANOS.load(Ordering::Relaxed));
        let mut spins = 0u32;
        loop {
            let e = self.epoch.load(Ordering::Acquire);
            if e != seen {
                return e;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        // With the caller's bump-then-count (both SeqCst), either it sees
        // this sleeper and notifies under the lock, or this load sees its
        // bump.
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            if e != seen {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return e;
            }
            guard = self
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Runs `job` on the calling thread and every helper that joins in
    /// time, returning once all of them have left it; a panic in any of
    /// them resumes here.
    fn run(&self, job: Job<'_>) {
        // SAFETY (of the helpers' use): see `help`; this frame outlives
        // every helper that joins, by the wait below.
        let erased: *const Job<'_> = &job;
        self.job.store(erased.cast_mut().cast(), Ordering::Release);
        self.finished.store(0, Ordering::Relaxed);
        self.entered.store(0, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = self.park.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(job));
        let joined = self.entered.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED;
        let mut spins = 0u32;
        while self.finished.load(Ordering::Acquire) < joined {
            spins = spins.wrapping_add(1);
            if spins > 1 << 16 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let theirs = self
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

/// The team of `helpers` threads, started on first use.
fn team(helpers: usize) -> Arc<Team> {
    static TEAMS: Mutex<Vec<(usize, Arc<Team>)>> = Mutex::new(Vec::new());
    let mut teams = TEAMS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, t)) = teams.iter().find(|(n, _)| *n == helpers) {
        return t.clone();
    }
    let t = Team::start(helpers);
    teams.push((helpers, t.clone()));
    t
}

thread_local! {
    /// Per-thread f32 workspace, kept between calls so large GEMMs do not
    /// page-fault fresh buffers every time.
    static WORKSPACE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Takes a thread-local buffer of at least `len` elements (contents unspecified).
pub(super) fn take_buf<T: Copy + Default>(
    key: &'static std::thread::LocalKey<std::cell::Cell<Vec<T>>>,
    len: usize,
) -> Vec<T> {
    let mut v = key.with(|c| c.take());
    if v.len() < len {
        v.resize(len, T::default());
    }
    v
}

/// Gives a buffer back to its thread-local slot.
pub(super) fn put_buf<T>(key: &'static std::thread::LocalKey<std::cell::Cell<Vec<T>>>, v: Vec<T>) {
    key.with(|c| c.set(v));
}

/// Runs `f(item, workspace)` for every item on up to `threads` threads (the
/// caller being one); each thread's workspace holds `ws_len` f32. Items are
/// taken from a shared counter, so which thread runs an item varies, never
/// what the item computes.
pub(super) fn parallel_for(
    threads: usize,
    items: usize,
    ws_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut ws = take_buf(&WORKSPACE, ws_len);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            f(i, &mut ws[..ws_len]);
        }
        put_buf(&WORKSPACE, ws);
    };
    let threads = threads.min(items);
    if threads <= 1 {
        worker();
        return;
    }
    let team = team(threads - 1);
    match team.dispatch.try_lock() {
        // A job that panicked poisoned the lock; the team itself is fine.
        Ok(_running) => team.run(&worker),
        Err(TryLockError::Poisoned(p)) => {
            let _running = p.into_inner();
            team.run(&worker)
        }
        Err(TryLockError::WouldBlock) => worker(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    /// Runs `items` items on `threads` threads; returns how often each ran.
    fn counts(threads: usize, items: usize) -> Vec<usize> {
        let runs: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(threads, items, 3, |i, ws| {
            assert_eq!(ws.len(), 3);
            runs[i].fetch_add(1, Ordering::Relaxed);
        });
        runs.into_iter().map(AtomicUsize::into_inner).collect()
    }

    /// Back-to-back jobs of every size: each item runs exactly once, also
    /// when a helper is late for one job and joins the next.
    #[test]
    fn every_item_runs_once() {
        // Miri (which checks the team's atomics for races) runs each round
        // thousands of times slower.
        let rounds = if cfg!(miri) { 14 } else { 300 };
        for round in 0..rounds {
            for threads in 1..=4 {
                let items = [0, 1, 2, 3, 7, 64, 1000][round % 7];
                assert!(
                    counts(threads, items).iter().all(|&c| c == 1),
                    "{threads} threads"
                );
            }
        }
    }

    /// A job reaching sleeping helpers: after more than [`SPIN`] idle the
    /// helpers sleep, and the next job must wake them (a lost wake-up leaves
    /// every item to the caller). Six threads: a team no other test uses,
    /// so none holds it meanwhile.
    #[test]
    fn sleeping_helpers_wake_for_the_next_job() {
        counts(6, 6);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            let ran_on = Mutex::new(HashSet::new());
            parallel_for(6, 32, 0, |_, _| {
                ran_on.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_millis(2));
            });
            assert!(ran_on.into_inner().unwrap().len() > 1);
        }
    }

    /// With no spin, helpers sleep after every job and each job wakes
    /// them: every item still runs once, and helpers still take part.
    #[test]
    fn without_spin_every_job_wakes_its_helpers() {
        set_spin(Duration::ZERO);
        for items in [1, 2, 5, 64, 200] {
            assert!(counts(5, items).iter().all(|&c| c == 1));
        }
        let ran_on = Mutex::new(HashSet::new());
        parallel_for(5, 16, 0, |_, _| {
            ran_on.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(Duration::from_millis(2));
        });
        set_spin(SPIN);
        assert!(ran_on.into_inner().unwrap().len() > 1);
    }

    /// A panic on any thread reaches the caller after the job ends, and
    /// the team runs the next job.
    #[test]
    fn a_panic_reaches_the_caller_and_the_team_goes_on() {
        for bad in [0, 5, 63] {
            let caught = catch_unwind(|| {
                parallel_for(3, 64, 0, |i, _| {
                    std::thread::sleep(Duration::from_micros(200));
                    assert_ne!(i, bad, "item {bad} fails");
                })
            });
            assert!(caught.is_err());
            assert!(counts(3, 100).iter().all(|&c| c == 1));
        }
    }

    /// Parallel calls from inside a job, and from several threads at once,
    /// run every item once (the busy team's callers run on their own).
    #[test]
    fn nested_and_concurrent_calls_run_every_item_once() {
        let inner: Vec<AtomicUsize> = (0..8 * 50).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(2, 8, 0, |i, _| {
            parallel_for(2, 50, 0, |j, _| {
                inner[i * 50 + j].fetch_add(1, Ordering::Relaxed);
            });
        });
        assert!(inner.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for items in 0..if cfg!(miri) { 10 } else { 100 } {
                        assert!(counts(2, items).iter().all(|&c| c == 1));
                    }
                });
            }
        });
    }
}
