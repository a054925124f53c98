//! The proxy process as Linux shows it: CPU time, open files, and its open-files limit;
//! and the processes a path runs as (a container's, seen from the host).

use std::process::Command;

/// User + system CPU time of every thread of `pid`, in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("stat comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// How many file descriptors `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Every process on this machine whose `argv[0]` is `program` (pods' processes included:
/// the host's /proc sees into every PID namespace).
pub fn processes_running(program: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).next() == Some(program.as_bytes()))
        })
        .collect()
}

/// Lowers the running process's open-files limit (as `ulimit -n` before exec would).
pub fn limit_open_files(pid: u32, limit: usize) {
    set_open_files(pid, limit, limit);
}

/// Sets the running process's soft and hard open-files limits (a soft one below the hard can
/// be raised again; a lowered hard one cannot).
pub fn set_open_files(pid: u32, soft: usize, hard: usize) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={soft}:{hard}"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed: {status}");
}

/// Raises this process's open-files limit to its hard limit (the proxy, started after,
/// inherits it), for tests whose clients need thousands of descriptors; returns the limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one rlimit through the pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// The proxy's end of a loopback connection, duplicated out of its process with
/// pidfd_getfd(2). A test that must know when the proxy has read what it sent (to send one
/// record per read, say) asks this socket's receive queue: only the kernel knows.
pub struct PeerSocket(std::os::fd::OwnedFd);

impl PeerSocket {
    /// The socket of process `pid` whose peer is `client`'s local address (waiting, within
    /// a few seconds, for the process to accept it).
    pub fn find(pid: u32, client: &std::net::TcpStream) -> std::io::Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let ours = client.local_addr()?;
        let pid = libc::pid_t::try_from(pid).expect("pid");
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned to us and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))?;
            for entry in dir.flatten() {
                let socket = std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
                let Some(target) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if !socket {
                    continue;
                }
                // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags and returns
                // a new fd (a duplicate in this process) or -1.
                let fd =
                    unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
                if fd < 0 {
                    continue;
                }
                // SAFETY: the duplicate is ours alone; closing it leaves the proxy's fd open.
                let stream = unsafe { std::net::TcpStream::from_raw_fd(fd as i32) };
                if stream.peer_addr().ok() == Some(ours) {
                    return Ok(Self(stream.into()));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("process {pid} has no socket connected to {ours}"),
        ))
    }

    /// Bytes the process has not read yet.
    pub fn unread(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        usize::try_from(n).expect("FIONREAD count")
    }
}
