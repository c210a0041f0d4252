//! A TCP relay from `127.0.0.1:PORT` inside a network namespace to an
//! address in ours: how a test lets a process that lives in a node's
//! namespace (a container with the pod's `hostNetwork`) reach the test API
//! server on this namespace's loopback, the way kube-proxy gives pods the
//! `kubernetes` Service. The listening socket is made on a short-lived
//! thread that entered the namespace (sockets stay in the namespace they
//! were made in); accepting and copying run on ordinary threads. Only
//! loopback addresses on both sides.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running relay; [`NetnsRelay::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct NetnsRelay {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    port: u16,
}

impl NetnsRelay {
    /// Listens on `127.0.0.1:port` in the namespace at `netns` (`port` 0:
    /// any) and relays each connection to `target`, connected from here.
    pub fn start(netns: &Path, port: u16, target: SocketAddr) -> io::Result<NetnsRelay> {
        let listener = in_netns(netns, move || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        })?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        if let Ok(outside) = TcpStream::connect(target) {
                            pipe(inside, outside);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(NetnsRelay {
            stop,
            accept: Some(accept),
            port,
        })
    }

    /// The port it listens on inside the namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting (open connections end when either side closes).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for NetnsRelay {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        })
    };
    one_way(a, b);
    one_way(b2, a2);
}

/// `GET path` over HTTP/1.1 to `127.0.0.1:port` inside the namespace at
/// `netns`, as kubelet probes a `hostNetwork` pod: the status code and
/// body ([`crate::http_get`] from inside the namespace).
pub fn http_get_in_netns(netns: &Path, port: u16, path: &str) -> io::Result<(u16, String)> {
    let path = path.to_string();
    in_netns(netns, move || {
        crate::http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), &path)
    })
}

/// Runs `work` on a short-lived thread that entered the network namespace
/// at `netns` (sockets it makes stay in that namespace); never on the
/// caller's thread.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let netns = File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns only reads the descriptor; it moves this thread,
        // which ends with `work`, into the namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        work()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}
