//! A fault-injecting HTTP proxy in front of a test registry: it forwards
//! each request (one per connection: it asks the registry to close), logs
//! what was asked and what was answered, and on a matching request answers
//! with a status of its own, cuts the body short, stalls it, or corrupts it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a fault does to the request it matches.
#[derive(Clone)]
pub enum Action {
    /// Answers this status (with `Retry-After` seconds, if given) without
    /// asking the registry.
    Status(u16, Option<u32>),
    /// Passes the answer's head and this many body bytes, then closes.
    Cut(u64),
    /// Passes the head and this many body bytes, then waits until the flag
    /// is set, then closes.
    Stall(u64, Arc<AtomicBool>),
    /// Passes the whole answer with every body byte after the 16th flipped.
    Corrupt,
}

#[derive(Clone)]
pub struct Fault {
    pub method: &'static str,
    /// A substring of the path.
    pub path: String,
    /// How many matching requests it applies to.
    pub times: usize,
    pub action: Action,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// The request's `Range`, if any.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes passed on to the client.
    pub body: u64,
    /// Whether a fault acted on it.
    pub faulted: bool,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    log: Vec<Logged>,
}

pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub host: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (s, up) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, up) = (s.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &s);
                });
            }
        });
        Proxy { host, state }
    }

    pub fn fault(&self, f: Fault) {
        self.state.lock().unwrap().faults.push(f);
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

/// Reads up to the end of a message head (`\r\n\r\n`); returns it and
/// whatever body bytes came with it.
fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let (head, _) = read_head(&mut client)?;
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let mut parts = request.split(' ');
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let headers: Vec<&str> = lines
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    let range = headers
        .iter()
        .find(|h| h.to_ascii_lowercase().starts_with("range:"))
        .map(|h| h[6..].trim().to_string());
    let action = {
        let mut st = state.lock().unwrap();
        let f = st
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path));
        f.map(|f| {
            f.times -= 1;
            f.action.clone()
        })
    };
    let mut logged = Logged {
        method: method.clone(),
        path: path.clone(),
        range,
        status: 0,
        body: 0,
        faulted: action.is_some(),
    };
    if let Some(Action::Status(code, retry_after)) = &action {
        let extra = retry_after
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default();
        write!(
            client,
            "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
        )?;
        logged.status = *code;
        state.lock().unwrap().log.push(logged);
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut req = format!("{request}\r\n");
    for h in &headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    let (resp_head, first) = read_head(&mut up)?;
    logged.status = resp_head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    client.write_all(resp_head.as_bytes())?;
    let limit = match &action {
        Some(Action::Cut(n)) | Some(Action::Stall(n, _)) => *n,
        _ => u64::MAX,
    };
    let mut pending = first;
    let mut chunk = vec![0u8; 64 << 10];
    let result = loop {
        if pending.is_empty() {
            match up.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) => break Err(e),
            }
        }
        let room = (limit - logged.body).min(pending.len() as u64) as usize;
        let mut out: Vec<u8> = pending.drain(..room).collect();
        if matches!(action, Some(Action::Corrupt)) {
            for (i, b) in out.iter_mut().enumerate() {
                if logged.body + i as u64 >= 16 {
                    *b ^= 0xff;
                }
            }
        }
        if let Err(e) = client.write_all(&out) {
            break Err(e);
        }
        logged.body += out.len() as u64;
        if logged.body >= limit {
            if let Some(Action::Stall(_, release)) = &action {
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            break Ok(());
        }
    };
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
    state.lock().unwrap().log.push(logged);
    result
}
