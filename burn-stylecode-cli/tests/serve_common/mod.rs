//! A real `stylecode serve` on an ephemeral loopback port, over the tiny
//! fixture weights, and a small HTTP client for it.
#![allow(dead_code)] // each test file uses its own part

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use burn_stylecode_tests::fixtures;

pub fn weights() -> String {
    burn_stylecode_tests::weights().root().display().to_string()
}

/// The server process; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub outputs: PathBuf,
    pub token: Option<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `stylecode serve --bind 127.0.0.1:0` on the tiny weights, with `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_on(&weights(), extra)
    }

    /// The same on another weights folder.
    pub fn start_on(weights: &str, extra: &[&str]) -> Server {
        Self::start_with_env(weights, extra, &[])
    }

    /// The same with environment variables set for the server.
    pub fn start_with_env(weights: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let outputs = dir.path().join("outputs");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stylecode"))
            .args(["serve", "--bind", "127.0.0.1:0", "--weights", weights, "--outputs"])
            .arg(&outputs)
            .args(extra)
            .env_remove("STYLECODE_WEIGHTS")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starts");
        // The first line names the address (the port is the kernel's choice).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("stylecode serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .split('/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/");
        let token = extra.iter().position(|a| *a == "--token").map(|i| extra[i + 1].to_string());
        Server { child, base, outputs, token, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn agent() -> ureq::Agent {
        // Every wait is bounded.
        ureq::AgentBuilder::new().timeout(Duration::from_secs(120)).build()
    }

    fn with_token(&self, request: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(self.with_token(Self::agent().get(&self.url(path))).call())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        let request = self.with_token(Self::agent().post(&self.url(path))).set("Content-Type", "application/json");
        Reply::from(request.send_string(&body.to_string()))
    }

    /// A multipart form of `image` fields, each (file name, bytes).
    pub fn post_images(&self, path: &str, files: &[(&str, &[u8])]) -> Reply {
        let boundary = "stylecode-test-boundary-7f3a";
        let mut body = Vec::new();
        for (name, bytes) in files {
            body.extend(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend(*bytes);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").as_bytes());
        let request = self
            .with_token(Self::agent().post(&self.url(path)))
            .set("Content-Type", &format!("multipart/form-data; boundary={boundary}"));
        Reply::from(request.send_bytes(&body))
    }

    /// A multipart upload over raw TCP whose body goes out from another
    /// thread: a server that refuses it by its length answers (and closes)
    /// before the body is sent, which an HTTP client writing first would
    /// see as a broken pipe. Returns (status, body).
    pub fn post_oversized(&self, path: &str, name: &str, size: usize) -> (u16, String) {
        use std::io::Write;
        let address = self.base.trim_start_matches("http://").to_string();
        let boundary = "stylecodeoversized";
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() + size + tail.len();
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&vec![0u8; size]);
            let _ = writer.write_all(tail.as_bytes());
        });
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = sender.join();
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    /// A job's server-sent events, (name, data), up to its last one.
    pub fn events(&self, job: u64) -> Vec<(String, Value)> {
        let response =
            self.with_token(Self::agent().get(&self.url(&format!("/api/jobs/{job}/events")))).call().unwrap();
        assert_eq!(response.content_type(), "text/event-stream");
        let mut events = Vec::new();
        let mut name = String::new();
        for line in BufReader::new(response.into_reader()).lines() {
            let line = line.unwrap();
            if let Some(value) = line.strip_prefix("event: ") {
                name = value.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                events.push((std::mem::take(&mut name), serde_json::from_str(data).unwrap()));
                if matches!(events.last().unwrap().0.as_str(), "done" | "error" | "cancelled") {
                    break;
                }
            }
        }
        events
    }

    /// Waits (bounded) until the job's state is `state`.
    pub fn wait_for_state(&self, job: u64, state: &str) {
        for _ in 0..600 {
            if self.get(&format!("/api/jobs/{job}")).json["state"] == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("job {job} never reached `{state}`: {:?}", self.get(&format!("/api/jobs/{job}")).json);
    }

    /// Submits a generation and returns its job id.
    pub fn submit(&self, body: &Value) -> u64 {
        let reply = self.post_json("/api/generate", body);
        assert_eq!(reply.status, 202, "{:?}", reply.json);
        reply.json["job"].as_u64().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, JSON (or Null), raw bytes and a header.
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub retry_after: Option<String>,
}

impl From<Result<ureq::Response, ureq::Error>> for Reply {
    fn from(result: Result<ureq::Response, ureq::Error>) -> Self {
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("request failed: {error}"),
        };
        let status = response.status();
        let content_type = response.content_type().to_string();
        let retry_after = response.header("Retry-After").map(str::to_string);
        let mut bytes = Vec::new();
        response.into_reader().read_to_end(&mut bytes).unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, json, bytes, content_type, retry_after }
    }
}

impl Reply {
    /// An error reply: its status and `{"error": message}`.
    pub fn error(&self) -> (u16, &str) {
        assert!(self.content_type == "application/json", "error replies are JSON: {}", self.content_type);
        (self.status, self.json["error"].as_str().unwrap_or_else(|| panic!("no error in {:?}", self.json)))
    }
}

/// Runs the `stylecode` CLI; returns (success, stdout, stderr).
pub fn stylecode(args: &[&str]) -> (bool, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_stylecode")).args(args).env_remove("STYLECODE_WEIGHTS").output().unwrap();
    (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap()
}

pub fn png_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}
