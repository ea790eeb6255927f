//! `palisade ca rotate`: flags in, progress out (a bar in a terminal, one line per change
//! otherwise); the rotation itself is `palisade_control_plane::rotate`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use palisade_certs::{CaState, TrustDomain};
use palisade_control_plane::rotate::{self, Progress, RotateOptions};

use super::ca::RotateArgs;

/// Time between status checks of the control planes.
const POLL: Duration = Duration::from_millis(500);

/// Runs `ca rotate`.
pub fn run(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    if args.status {
        let state = CaState::read_dir(&args.dir)?;
        match state.rotation()? {
            Some(record) => println!("{}: {}", args.dir.display(), rotate::describe(&record)),
            None => println!("{}: no rotation in progress", args.dir.display()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.abort {
        let state = CaState::read_dir(&args.dir)?;
        let changes = state.abort()?;
        palisade_certs::rotation::apply_to_dir(&args.dir, &changes)?;
        println!(
            "rotation abandoned; the control planes drop the new root at their next read of {}",
            args.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let options = RotateOptions {
        dir: args.dir.clone(),
        new: args.new.clone(),
        control_planes: args.control_plane.clone(),
        trust_domain: td,
        stage_timeout: Duration::from_secs(args.stage_timeout_seconds),
        poll: POLL,
        force: args.force,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let mut view = View::new(std::io::stderr().is_terminal());
    runtime.block_on(rotate::rotate(&options, |p| view.show(p)))?;
    Ok(ExitCode::SUCCESS)
}

/// Renders progress: a bar per stage in a terminal, plain lines otherwise (logs, CI).
struct View {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl View {
    fn new(terminal: bool) -> Self {
        Self {
            bar: None,
            terminal,
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn show(&mut self, progress: Progress) {
        match progress {
            Progress::Began(record) => {
                self.line(format!("rotation begun: {}", rotate::describe(&record)))
            }
            Progress::Resumed(record) => {
                self.line(format!("resuming rotation: {}", rotate::describe(&record)))
            }
            Progress::Entered(stage) => {
                self.finish_bar();
                self.line(format!("stage {}/3: {}", stage.number(), stage.describe()));
                if self.terminal {
                    let bar = ProgressBar::new(0);
                    if let Ok(style) =
                        ProgressStyle::with_template("  [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                    {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.enable_steady_tick(Duration::from_millis(200));
                    self.bar = Some(bar);
                }
            }
            Progress::Waiting {
                done,
                total,
                what,
                blocked,
                ..
            } => match &self.bar {
                Some(bar) => {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message(match &blocked {
                        Some(why) => format!("waiting: {why}"),
                        None => what.to_owned(),
                    });
                }
                None => self.line(match blocked {
                    Some(why) => format!("  waiting: {why}"),
                    None => format!("  {done}/{total} {what}"),
                }),
            },
            Progress::Completed(stage) => {
                self.finish_bar();
                self.line(format!("stage {}/3 done", stage.number()));
            }
            Progress::Forced(names) => self.line(format!(
                "warning: --force: removing the old root while {} workload(s) still hold \
                 certificates chaining to it; their connections fail until they renew: {}",
                names.len(),
                names.join(", ")
            )),
            Progress::Finished => {
                self.finish_bar();
                self.line(
                    "rotation complete: every connected proxy trusts only the new root and \
                     serves a certificate from the new CA"
                        .to_owned(),
                );
            }
        }
    }
}
