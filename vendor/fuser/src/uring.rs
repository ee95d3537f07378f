//! Serving requests over FUSE-over-io_uring (Linux 6.14 and later, with the
//! `fuse` module's `enable_uring` parameter set).
//!
//! The kernel keeps one queue per possible CPU and hands each request to the
//! queue of the CPU its caller runs on. Each queue here is served by two
//! threads pinned to that CPU (with a ring each; the kernel hands a request
//! to whichever has an entry free, so one blocked in a request does not
//! hold back the queue), so a quick request, its handling and its reply
//! stay on the caller's CPU: with /dev/fuse, the reader that takes a request
//! usually sleeps on another CPU, and waking it (and then the caller) costs
//! more than many requests take to serve, above all on a virtual machine.
//! Requests that may take long (syncs, truncations, bulk reads and writes;
//! `long_requests::may_take_long`) go to a pool of unpinned threads, so
//! that they neither hold back the quick ones made on the same CPU nor keep
//! the caller's CPU from other work (decrypting read-ahead while the reader
//! runs); the queue's thread commits their replies when the pool wakes it
//! (an eventfd polled on the ring). Directory listings stay on the queue's
//! thread: handing them over made `ls -lR` and `rm -rf` a tenth slower.
//!
//! INIT, FORGET, INTERRUPT and anything queued before the rings were ready
//! still come through /dev/fuse, whose threads keep running; notifications
//! are still written to it.
//!
//! Each serving thread has `ENTRIES` entries: a header buffer the kernel fills with
//! the request's `fuse_in_header` and first argument, and a payload buffer
//! for the rest. The request is rebuilt in the classic layout (one copy),
//! dispatched as any other, and the reply is written straight into the
//! entry's buffers, then committed with the command that fetches the next
//! request.

use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::mpsc;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::thread;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::ll::fuse_abi as abi;
use crate::ll::fuse_abi::fuse_opcode;
use crate::long_requests::IN_HEADER_LEN;
use crate::long_requests::may_take_long;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

/// `struct fuse_uring_req_header`: `in_out` (128 bytes), `op_in` (128),
/// `ring_ent_in_out` (32).
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const OP_IN_LEN: usize = 128;
/// `ring_ent_in_out.commit_id` and `.payload_sz`.
const COMMIT_ID: usize = 256 + 8;
const PAYLOAD_SZ: usize = 256 + 16;
const OUT_HEADER_LEN: usize = size_of::<abi::fuse_out_header>();

/// `enum fuse_uring_cmd`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `sqe->len` of a REGISTER: the header and payload iovecs.
const IOV_SEGS: u32 = 2;
/// Where `len` lies in a submission queue entry.
const SQE_LEN_OFFSET: usize = 24;

/// Fewest payload bytes the kernel accepts (`FUSE_MIN_READ_BUFFER`).
const MIN_PAYLOAD: usize = 8192;

/// The reply of the request an entry holds, written by the filesystem's
/// reply (from any thread) and committed by the entry's thread.
#[derive(Debug)]
pub(crate) struct Captured {
    channel: ChannelSender,
    buffers: Mutex<Buffers>,
    sent: Condvar,
}

/// An entry's buffers, registered with the kernel. The kernel writes them
/// only while the entry's command is in flight, when the entry's thread is
/// waiting in `submit_and_wait` and nothing else holds them.
#[derive(Debug)]
struct Buffers {
    header: Box<[u64; HEADER_LEN / 8]>,
    payload: Box<[u64]>,
    /// Whether the request in the buffers has been replied to.
    replied: bool,
    /// The `unique` of that request: a late reply to an earlier request of
    /// the entry (after a panic answered it) is dropped, not committed as
    /// this one's.
    unique: u64,
}

impl Buffers {
    fn header_bytes(&mut self) -> &mut [u8] {
        bytes_mut(&mut self.header[..])
    }

