//! Which serving threads wait on /dev/fuse, and how long they poll it before
//! they sleep (`Config::poll`). Public so that a transport of one's own can
//! use the same pieces, and so that they can be tested from outside.
//!
//! A request that finds every serving thread asleep wakes one, and its reply
//! wakes the program that made it. Where an idle CPU halts at once (virtual
//! machines often run so), each of those wake-ups first brings a halted CPU
//! back, which can cost more than serving a small request. So, until the
//! device has been idle (no request taken or finished) for the window, one
//! thread per CPU (a *listener*) tries every `BETWEEN_TRIES` to read the
//! next request without blocking; after each try it yields its CPU to
//! anything else ready to run and spins out the rest of the interval. No
//! CPU halts between the requests of a busy program. The window adapts to
//! the idle gaps, as the kernel's own halt polling does, and closes when
//! they are longer than the limit, so a quiet mount spends no CPU on it.
//!
//! Where polling costs more than it spares, it stops. While syncs take
//! `SLOW_SYNC` or longer on average (they reach a disk), no thread polls:
//! beside a disk's flushes, a write-and-fsync loop ran a sixth slower with
//! polling. Listeners are not pinned to their CPUs: pinned, the same loop
//! ran a fifth slower with a window of 1 µs, and nothing in the six-step
//! benchmark ran faster (docs/PERFORMANCE.md of Chronicle, "Polling the
//! device").
//!
//! The kernel hands a request to a thread asleep in a read before a thread
//! that is polling can take it, waking it. So the threads beyond one per CPU
//! (*reserves*) do not wait on the device at all: they park, and one is
//! called in when no listener is left waiting there while a request that
//! may take long is being served (`long_requests::may_take_long`: a sync, a
//! truncation, bulk I/O) and none is back after `CALL_IN_DELAY`. Requests
//! classed as quick that block anyway, holding every listener with no long
//! one among them, call no reserve: other requests wait until one ends.

use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use log::debug;
use nix::errno::Errno;
use nix::fcntl::FcntlArg;
use nix::fcntl::OFlag;
use nix::fcntl::fcntl;
use parking_lot::Condvar;
use parking_lot::Mutex;

pub use crate::long_requests::RequestKind;
pub use crate::long_requests::request_kind;

/// How long the listeners must all stay away, after one took a request that
/// may take long, before a reserve joins them: long enough to pass over two
/// quick requests served at once, short beside the flush of a disk that a
/// reserve is there to wait out.
pub const CALL_IN_DELAY: Duration = Duration::from_micros(500);

/// How often a polling thread tries the device. Each try takes the lock of
/// the device's queue, which every new request needs too: tried back to
/// back, a write-and-fsync loop on tmpfs ran a tenth slower than without
/// polling; tried every 10, 20 or 50 µs, 30, 70 and 60 % faster
/// (docs/PERFORMANCE.md of Chronicle, "Polling the device").
pub const BETWEEN_TRIES: Duration = Duration::from_micros(20);

/// Syncs that take this long or longer on average reach a device that
/// flushes, and no thread polls while they go on: on this project's VM,
/// polling slowed a write-and-fsync loop on the disk by a sixth, and the
/// wake-ups it spares are small beside each flush (docs/PERFORMANCE.md of
/// Chronicle, "Polling the device"). The same loop's syncs took 13 µs at
/// the median and 21 µs at the 99th percentile on tmpfs, 327 µs at the
/// 10th percentile on the disk.
pub const SLOW_SYNC: Duration = Duration::from_micros(50);

/// How long the syncs' average counts after the last sync began or ended:
/// then polling resumes for whatever else the mount serves.
pub const SYNCS_REMEMBERED_FOR: Duration = Duration::from_secs(1);

/// The weight of the newest sync in the average, as a divisor: a lone
/// sync stalled for milliseconds among quick ones pauses polling for a
/// dozen or two of them.
const SYNC_AVERAGE_DIVISOR: u64 = 8;

/// What a serving thread does between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Waits on the device whenever it is free (polling it first, if its
    /// window is open).
    Listener,
    /// Parks until it is called in, then waits on the device asleep.
    Reserve,
}

