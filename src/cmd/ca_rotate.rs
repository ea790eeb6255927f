//! `palisade ca rotate`: flags in, progress out (a bar in a terminal, one line per change
//! otherwise); the rotation itself is `palisade_control_plane::rotate`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use palisade_certs::TrustDomain;
use palisade_control_plane::k8s::ca_secret::CaSecret;
use palisade_control_plane::rotate::{self, CaStore, Progress, RotateOptions};

use super::ca::RotateArgs;

/// Time between status checks of the control planes.
const POLL: Duration = Duration::from_millis(500);

/// Runs `ca rotate`.
pub fn run(args: RotateArgs) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::new(&args.trust_domain)
        .with_context(|| format!("--trust-domain {:?}", args.trust_domain))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let store = store(&args).await?;
        if args.status {
            let state = store.read().await?;
            match state.rotation()? {
                Some(record) => println!("{}: {}", store.describe(), rotate::describe(&record)),
                None => println!("{}: no rotation in progress", store.describe()),
            }
            return Ok(ExitCode::SUCCESS);
        }
        if args.abort {
            let changes = store.read().await?.abort()?;
            store.apply(&changes).await?;
            println!(
                "rotation abandoned; the control planes drop the new root at their next read of {}",
                store.describe()
            );
            return Ok(ExitCode::SUCCESS);
        }
        let options = RotateOptions {
            store,
            new: args.new.clone(),
            control_planes: args.control_plane.clone(),
            trust_domain: td,
            stage_timeout: Duration::from_secs(args.stage_timeout_seconds),
            poll: POLL,
            force: args.force,
        };
        let mut view = View::new(std::io::stderr().is_terminal());
        rotate::rotate(&options, |p| view.show(p)).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The CA directory, or the cluster's CA Secret.
async fn store(args: &RotateArgs) -> anyhow::Result<CaStore> {
    if let Some(dir) = &args.dir {
        return Ok(CaStore::Dir(dir.clone()));
    }
    let (namespace, name) = args
        .secret
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .with_context(|| format!("--secret {:?}: expected NAMESPACE/NAME", args.secret))?;
    Ok(CaStore::Secret(Box::new(
        CaSecret::infer(namespace, name)
            .await
            .context("--kubernetes")?,
    )))
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
