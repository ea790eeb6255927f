//! Reloads the configuration directory when its YAML files change.
//!
//! Editors and `kubectl cp`-style tools touch a file several times per save, so events are
//! debounced: a reload runs once the directory has been quiet for [`DEBOUNCE`]. A reload
//! that fails keeps the last good configuration and logs every error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{EventKind, MetadataKind, ModifyKind};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::Shared;

/// Quiet time after the last change before reloading.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);

/// A watch on the configuration directory, not yet running.
pub(crate) struct DirWatcher {
    // Dropping the watcher stops the notifications, so it lives as long as the task.
    watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
}

/// Whether an event may change what the loader reads. Reads (including the loader's own)
/// and access-time updates do not.
fn is_relevant(event: &Event) -> bool {
    let kind_matters = !matches!(
        event.kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))
    );
    kind_matters
        && (event.paths.is_empty()
            || event.paths.iter().any(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml"))
                })
            }))
}

impl DirWatcher {
    pub fn new(dir: &Path) -> notify::Result<Self> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // Fails only once the task has stopped; nothing is listening then.
            let _ = tx.send(event);
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self { watcher, events })
    }

    pub async fn run(mut self, shared: Arc<Shared>, shutdown: CancellationToken) {
        let _watcher = self.watcher;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = self.events.recv() => event,
            };
            match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "configuration watch error");
                    continue;
                }
                Some(Ok(event)) if !is_relevant(&event) => continue,
                Some(Ok(_)) => {}
            }
            // Debounce: wait until no event arrived for DEBOUNCE.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    more = tokio::time::timeout(DEBOUNCE, self.events.recv()) => match more {
                        Ok(Some(_)) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            let reload_shared = Arc::clone(&shared);
            let result = tokio::task::spawn_blocking(move || reload_shared.reload()).await;
            match result {
                Ok(Ok(())) => tracing::info!(
                    dir = %shared.config_dir().display(),
                    "configuration reloaded and pushed"
                ),
                Ok(Err(errors)) => {
                    for e in &errors {
                        tracing::warn!(error = %e, "configuration rejected; keeping the last good one");
                    }
                }
                Err(e) => tracing::error!(error = %e, "configuration reload panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, CreateKind, DataChange};

    #[test]
    fn relevance() {
        let ev = |kind, path: &str| Event::new(kind).add_path(path.into());
        assert!(is_relevant(&ev(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "/d/a.yaml"
        )));
        assert!(is_relevant(&ev(
            EventKind::Create(CreateKind::File),
            "/d/b.yml"
        )));
        assert!(!is_relevant(&ev(
            EventKind::Access(AccessKind::Any),
            "/d/a.yaml"
        )));
        assert!(!is_relevant(&ev(
            EventKind::Create(CreateKind::File),
            "/d/.a.yaml.swp"
        )));
        assert!(!is_relevant(&ev(
            EventKind::Create(CreateKind::File),
            "/d/notes.txt"
        )));
    }
}
