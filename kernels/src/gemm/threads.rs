//! The threads every multi-threaded kernel shares.
//!
//! One rayon pool of `n - 1` workers per thread count `n`; the calling
//! thread takes a share of the work itself (`in_place_scope`), so a
//! parallel call wakes `n - 1` threads instead of `n` and leaves no core
//! idle while the caller waits. GEMMs, convolutions and the graph's
//! row-parallel steps ([`super::for_each_part`]) all go through here, so
//! they never compete with a second set of spinning threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The pool of `n` workers, built once per distinct `n`.
fn pool(n: usize) -> Arc<rayon::ThreadPool> {
    static POOLS: Mutex<Vec<Arc<rayon::ThreadPool>>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.iter().find(|p| p.current_num_threads() == n) {
        return p.clone();
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("mixprec-{i}"))
            .build()
            .expect("mixprec: cannot start worker threads"),
    );
    pools.push(p.clone());
    p
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
    let threads = threads.min(items);
    let worker = |next: &AtomicUsize| {
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
    let next = AtomicUsize::new(0);
    if threads <= 1 {
        worker(&next);
        return;
    }
    pool(threads - 1).in_place_scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|_| worker(&next));
        }
        worker(&next);
    });
}
