//! `ssmlab train` as a child process: the one way `compare --preset-pair` and `sweep` start
//! runs side by side, each with its share of the cores.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use anyhow::Context;

/// Lines of a child's stderr kept for its failure message.
const TAIL_LINES: usize = 5;

/// A running `ssmlab --threads T train …`.
pub(crate) struct TrainChild {
    pub label: String,
    child: Child,
    tail: Option<JoinHandle<Vec<String>>>,
}

impl TrainChild {
    /// Starts `ssmlab --threads {threads} train {args}`, stdout discarded. With `keep_stderr`,
    /// its stderr is drained (so it never blocks) and its last lines kept; else discarded.
    pub fn spawn(
        label: &str,
        threads: usize,
        args: &[String],
        keep_stderr: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the ssmlab executable")?;
        let mut cmd = Command::new(&exe);
        cmd.args(["--threads", &threads.to_string(), "train"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if keep_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let tail = child.stderr.take().map(|e| {
            std::thread::spawn(move || {
                let mut last: Vec<String> = Vec::new();
                for line in BufReader::new(e).lines().map_while(Result::ok) {
                    last.push(crate::text::sanitize(&line).into_owned());
                    if last.len() > TAIL_LINES {
                        last.remove(0);
                    }
                }
                last
            })
        });
        Ok(Self {
            label: label.into(),
            child,
            tail,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// Asks it to checkpoint and stop (SIGTERM, as `kill` would).
    pub fn terminate(&self) {
        crate::runs::os::signal(self.child.id(), libc::SIGTERM);
    }

    /// The last lines of its stderr, once it has exited.
    pub fn last_lines(self) -> Vec<String> {
        self.tail
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}