/// The serving threads' turns at the device, and when it was last busy.
#[derive(Debug)]
pub struct Listeners {
    turns: Mutex<Turns>,
    called: Condvar,
    call_in_delay: Duration,
    /// When a thread last took a request or finished one, in nanoseconds
    /// since `epoch`. Counting the end of a request matters for long ones:
    /// after an fsync that outlasted the window, the program's next request
    /// comes at once, and the thread that served the fsync should be
    /// polling for it. (Threads store their own times without ordering
    /// among themselves, so it may step back by a request's length: the
    /// window then only looks a little less idle.)
    last_busy: AtomicU64,
    /// Requests that may take long being served now.
    long_running: AtomicUsize,
    /// The syncs' moving average time, and when the last one began or
    /// ended, in nanoseconds (since `epoch`).
    sync_average: AtomicU64,
    last_sync: AtomicU64,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Turns {
    /// Threads waiting on the device (polling it or asleep in a read).
    waiting: usize,
    /// The session has ended: parked reserves return.
    closed: bool,
}

impl Default for Listeners {
    fn default() -> Self {
        Self::new()
    }
}

impl Listeners {
    /// No thread waiting yet; reserves called in after `CALL_IN_DELAY`.
    pub fn new() -> Self {
        Self::with_call_in_delay(CALL_IN_DELAY)
    }

    /// As `new`, with reserves called in after `delay` (tests use a long
    /// one, so that a loaded machine cannot outlast it).
    pub fn with_call_in_delay(delay: Duration) -> Self {
        Listeners {
            turns: Mutex::new(Turns::default()),
            called: Condvar::new(),
            call_in_delay: delay,
            last_busy: AtomicU64::new(0),
            long_running: AtomicUsize::new(0),
            sync_average: AtomicU64::new(0),
            last_sync: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// The thread is about to wait on the device. A reserve first parks
    /// until it is called in and no listener is back after the delay,
    /// unless it comes `after_request` (it has just served one) to find no
    /// thread waiting: then it goes straight back. False once the session
    /// has ended.
    pub fn start_waiting(&self, role: Role, after_request: bool) -> bool {
        let mut turns = self.turns.lock();
        if role == Role::Reserve && !(after_request && turns.waiting == 0) {
            loop {
                while turns.waiting > 0 && !turns.closed {
                    self.called.wait(&mut turns);
                }
                // A listener is usually back within microseconds, and a
                // reserve asleep in a read would take the next request
                // from the polling ones: join only if none is back.
                if !turns.closed {
                    self.called.wait_for(&mut turns, self.call_in_delay);
                }
                if turns.closed || turns.waiting == 0 {
                    break;
                }
            }
        }
        if turns.closed {
            return false;
        }
        turns.waiting += 1;
        true
    }

    /// The thread has stopped waiting: it took a request of `kind` (a
    /// failure of the device counts as quick). When no other thread is left
    /// waiting and a request that may take long is being served (this one
    /// or another), a reserve is called in: otherwise a quick request that
    /// blocks behind a sync (on the same file's lock, or syncing the
    /// journal) would leave no thread on the device. Quick requests alone
    /// call none: a listener is back from one within microseconds, unless
    /// the program its reply woke runs on its CPU first, which a reserve
    /// would not get past either; calling one in for each of those cost
    /// more than polling saved (docs/PERFORMANCE.md of Chronicle, "Polling
    /// the device").
    pub fn stop_waiting(&self, kind: RequestKind) -> Serving<'_> {
        if kind.may_take_long() {
            self.long_running.fetch_add(1, Ordering::Relaxed);
        }
        let mut turns = self.turns.lock();
        turns.waiting -= 1;
        if turns.waiting == 0 && self.long_running.load(Ordering::Relaxed) > 0 {
            self.called.notify_one();
        }
        // Only a sync's start is needed (no clock read for other requests).
        let mut started = 0;
        if kind == RequestKind::Sync {
            started = self.clock();
            // A sync under way counts as recent, however long it takes.
            self.last_sync.fetch_max(started, Ordering::Relaxed);
        }
        Serving {
            listeners: self,
            kind,
            started,
        }
    }

    /// The session has ended: every parked reserve returns, and every
    /// thread returns at its next turn.
    pub fn close(&self) {
        self.turns.lock().closed = true;
        self.called.notify_all();
    }

    fn clock(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// A thread has taken a request; returns how long the device had been
    /// idle.
    pub fn took_request(&self) -> Duration {
        let now = self.clock();
        let last = self.last_busy.swap(now, Ordering::Relaxed);
        Duration::from_nanos(now.saturating_sub(last))
    }

    /// A sync that took `took` ended `now`.
    fn sync_ended(&self, took: u64, now: u64) {
        let _ = self
            .sync_average
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(average - average / SYNC_AVERAGE_DIVISOR + took / SYNC_AVERAGE_DIVISOR)
            });
        self.last_sync.fetch_max(now, Ordering::Relaxed);
    }

