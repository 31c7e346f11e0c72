//! The service over loopback TCP, driven by the agent's link: handshake, acks after
//! fsync, resume from `Welcome.last_durable` with duplicates ignored, and refusals — an
//! unknown server, a wrong key, a record with a bad MAC — that are clear on the agent's
//! side, store nothing, and leave the standby serving.

mod common;

use common::*;
use ferry_replicator::link::{Link, LinkConfig, LinkError};
use ferry_replicator::sim::SimServer;
use ferry_standby::log::OpenMode;
use ferry_standby::receiver::{ServiceConfig, Standby, StandbyHandle};
use ferry_standby::server::ServerState;
use ferry_wire::message::{ErrorCode, PointKind};
use ferry_wire::{HostKeys, MasterKey, Message, Seq, ServerId};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A standby holding the test pair's standby key (`_keys` are the agent's, of the same pair).
fn start(dir: &Path, _keys: &HostKeys) -> StandbyHandle {
    let mut config = ServiceConfig::new(dir.to_owned(), "127.0.0.1:0".into());
    config.segment_size = SEGMENT;
    config.servers.insert(server(), Default::default());
    Standby::bind(config, common::master().standby_key())
        .expect("the standby binds")
        .spawn()
        .expect("the standby starts")
}

fn connect(standby: &StandbyHandle, keys: &HostKeys) -> Link {
    Link::connect(
        standby.addr(),
        &server(),
        &keys.ingest.auth,
        &LinkConfig::default(),
    )
    .unwrap_or_else(|e| panic!("connecting: {e}"))
}

fn stored(dir: &Path) -> ServerState {
    ServerState::open(
        server(),
        &dir.join("servers").join("web-1"),
        SEGMENT,
        OpenMode::ReadOnly,
    )
    .expect("the store opens")
    .0
}

#[test]
fn records_are_acked_after_fsync_and_a_reconnect_resumes_after_the_last_durable_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);
    let mut sim = SimServer::new(&keys, &[8 << 20]).expect("sim");
    let mut sent = Vec::new();
    {
        let mut link = connect(&standby, &keys);
        assert_eq!(
            link.welcome_durable(),
            Seq::new(0),
            "a new server starts at seq 0"
        );
        link.register(sim.registration()).expect("register");
        for i in 0..400u64 {
            let m = sim
                .write(0, (i % 128) * 65_536, &noise(4096, i))
                .expect("seal");
            link.send(&m).expect("send");
            sent.push(m);
        }
        let (barrier, _) = sim.barrier(PointKind::Manual, 1);
        link.send(&barrier).expect("send barrier");
        sent.push(barrier);
        let durable = link.wait_durable(sim.last_seq(), WAIT).expect("acked");
        assert_eq!(durable, Seq::new(401));
    }
    let mut link = connect(&standby, &keys);
    assert_eq!(
        link.welcome_durable(),
        Seq::new(401),
        "Welcome names the last durable seq"
    );
    // Replaying from the start: the link skips what the standby has; a duplicate sent
    // anyway (as a frame without window accounting) is ignored by the standby.
    for m in &sent {
        link.send(m).expect("replay is skipped");
    }
    link.send_encoded(None, &sent[10].encode().expect("encode"))
        .expect("a raw duplicate is sent");
    let m = sim.write(0, 0, &noise(65_536, 1000)).expect("seal");
    link.send(&m).expect("send");
    link.wait_durable(Seq::new(402), WAIT)
        .expect("the new record is acked");
    drop(link);
    drop(standby);

    let state = stored(dir.path());
    let seqs: Vec<u64> = state.log.entries().iter().map(|e| e.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=402).collect::<Vec<_>>(),
        "one entry per seq, none lost"
    );
    let got = rebuild_all(&state, Seq::new(402), &keys, dir.path());
    assert_disks_eq(&got, sim.disks(), "latest after the reconnect");
}

