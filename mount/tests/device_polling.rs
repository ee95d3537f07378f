//! The pieces of the mount's /dev/fuse loop that poll the device
//! (`vendor/fuser/src/polling.rs`, `MountOptions::poll`): how the window
//! adapts, that polling reads what comes and sleeps after the window, that
//! it stops while syncs are slow, and that reserve threads wait on the
//! device only behind a long request.
//! (tests/e2e/polling.rs mounts with it; `CHRONICLE_POLL_US=200` runs the
//! whole suite so.)

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuser::polling::{
    request_kind, Listeners, PollWindow, RequestKind, Role, SLOW_SYNC, SYNCS_REMEMBERED_FOR,
};

const MOST: Duration = Duration::from_micros(64);
const LONG: RequestKind = RequestKind::MayTakeLong;
const QUICK: RequestKind = RequestKind::Quick;

#[test]
fn the_window_closes_when_the_device_stays_idle_longer_than_it() {
    let mut window = PollWindow::new(MOST);
    let mut closed_after = None;
    for learned in 1..=8 {
        window.learn(MOST * 10);
        if window.window().is_zero() {
            closed_after = Some(learned);
            break;
        }
    }
    assert_eq!(closed_after, Some(4), "64 → 32 → 16 → 8 → closed");
}

#[test]
fn the_window_reopens_when_requests_come_close_together() {
    let mut window = PollWindow::new(MOST);
    for _ in 0..4 {
        window.learn(MOST * 10);
    }
    assert!(window.window().is_zero());
    window.learn(MOST / 2);
    assert_eq!(window.window(), MOST / 8);
    for _ in 0..5 {
        window.learn(MOST / 2);
    }
    assert_eq!(window.window(), MOST, "grows to its limit, no further");
}

#[test]
fn a_huge_window_does_not_overflow() {
    let mut window = PollWindow::new(Duration::MAX);
    window.learn(Duration::from_secs(1));
    assert_eq!(window.window(), Duration::MAX);
}

#[test]
fn a_zero_window_never_polls() {
    let (read, mut write) = std::io::pipe().expect("pipe");
    let listeners = Listeners::new();
    let mut window = PollWindow::new(Duration::ZERO);
    write.write_all(b"x").expect("write");
    let mut buf = [0; 8];
    assert_eq!(window.receive(read.as_fd(), &mut buf, &listeners), Ok(1));
    assert!(!window.nonblocking());
}

#[test]
fn polling_takes_what_comes_within_the_window_and_sleeps_after_it() {
    let (read, mut write) = std::io::pipe().expect("pipe");
    let listeners = Listeners::new();
    let most = Duration::from_millis(200);
    let mut window = PollWindow::new(most);
    let mut buf = [0; 8];

    // The device has just had a request: the next is polled for.
    listeners.took_request();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        write.write_all(b"x").expect("write");
        write
    });
    assert_eq!(window.receive(read.as_fd(), &mut buf, &listeners), Ok(1));
    assert!(window.nonblocking(), "caught while polling");
    assert_eq!(window.window(), most, "a caught request keeps the window");
    let mut write = writer.join().expect("writer");

    // The next comes long after the window: the thread sleeps in a read.
    let writer = thread::spawn(move || {
        thread::sleep(most + Duration::from_millis(300));
        write.write_all(b"yz").expect("write");
    });
    assert_eq!(window.receive(read.as_fd(), &mut buf, &listeners), Ok(2));
    writer.join().expect("writer");
    assert!(!window.nonblocking(), "slept in a blocking read");
    assert_eq!(
        window.window(),
        most / 2,
        "a long idle gap halves the window"
    );
}

/// The call-in delay of the reserve test: long, so that a loaded machine
/// cannot make a listener that comes straight back look late.
const DELAY: Duration = Duration::from_millis(300);

/// Waits until `count` reaches `want` (or ten seconds pass), and returns it.
fn settle(count: &AtomicUsize, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::SeqCst) != want && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    count.load(Ordering::SeqCst)
}

/// Parks `count` reserves on `listeners`; each adds to the count returned
/// when it joins, and its handle tells whether it did.
fn park_reserves(
    listeners: &Arc<Listeners>,
    count: usize,
) -> (Arc<AtomicUsize>, Vec<thread::JoinHandle<bool>>) {
    let joined = Arc::new(AtomicUsize::new(0));
    let reserves = (0..count)
        .map(|_| {
            let listeners = listeners.clone();
            let joined = joined.clone();
            thread::spawn(move || {
                let waiting = listeners.start_waiting(Role::Reserve, false);
                if waiting {
                    joined.fetch_add(1, Ordering::SeqCst);
                }
                waiting
            })
        })
        .collect();
    (joined, reserves)
}