    fn payload_bytes(&mut self) -> &mut [u8] {
        bytes_mut(&mut self.payload)
    }
}

fn bytes_mut(words: &mut [u64]) -> &mut [u8] {
    zerocopy::IntoBytes::as_mut_bytes(words)
}

fn bytes(words: &[u64]) -> &[u8] {
    zerocopy::IntoBytes::as_bytes(words)
}

impl Captured {
    pub(crate) fn channel(&self) -> &ChannelSender {
        &self.channel
    }

    /// Writes a reply (`fuse_out_header`, then its arguments) into the
    /// entry: the header into `in_out`, the arguments into the payload.
    pub(crate) fn put(&self, data: &[IoSlice<'_>]) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut unique = [0u8; 8];
        for (i, byte) in data.iter().flat_map(|slice| slice.iter()).skip(8).take(8).enumerate() {
            unique[i] = *byte;
        }
        if buffers.replied || u64::from_ne_bytes(unique) != buffers.unique {
            error!("a second or late reply to an io_uring request was dropped");
            return;
        }
        // The first 16 bytes are the out header, the rest the payload.
        let mut header_at = 0;
        let mut len = 0;
        let mut too_long = false;
        for slice in data {
            let mut slice: &[u8] = slice;
            if header_at < OUT_HEADER_LEN {
                let n = slice.len().min(OUT_HEADER_LEN - header_at);
                buffers.header_bytes()[header_at..header_at + n].copy_from_slice(&slice[..n]);
                header_at += n;
                slice = &slice[n..];
            }
            match buffers.payload_bytes().get_mut(len..len + slice.len()) {
                Some(to) => to.copy_from_slice(slice),
                None => too_long = true,
            }
            len += slice.len();
        }
        let header = buffers.header_bytes();
        if too_long {
            error!("a reply longer than the io_uring payload buffer was turned into EIO");
            header[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            len = 0;
        }
        header[0..4].copy_from_slice(&((OUT_HEADER_LEN + len) as u32).to_ne_bytes());
        header[PAYLOAD_SZ..PAYLOAD_SZ + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        buffers.replied = true;
        self.sent.notify_all();
    }

    /// Waits until the request has been replied to (most replies are sent
    /// before dispatch returns; a filesystem may send one later from
    /// another thread).
    fn wait_for_reply(&self) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        while !buffers.replied {
            buffers = self.sent.wait(buffers).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The kernel's queue count: one per possible CPU
/// (`num_possible_cpus()`), which may exceed the CPUs online.
fn possible_cpus() -> io::Result<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut count = 0;
    for range in list.trim().split(',').filter(|r| !r.is_empty()) {
        let parse = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| io::Error::other(format!("unreadable CPU list {list:?}")))
        };
        count += match range.split_once('-') {
            Some((first, last)) => parse(last)? + 1 - parse(first)?,
            None => 1,
        };
    }
    Ok(count)
}

/// Serving threads per CPU queue.
const THREADS_PER_QUEUE: usize = 2;

/// Requests one serving thread can hold at once: all but one may be in the
/// pool while it serves the quick ones.
const ENTRIES: usize = 4;

/// Threads of the pool for requests that may take long, shared by every
/// queue (the /dev/fuse path's default is as many serving threads).
const POOL_THREADS: usize = 4;

/// `user_data` of the eventfd poll (entries use their index).
const WAKE: u64 = u64::MAX;

/// One ring entry: its buffers (shared with the reply) and the iovecs that
/// registered them.
struct Entry {
    captured: Arc<Captured>,
    iov: Box<[libc::iovec; 2]>,
    /// The command in flight for the entry, to resubmit on EAGAIN.
    last: (u32, u64),
}

/// A request handed to the pool, and where to report it done.
struct Job {
    request: Vec<u64>,
    captured: Arc<Captured>,
    index: usize,
    done: mpsc::Sender<(usize, Vec<u64>)>,
    wake: Arc<OwnedFd>,
}

/// One serving thread of a CPU queue: its ring, entries and the eventfd
/// the pool wakes it with.
struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: i32,
    entries: Vec<Entry>,
    wake: Arc<OwnedFd>,
}

// SAFETY: the iovecs point into the entries' buffers, which the queue owns
// (through the Arcs) for as long as the iovecs exist; only the kernel reads
// them, at REGISTER.
unsafe impl Send for Queue {}

/// The rings, made before the INIT reply asks for io_uring (the kernel
/// holds every request from then until each queue has an entry).
pub(crate) struct Rings {
    queues: Vec<Queue>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rings({} serving threads of {ENTRIES} entries)",
            self.queues.len()
        )
    }
}

