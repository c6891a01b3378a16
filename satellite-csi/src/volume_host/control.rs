//! The volume host's control socket: one JSON request per connection and
//! one JSON answer, so the node plugin (or a restarted one) can ask a host
//! how its volume is, have it learn a new size, or stop it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The longest request or answer line read (they are a few hundred bytes).
const LINE_LIMIT: u64 = 16 << 10;
/// How long the plugin waits for a host's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HostRequest {
    /// The volume's size and whether a gateway session is up.
    Status,
    /// Open the volume's stream again and take the size it has now.
    Refresh,
    /// Flush, unmount the FUSE file, close the session, exit.
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum HostReply {
    Status {
        volume: String,
        size_bytes: u64,
        /// The smallest request the volume takes (the loop device's sector).
        block_bytes: u32,
        pid: u32,
        /// The gateway serving the volume, when a session is up.
        gateway: Option<String>,
        /// Why no gateway is reachable, when none is.
        problem: Option<String>,
    },
    Refreshed {
        size_bytes: u64,
    },
    Stopping,
    Failed {
        message: String,
    },
}

/// Asks the host listening on `socket`.
pub async fn call(socket: &Path, request: &HostRequest) -> std::io::Result<HostReply> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(stream.take(LINE_LIMIT))
            .read_line(&mut answer)
            .await?;
        serde_json::from_str(&answer).map_err(|err| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("volume host at {}: {err}", socket.display()),
            )
        })
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("volume host at {} did not answer", socket.display()),
            )
        })?
}

/// Reads one request from `stream` (bounded), or why it could not.
pub(crate) async fn read_request(
    stream: &mut tokio::net::UnixStream,
) -> Result<HostRequest, String> {
    let mut line = String::new();
    BufReader::new(stream.take(LINE_LIMIT))
        .read_line(&mut line)
        .await
        .map_err(|err| err.to_string())?;
    serde_json::from_str(&line).map_err(|err| format!("bad request: {err}"))
}

pub(crate) async fn write_reply(stream: &mut tokio::net::UnixStream, reply: &HostReply) {
    let mut line = serde_json::to_vec(reply).expect("a reply serialises");
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_keep_their_json_shape() {
        assert_eq!(
            serde_json::to_string(&HostRequest::Refresh).unwrap(),
            r#"{"op":"refresh"}"#
        );
        let reply: HostReply =
            serde_json::from_str(r#"{"answer":"refreshed","size_bytes":4096}"#).unwrap();
        assert_eq!(reply, HostReply::Refreshed { size_bytes: 4096 });
    }
}