    /// Whether polling is paused: the syncs going on are slow
    /// (`SLOW_SYNC`).
    pub fn paused(&self) -> bool {
        let since_last = self
            .clock()
            .saturating_sub(self.last_sync.load(Ordering::Relaxed));
        self.sync_average.load(Ordering::Relaxed) >= nanos(SLOW_SYNC)
            && since_last < nanos(SYNCS_REMEMBERED_FOR)
    }

    /// How long the device has been idle.
    fn idle_for(&self) -> Duration {
        let last = self.last_busy.load(Ordering::Relaxed);
        Duration::from_nanos(self.clock().saturating_sub(last))
    }
}

/// A thread's time away from the device, serving a request. When it ends
/// (the request served, or the thread unwinding), the device counts as busy
/// until then.
#[derive(Debug)]
pub struct Serving<'a> {
    listeners: &'a Listeners,
    kind: RequestKind,
    /// When the thread took the request, if a sync, in nanoseconds since
    /// `epoch`.
    started: u64,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let listeners = self.listeners;
        let now = listeners.clock();
        listeners.last_busy.store(now, Ordering::Relaxed);
        if self.kind.may_take_long() {
            listeners.long_running.fetch_sub(1, Ordering::Relaxed);
        }
        if self.kind == RequestKind::Sync {
            listeners.sync_ended(now.saturating_sub(self.started), now);
        }
    }
}

/// How long one listener keeps trying to read a request once the device is
/// idle, and the reads that do it.
#[derive(Debug)]
pub struct PollWindow {
    current: Duration,
    most: Duration,
    /// The thread's descriptor is in non-blocking mode. Each serving thread
    /// polls a clone of the device of its own (the session refuses to poll
    /// without `clone_fd`), so the mode is its alone.
    nonblocking: bool,
}

impl PollWindow {
    /// A window of at most `most`; zero never polls.
    pub fn new(most: Duration) -> Self {
        PollWindow {
            current: most,
            most,
            nonblocking: false,
        }
    }

    /// Reads the next request from `device` into `buf`. Until the device
    /// has been idle for the window, tries without blocking (a listener
    /// that loses a request to another goes on trying rather than falling
    /// asleep in a read, where the kernel would hand it the next request by
    /// waking it); then sleeps in a read.
    pub fn receive(
        &mut self,
        device: BorrowedFd<'_>,
        buf: &mut [u8],
        listeners: &Listeners,
    ) -> nix::Result<usize> {
        if !self.current.is_zero() && !listeners.paused() {
            self.set_nonblocking(device, true)?;
            loop {
                let tried = Instant::now();
                match nix::unistd::read(device, buf) {
                    Ok(size) => {
                        listeners.took_request();
                        return Ok(size);
                    }
                    // ENOENT: the request was interrupted; retry, as a
                    // blocking read does.
                    Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => {}
                    Err(err) => return Err(err),
                }
                if listeners.idle_for() >= self.current || listeners.paused() {
                    break;
                }
                // Anything else ready to run on this CPU (the program, woken
                // by the last reply) goes first: polling only fills time the
                // CPU would otherwise spend halted. The spin that follows is
                // preempted like any task's when something wakes up here.
                std::thread::yield_now();
                while tried.elapsed() < BETWEEN_TRIES {
                    std::hint::spin_loop();
                }
            }
        }
        self.set_nonblocking(device, false)?;
        let received = loop {
            match nix::unistd::read(device, buf) {
                Err(Errno::EINTR | Errno::ENOENT) => continue,
                // Only if something else made the descriptor non-blocking:
                // make it block again rather than spin.
                Err(Errno::EAGAIN) => {
                    self.nonblocking = true;
                    self.set_nonblocking(device, false)?;
                }
                other => break other,
            }
        };
        if received.is_ok() {
            self.learn(listeners.took_request());
        }
        received
    }