impl Rings {
    /// A ring per queue with payload buffers of `payload_len` bytes (at
    /// least the largest request or reply the INIT reply allows).
    pub(crate) fn new(channel: ChannelSender, fd: i32, payload_len: usize) -> io::Result<Rings> {
        let queues = possible_cpus()?;
        let qids = u16::try_from(queues).map_err(|_| io::Error::other("too many CPUs"))?;
        let payload_words = payload_len.max(MIN_PAYLOAD).div_ceil(8);
        let mut made = Vec::with_capacity(queues * THREADS_PER_QUEUE);
        for qid in (0..qids).flat_map(|qid| [qid; THREADS_PER_QUEUE]) {
            let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .build(2 * ENTRIES as u32 + 2)?;
            let wake = nix::sys::eventfd::EventFd::from_value_and_flags(
                0,
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?;
            let entries = (0..ENTRIES)
                .map(|_| Entry::new(channel.clone(), payload_words))
                .collect();
            made.push(Queue {
                qid,
                ring,
                fd,
                entries,
                wake: Arc::new(OwnedFd::from(wake)),
            });
        }
        Ok(Rings { queues: made })
    }

    /// Starts the pool and a thread per queue, which registers its entries
    /// and serves until the connection ends. When a thread cannot start,
    /// makes the kernel give up on the rings (it holds every request until
    /// each queue has an entry; a REGISTER it refuses makes it serve through
    /// /dev/fuse instead) and returns the threads started, which end when
    /// their own REGISTER fails or the session ends.
    pub(crate) fn spawn<FS: Filesystem + 'static>(
        self,
        event_loop: impl Fn(String) -> SessionEventLoop<FS>,
    ) -> Vec<JoinHandle<io::Result<()>>> {
        let mut threads = Vec::with_capacity(self.queues.len() + POOL_THREADS);
        let (jobs, waiting) = mpsc::channel::<Job>();
        let waiting = Arc::new(Mutex::new(waiting));
        let mut queues = self.queues.into_iter();
        let started = (0..POOL_THREADS).try_for_each(|i| {
            let name = format!("fuse-ring-pool-{i}");
            let se = event_loop(name.clone());
            let waiting = waiting.clone();
            let thread = thread::Builder::new()
                .name(name)
                .spawn(move || serve_pool(&se, &waiting))?;
            threads.push(thread);
            Ok::<(), io::Error>(())
        });
        let mut failed = started.err().map(|e| (e, None));
        if failed.is_none() {
            for queue in queues.by_ref() {
                let name = format!("fuse-ring-{}", queue.qid);
                let se = event_loop(name.clone());
                let jobs = jobs.clone();
                let queue = Arc::new(Mutex::new(Some(queue)));
                let handed = queue.clone();
                let spawned = thread::Builder::new().name(name).spawn(move || {
                    match handed.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        Some(queue) => queue.serve(&se, &jobs),
                        None => Ok(()),
                    }
                });
                match spawned {
                    Ok(thread) => threads.push(thread),
                    Err(e) => {
                        let queue = queue.lock().unwrap_or_else(|e| e.into_inner()).take();
                        failed = Some((e, queue));
                        break;
                    }
                }
            }
        }
        if let Some((e, queue)) = failed {
            warn!("FUSE over io_uring: {e}; serving through /dev/fuse");
            if let Some(mut queue) = queue.or_else(|| queues.next()) {
                queue.qid = u16::MAX;
                let _ = queue.submit(0, CMD_REGISTER, 0);
                let _ = queue.ring.submit_and_wait(1);
            }
        }
        threads
    }
}

