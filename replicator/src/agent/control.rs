//! The control socket (`agent.sock` in the state directory): a line `point` asks for a
//! manual point; the answer is its status as one line of JSON.

use super::Agent;
use super::parts::{DirtySource, ExtentReader, Freezer};
use super::ship::Stream;
use crate::status::PointStatus;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// Answers requests on the control socket: `point` makes a manual point (only while
    /// connected) and answers with its status as JSON.
    pub(super) fn serve_control(&mut self, mut stream: Option<&mut Stream>) {
        while let Ok((conn, _)) = self.control.accept() {
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let reply = match line.trim() {
                "point" => self.manual_point(stream.as_deref_mut()),
                other => PointStatus {
                    error: Some(format!("unknown request {other:?}")),
                    ..PointStatus::default()
                },
            };
            let _ = reply_json(&conn, &reply);
        }
    }
}

fn reply_json(mut conn: &UnixStream, reply: &PointStatus) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    conn.write_all(&text)
}

/// Asks a running agent (through its control socket) to make a manual point.
pub fn request_point(socket: &std::path::Path, timeout: Duration) -> std::io::Result<PointStatus> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"point\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
