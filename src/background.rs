//! Tasks that live as long as the gateway. Whichever layer starts one (the caches listening to
//! other replicas, for instance) hands back its [`Background`]; the gateway holds them all and
//! dropping it ends them, so no task outlives the gateway that started it (tests start dozens
//! of gateways in one process).

/// Aborts its tasks when dropped.
#[derive(Debug, Default)]
#[must_use = "the tasks end when this is dropped"]
pub struct Background(Vec<tokio::task::AbortHandle>);

impl Background {
    /// Ties `task` to this handle's life.
    pub fn hold(&mut self, task: &tokio::task::JoinHandle<()>) {
        self.0.push(task.abort_handle());
    }

    /// One handle for the tasks of both.
    pub fn merge(&mut self, mut other: Background) {
        self.0.append(&mut other.0);
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_the_handle_ends_its_tasks() {
        let (alive, mut ended) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        let mut background = Background::default();
        background.hold(&task);
        let mut other = Background::default();
        other.merge(background);
        assert!(ended.try_recv().is_err(), "still running");
        drop(other);
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert!(ended.await.is_err(), "the task's state was dropped");
    }
}
