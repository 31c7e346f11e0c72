//! A relay on a TCP path that holds no key: it forwards, damages bytes (flips, drops,
//! duplicates, replays, cuts — all it can do to TLS), or, on a plaintext link, parses
//! frames and applies armed forgeries. Every connection's pumps are bounded in time;
//! only loopback addresses are used.

use super::Rng;
use ferry_wire::frame::FrameHeader;
use ferry_wire::message::{Ack, Welcome};
use ferry_wire::{FRAME_HEADER_LEN, Message, Seq};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// What the relay does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Forwards faithfully.
    Pass,
    /// Damages chunks of bytes at random (TLS: it cannot read them).
    Bytes,
    /// Flips one byte of every connection's first chunk towards the client (its TLS
    /// handshake fails at once, for certain).
    FlipFirst,
    /// Forwards whole frames, applying the [`Forgeries`] armed.
    Frames,
}

/// Frame-level attacks armed by the test; each fires once.
#[derive(Debug, Default)]
pub(crate) struct Forgeries {
    /// Inject `Ack { durable }` towards the agent.
    pub(crate) ack: Option<u64>,
    /// Answer the next Welcome with this `last_durable` instead.
    pub(crate) welcome: Option<u64>,
    /// Rewrite the next RegisterServer's first disk to this size.
    pub(crate) register_size: Option<u64>,
    /// Send the barrier captured earlier to the standby again.
    pub(crate) replay_barrier: bool,
    /// The first barrier seen (raw frame).
    pub(crate) barrier: Option<Vec<u8>>,
}

/// What the relay did (so the test knows its attacks really happened).
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) connections: u64,
    pub(crate) flips: u64,
    pub(crate) drops: u64,
    pub(crate) duplicates: u64,
    pub(crate) replays: u64,
    pub(crate) cuts: u64,
    /// Of the above, how many hit a connection's first chunks (its TLS handshake).
    pub(crate) in_handshakes: u64,
    /// Flips in the standby's first handshake flight.
    pub(crate) handshake_flips_to_agent: u64,
    pub(crate) forged_acks: u64,
    pub(crate) forged_welcomes: u64,
    pub(crate) rewritten_registrations: u64,
    pub(crate) replayed_barriers: u64,
}

impl Stats {
    /// How many byte-level attacks were made.
    pub(crate) fn attacks(&self) -> u64 {
        self.flips + self.drops + self.duplicates + self.replays + self.cuts
    }
}

struct RelayShared {
    target: String,
    mode: Mutex<Mode>,
    forge: Mutex<Forgeries>,
    stats: Mutex<Stats>,
    rng: Mutex<Rng>,
    /// Chunks seen per direction (0: to the standby, 1: to the agent), for replays.
    seen: Mutex<[Vec<Vec<u8>>; 2]>,
    /// Bumped to cut every live connection.
    generation: AtomicU64,
    stop: AtomicBool,
}

