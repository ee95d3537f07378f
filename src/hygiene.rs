//! Keeping key material of the long-running mount process where no one
//! else can read it: out of `/proc/PID/environ`, out of core dumps, out of
//! swap where the system allows. The only other unsafe code of the binary
//! besides `daemon`.
#![allow(unsafe_code)]

/// Removes the variables `names` from the environment and overwrites their
/// values in the block the kernel shows as `/proc/PID/environ` (unsetting
/// alone leaves the original strings there). Call while single-threaded.
pub fn scrub_environment(names: &[&str]) {
    for name in names {
        // Single-threaded here (before the mount's threads start), so no
        // other thread reads the environment while it changes.
        std::env::remove_var(name);
    }
    let Some((start, end)) = environment_block() else {
        log::warn!(
            "cannot find the environment block; the key variable stays in /proc/self/environ"
        );
        return;
    };
    // SAFETY: the kernel reports [start, end) as this process's environment
    // block: strings on the initial stack, mapped and writable for the life
    // of the process. The variables overwritten here were just removed from
    // `environ`, so no pointer of libc or std refers to their bytes; the
    // other entries are only read, and nothing runs concurrently.
    let block = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    for entry in block.split_mut(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        if names.iter().any(|name| name.as_bytes() == &entry[..eq]) {
            entry[eq + 1..].fill(b'0');
        }
    }
}

/// `env_start` and `env_end`, fields 50 and 51 of `/proc/self/stat`.
fn environment_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 2 (the command name) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(50 - 3);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    (start != 0 && start < end).then_some((start, end))
}

/// What `harden_process` managed.
pub struct Hardening {
    pub memory_locked: bool,
}

/// No core dumps (RLIMIT_CORE 0, and not dumpable, which also keeps
/// processes of the same user from attaching a debugger or reading
/// `/proc/PID/mem`), and memory locked as it is touched so that keys never
/// reach swap, where RLIMIT_MEMLOCK or CAP_IPC_LOCK allow it.
pub fn harden_process() -> std::io::Result<Hardening> {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; it has no other
    // preconditions.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Under a finite RLIMIT_MEMLOCK, MCL_FUTURE would make every later
    // allocation count against the limit and fail once it is reached,
    // killing the mount: lock only where the limit cannot be reached.
    let locked = memlock_unbounded() && {
        // SAFETY: mlockall takes flags only. MCL_ONFAULT locks pages as
        // they are first touched, so reserved but unused memory (thread
        // stacks) is not made resident.
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) == 0 }
    };
    Ok(Hardening {
        memory_locked: locked,
    })
}

/// Whether this process may lock any amount of memory: an unlimited
/// RLIMIT_MEMLOCK, or root (which holds CAP_IPC_LOCK).
fn memlock_unbounded() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || (ok && limit.rlim_cur == libc::RLIM_INFINITY)
}

/// Raises this process's open-file limit as far as it may go: to the hard
/// limit, and as root to the kernel's ceiling (`fs.nr_open`). The mount
/// holds a descriptor for each inode the kernel remembers, so this limit
/// bounds how many files a program can have in use at once. Returns the
/// limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(limit.rlim_max);
    for wanted in [ceiling.max(limit.rlim_max), limit.rlim_max] {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        // SAFETY: setrlimit reads the struct we pass; raising the hard
        // limit fails harmlessly (EPERM) without CAP_SYS_RESOURCE.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return wanted;
        }
    }
    limit.rlim_cur
}
