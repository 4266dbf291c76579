//! A client program as a child process (or an in-process client as a task
//! that prints the same lines), and what it prints.

use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::common::WAIT;

/// One message as a client printed it: `MSG <topic> <qos> <retain> <payload>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

impl Received {
    pub fn new(topic: &str, qos: u8, retain: bool, payload: &str) -> Received {
        Received {
            topic: topic.to_string(),
            qos,
            retain,
            payload: payload.to_string(),
        }
    }

    pub fn parse(line: &str) -> Option<Received> {
        let rest = line.strip_prefix("MSG ")?;
        let mut fields = rest.splitn(4, ' ');
        let topic = fields.next()?.to_string();
        let qos = fields.next()?.parse().ok()?;
        let retain = match fields.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let payload = fields.next().unwrap_or("").to_string();
        Some(Received {
            topic,
            qos,
            retain,
            payload,
        })
    }
}

/// A child process whose stdout is read line by line, or a task that sends
/// such lines. Either is killed if the test ends (or panics) first.
pub struct Proc {
    name: String,
    runner: Runner,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    /// Lines before this index have been consumed by `wait_for`.
    event_cursor: usize,
    /// Lines before this index have been consumed as messages.
    message_cursor: usize,
    stderr: Arc<Mutex<String>>,
}

enum Runner {
    Process(Child),
    /// An in-process client; its error, if any, is also in `stderr`.
    Task {
        task: JoinHandle<Result<(), String>>,
        freeze: watch::Sender<bool>,
    },
}

/// Where an in-process client prints its lines.
pub type Lines = mpsc::Sender<String>;

/// Turns true when an in-process client is to freeze (see `Proc::freeze`).
pub type Frozen = watch::Receiver<bool>;

/// What waiting for the next line found.
pub enum Read {
    /// A line, now the last of `lines()`.
    Line,
    /// The client has ended and printed everything.
    Eof,
    Timeout,
}

