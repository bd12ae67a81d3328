//! A minimal QMP client: one connection per command (qemu's monitor serves one client at a
//! time, and a short-lived connection never blocks the next caller for long).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {0}: {1}")]
    Io(String, std::io::Error),
    #[error("QMP did not answer within {0:?}")]
    Timeout(Duration),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP error: {0}")]
    Command(String),
    #[error("QMP sent something that is not JSON: {0}")]
    Protocol(String),
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `command` and returns its `return` value. Events arriving meanwhile are skipped.
pub async fn execute(socket: &Path, command: &str) -> Result<Value, QmpError> {
    execute_with(socket, command, Value::Null).await
}

/// Runs `command` with `arguments` (an object, or Null for none).
pub async fn execute_with(socket: &Path, command: &str, arguments: Value) -> Result<Value, QmpError> {
    let run = async {
        let (ret, _) = execute_inner(socket, command, arguments, None).await?;
        Ok(ret)
    };
    tokio::time::timeout(TIMEOUT, run).await.map_err(|_| QmpError::Timeout(TIMEOUT))?
}

/// Runs `command`, then waits up to `wait` for the event `event` whose `data.device` is
/// `device` (device_del answers at once; the device is gone only when the guest let it go
/// and qemu says DEVICE_DELETED). Returns whether the event came.
pub async fn execute_and_wait_device_event(
    socket: &Path,
    command: &str,
    arguments: Value,
    event: &str,
    device: &str,
    wait: Duration,
) -> Result<bool, QmpError> {
    let run = execute_inner(socket, command, arguments, Some((event, device, wait)));
    let (_, seen) =
        tokio::time::timeout(TIMEOUT + wait, run).await.map_err(|_| QmpError::Timeout(TIMEOUT + wait))??;
    Ok(seen)
}

async fn execute_inner(
    socket: &Path,
    command: &str,
    arguments: Value,
    wait_for: Option<(&str, &str, Duration)>,
) -> Result<(Value, bool), QmpError> {
    let io = |e| QmpError::Io(socket.display().to_string(), e);
    let stream = UnixStream::connect(socket).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting: {"QMP": {...}}.
    let greeting = next_message(&mut lines).await.map_err(|e| match e {
        QmpError::Io(_, e) => io(e),
        other => other,
    })?;
    if greeting.get("QMP").is_none() {
        return Err(QmpError::Protocol(greeting.to_string()));
    }
    let is_event = |msg: &Value, event: &str, device: &str| {
        msg.get("event").and_then(Value::as_str) == Some(event)
            && msg.pointer("/data/device").and_then(Value::as_str) == Some(device)
    };
    for cmd in ["qmp_capabilities", command] {
        let mut request = json!({"execute": cmd});
        if cmd == command && !arguments.is_null() {
            request["arguments"] = arguments.clone();
        }
        let mut line = request.to_string();
        line.push('\n');
        write.write_all(line.as_bytes()).await.map_err(io)?;
        let mut seen = false;
        loop {
            let msg = next_message(&mut lines).await?;
            if let Some((event, device, _)) = wait_for {
                seen |= is_event(&msg, event, device);
            }
            if let Some(ret) = msg.get("return") {
                if cmd == command {
                    let Some((event, device, wait)) = wait_for else { return Ok((ret.clone(), false)) };
                    let deadline = tokio::time::Instant::now() + wait;
                    while !seen {
                        match tokio::time::timeout_at(deadline, next_message(&mut lines)).await {
                            Ok(msg) => seen = is_event(&msg?, event, device),
                            Err(_) => break,
                        }
                    }
                    return Ok((ret.clone(), seen));
                }
                break;
            }
            if let Some(err) = msg.get("error") {
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(QmpError::Command(desc.to_string()));
            }
            // Anything else is an asynchronous event.
        }
    }
    Err(QmpError::Closed)
}

async fn next_message(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Value, QmpError> {
    loop {
        let line = lines.next_line().await.map_err(|e| QmpError::Io("read".into(), e))?.ok_or(QmpError::Closed)?;
        if line.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line));
    }
}

/// `query-status`'s `status` field: "running", "paused", "shutdown", "guest-panicked", ...
pub async fn status(socket: &Path) -> Result<String, QmpError> {
    let ret = execute(socket, "query-status").await?;
    Ok(ret.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake qemu monitor: greeting, capabilities, an event, then the reply.
    #[tokio::test]
    async fn skips_events_and_returns_the_reply() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").await.unwrap();
            assert!(lines.next_line().await.unwrap().unwrap().contains("qmp_capabilities"));
            w.write_all(b"{\"return\": {}}\r\n").await.unwrap();
            assert!(lines.next_line().await.unwrap().unwrap().contains("query-status"));
            w.write_all(b"{\"event\": \"RESET\"}\r\n{\"return\": {\"status\": \"running\", \"running\": true}}\r\n")
                .await
                .unwrap();
        });
        assert_eq!(status(&sock).await.unwrap(), "running");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn reports_a_missing_socket() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(status(&t.path().join("none.sock")).await, Err(QmpError::Io(..))));
    }
}