/// Two listeners waiting on the device and `reserves` reserves parked, with
/// the test's call-in delay.
fn two_listeners_and_reserves(
    reserves: usize,
) -> (
    Arc<Listeners>,
    Arc<AtomicUsize>,
    Vec<thread::JoinHandle<bool>>,
) {
    let listeners = Arc::new(Listeners::with_call_in_delay(DELAY));
    assert!(listeners.start_waiting(Role::Listener, false));
    assert!(listeners.start_waiting(Role::Listener, false));
    let (joined, reserves) = park_reserves(&listeners, reserves);
    (listeners, joined, reserves)
}

/// Long enough for a reserve that was wrongly called in to have joined.
fn a_while() {
    thread::sleep(DELAY + Duration::from_millis(100));
}

#[test]
fn a_reserve_is_called_in_only_when_every_listener_is_held_by_a_long_request() {
    let (listeners, joined, reserves) = two_listeners_and_reserves(2);
    a_while();
    assert_eq!(joined.load(Ordering::SeqCst), 0, "two listeners wait");

    drop(listeners.stop_waiting(LONG));
    a_while();
    assert_eq!(joined.load(Ordering::SeqCst), 0, "one listener still waits");

    drop(listeners.stop_waiting(QUICK));
    a_while();
    assert_eq!(
        joined.load(Ordering::SeqCst),
        0,
        "the last took a quick request"
    );

    assert!(listeners.start_waiting(Role::Listener, true));
    drop(listeners.stop_waiting(LONG));
    assert!(
        listeners.start_waiting(Role::Listener, true),
        "a listener never parks"
    );
    a_while();
    assert_eq!(
        joined.load(Ordering::SeqCst),
        0,
        "a listener came back in time"
    );

    drop(listeners.stop_waiting(LONG));
    assert_eq!(
        settle(&joined, 1),
        1,
        "held by a long request: a reserve joins"
    );
    a_while();
    assert_eq!(joined.load(Ordering::SeqCst), 1, "one reserve, not both");

    // The reserve serves a request; with no thread waiting it goes straight
    // back, without parking.
    drop(listeners.stop_waiting(QUICK));
    let start = Instant::now();
    assert!(listeners.start_waiting(Role::Reserve, true));
    assert!(start.elapsed() < DELAY, "no call-in delay");

    listeners.close();
    let waited: Vec<bool> = reserves
        .into_iter()
        .map(|t| t.join().expect("reserve"))
        .collect();
    assert_eq!(
        waited.iter().filter(|&&w| w).count(),
        1,
        "the other returns at close"
    );
    assert!(!listeners.start_waiting(Role::Listener, true), "closed");
}

#[test]
fn a_quick_request_held_behind_a_long_one_calls_a_reserve_in() {
    let (listeners, joined, reserves) = two_listeners_and_reserves(1);

    // One listener serves an fsync while the other still waits; then the
    // other takes a quick request that blocks (on the file's lock, say).
    let fsync = listeners.stop_waiting(LONG);
    a_while();
    assert_eq!(joined.load(Ordering::SeqCst), 0, "a listener still waits");
    let blocked = listeners.stop_waiting(QUICK);
    assert_eq!(settle(&joined, 1), 1, "no listener left, a sync under way");
    drop((fsync, blocked));

    listeners.close();
    for reserve in reserves {
        reserve.join().expect("reserve");
    }
}

/// Serves `count` syncs that each take `took`, as a listener would.
fn serve_syncs(listeners: &Listeners, count: usize, took: Duration) {
    for _ in 0..count {
        assert!(listeners.start_waiting(Role::Listener, true));
        let serving = listeners.stop_waiting(RequestKind::Sync);
        thread::sleep(took);
        drop(serving);
    }
}

/// Whether a listener polls: it polls for a request written after it
/// began waiting, and sleeps in a read otherwise.
fn polls(listeners: &Listeners) -> bool {
    let (read, mut write) = std::io::pipe().expect("pipe");
    let mut window = PollWindow::new(Duration::from_secs(5));
    listeners.took_request();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        write.write_all(b"x").expect("write");
    });
    let mut buf = [0; 8];
    assert_eq!(window.receive(read.as_fd(), &mut buf, listeners), Ok(1));
    writer.join().expect("writer");
    window.nonblocking()
}

