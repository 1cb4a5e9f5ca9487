//! A TCP forwarder standing in for a Service in front of the agents' webhook ports.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// A TCP forwarder on a loopback port, standing in for the agents' Service: each connection
/// goes to the first backend that accepts it. With no backend (or none up) a connection is
/// closed at once, as a Service without ready endpoints does.
pub struct Forwarder {
    pub port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    /// The connections forwarded so far (both ends), for `cut`.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends: Arc<Mutex<Vec<u16>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (list, stopped) = (backends.clone(), stop.clone());
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let opened = open.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let ports = list.lock().unwrap().clone();
                let upstream = ports.iter().find_map(|port| {
                    TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], *port)),
                        Duration::from_secs(1),
                    )
                    .ok()
                });
                if let Some(upstream) = upstream {
                    let mut opened = opened.lock().unwrap();
                    opened.extend(
                        [client.try_clone(), upstream.try_clone()]
                            .into_iter()
                            .flatten(),
                    );
                    pipe(client, upstream);
                }
            }
        });
        Self {
            port,
            backends,
            stop,
            open,
        }
    }

    /// Breaks every connection forwarded so far (as a network failure would); new ones go
    /// to the backends as before.
    pub fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The backends, tried in this order.
    pub fn set_backends(&self, ports: &[u16]) {
        *self.backends.lock().unwrap() = ports.to_vec();
    }

    pub fn add_backend(&self, port: u16) {
        self.backends.lock().unwrap().push(port);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    copy(a, b2);
    copy(b, a2);
}