impl Entry {
    fn new(channel: ChannelSender, payload_words: usize) -> Entry {
        let captured = Arc::new(Captured {
            channel,
            buffers: Mutex::new(Buffers {
                header: Box::new([0; HEADER_LEN / 8]),
                payload: vec![0u64; payload_words].into_boxed_slice(),
                replied: true,
                unique: 0,
            }),
            sent: Condvar::new(),
        });
        let iov = {
            let mut buffers = captured.buffers.lock().unwrap_or_else(|e| e.into_inner());
            let header = buffers.header_bytes();
            let header = libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            };
            let payload = buffers.payload_bytes();
            let payload = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            };
            Box::new([header, payload])
        };
        Entry {
            captured,
            iov,
            last: (CMD_REGISTER, 0),
        }
    }
}

/// A pool thread: serves the requests queues hand it, then wakes the queue
/// to commit the reply.
fn serve_pool<FS: Filesystem>(
    se: &SessionEventLoop<FS>,
    waiting: &Mutex<mpsc::Receiver<Job>>,
) -> io::Result<()> {
    loop {
        let job = waiting.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else {
            return Ok(());
        };
        dispatch(&job.captured, se, &job.request);
        job.captured.wait_for_reply();
        if job.done.send((job.index, job.request)).is_ok() {
            let _ = nix::unistd::write(job.wake.as_fd(), &1u64.to_ne_bytes());
        }
    }
}