// Protects: polling slowed a write-and-fsync loop on a disk by a sixth;
// while syncs reach a device (SLOW_SYNC or longer on average) no thread
// polls, and it resumes once syncs are quick again or have stopped. (A
// busy machine only makes the slow syncs slower; each check that needs
// polling paused follows a slow sync at once, well within
// SYNCS_REMEMBERED_FOR.)
#[test]
fn slow_syncs_pause_polling_until_they_are_quick_or_over() {
    let listeners = Listeners::new();
    assert!(!listeners.paused());
    assert!(polls(&listeners), "no sync yet");

    serve_syncs(&listeners, 16, SLOW_SYNC * 4);
    assert!(listeners.paused(), "syncs reach a device");
    assert!(!polls(&listeners), "no polling meanwhile");

    // An average, not the last sync alone: one quick sync after slow ones
    // leaves polling paused.
    serve_syncs(&listeners, 1, SLOW_SYNC * 4);
    serve_syncs(&listeners, 1, Duration::ZERO);
    assert!(listeners.paused(), "one quick sync among slow ones");

    // Quick syncs bring the average down (a busy machine may stall a few,
    // so as many as it takes).
    let mut quick = 0;
    while listeners.paused() && quick < 10_000 {
        serve_syncs(&listeners, 1, Duration::ZERO);
        quick += 1;
    }
    assert!(!listeners.paused(), "quick syncs again");
    assert!(quick > 1, "the slow ones still weighed");
    assert!(polls(&listeners));

    serve_syncs(&listeners, 16, SLOW_SYNC * 4);
    assert!(listeners.paused());
    thread::sleep(SYNCS_REMEMBERED_FOR + Duration::from_millis(50));
    assert!(!listeners.paused(), "no sync for a while");
    assert!(polls(&listeners));
}

// Protects: a listener already polling stops when slow syncs pause polling,
// rather than spinning out its window beside the disk's flushes.
#[test]
fn a_listener_polling_when_syncs_turn_slow_goes_to_sleep() {
    let listeners = Arc::new(Listeners::new());
    let (read, mut write) = std::io::pipe().expect("pipe");
    listeners.took_request();
    let polling = {
        let listeners = listeners.clone();
        thread::spawn(move || {
            let mut window = PollWindow::new(Duration::from_secs(30));
            let mut buf = [0; 8];
            assert_eq!(window.receive(read.as_fd(), &mut buf, &listeners), Ok(1));
            window.nonblocking()
        })
    };
    thread::sleep(Duration::from_millis(20));
    serve_syncs(&listeners, 16, SLOW_SYNC * 4);
    // Long enough for the polling thread to have seen it on a busy machine;
    // short beside the window it would otherwise poll out.
    thread::sleep(Duration::from_millis(500));
    write.write_all(b"x").expect("write");
    assert!(!polling.join().expect("listener"), "slept in a read");
}

fn request(opcode: u32, args: &[u8]) -> Vec<u8> {
    // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(40 + args.len() as u32).to_ne_bytes());
    bytes.extend_from_slice(&opcode.to_ne_bytes());
    bytes.extend_from_slice(&[0; 32]);
    bytes.extend_from_slice(args);
    bytes
}

// Protects: the syncs whose time pauses polling are FSYNC and FSYNCDIR
// (opcodes 20 and 30 of the FUSE protocol), and only they.
#[test]
fn syncs_are_told_from_other_requests() {
    assert_eq!(request_kind(&request(20, &[0; 16])), RequestKind::Sync);
    assert_eq!(request_kind(&request(30, &[0; 16])), RequestKind::Sync);
    // GETATTR, and a 4 KiB READ (fh, offset, size): quick.
    assert_eq!(request_kind(&request(3, &[0; 16])), RequestKind::Quick);
    let mut read = vec![0; 40];
    read[16..20].copy_from_slice(&4096u32.to_ne_bytes());
    assert_eq!(request_kind(&request(15, &read)), RequestKind::Quick);
    // A 1 MiB READ and a FLUSH may take long, but do not sync.
    read[16..20].copy_from_slice(&(1u32 << 20).to_ne_bytes());
    assert_eq!(request_kind(&request(15, &read)), RequestKind::MayTakeLong);
    assert_eq!(
        request_kind(&request(25, &[0; 24])),
        RequestKind::MayTakeLong
    );
    assert_eq!(
        request_kind(&[0; 3]),
        RequestKind::Quick,
        "too short to tell"
    );
}