impl Proc {
    pub fn spawn(name: String, mut cmd: Command, stdin: Option<String>) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));

        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.strip_suffix('\n').unwrap_or(&line).to_string();
                        if tx.send(line).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                let text = String::from_utf8_lossy(&chunk[..n]);
                sink.lock().expect("stderr buffer").push_str(&text);
            }
        });

        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            tokio::spawn(async move {
                // A write error shows up as the child's own failure.
                let _ = pipe.write_all(input.as_bytes()).await;
            });
        }

        Proc {
            name,
            runner: Runner::Process(child),
            lines,
            stdout: Vec::new(),
            event_cursor: 0,
            message_cursor: 0,
            stderr,
        }
    }

    /// Runs `client` as a task that prints lines to the `Lines` it is given,
    /// like a child process to its stdout, and stops when its `Frozen`
    /// turns true. An `Err` it returns counts as a failed exit and goes to
    /// the report as stderr. Dropping (or killing) the `Proc` aborts the
    /// task, dropping whatever connection it holds.
    pub fn spawn_task<F>(name: String, client: impl FnOnce(Lines, Frozen) -> F) -> Proc
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (tx, lines) = mpsc::channel(1024);
        let (freeze, frozen) = watch::channel(false);
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        // The clone kept here holds the stream open until the error is
        // recorded, so a reader that sees the end also sees the reason.
        let keep_open = tx.clone();
        let body = client(tx, frozen);
        let task = tokio::spawn(async move {
            let result = body.await;
            if let Err(error) = &result {
                sink.lock().expect("stderr buffer").push_str(error);
            }
            drop(keep_open);
            result
        });
        Proc {
            name,
            runner: Runner::Task { task, freeze },
            lines,
            stdout: Vec::new(),
            event_cursor: 0,
            message_cursor: 0,
            stderr,
        }
    }

    /// Waits for the next line the client prints. Cancel-safe.
    pub async fn read_line(&mut self, deadline: Instant) -> Read {
        match timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.stdout.push(line);
                Read::Line
            }
            Ok(None) => Read::Eof,
            Err(_) => Read::Timeout,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every line read from the client so far.
    pub fn lines(&self) -> &[String] {
        &self.stdout
    }

    /// Everything known about the process, for failure messages.
    pub fn report(&mut self) -> String {
        let status = match &mut self.runner {
            Runner::Process(child) => match child.try_wait() {
                Ok(Some(status)) => format!("exited with {status}"),
                Ok(None) => "still running".to_string(),
                Err(e) => format!("status unknown: {e}"),
            },
            Runner::Task { task, .. } if task.is_finished() => "task ended".to_string(),
            Runner::Task { .. } => "task still running".to_string(),
        };
        format!(
            "--- {} ({status}); stdout:\n{}\n--- stderr:\n{}",
            self.name,
            self.stdout.join("\n"),
            self.stderr.lock().expect("stderr buffer")
        )
    }

    /// The next line (after earlier ones found this way) matching `pred`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.stdout[self.event_cursor..]
                .iter()
                .position(|l| pred(l))
            {
                let index = self.event_cursor + i;
                self.event_cursor = index + 1;
                return self.stdout[index].clone();
            }
            match self.read_line(deadline).await {
                Read::Line => {}
                Read::Eof => {
                    let report = self.report();
                    panic!("{} ended before {what}\n{report}", self.name)
                }
                Read::Timeout => {
                    let report = self.report();
                    panic!(
                        "timed out after {WAIT:?} waiting for {what} from {}\n{report}",
                        self.name
                    )
                }
            }
        }
    }

    /// The next message, or `None` once `deadline` passes. Cancel-safe.
    pub async fn next_message_before(&mut self, deadline: Instant) -> Option<Received> {
        loop {
            while self.message_cursor < self.stdout.len() {
                let line = &self.stdout[self.message_cursor];
                self.message_cursor += 1;
                if let Some(message) = Received::parse(line) {
                    return Some(message);
                }
            }
            match self.read_line(deadline).await {
                Read::Line => {}
                Read::Eof => {
                    let report = self.report();
                    panic!("{} ended while a message was awaited\n{report}", self.name)
                }
                Read::Timeout => return None,
            }
        }
    }

    pub async fn next_message(&mut self, what: &str) -> Received {
        self.messages(1, what).await.remove(0)
    }

    /// The next `n` messages, all within one `WAIT`.
    pub async fn messages(&mut self, n: usize, what: &str) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_message_before(deadline).await {
                Some(message) => got.push(message),
                None => {
                    let report = self.report();
                    panic!(
                        "timed out after {WAIT:?} waiting for {what} at {}: got {} of {n}: \
                         {got:#?}\n{report}",
                        self.name,
                        got.len(),
                    )
                }
            }
        }
        got
    }

    /// Waits for the process to exit successfully; returns its stdout lines.
    pub async fn finish(mut self) -> Vec<String> {
        self.wait_for_exit().await;
        std::mem::take(&mut self.stdout)
    }

    /// Reads what the client still prints and waits for it to exit
    /// successfully.
    pub async fn wait_for_exit(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read_line(deadline).await {
                Read::Line => {}
                Read::Eof => break,
                Read::Timeout => {
                    let report = self.report();
                    panic!("{} did not finish within {WAIT:?}\n{report}", self.name)
                }
            }
        }
        let failure = match &mut self.runner {
            Runner::Process(child) => match timeout_at(deadline, child.wait()).await {
                Ok(Ok(status)) if status.success() => None,
                Ok(Ok(status)) => Some(format!("failed: {status}")),
                Ok(Err(e)) => panic!("cannot wait for {}: {e}", self.name),
                Err(_) => Some(format!("did not exit within {WAIT:?}")),
            },
            Runner::Task { task, .. } => match timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(error))) => Some(format!("failed: {error}")),
                Ok(Err(e)) => Some(format!("task failed: {e}")),
                Err(_) => Some(format!("did not end within {WAIT:?}")),
            },
        };
        if let Some(failure) = failure {
            let report = self.report();
            panic!("{} {failure}\n{report}", self.name)
        }
    }

    /// SIGSTOP, or telling the task to stop: the client hangs as a stuck
    /// process does. Its connection stays open, but it prints and
    /// acknowledges nothing more. `kill` still ends it.
    pub fn freeze(&mut self) {
        match &mut self.runner {
            Runner::Process(child) => {
                let pid = child
                    .id()
                    .unwrap_or_else(|| panic!("{} has already exited", self.name));
                let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
                // SAFETY: kill(2) only sends a signal; `pid` is our own
                // child, which has not been reaped (`id()` says so).
                if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
                    let error = std::io::Error::last_os_error();
                    panic!("cannot stop {}: {error}", self.name);
                }
                // Returns once it has stopped, so it handles nothing the
                // test does next. Only WUNTRACED reports a stop, so tokio's
                // own reaping of the child never sees this one.
                loop {
                    let mut status = 0;
                    // SAFETY: waitpid(2) writes to `status` alone.
                    let waited = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
                    if waited == pid && libc::WIFSTOPPED(status) {
                        break;
                    }
                    let error = std::io::Error::last_os_error();
                    if waited == -1 && error.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    panic!("{} did not stop (status {status}): {error}", self.name);
                }
            }
            Runner::Task { freeze, .. } => {
                // An error means the task has ended: nothing left to stop.
                let _ = freeze.send(true);
            }
        }
    }

    /// SIGKILL, or aborting the task: the client gets no chance to send
    /// DISCONNECT, and its socket is closed as by a crash.
    pub async fn kill(&mut self) {
        match &mut self.runner {
            Runner::Process(child) => {
                if let Err(e) = child.kill().await {
                    panic!("cannot kill {}: {e}", self.name);
                }
            }
            Runner::Task { task, .. } => {
                task.abort();
                // Cancelled (or already ended): either way the task and the
                // connection it owned are gone once this returns.
                let _ = task.await;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A child process is killed by `kill_on_drop`; a task needs this.
        if let Runner::Task { task, .. } = &self.runner {
            task.abort();
        }
    }
}
