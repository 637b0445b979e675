//! Running external programs: argv only (never a shell), `LC_ALL=C`, a timeout, and the
//! child killed if the caller goes away.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use super::{Error, Result, render_argv};

/// One program invocation.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// A program name looked up in `PATH` (`lvs`, `mount`), or an absolute path (the
    /// demo's `iolane bench` children run `std::env::current_exe()`).
    pub program: Cow<'static, str>,
    pub args: Vec<OsString>,
    pub timeout: Duration,
}

impl Cmd {
    pub fn new(program: &'static str, timeout: Duration) -> Self {
        Cmd {
            program: Cow::Borrowed(program),
            args: Vec::new(),
            timeout,
        }
    }

    /// A command whose program is only known at run time (an absolute path).
    pub fn program_path(program: String, timeout: Duration) -> Self {
        Cmd {
            program: Cow::Owned(program),
            args: Vec::new(),
            timeout,
        }
    }

    #[must_use]
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// The argv as one line, for messages.
    pub fn render(&self) -> String {
        render_argv(&self.program, &self.args)
    }
}

/// What a finished program left behind.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code, `None` if killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Turns a non-zero exit into an error carrying argv, status and both streams.
    pub fn into_error(self, cmd: &Cmd) -> Error {
        Error::CommandFailed {
            argv: cmd.render(),
            status: match self.status {
                Some(c) => format!("status {c}"),
                None => "a signal".to_owned(),
            },
            stdout: self.stdout,
            stderr: self.stderr.trim().to_owned(),
        }
    }
}

/// Boxed future returned by [`CommandRunner::run`].
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Output>> + Send + 'a>>;

/// Runs commands. The real one spawns processes; tests use [`RecordingRunner`].
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Runs `cmd` to completion (or its timeout) and returns its output, whatever the exit.
    fn run<'a>(&'a self, cmd: &'a Cmd) -> RunFuture<'a>;
}

/// Spawns real processes with tokio.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> RunFuture<'a> {
        Box::pin(async move {
            let argv = cmd.render();
            tracing::debug!(%argv, "running");
            // The one place a process is spawned.
            #[allow(clippy::disallowed_methods)]
            let child = tokio::process::Command::new(cmd.program.as_ref())
                .args(&cmd.args)
                .env("LC_ALL", "C")
                // LVM closes the inherited descriptor of the instance lock
                // (`os::instance_lock`); without this it also warns about it on stderr.
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| Error::Spawn {
                    argv: argv.clone(),
                    source,
                })?;
            let out = match tokio::time::timeout(cmd.timeout, child.wait_with_output()).await {
                Ok(res) => res.map_err(|source| Error::Spawn {
                    argv: argv.clone(),
                    source,
                })?,
                Err(_) => {
                    return Err(Error::Timeout {
                        argv,
                        secs: cmd.timeout.as_secs(),
                    });
                }
            };
            let output = Output {
                status: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            tracing::debug!(%argv, status = ?output.status, stderr = %output.stderr.trim(), "finished");
            Ok(output)
        })
    }
}

/// A fake runner for unit tests: records every argv and answers from a script.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<String>>,
    answers: Mutex<Vec<(String, Output)>>,
}

impl RecordingRunner {
    /// Answers the first call whose argv starts with `prefix` with `output` (once).
    pub fn answer(&self, prefix: &str, output: Output) {
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((prefix.to_owned(), output));
    }

    /// Every argv run so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl CommandRunner for RecordingRunner {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> RunFuture<'a> {
        let argv = cmd.render();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(argv.clone());
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = match answers
            .iter()
            .position(|(p, _)| argv.starts_with(p.as_str()))
        {
            Some(i) => answers.remove(i).1,
            None => Output {
                status: Some(0),
                ..Output::default()
            },
        };
        Box::pin(async move { Ok(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_runner_reports_status_and_streams() {
        let r = SystemRunner;
        let ok = r
            .run(
                &Cmd::new("sh", Duration::from_secs(5))
                    .arg("-c")
                    .arg("echo out; echo err >&2; exit 3"),
            )
            .await
            .unwrap();
        assert_eq!(ok.status, Some(3));
        assert_eq!(ok.stdout, "out\n");
        assert_eq!(ok.stderr, "err\n");
    }

    #[tokio::test]
    async fn real_runner_kills_on_timeout() {
        let r = SystemRunner;
        let err = r
            .run(&Cmd::new("sleep", Duration::from_millis(100)).arg("30"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn runs_under_c_locale() {
        let out = SystemRunner
            .run(
                &Cmd::new("sh", Duration::from_secs(5))
                    .arg("-c")
                    .arg("echo $LC_ALL"),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, "C\n");
    }
}