    fn set_nonblocking(&mut self, device: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
        if self.nonblocking == on {
            return Ok(());
        }
        let flags = OFlag::from_bits_retain(fcntl(device, FcntlArg::F_GETFL)?);
        let flags = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        fcntl(device, FcntlArg::F_SETFL(flags))?;
        self.nonblocking = on;
        Ok(())
    }

    /// Learns from a request that came to a thread asleep in a read, after
    /// the device had been idle for `idle`: within the limit, polling
    /// longer would have caught it, so the window doubles (opening at an
    /// eighth of the limit); beyond it, the window halves, and closes once
    /// it is an eighth.
    pub fn learn(&mut self, idle: Duration) {
        let least = self.most / 8;
        self.current = if idle <= self.most {
            self.current.saturating_mul(2).clamp(least, self.most)
        } else if self.current <= least {
            Duration::ZERO
        } else {
            self.current / 2
        };
    }

    /// The window as it stands.
    pub fn window(&self) -> Duration {
        self.current
    }

    /// Whether the thread's descriptor was left non-blocking (its last
    /// request was caught while polling).
    pub fn nonblocking(&self) -> bool {
        self.nonblocking
    }
}

/// One serving thread's part in polling: its role, its window, and its turns
/// at the device.
#[derive(Debug)]
pub struct ServingThread<'a> {
    listeners: &'a Listeners,
    role: Role,
    window: PollWindow,
    after_request: bool,
}

impl<'a> ServingThread<'a> {
    /// A listener polls for `window` (zero: never); a reserve never polls.
    pub fn new(listeners: &'a Listeners, role: Role, window: Duration) -> Self {
        let window = match role {
            Role::Listener => window,
            Role::Reserve => Duration::ZERO,
        };
        ServingThread {
            listeners,
            role,
            window: PollWindow::new(window),
            after_request: false,
        }
    }

    /// Waits for this thread's turn at the device, then reads the next
    /// request from `device` into `buf`. None once the session has ended;
    /// with the request (or the device's error), the thread's time serving
    /// it (as long as its `request_kind` says), which ends when it is
    /// dropped.
    pub fn next_request(
        &mut self,
        device: BorrowedFd<'_>,
        buf: &mut [u8],
    ) -> Option<(nix::Result<usize>, Serving<'a>)> {
        if !self.listeners.start_waiting(self.role, self.after_request) {
            return None;
        }
        self.after_request = true;
        let received = self.window.receive(device, buf, self.listeners);
        let kind = match received {
            Ok(size) => request_kind(&buf[..size]),
            Err(_) => RequestKind::Quick,
        };
        Some((received, self.listeners.stop_waiting(kind)))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Ends the session's turns when a serving thread ends (returning or
/// unwinding), so that no parked reserve waits for a turn forever.
#[derive(Debug)]
pub struct CloseOnExit<'a>(pub &'a Listeners);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How many CPUs this process may run on, one listener for each; zero if
/// they cannot be read (polling is then not used).
pub fn allowed_cpu_count() -> usize {
    #[cfg(target_os = "linux")]
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => {
            return (0..nix::sched::CpuSet::count())
                .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                .count();
        }
        Err(e) => debug!("reading the CPUs this process may use: {e}; not polling"),
    }
    0
}