impl Queue {
    /// Queues one command for entry `index`: REGISTER, or COMMIT_AND_FETCH
    /// of the request `commit_id`.
    fn submit(&mut self, index: usize, cmd_op: u32, commit_id: u64) -> io::Result<()> {
        // struct fuse_uring_cmd_req: flags, commit_id, qid, padding.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut command = opcode::UringCmd80::new(types::Fd(self.fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            let iov = &self.entries[index].iov;
            command = command.addr(Some(iov.as_ptr() as u64));
        }
        let mut entry = command.build().user_data(index as u64);
        if cmd_op == CMD_REGISTER {
            set_sqe_len(&mut entry, IOV_SEGS);
        }
        self.entries[index].last = (cmd_op, commit_id);
        // SAFETY: the command refers to iovecs and buffers the queue owns
        // until its ring is dropped (fields drop in order: the ring first;
        // `serve` keeps the buffers for good if it ends with commands in
        // flight).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Arms the poll that the pool's eventfd completes.
    fn watch_wake(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE);
        // SAFETY: the eventfd lives as long as the queue (after the ring).
        unsafe { self.ring.submission().push(&squeue::Entry128::from(poll)) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn serve<FS: Filesystem>(
        mut self,
        se: &SessionEventLoop<FS>,
        jobs: &mpsc::Sender<Job>,
    ) -> io::Result<()> {
        let served = self.serve_until_closed(se, jobs);
        if served.is_err() {
            // Commands may still be in flight: the kernel could read the
            // iovecs or write into the entries' buffers after the ring is
            // gone, so they stay allocated for the life of the process.
            std::mem::forget(std::mem::take(&mut self.entries));
        }
        served
    }

    fn serve_until_closed<FS: Filesystem>(
        &mut self,
        se: &SessionEventLoop<FS>,
        jobs: &mpsc::Sender<Job>,
    ) -> io::Result<()> {
        pin_to_cpu(usize::from(self.qid));
        let (done, finished) = mpsc::channel::<(usize, Vec<u64>)>();
        let mut spare: Vec<Vec<u64>> = Vec::new();
        for index in 0..self.entries.len() {
            self.submit(index, CMD_REGISTER, 0)?;
        }
        self.watch_wake()?;
        let mut open = self.entries.len();
        // Entries whose request is in the pool; one is always left for
        // quick requests.
        let mut in_pool = 0;
        let mut completions = Vec::with_capacity(2 * ENTRIES + 2);
        while open > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            completions.clear();
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(user_data, result) in &completions {
                if user_data == WAKE {
                    let mut count = [0u8; 8];
                    let _ = nix::unistd::read(self.wake.as_fd(), &mut count);
                    while let Ok((index, request)) = finished.try_recv() {
                        spare.push(request);
                        in_pool -= 1;
                        let commit_id = self.entries[index].last.1;
                        self.submit(index, CMD_COMMIT_AND_FETCH, commit_id)?;
                    }
                    if result < 0 {
                        let e = io::Error::from_raw_os_error(-result);
                        return Err(io::Error::other(format!("waiting for the pool: {e}")));
                    }
                    self.watch_wake()?;
                    continue;
                }
                let index = user_data as usize;
                match -result {
                    0 => {}
                    libc::EAGAIN | libc::EINTR => {
                        let (cmd_op, commit_id) = self.entries[index].last;
                        self.submit(index, cmd_op, commit_id)?;
                        continue;
                    }
                    errno => {
                        open -= 1;
                        let e = io::Error::from_raw_os_error(errno);
                        match errno {
                            libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                                debug!("io_uring queue {} entry {index} closed", self.qid)
                            }
                            // The kernel falls back to /dev/fuse.
                            _ if self.entries[index].last.0 == CMD_REGISTER => {
                                warn!("FUSE over io_uring unavailable (queue {}): {e}", self.qid)
                            }
                            _ => error!("io_uring queue {} entry {index}: {e}", self.qid),
                        }
                        continue;
                    }
                }
                let mut request = spare.pop().unwrap_or_default();
                let (commit_id, taken) = self.take_request(index, &mut request);
                self.entries[index].last = (CMD_COMMIT_AND_FETCH, commit_id);
                if taken && in_pool + 1 < ENTRIES && may_take_long(bytes(&request)) {
                    let job = Job {
                        request,
                        captured: self.entries[index].captured.clone(),
                        index,
                        done: done.clone(),
                        wake: self.wake.clone(),
                    };
                    match jobs.send(job) {
                        Ok(()) => {
                            in_pool += 1;
                            continue;
                        }
                        Err(mpsc::SendError(job)) => request = job.request,
                    }
                }
                if taken {
                    dispatch(&self.entries[index].captured, se, &request);
                }
                self.entries[index].captured.wait_for_reply();
                spare.push(request);
                self.submit(index, CMD_COMMIT_AND_FETCH, commit_id)?;
            }
        }
        Ok(())
    }

    /// Copies the request entry `index` holds into `request`, in the classic
    /// layout: fuse_in_header, the first argument (which the kernel puts in
    /// op_in), then the rest (the payload). Returns its commit id, and
    /// false when it is malformed (it is then answered EIO).
    fn take_request(&mut self, index: usize, request: &mut Vec<u64>) -> (u64, bool) {
        let captured = &self.entries[index].captured;
        let mut buffers = captured.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let header = buffers.header_bytes();
        let commit_id = u64::from_ne_bytes(field(header, COMMIT_ID));
        let len = u32::from_ne_bytes(field(header, 0)) as usize;
        let payload_len = u32::from_ne_bytes(field(header, PAYLOAD_SZ)) as usize;
        buffers.replied = false;
        buffers.unique = commit_id;
        let Some(first_len) = len
            .checked_sub(IN_HEADER_LEN + payload_len)
            .filter(|&n| n <= OP_IN_LEN && payload_len <= buffers.payload.len() * 8)
        else {
            error!("io_uring request of {len} bytes with a payload of {payload_len}: malformed");
            drop(buffers);
            reply_error(captured, commit_id, libc::EIO);
            return (commit_id, false);
        };
        // Every byte up to `len` is written below, so a buffer reused from
        // an earlier request is not zeroed first (a megabyte per bulk
        // write); only words it never had are, and the padding after `len`
        // (which `may_take_long` may read in a malformed request).
        request.resize(len.div_ceil(8), 0);
        bytes_mut(request)[len..].fill(0);
        let out = &mut bytes_mut(request)[..len];
        let header = bytes(&buffers.header[..]);
        out[..IN_HEADER_LEN].copy_from_slice(&header[..IN_HEADER_LEN]);
        out[IN_HEADER_LEN..IN_HEADER_LEN + first_len]
            .copy_from_slice(&header[OP_IN..OP_IN + first_len]);
        out[IN_HEADER_LEN + first_len..].copy_from_slice(&bytes(&buffers.payload)[..payload_len]);
        (commit_id, true)
    }
}

