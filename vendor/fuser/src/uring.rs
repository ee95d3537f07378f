//! Serving requests over FUSE-over-io_uring (Linux 6.14 and later, with the
//! `fuse` module's `enable_uring` parameter set).
//!
//! The kernel keeps one queue per possible CPU and hands each request to the
//! queue of the CPU its caller runs on. Each queue here is served by threads
//! pinned to that CPU, so a request, its handling and its reply stay on the
//! caller's CPU: with /dev/fuse, the reader that takes a request usually
//! sleeps on another CPU, and waking it (and then the caller) costs more
//! than many requests take to serve, above all on a virtual machine.
//!
//! INIT, FORGET, INTERRUPT and anything queued before the rings were ready
//! still come through /dev/fuse, whose threads keep running; notifications
//! are still written to it.
//!
//! Each thread owns a ring with one entry: a header buffer the kernel fills
//! with the request's `fuse_in_header` and first argument, and a payload
//! buffer for the rest. The request is rebuilt in the classic layout (one
//! copy), dispatched as any other, and the reply is written straight into
//! the entry's buffers, then committed with the command that fetches the
//! next request.

use std::io;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::mpsc;
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
const IN_HEADER_LEN: usize = size_of::<abi::fuse_in_header>();
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
        if buffers.replied {
            error!("a second reply to one io_uring request was dropped");
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

/// One serving thread's ring and its entry, for one queue.
struct Server {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: i32,
    captured: Arc<Captured>,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the iovecs point into `captured`'s buffers, which the server owns
// (through the Arc) for as long as the iovecs exist; they are read only by
// the kernel, at REGISTER.
unsafe impl Send for Server {}

/// The rings, made before the INIT reply asks for io_uring (the kernel
/// holds every request from then until each queue has an entry).
pub(crate) struct Rings {
    servers: Vec<Server>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rings({} servers)", self.servers.len())
    }
}

impl Rings {
    /// Rings for `per_queue` threads on each queue, with payload buffers of
    /// `payload_len` bytes (at least the largest request or reply the INIT
    /// reply allows).
    pub(crate) fn new(
        channel: ChannelSender,
        fd: i32,
        per_queue: usize,
        payload_len: usize,
    ) -> io::Result<Rings> {
        let queues = possible_cpus()?;
        let qids = u16::try_from(queues).map_err(|_| io::Error::other("too many CPUs"))?;
        let payload_words = payload_len.max(MIN_PAYLOAD).div_ceil(8);
        let mut servers = Vec::with_capacity(queues * per_queue.max(1));
        for qid in 0..qids {
            for _ in 0..per_queue.max(1) {
                let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4)?;
                let captured = Arc::new(Captured {
                    channel: channel.clone(),
                    buffers: Mutex::new(Buffers {
                        header: Box::new([0; HEADER_LEN / 8]),
                        payload: vec![0u64; payload_words].into_boxed_slice(),
                        replied: true,
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
                servers.push(Server {
                    qid,
                    ring,
                    fd,
                    captured,
                    iov,
                });
            }
        }
        Ok(Rings { servers })
    }

    /// Starts the serving threads (each registers its entry and serves
    /// until the connection ends) and their bulk helpers (`Bulk`). When a
    /// thread cannot start, makes the kernel give up on the rings (it holds
    /// every request until each queue has an entry; a failed REGISTER makes
    /// it serve through /dev/fuse instead) and returns the threads started,
    /// which then end when their own REGISTER fails or the session ends.
    pub(crate) fn spawn<FS: Filesystem + 'static>(
        self,
        event_loop: impl Fn(String) -> SessionEventLoop<FS>,
    ) -> Vec<JoinHandle<io::Result<()>>> {
        let mut threads = Vec::with_capacity(2 * self.servers.len());
        let mut servers = self.servers.into_iter();
        while let Some(server) = servers.next() {
            if let Err((e, server)) = server.spawn(&event_loop, &mut threads) {
                warn!("FUSE over io_uring: {e}; serving through /dev/fuse");
                if let Some(mut server) = server.or_else(|| servers.next()) {
                    server.qid = u16::MAX;
                    let _ = server.submit(CMD_REGISTER, 0);
                    let _ = server.ring.submit_and_wait(1);
                }
                break;
            }
        }
        threads
    }
}

/// A serving thread's helper for bulk reads and writes, on whichever CPU is
/// free: decrypting a large read on the caller's CPU would keep the caller
/// (which has more to do with the pages read ahead) from running in
/// parallel with it. The request's buffer travels there and back.
struct Bulk {
    to: mpsc::Sender<Vec<u64>>,
    back: mpsc::Receiver<Vec<u64>>,
}

/// Reads and writes of at least this many bytes go to the bulk helper.
const BULK_BYTES: usize = 128 * 1024;

/// Whether a request (classic layout) is a bulk read or write.
fn is_bulk(request: &[u8]) -> bool {
    let opcode = u32::from_ne_bytes(field(request, 4));
    if opcode == fuse_opcode::FUSE_READ as u32 {
        // fuse_read_in.size, after fh and offset.
        let at = IN_HEADER_LEN + 16;
        request.len() >= at + 4 && u32::from_ne_bytes(field(request, at)) as usize >= BULK_BYTES
    } else {
        opcode == fuse_opcode::FUSE_WRITE as u32 && request.len() >= BULK_BYTES
    }
}

impl Server {
    /// Starts this server's thread and its bulk helper, adding them to
    /// `threads`; on failure, gives the server back when its thread did not
    /// start.
    fn spawn<FS: Filesystem + 'static>(
        self,
        event_loop: &impl Fn(String) -> SessionEventLoop<FS>,
        threads: &mut Vec<JoinHandle<io::Result<()>>>,
    ) -> Result<(), (io::Error, Option<Server>)> {
        let name = format!("fuse-ring-{}", self.qid);
        let (to, requests) = mpsc::channel::<Vec<u64>>();
        let (done, back) = mpsc::channel();
        let captured = self.captured.clone();
        let helper = event_loop(format!("{name}-bulk"));
        let bulk = thread::Builder::new()
            .name(format!("{name}-bulk"))
            .spawn(move || {
                for request in requests {
                    dispatch(&captured, &helper, &request);
                    if done.send(request).is_err() {
                        break;
                    }
                }
                Ok(())
            })
        ;
        let bulk = match bulk {
            Ok(bulk) => bulk,
            Err(e) => return Err((e, Some(self))),
        };
        threads.push(bulk);
        let se = event_loop(name.clone());
        let server = Arc::new(Mutex::new(Some(self)));
        let handed = server.clone();
        let started = thread::Builder::new().name(name).spawn(move || {
            let server = handed.lock().unwrap_or_else(|e| e.into_inner()).take();
            match server {
                Some(server) => server.serve(&se, Bulk { to, back }),
                None => Ok(()),
            }
        });
        match started {
            Ok(thread) => {
                threads.push(thread);
                Ok(())
            }
            Err(e) => Err((e, server.lock().unwrap_or_else(|e| e.into_inner()).take())),
        }
    }

    /// Queues one command for the entry: REGISTER, or COMMIT_AND_FETCH of
    /// the request `commit_id`.
    fn submit(&mut self, cmd_op: u32, commit_id: u64) -> io::Result<()> {
        // struct fuse_uring_cmd_req: flags, commit_id, qid, padding.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let mut command = opcode::UringCmd80::new(types::Fd(self.fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            command = command.addr(Some(self.iov.as_ptr() as u64));
        }
        let mut entry = command.build().user_data(u64::from(cmd_op));
        if cmd_op == CMD_REGISTER {
            set_sqe_len(&mut entry, IOV_SEGS);
        }
        // SAFETY: the command refers to the iovecs and buffers this server
        // owns until its ring is dropped (fields drop in order: the ring
        // first).
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn serve<FS: Filesystem>(self, se: &SessionEventLoop<FS>, bulk: Bulk) -> io::Result<()> {
        let captured = self.captured.clone();
        let served = self.serve_until_closed(se, bulk);
        if served.is_err() {
            // A command may still be in flight: the kernel could write into
            // the entry's buffers after the ring is gone, so they stay
            // allocated for the life of the process.
            std::mem::forget(captured);
        }
        served
    }

    fn serve_until_closed<FS: Filesystem>(
        mut self,
        se: &SessionEventLoop<FS>,
        bulk: Bulk,
    ) -> io::Result<()> {
        pin_to_cpu(usize::from(self.qid));
        let mut request = Vec::new();
        let mut last = (CMD_REGISTER, 0);
        self.submit(CMD_REGISTER, 0)?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            let Some(cqe) = self.ring.completion().next() else {
                continue;
            };
            match -cqe.result() {
                0 => {}
                libc::EAGAIN | libc::EINTR => {
                    self.submit(last.0, last.1)?;
                    continue;
                }
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                    debug!("io_uring queue {} closed", self.qid);
                    return Ok(());
                }
                errno => {
                    let e = io::Error::from_raw_os_error(errno);
                    if last.0 == CMD_REGISTER {
                        // The kernel falls back to /dev/fuse.
                        warn!("FUSE over io_uring unavailable (queue {}): {e}", self.qid);
                        return Ok(());
                    }
                    error!("io_uring queue {}: {e}", self.qid);
                    return Err(e);
                }
            }
            let (commit_id, taken) = self.take_request(&mut request);
            if !taken {
                // Answered EIO already.
            } else if is_bulk(bytes(&request)) {
                bulk.to.send(request).map_err(|_| io::Error::other("bulk helper ended"))?;
                request = bulk.back.recv().map_err(|_| io::Error::other("bulk helper ended"))?;
            } else {
                dispatch(&self.captured, se, &request);
            }
            self.captured.wait_for_reply();
            last = (CMD_COMMIT_AND_FETCH, commit_id);
            self.submit(CMD_COMMIT_AND_FETCH, commit_id)?;
        }
    }

    /// Copies the request the entry holds into `request`, in the classic
    /// layout: fuse_in_header, the first argument (which the kernel puts in
    /// op_in), then the rest (the payload). Returns its commit id, and
    /// false when it is malformed (it is then answered EIO).
    fn take_request(&mut self, request: &mut Vec<u64>) -> (u64, bool) {
        let mut buffers = self.captured.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let header = buffers.header_bytes();
        let commit_id = u64::from_ne_bytes(field(header, COMMIT_ID));
        let len = u32::from_ne_bytes(field(header, 0)) as usize;
        let payload_len = u32::from_ne_bytes(field(header, PAYLOAD_SZ)) as usize;
        let Some(first_len) = len
            .checked_sub(IN_HEADER_LEN + payload_len)
            .filter(|&n| n <= OP_IN_LEN && payload_len <= buffers.payload.len() * 8)
        else {
            error!("io_uring request of {len} bytes with a payload of {payload_len}: malformed");
            buffers.replied = false;
            drop(buffers);
            self.reply_error(commit_id, libc::EIO);
            return (commit_id, false);
        };
        request.clear();
        request.resize(len.div_ceil(8), 0);
        let out = &mut bytes_mut(request)[..len];
        let header = bytes(&buffers.header[..]);
        out[..IN_HEADER_LEN].copy_from_slice(&header[..IN_HEADER_LEN]);
        out[IN_HEADER_LEN..IN_HEADER_LEN + first_len]
            .copy_from_slice(&header[OP_IN..OP_IN + first_len]);
        out[IN_HEADER_LEN + first_len..].copy_from_slice(&bytes(&buffers.payload)[..payload_len]);
        buffers.replied = false;
        (commit_id, true)
    }

    fn reply_error(&self, unique: u64, errno: i32) {
        reply_error(&self.captured, unique, errno);
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
