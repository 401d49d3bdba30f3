//! `hafill sim hostile`: a peer that speaks the protocol and lies, to show
//! that a receiver refuses its bytes, cuts it off, and keeps backfilling
//! from the honest peers. Its coverage is honest (what its store holds);
//! every segment it serves carries the chosen [`Lie`].

use std::sync::Arc;

use crate::backfill::BackfillError;
use crate::config::Config;
use crate::identity;
use crate::transfer::server::{self, Lie, ServerState};

/// Serves `config`'s store with `lie` until `shutdown` resolves.
pub async fn serve(
    config: Arc<Config>,
    lie: Lie,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BackfillError> {
    let me = identity::load(&config.cert, &config.key)?;
    let recorder = crate::store::open_recorder(&config, false)?;
    let (endpoint, peers) = crate::transfer::server_endpoint(&config, &me)?;
    tracing::warn!(name = %config.name, listen = %config.listen, ?lie, "serving as a HOSTILE peer (sim hostile): every segment served is a lie");
    let mut state = ServerState::new(config, recorder, peers);
    state.lie = Some(lie);
    let ep = endpoint.clone();
    tokio::select! {
        _ = server::run(endpoint, Arc::new(state)) => {}
        _ = shutdown => ep.close(0u32.into(), b"shutting down"),
    }
    Ok(())
}