/// Dispatches a request (classic layout, in `request`'s first `len` bytes)
/// whose reply goes to `captured`. A panic in the filesystem is answered
/// EIO: the thread must live, since the kernel sends this CPU's requests to
/// its queue for as long as the connection lasts.
fn dispatch<FS: Filesystem>(captured: &Arc<Captured>, se: &SessionEventLoop<FS>, request: &[u64]) {
    let data = bytes(request);
    let unique = u64::from_ne_bytes(field(data, 8));
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch_unguarded(captured, se, data);
    }));
    if served.is_err() {
        error!("a request panicked; answered EIO");
        reply_error(captured, unique, libc::EIO);
    }
}

fn dispatch_unguarded<FS: Filesystem>(
    captured: &Arc<Captured>,
    se: &SessionEventLoop<FS>,
    data: &[u8],
) {
    let len = u32::from_ne_bytes(field(data, 0)) as usize;
    let unique = u64::from_ne_bytes(field(data, 8));
    let opcode = u32::from_ne_bytes(field(data, 4));
    match RequestWithSender::captured(captured.clone(), &data[..len]) {
        Ok(req) => {
            if opcode == fuse_opcode::FUSE_DESTROY as u32 {
                req.reply::<crate::reply::ReplyEmpty>().ok();
            } else if opcode == fuse_opcode::FUSE_FORGET as u32
                || opcode == fuse_opcode::FUSE_BATCH_FORGET as u32
            {
                // No reply is expected (the kernel sends these through
                // /dev/fuse); answer anyway so that the entry is not lost.
                req.dispatch(se);
                reply_error(captured, unique, libc::ENOSYS);
            } else {
                req.dispatch(se);
            }
        }
        Err(e) => {
            error!("io_uring request: {e}");
            reply_error(captured, unique, libc::EIO);
        }
    }
}

fn reply_error(captured: &Captured, unique: u64, errno: i32) {
    let header = abi::fuse_out_header {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    captured.put(&[IoSlice::new(zerocopy::IntoBytes::as_bytes(&header))]);
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// Sets `len` in a built entry (io-uring's UringCmd80 leaves it 0; FUSE's
/// REGISTER wants the iovec count there).
fn set_sqe_len(entry: &mut squeue::Entry128, len: u32) {
    // SAFETY: `Entry128` is `#[repr(C)]`: the 64-byte `io_uring_sqe` then
    // 64 command bytes, so it is 128 plain bytes; `len` is the `u32` at
    // byte 24 of `io_uring_sqe` (include/uapi/linux/io_uring.h).
    let raw = unsafe { &mut *(entry as *mut squeue::Entry128).cast::<[u8; 128]>() };
    raw[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Runs this thread on `cpu` only: the kernel queues a request on the
/// queue of the CPU its caller runs on.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        debug!("pinning the io_uring thread of queue {cpu}: {e}");
    }
}