#[test]
fn an_unknown_server_and_a_wrong_key_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);
    let stranger = ServerId::new("web-9").expect("name");
    // Without web-9's key, web-9 is answered as web-1 is without web-1's: the standby's
    // proof does not check, so nothing tells a peer which servers exist.
    let err = Link::connect(
        standby.addr(),
        &stranger,
        &keys.ingest.auth,
        &LinkConfig::default(),
    )
    .expect_err("a wrong key must be refused");
    assert!(
        matches!(err, LinkError::StandbyNotAuthenticated),
        "an unknown server without its key must meet the same refusal as a known one: {err}"
    );
    // With web-9's own key (of this pair), it is told web-9 is not known.
    let stranger_keys = master().host_key(&stranger).keys();
    let err = Link::connect(
        standby.addr(),
        &stranger,
        &stranger_keys.ingest.auth,
        &LinkConfig::default(),
    )
    .expect_err("an unknown server must be refused");
    match &err {
        LinkError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::UnknownServer, "{message}");
            assert!(
                message.contains("web-9") && message.contains("not known"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(!err.is_retryable(), "an unknown server needs an operator");

    let other_keys = MasterKey::from_bytes([8; 32]).host_key(&server()).keys();
    let err = Link::connect(
        standby.addr(),
        &server(),
        &other_keys.ingest.auth,
        &LinkConfig::default(),
    )
    .expect_err("a wrong key must be refused");
    assert!(
        matches!(err, LinkError::StandbyNotAuthenticated),
        "the agent must notice the standby's proof is wrong: {err}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("different keys"), "{err}");

    // The standby still serves the right agent, and stored nothing for the others.
    let link = connect(&standby, &keys);
    assert_eq!(link.welcome_durable(), Seq::new(0));
    drop(link);
    assert!(
        !dir.path().join("servers").join("web-9").exists(),
        "nothing stored for web-9"
    );
}

#[test]
fn a_record_with_a_bad_mac_is_refused_and_not_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);
    let mut sim = SimServer::new(&keys, &[1 << 20]).expect("sim");
    let mut link = connect(&standby, &keys);
    link.register(sim.registration()).expect("register");
    for i in 0..3u64 {
        link.send(&sim.write(0, i * 4096, &noise(4096, i)).expect("seal"))
            .expect("send");
    }
    link.wait_durable(Seq::new(3), WAIT).expect("acked");
    let Message::Record(mut bad) = sim.write(0, 0, &noise(4096, 9)).expect("seal") else {
        unreachable!("write makes a record")
    };
    bad.mac[0] ^= 1;
    link.send(&Message::Record(bad)).expect("sent");
    // The refusal may come back before the flush returns: a link closed by the standby
    // reports it at whichever call comes next.
    let err = match link.flush() {
        Err(refused) => refused,
        Ok(()) => link
            .wait_durable(Seq::new(4), WAIT)
            .expect_err("a bad MAC must not be acked"),
    };
    match &err {
        LinkError::Refused { code, message } => {
            assert_eq!(*code, ErrorCode::Malformed, "{message}");
            assert!(
                message.contains("seq 4") && message.contains("MAC"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(!err.is_retryable(), "a bad MAC is permanent");
    drop(link);
    let link = connect(&standby, &keys);
    assert_eq!(
        link.welcome_durable(),
        Seq::new(3),
        "the bad record was not stored"
    );
}

#[test]
fn group_commit_acks_many_records_per_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);
    let mut sim = SimServer::new(&keys, &[4 << 20]).expect("sim");
    let mut link = connect(&standby, &keys);
    link.register(sim.registration()).expect("register");
    let records = 2000u64;
    for i in 0..records {
        let m = sim
            .write(0, (i % 1024) * 4096, &noise(4096, i))
            .expect("seal");
        link.send(&m).expect("send");
    }
    link.wait_durable(sim.last_seq(), WAIT).expect("acked");
    let acks = link.acks_received();
    assert!(
        acks * 4 < records,
        "{acks} acks (one per fsync) for {records} records: group commit is not grouping"
    );
}

/// A client speaking the protocol by hand: Hello, then the Challenge it gets back.
fn raw_hello(
    standby: &StandbyHandle,
) -> (
    std::net::TcpStream,
    ferry_wire::auth::Nonce,
    ferry_wire::message::Challenge,
) {
    use ferry_wire::auth::Nonce;
    use ferry_wire::message::Hello;
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(standby.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let client_nonce = Nonce([5; 32]);
    let hello = Message::Hello(Hello {
        server: server(),
        agent_version: "raw test client".into(),
        client_nonce,
    });
    stream
        .write_all(&hello.encode().expect("encode"))
        .expect("send Hello");
    match read(&mut stream) {
        Message::Challenge(c) => (stream, client_nonce, c),
        other => panic!("expected a Challenge, got {other:?}"),
    }
}

fn read(stream: &mut std::net::TcpStream) -> Message {
    let mut buf = Vec::new();
    ferry_wire::frame::read_frame(stream, &mut buf)
        .expect("a frame from the standby")
        .expect("the standby closed without answering")
}

fn expect_error(stream: &mut std::net::TcpStream, code: ErrorCode, needle: &str) {
    match read(stream) {
        Message::Error(e) => {
            assert_eq!(e.code, code, "{}", e.message);
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
        other => panic!("expected an Error, got {other:?}"),
    }
}

#[test]
fn the_standby_refuses_a_wrong_proof_and_a_frame_with_a_bad_crc() {
    use ferry_wire::auth::{self, Exchange, Proof, Role};
    use ferry_wire::message::Authenticate;
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);

    // An agent that does not hold the key (and so ignores the standby's proof).
    let (mut stream, _, _) = raw_hello(&standby);
    let forged = Message::Authenticate(Authenticate {
        agent_proof: Proof([9; 32]),
    });
    stream
        .write_all(&forged.encode().expect("encode"))
        .expect("send");
    expect_error(
        &mut stream,
        ErrorCode::AuthenticationFailed,
        "another server's or another site pair's",
    );

    // A proper agent whose frame is damaged on the way: the CRC catches it.
    let (mut stream, client_nonce, challenge) = raw_hello(&standby);
    let id = server();
    let exchange = Exchange {
        server: &id,
        client_nonce: &client_nonce,
        server_nonce: &challenge.server_nonce,
        channel: &ferry_wire::auth::Channel([0; 32]),
    };
    let proof = auth::prove(&keys.ingest.auth, Role::Agent, &exchange);
    let auth_frame = Message::Authenticate(Authenticate { agent_proof: proof });
    stream
        .write_all(&auth_frame.encode().expect("encode"))
        .expect("send");
    assert!(
        matches!(read(&mut stream), Message::Welcome(_)),
        "a proper agent is welcomed"
    );
    let sim = SimServer::new(&keys, &[1 << 20]).expect("sim");
    let mut frame = Message::RegisterServer(sim.registration())
        .encode()
        .expect("encode");
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    stream.write_all(&frame).expect("send");
    expect_error(&mut stream, ErrorCode::Malformed, "crc32 mismatch");
    assert!(
        !dir.path().join("servers/web-1/registration.json").exists(),
        "a damaged frame changed the store"
    );
}

/// A TCP connection to the standby from `from` (a loopback address of the attacker's
/// own).
fn connect_from(from: std::net::Ipv4Addr, standby: &StandbyHandle) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&std::net::SocketAddr::from((from, 0)).into())
        .expect("bind");
    socket.connect(&standby.addr().into()).expect("connect");
    socket.into()
}

#[test]
fn unauthenticated_connections_are_bounded_and_do_not_lock_agents_out() {
    use ferry_standby::receiver::{MAX_HANDSHAKES, MAX_PER_ADDRESS};
    use std::io::Read;
    use std::net::Ipv4Addr;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let standby = start(dir.path(), &keys);
    // "At once": well before the 10 s handshake deadline, which closes any connection.
    let closed_at_once = |mut c: std::net::TcpStream, what: &str| {
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
        let mut byte = [0u8; 1];
        let n = c.read(&mut byte);
        assert!(
            matches!(n, Ok(0))
                || matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what} must be closed at once: {n:?}"
        );
    };
    // Peers that connect and say nothing hold a handshake slot each; one address holds
    // at most its share.
    let first = Ipv4Addr::new(127, 0, 0, 2);
    let mut idle: Vec<_> = (0..MAX_PER_ADDRESS)
        .map(|_| connect_from(first, &standby))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    closed_at_once(
        connect_from(first, &standby),
        &format!("a connection beyond {MAX_PER_ADDRESS} from one address"),
    );
    // Peers from many addresses fill every slot: the oldest handshakes are cut for them.
    for i in 0..MAX_HANDSHAKES {
        let from = Ipv4Addr::new(
            127,
            0,
            0,
            3 + u8::try_from(i / MAX_PER_ADDRESS).expect("few"),
        );
        idle.push(connect_from(from, &standby));
    }
    std::thread::sleep(Duration::from_millis(300));
    closed_at_once(idle.remove(0), "the oldest unfinished handshake");
    // An agent gets in while every slot is held.
    let link = connect(&standby, &keys);
    assert_eq!(
        link.welcome_durable(),
        Seq::new(0),
        "an agent gets in under the flood"
    );
    drop(idle);
}
