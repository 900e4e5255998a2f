//! What can go wrong while running flows.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{op}: {message}")]
    Input { op: String, message: String },
    #[error("flow `{0}` is not loaded")]
    UnknownFlow(String),
    #[error("flow `{flow}`: {message}")]
    Flow { flow: String, message: String },
    #[error("flow `{flow}`: rendering {what}: {source}")]
    Render {
        flow: String,
        what: String,
        #[source]
        source: Box<flow::RenderError>,
    },
    #[error("flow `{flow}`: polling {op}: {source}")]
    Poll {
        flow: String,
        op: String,
        #[source]
        source: Box<ghl::Error>,
    },
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("run {0} not found")]
    UnknownRun(store::RunId),
    /// The run is not dead (or in doubt, when that was not allowed): nothing was changed.
    #[error("{0}")]
    NotReplayable(String),
    #[error("background task failed: {0}")]
    Join(String),
}

impl EngineError {
    /// How long until the location's daily budget renews, when a poll failed for that.
    pub fn budget_spent(&self) -> Option<std::time::Duration> {
        match self {
            EngineError::Poll { source, .. } => source.budget_spent(),
            _ => None,
        }
    }
}
