//! Child processes in tests (the binary under test, in its roles): each one's stdout and
//! stderr kept in a log file of its own, a wait for the line that says it is ready, signals,
//! and a kill when the test ends, whatever happens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running child process, killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// `program ARGS` run in `dir` with an environment of its own: only PATH, RUST_LOG=info and
/// `env`, so nothing from the developer's shell (a DATABASE_URL, a .env) leaks into a test.
pub fn isolated_command(
    program: &str,
    dir: &Path,
    args: &[&str],
    env: &[(&str, String)],
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr written to `DIR/NAME.log`.
    pub fn spawn(name: &str, dir: &Path, mut command: Command) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("the process's log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file, again"))
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("{name} does not start: {err}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log has a line containing `marker` (the line a role logs once it is
    /// ready) and returns the first word after the marker (e.g. the address it listens on).
    /// Panics with the log when the process exits first or `limit` passes.
    pub fn wait_for_line(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if let Some(rest) = log.lines().find_map(|line| line.split(marker).nth(1)) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging {marker:?}:\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {marker:?} within {limit:?}:\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`-TERM`, `-KILL`, …) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// Waits for it to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