/// The relay: listens on 127.0.0.1, forwards each connection to the standby.
pub(crate) struct Relay {
    port: u16,
    shared: Arc<RelayShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub(crate) fn start(target: &str, seed: u64) -> Self {
        assert!(target.starts_with("127.0.0.1:"), "loopback only: {target}");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(RelayShared {
            target: target.to_owned(),
            mode: Mutex::new(Mode::Pass),
            forge: Mutex::default(),
            stats: Mutex::default(),
            rng: Mutex::new(Rng(seed)),
            seen: Mutex::default(),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&s.target) else {
                    continue;
                };
                lock(&s.stats).connections += 1;
                let mine = s.generation.load(Ordering::SeqCst);
                for (dir, from, to) in [
                    (0, client.try_clone(), server.try_clone()),
                    (1, Ok(server), Ok(client)),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let s = s.clone();
                    std::thread::spawn(move || pump(&s, dir, from, to, mine));
                }
            }
        });
        Self {
            port,
            shared,
            accept: Some(accept),
        }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    pub(crate) fn forge(&self) -> std::sync::MutexGuard<'_, Forgeries> {
        lock(&self.shared.forge)
    }

    pub(crate) fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Drops every live connection (new ones are accepted).
    pub(crate) fn cut(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One direction of one connection: `dir` 0 is agent → standby, 1 standby → agent.
fn pump(s: &RelayShared, dir: usize, mut from: TcpStream, mut to: TcpStream, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut frames = FrameReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let started = Instant::now();
    let mut chunks = 0u64;
    // Bounded: a connection lives at most 10 minutes in the relay.
    while started.elapsed() < Duration::from_secs(600) {
        if s.generation.load(Ordering::SeqCst) != generation || s.stop.load(Ordering::SeqCst) {
            break;
        }
        let mode = *lock(&s.mode);
        if mode == Mode::Frames && dir == 1 {
            let forged = lock(&s.forge).ack.take();
            if let Some(durable) = forged {
                let frame = Message::Ack(Ack {
                    durable: Seq::new(durable),
                })
                .encode()
                .expect("encode an ack");
                if to.write_all(&frame).is_err() {
                    break;
                }
                lock(&s.stats).forged_acks += 1;
            }
        }
        if mode == Mode::Frames && dir == 0 {
            let mut forge = lock(&s.forge);
            if forge.replay_barrier
                && let Some(b) = forge.barrier.clone()
            {
                forge.replay_barrier = false;
                drop(forge);
                if to.write_all(&b).is_err() {
                    break;
                }
                lock(&s.stats).replayed_barriers += 1;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break,
        };
        chunks += 1;
        let out = match mode {
            Mode::Pass => vec![buf[..n].to_vec()],
            Mode::FlipFirst if dir == 1 && chunks == 1 => {
                let mut b = buf[..n].to_vec();
                b[n / 2] ^= 0x10;
                lock(&s.stats).flips += 1;
                vec![b]
            }
            Mode::FlipFirst => vec![buf[..n].to_vec()],
            Mode::Bytes => match damage(s, dir, chunks, &buf[..n]) {
                Some(out) => out,
                None => break,
            },
            Mode::Frames => {
                frames.push(&buf[..n]);
                match frames.take(s, dir) {
                    Some(out) => out,
                    None => break,
                }
            }
        };
        if out.iter().any(|c| to.write_all(c).is_err()) {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Uniform in `0..n`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.range(0, n as u64)).expect("below n")
}

/// Byte-level damage to one chunk: what to write instead (`None`: cut the connection).
fn damage(s: &RelayShared, dir: usize, chunk: u64, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut rng = lock(&s.rng);
    {
        let mut seen = lock(&s.seen);
        if seen[dir].len() < 64 {
            seen[dir].push(bytes.to_vec());
        } else {
            let i = pick(&mut rng, 64);
            seen[dir][i] = bytes.to_vec();
        }
    }
    // Handshake chunks (the first few of a connection) are hit more often, so that
    // damaged handshakes are part of every run.
    let odds = if chunk <= 4 { 25 } else { 10 };
    if rng.range(0, odds) != 0 {
        return Some(vec![bytes.to_vec()]);
    }
    let mut stats = lock(&s.stats);
    // In a handshake, half the attacks are flips: one in the standby's flight fails the
    // agent's handshake with a TLS error (not a dropped connection).
    let attack = if chunk <= 4 {
        stats.in_handshakes += 1;
        if rng.range(0, 2) == 0 {
            0
        } else {
            rng.range(0, 5)
        }
    } else {
        rng.range(0, 5)
    };
    if attack == 0 && chunk <= 2 && dir == 1 {
        stats.handshake_flips_to_agent += 1;
    }
    match attack {
        0 => {
            let mut b = bytes.to_vec();
            let at = pick(&mut rng, b.len());
            b[at] ^= 1 << rng.range(0, 8);
            stats.flips += 1;
            Some(vec![b])
        }
        1 => {
            stats.drops += 1;
            Some(Vec::new())
        }
        2 => {
            stats.duplicates += 1;
            Some(vec![bytes.to_vec(), bytes.to_vec()])
        }
        3 => {
            let seen = lock(&s.seen);
            let old = seen[dir][pick(&mut rng, seen[dir].len())].clone();
            stats.replays += 1;
            Some(vec![bytes.to_vec(), old])
        }
        _ => {
            stats.cuts += 1;
            None
        }
    }
}

/// Reassembles whole frames from a byte stream and applies the armed forgeries.
#[derive(Default)]
struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Whole frames ready to forward (forged where armed); `None`: not a frame stream.
    fn take(&mut self, s: &RelayShared, dir: usize) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            if self.pending.len() < FRAME_HEADER_LEN {
                return Some(out);
            }
            let head: [u8; FRAME_HEADER_LEN] = self.pending[..FRAME_HEADER_LEN]
                .try_into()
                .expect("16 bytes");
            let header = FrameHeader::parse(&head).ok()?;
            let total = FRAME_HEADER_LEN + header.body_len();
            if self.pending.len() < total {
                return Some(out);
            }
            let frame: Vec<u8> = self.pending.drain(..total).collect();
            let message = header.decode_body(&frame[FRAME_HEADER_LEN..]).ok()?;
            out.push(forge(s, dir, message).unwrap_or(frame));
        }
    }
}

/// The forged replacement of one frame, if an armed forgery applies to it.
fn forge(s: &RelayShared, dir: usize, message: Message) -> Option<Vec<u8>> {
    let mut f = lock(&s.forge);
    let forged = match (dir, message) {
        (0, Message::Barrier(b)) => {
            if f.barrier.is_none() {
                f.barrier = Some(Message::Barrier(b).encode().expect("encode"));
            }
            return None;
        }
        (0, Message::RegisterServer(mut r)) => {
            let size = f.register_size.take()?;
            r.disks[0].size = ferry_wire::ByteLen::new(size);
            lock(&s.stats).rewritten_registrations += 1;
            Message::RegisterServer(r)
        }
        (1, Message::Welcome(w)) => {
            let last = f.welcome.take()?;
            lock(&s.stats).forged_welcomes += 1;
            Message::Welcome(Welcome {
                last_durable: Seq::new(last),
                ..w
            })
        }
        _ => return None,
    };
    Some(forged.encode().expect("encode a forged frame"))
}
