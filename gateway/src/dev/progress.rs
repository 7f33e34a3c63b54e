//! `syncgate dev`'s progress lines on stderr, each with the seconds since start.
//!
//! On a terminal a long stage (cluster start, demo load, gateway start, snapshot) shows as a spinner
//! line redrawn in place, with a status that can change (the snapshot's tables and rows); the stage's
//! final timed line replaces it. Elsewhere (CI, tests, a file) there are no escape codes: a stage prints
//! its start line and its final line, and status updates are up to the caller ([`Progress::terminal`]).
//! Every write holds one lock, so the spinner and the lines never interleave.

use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const REDRAW: Duration = Duration::from_millis(100);
/// Erases the current line and returns to its start.
const CLEAR_LINE: &str = "\r\x1b[2K";

#[derive(Clone)]
pub(super) struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    terminal: bool,
    /// The running stage's spinner text (terminal only), and the spinner frame to draw next.
    spinner: Mutex<Spinner>,
}

#[derive(Default)]
struct Spinner {
    status: Option<String>,
    frame: usize,
}

impl Progress {
    /// Progress on stderr; on a terminal, a task (aborted with the returned handle) redraws the spinner.
    pub(super) fn start() -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let progress = Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                terminal: std::io::stderr().is_terminal(),
                spinner: Mutex::new(Spinner::default()),
            }),
        };
        let redraw = progress.inner.terminal.then(|| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    progress.draw(&mut progress.lock());
                }
            })
        });
        (progress, redraw)
    }

    /// Whether stderr is a terminal (spinners) or not (plain lines only).
    pub(super) fn terminal(&self) -> bool {
        self.inner.terminal
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// A timed line, above the spinner if one runs.
    pub(super) fn step(&self, message: impl std::fmt::Display) {
        let spinner = self.lock();
        let clear = if spinner.status.is_some() { CLEAR_LINE } else { "" };
        eprintln!("{clear}{} {message}", self.stamp());
    }

    /// A long stage begins: a spinner on a terminal, its timed line elsewhere. [`Self::finish`] ends it.
    pub(super) fn stage(&self, message: impl std::fmt::Display) {
        if self.inner.terminal {
            self.status(message);
        } else {
            self.step(message);
        }
    }

    /// The running stage's spinner text (a no-op when stderr is not a terminal).
    pub(super) fn status(&self, message: impl std::fmt::Display) {
        if self.inner.terminal {
            let mut spinner = self.lock();
            spinner.status = Some(message.to_string());
            self.draw(&mut spinner);
        }
    }

    /// Ends the running stage (if any) with its timed line.
    pub(super) fn finish(&self, message: impl std::fmt::Display) {
        let mut spinner = self.lock();
        let clear = if spinner.status.take().is_some() {
            CLEAR_LINE
        } else {
            ""
        };
        eprintln!("{clear}{} {message}", self.stamp());
    }

    /// Ends the running stage (if any) without a line: its spinner is erased.
    pub(super) fn finish_quietly(&self) {
        if self.lock().status.take().is_some() {
            eprint!("{CLEAR_LINE}");
        }
    }

    fn draw(&self, spinner: &mut Spinner) {
        if let Some(status) = &spinner.status {
            let frame = FRAMES[spinner.frame % FRAMES.len()];
            spinner.frame += 1;
            let mut stderr = std::io::stderr().lock();
            // Progress output only: a failed write to stderr has nowhere better to go.
            let _ = write!(stderr, "{CLEAR_LINE}{} {frame} {status}", self.stamp());
            let _ = stderr.flush();
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>5.1}s]", self.elapsed().as_secs_f64())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spinner> {
        // A panic while printing leaves nothing inconsistent behind: keep going.
        self.inner
            .spinner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
