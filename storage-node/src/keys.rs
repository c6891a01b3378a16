//! Data keys of the encrypted volumes this node presents, in memory only:
//! the registry hands one over (node control RPC) when a user attaches with
//! their key, and it is gone when the process exits — a restarted node
//! presents an encrypted volume again only once the user attaches again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use volume_crypto::SectorCipher;

#[derive(Default)]
pub struct KeyRing {
    ciphers: RwLock<HashMap<String, Arc<SectorCipher>>>,
}

impl KeyRing {
    pub fn insert(&self, volume: &str, cipher: SectorCipher) {
        self.ciphers
            .write()
            .unwrap()
            .insert(volume.to_string(), Arc::new(cipher));
    }

    pub fn get(&self, volume: &str) -> Option<Arc<SectorCipher>> {
        self.ciphers.read().unwrap().get(volume).cloned()
    }

    pub fn remove(&self, volume: &str) -> bool {
        self.ciphers.write().unwrap().remove(volume).is_some()
    }
}
