//! Live progress for the commands that wait (`roam deploy --wait`,
//! `roam drain`, `roam migrate`), on standard error: on a terminal an
//! indicatif bar or spinner redrawn in place; otherwise (a log, a CI job)
//! one line each time what it shows changes.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar (with a length) or a spinner, and what was last printed when
/// standard error is not a terminal.
pub(super) struct Progress {
    bar: ProgressBar,
    prefix: String,
    length: Option<u64>,
    tty: bool,
    last: String,
}

impl Progress {
    /// A bar of `length` steps, named `prefix`.
    pub(super) fn bar(prefix: &str, length: u64) -> Progress {
        let bar = ProgressBar::new(length).with_prefix(prefix.to_string());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Progress::new(bar, prefix, Some(length))
    }

    /// A spinner, named `prefix`.
    pub(super) fn spinner(prefix: &str) -> Progress {
        let bar = ProgressBar::new_spinner().with_prefix(prefix.to_string());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Progress::new(bar, prefix, None)
    }

    fn new(bar: ProgressBar, prefix: &str, length: Option<u64>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        if tty {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Progress {
            bar,
            prefix: prefix.to_string(),
            length,
            tty,
            last: String::new(),
        }
    }

    /// Show `position` steps done (bars) and `message`.
    pub(super) fn show(&mut self, position: u64, message: String) {
        if self.tty {
            self.bar.set_position(position);
            self.bar.set_message(message);
            return;
        }
        let line = match self.length {
            Some(length) => format!("{} {position}/{length} {message}", self.prefix),
            None => format!("{} {message}", self.prefix),
        };
        let line = line.trim_end().to_string();
        if line != self.last {
            eprintln!("{line}");
            self.last = line;
        }
    }

    /// Done: the bar stays with `message`.
    pub(super) fn finish(mut self, position: u64, message: String) {
        if self.tty {
            self.bar.set_position(position);
            self.bar.finish_with_message(message);
        } else {
            self.show(position, message);
        }
    }
}
