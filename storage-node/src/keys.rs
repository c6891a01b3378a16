//! Data keys of the encrypted volumes this node presents, in memory only:
//! the registry hands one over (node control RPC) when a user attaches with
//! their key, and it is gone when the process exits — a restarted node
//! presents an encrypted volume again only once the user attaches again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use volume_crypto::SectorCipher;

/// A volume whose key just arrived, and who waits for it to be acted on.
pub type KeyLoaded = (String, oneshot::Sender<()>);

#[derive(Default)]
pub struct KeyRing {
    ciphers: RwLock<HashMap<String, Arc<SectorCipher>>>,
    /// Told of every key that arrives (the agent presents what waited for it).
    on_load: Mutex<Option<mpsc::UnboundedSender<KeyLoaded>>>,
}

impl KeyRing {
    /// Where to report arriving keys.
    pub fn on_load(&self, sender: mpsc::UnboundedSender<KeyLoaded>) {
        *self.on_load.lock().unwrap() = Some(sender);
    }

    /// Takes a volume's key, and returns once whatever waited for it (an
    /// attachment refused after a restart) has been acted on, so a caller
    /// that reads the node's status next sees the result.
    pub async fn insert(&self, volume: &str, cipher: SectorCipher) {
        self.ciphers
            .write()
            .unwrap()
            .insert(volume.to_string(), Arc::new(cipher));
        let sender = self.on_load.lock().unwrap().clone();
        if let Some(sender) = sender {
            let (done, acted) = oneshot::channel();
            if sender.send((volume.to_string(), done)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), acted).await;
            }
        }
    }

    pub fn get(&self, volume: &str) -> Option<Arc<SectorCipher>> {
        self.ciphers.read().unwrap().get(volume).cloned()
    }

    pub fn remove(&self, volume: &str) -> bool {
        self.ciphers.write().unwrap().remove(volume).is_some()
    }
}
