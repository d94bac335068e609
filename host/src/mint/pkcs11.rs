//! Signing keys held in an HSM through PKCS#11 (the `cryptoki` crate). The private key never
//! leaves the token: the service knows the module, the token's and the key's labels and a PIN.
//!
//! - **One context per module**, process-wide: PKCS#11 allows one `C_Initialize` per module and
//!   process, and reloads and several keys share it.
//! - **Sessions are pooled** per key (`pkcs11.sessions`): a token is signed on an idle session,
//!   which goes back to the pool afterwards; the first session logs the application in.
//! - **Recovery**: any failure discards the session and resets the module (`C_Finalize`, then a
//!   fresh `C_Initialize` at the next use, at most once a second): a token that was removed and
//!   comes back (a SoftHSM2 token directory, a network HSM's connection) is found again. Sessions
//!   of an earlier context are forgotten, never closed: after `C_Finalize` their handles may name
//!   new sessions. Callers fail with [`HsmError`] meanwhile, which the token endpoint answers
//!   with 503: nothing is ever signed otherwise.
//! - **A wrong PIN is not tried again** by the signing path: every wrong attempt counts toward
//!   the token's lockout (a real HSM locks the user PIN after a few, and only its security
//!   officer can unlock it). A PIN a token refused is tried again only when a key is opened:
//!   at the start and at a reload, which also reread the PIN file. A reload whose PIN differs
//!   from the one the token accepted is refused: logged in, the token cannot check it.
//!
//! Everything here blocks on the module: the async side ([`super::Signer`]) runs it on the
//! blocking pool, bounded by the number of sessions and by a deadline.

use super::{PublicKey, SigningAlgorithm};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Why the HSM could not be used. Never contains the PIN.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The configuration or the token is wrong: a missing key, a PIN file anyone can read.
    #[error("{0}")]
    Setup(String),
    /// The module, token or session failed (it may come back).
    #[error("the HSM failed: {0}")]
    Unavailable(String),
}

fn unavailable(what: &str, error: CkError) -> HsmError {
    HsmError::Unavailable(format!("{what}: {error}"))
}

/// How a key is found in a token (the `pkcs11:` section of a key entry, PIN read).
#[derive(Clone)]
pub struct HsmLocation {
    /// The module's path.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The key's `CKA_LABEL`.
    pub key_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The PIN's SHA-256, computed once: what the module remembers of a PIN (refused, accepted).
    pin_digest: [u8; 32],
}

impl std::fmt::Debug for HsmLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pkcs11 {} token {:?} key {:?}", self.module.display(), self.token_label, self.key_label)
    }
}

impl HsmLocation {
    /// Reads the PIN from `pin_file`, which must be readable by its owner only.
    pub fn new(
        module: &Path,
        token_label: &str,
        key_label: &str,
        pin_file: &Path,
    ) -> Result<HsmLocation, HsmError> {
        let shown = pin_file.display();
        let metadata = std::fs::metadata(pin_file)
            .map_err(|e| HsmError::Setup(format!("cannot read the PIN file {shown}: {e}")))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(HsmError::Setup(format!(
                "the PIN file {shown} is readable by group or others (mode {mode:o}); it must be readable by \
                 its owner only: run `chmod 600 {shown}`"
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(pin_file)
                .map_err(|e| HsmError::Setup(format!("cannot read the PIN file {shown}: {e}")))?,
        );
        let pin = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_owned());
        if pin.is_empty() {
            return Err(HsmError::Setup(format!("the PIN file {shown} is empty")));
        }
        Ok(HsmLocation {
            module: module.to_owned(),
            token_label: token_label.to_owned(),
            key_label: key_label.to_owned(),
            pin_digest: Sha256::digest(pin.as_bytes()).into(),
            pin,
        })
    }
}

/// A loaded PKCS#11 module and its current context.
#[derive(Debug)]
struct Module {
    path: PathBuf,
    /// Readers use the context (sessions, signatures); a reset takes it for writing, so it never
    /// finalizes under a call in flight.
    state: RwLock<ModuleState>,
    /// Per token label, the digests of the PINs it refused (each until it is accepted).
    refused_pins: Mutex<HashMap<String, HashSet<[u8; 32]>>>,
    /// Per token label, the digest of the PIN that logged this process in: while it is logged in,
    /// the token does not check another (`C_Login` answers "already logged in").
    accepted_pins: Mutex<HashMap<String, [u8; 32]>>,
    /// Held across `C_Login` (never the map's lock, which every signature takes): sessions opened
    /// at once after a reconnect try a PIN once between them.
    logging_in: Mutex<()>,
}

#[derive(Debug, Default)]
struct ModuleState {
    context: Option<Pkcs11>,
    /// Bumped by every new context: sessions remember theirs.
    generation: u64,
    last_attempt: Option<Instant>,
}

/// At most one `C_Initialize` attempt a second while a module is failing.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

static MODULES: LazyLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = LazyLock::new(Mutex::default);

impl Module {
    fn get(path: &Path) -> Arc<Module> {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        modules
            .entry(path.to_owned())
            .or_insert_with(|| {
                Arc::new(Module {
                    path: path.to_owned(),
                    state: RwLock::default(),
                    refused_pins: Mutex::default(),
                    accepted_pins: Mutex::default(),
                    logging_in: Mutex::default(),
                })
            })
            .clone()
    }

    /// The error for a PIN `location`'s token refused before, if it did.
    fn refused(&self, location: &HsmLocation) -> Option<HsmError> {
        let refused = self.refused_pins.lock().unwrap_or_else(PoisonError::into_inner);
        refused
            .get(&location.token_label)
            .is_some_and(|pins| pins.contains(&location.pin_digest))
            .then(|| refused_error(location))
    }

    /// Logs `session` in with `location`'s PIN, unless the token refused that PIN (the same
    /// bytes) before in this process: not by signing, and not by a reload either, which with
    /// `watch: true` any change to a watched file starts. Remembers a refusal, and forgets it once
    /// the PIN is accepted.
    fn login(&self, session: &Session, location: &HsmLocation) -> Result<(), HsmError> {
        let _one_at_a_time = self.logging_in.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(refused) = self.refused(location) {
            return Err(refused);
        }
        let digest = location.pin_digest;
        let remember = |refused: bool| {
            let mut pins = self.refused_pins.lock().unwrap_or_else(PoisonError::into_inner);
            let token = pins.entry(location.token_label.clone()).or_default();
            if refused { token.insert(digest) } else { token.remove(&digest) }
        };
        let pin = AuthPin::new(location.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) => {
                remember(false);
                let mut accepted = self.accepted_pins.lock().unwrap_or_else(PoisonError::into_inner);
                accepted.insert(location.token_label.clone(), digest);
                Ok(())
            }
            // Another session logged the application in, and the token did not check this PIN: a
            // PIN file changed since (a reload) is refused rather than taken on trust, to fail at
            // the next reconnect.
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let accepted = self.accepted_pins.lock().unwrap_or_else(PoisonError::into_inner);
                match accepted.get(&location.token_label) {
                    Some(accepted) if *accepted != digest => Err(HsmError::Setup(format!(
                        "the PIN file holds another PIN than the one token {:?} accepted, and the token \
                         cannot check it while this service is logged in: restart the service to use it \
                         (or put the PIN back)",
                        location.token_label
                    ))),
                    _ => Ok(()),
                }
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                remember(true);
                Err(HsmError::Setup(format!(
                    "the PIN for token {:?} is wrong; signing will not try it again (each wrong attempt \
                     counts toward the token's lockout): correct the PIN file and reload",
                    location.token_label
                )))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(HsmError::Setup(format!(
                "the user PIN of token {:?} is locked; its security officer must unlock it",
                location.token_label
            ))),
            Err(e) => Err(unavailable("C_Login", e)),
        }
    }

    /// The current context's generation, initializing one if there is none.
    fn connect(&self) -> Result<u64, HsmError> {
        if let Some(generation) = self.current() {
            return Ok(generation);
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.context.is_some() {
            return Ok(state.generation);
        }
        if let Some(last) = state.last_attempt
            && last.elapsed() < RECONNECT_INTERVAL
        {
            return Err(HsmError::Unavailable(format!("{} is reconnecting", self.path.display())));
        }
        state.last_attempt = Some(Instant::now());
        let context = Pkcs11::new(&self.path).map_err(|e| {
            HsmError::Setup(format!("cannot load the PKCS#11 module {}: {e}", self.path.display()))
        })?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(unavailable("C_Initialize", e)),
        }
        state.context = Some(context);
        state.generation += 1;
        Ok(state.generation)
    }

    fn current(&self) -> Option<u64> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.context.as_ref().map(|_| state.generation)
    }

    /// Drops the context of `generation` (if it is still the current one).
    fn reset(&self, generation: u64) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if state.generation == generation
            && let Some(context) = state.context.take()
        {
            tracing::warn!(module = %self.path.display(), "resetting the PKCS#11 module after a failure");
            // It is failing anyway; what C_Finalize says changes nothing.
            let _ = context.finalize();
        }
    }
}

/// A pooled session, logged in, with the key's handle in it.
struct Pooled {
    generation: u64,
    session: Session,
    key: ObjectHandle,
}

/// A private key in an HSM token, with its public half.
pub struct HsmKey {
    location: HsmLocation,
    module: Arc<Module>,
    algorithm: SigningAlgorithm,
    public: PublicKey,
    idle: Mutex<Vec<Pooled>>,
    max_idle: usize,
    protection: String,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("location", &self.location)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl HsmKey {
    /// Finds the key (its private object, and its public key in the public object of the same
    /// label), checks that it signs what its public key verifies, and keeps up to `sessions`
    /// sessions open for it.
    pub fn open(location: HsmLocation, sessions: usize) -> Result<HsmKey, HsmError> {
        let module = Module::get(&location.module);
        let generation = module.connect()?;
        let state = module.state.read().unwrap_or_else(PoisonError::into_inner);
        let context =
            state.context.as_ref().ok_or_else(|| HsmError::Unavailable("the module was reset".into()))?;
        let session = open_session(&module, context, &location, false)?;
        let key = find_one(&session, ObjectClass::PRIVATE_KEY, &location)?;
        let public = read_public(&session, key, &location)?;
        let protection = read_protection(&session, key)?;
        drop(state);
        let hsm = HsmKey {
            algorithm: public.algorithm(),
            public,
            location,
            module,
            idle: Mutex::new(vec![Pooled { generation, session, key }]),
            max_idle: sessions,
            protection,
        };
        hsm.check_signature()?;
        Ok(hsm)
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// What the token says of the private key: `sensitive, never extractable` for a key that
    /// cannot leave it.
    pub fn protection(&self) -> &str {
        &self.protection
    }

    /// Signs `message` as a JWS (RS256: PKCS#1 v1.5 over SHA-256; ES256: r‖s over its SHA-256).
    /// Blocks on the module.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        // Before connecting: a refused PIN is no reason to reset the module every second.
        if let Some(refused) = self.module.refused(&self.location) {
            return Err(refused);
        }
        let generation = self.module.connect()?;
        let result = self.sign_in(generation, message);
        if result.is_err() {
            self.module.reset(generation);
        }
        result
    }

    fn sign_in(&self, generation: u64, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let state = self.module.state.read().unwrap_or_else(PoisonError::into_inner);
        let context = match &state.context {
            Some(context) if state.generation == generation => context,
            _ => return Err(HsmError::Unavailable("the module was reset".into())),
        };
        let (pooled, found_now) = match self.take_idle(generation) {
            Some(pooled) => (pooled, false),
            None => {
                let session = open_session(&self.module, context, &self.location, false)?;
                let key = find_one(&session, ObjectClass::PRIVATE_KEY, &self.location)?;
                (Pooled { generation, session, key }, true)
            }
        };
        let signature = match self.algorithm {
            SigningAlgorithm::RS256 => pooled.session.sign(&Mechanism::Sha256RsaPkcs, pooled.key, message),
            SigningAlgorithm::ES256 => {
                pooled.session.sign(&Mechanism::Ecdsa, pooled.key, &Sha256::digest(message))
            }
        }
        .map_err(|e| unavailable("C_Sign", e))?;
        // A key found by its label now may not be the one published: after a reconnect the label
        // may name another key (a token failed over, or a key replaced). Its first signature must
        // verify with the published public key, or nothing it signed is handed out.
        if found_now && !self.verifies(message, &signature) {
            return Err(HsmError::Unavailable(format!(
                "{:?}: what the key under this label signs does not verify with its public key (the one \
                 published); a token that failed over, or a key replaced?",
                self.location
            )));
        }
        // The context is still current (the read lock is held): the session may be reused.
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(pooled);
        }
        Ok(signature)
    }

    fn take_idle(&self, generation: u64) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(pooled) = idle.pop() {
            if pooled.generation == generation {
                return Some(pooled);
            }
            // Opened in a finalized context: its handle may now name another session.
            std::mem::forget(pooled.session);
        }
        None
    }

    /// Signs a probe and verifies it with the public key: the key signs what is published. (The
    /// probe is signed on the session `open` pooled, which [`HsmKey::sign`] does not check: it
    /// checks the first signature of each session it opens itself.)
    fn check_signature(&self) -> Result<(), HsmError> {
        let probe = b"registry-token: the HSM key signs what its public key verifies";
        let signature = self.sign(probe)?;
        if self.verifies(probe, &signature) {
            return Ok(());
        }
        Err(HsmError::Setup(format!(
            "{:?}: what the private key signs does not verify with the public key of the same label \
             (the one that would be published); is the public object left from another key?",
            self.location
        )))
    }

    /// Whether `signature` of `message` verifies with the key's public key.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match self.algorithm {
            SigningAlgorithm::RS256 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            SigningAlgorithm::ES256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        };
        super::verify_with_spki(algorithm, self.public.spki_der(), message, signature).is_ok()
    }
}

impl Drop for HsmKey {
    /// Closes the pooled sessions of the current context; forgets those of a finalized one.
    fn drop(&mut self) {
        let state = self.module.state.read().unwrap_or_else(PoisonError::into_inner);
        let current = state.context.as_ref().map(|_| state.generation);
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
        for pooled in idle {
            if Some(pooled.generation) != current {
                std::mem::forget(pooled.session);
            }
        }
    }
}

fn open_session(
    module: &Module,
    context: &Pkcs11,
    location: &HsmLocation,
    read_write: bool,
) -> Result<Session, HsmError> {
    let slots = context.get_slots_with_token().map_err(|e| unavailable("C_GetSlotList", e))?;
    let slot = slots
        .into_iter()
        .find(|slot| {
            context.get_token_info(*slot).is_ok_and(|info| info.label().trim_end() == location.token_label)
        })
        .ok_or_else(|| {
            HsmError::Unavailable(format!(
                "no token labelled {:?} in {}",
                location.token_label,
                location.module.display()
            ))
        })?;
    let session = if read_write { context.open_rw_session(slot) } else { context.open_ro_session(slot) }
        .map_err(|e| unavailable("C_OpenSession", e))?;
    module.login(&session, location)?;
    Ok(session)
}

fn refused_error(location: &HsmLocation) -> HsmError {
    HsmError::Setup(format!(
        "token {:?} refused this PIN before; signing does not try it again, nor does a reload with \
         the same PIN (each wrong attempt counts toward the token's lockout): correct the PIN file \
         and reload, or restart to try this one once more",
        location.token_label
    ))
}

fn find_all(
    session: &Session,
    class: ObjectClass,
    location: &HsmLocation,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let template = [Attribute::Class(class), Attribute::Label(location.key_label.as_bytes().to_vec())];
    session.find_objects(&template).map_err(|e| unavailable("C_FindObjects", e))
}

fn find_one(session: &Session, class: ObjectClass, location: &HsmLocation) -> Result<ObjectHandle, HsmError> {
    let found = find_all(session, class, location)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(HsmError::Unavailable(format!(
            "token {:?} has no {class} labelled {:?}",
            location.token_label, location.key_label
        ))),
        many => Err(HsmError::Setup(format!(
            "token {:?} has {} objects of class {class} labelled {:?}; labels must be unique",
            location.token_label,
            many.len(),
            location.key_label
        ))),
    }
}

/// The private key's CKA_SENSITIVE, CKA_EXTRACTABLE and CKA_NEVER_EXTRACTABLE, in words.
fn read_protection(session: &Session, key: ObjectHandle) -> Result<String, HsmError> {
    let types = [AttributeType::Sensitive, AttributeType::Extractable, AttributeType::NeverExtractable];
    let mut words = Vec::new();
    for attribute in session.get_attributes(key, &types).map_err(|e| unavailable("C_GetAttributeValue", e))? {
        match attribute {
            Attribute::Sensitive(yes) => words.push(if yes { "sensitive" } else { "NOT sensitive" }),
            Attribute::Extractable(yes) => words.push(if yes { "EXTRACTABLE" } else { "not extractable" }),
            Attribute::NeverExtractable(yes) => {
                words.push(if yes { "never extractable" } else { "was extractable" })
            }
            _ => {}
        }
    }
    Ok(words.join(", "))
}

/// The key's public half: an RSA private key carries its modulus and exponent; an EC key's point
/// is on its public object.
fn read_public(session: &Session, key: ObjectHandle, location: &HsmLocation) -> Result<PublicKey, HsmError> {
    let attributes = |handle, types: &[AttributeType]| {
        session.get_attributes(handle, types).map_err(|e| unavailable("C_GetAttributeValue", e))
    };
    let key_type = attributes(key, &[AttributeType::KeyType])?.into_iter().find_map(|a| match a {
        Attribute::KeyType(t) => Some(t),
        _ => None,
    });
    let spki = match key_type {
        Some(KeyType::RSA) => {
            let (mut modulus, mut exponent) = (None, None);
            for attribute in attributes(key, &[AttributeType::Modulus, AttributeType::PublicExponent])? {
                match attribute {
                    Attribute::Modulus(m) => modulus = Some(m),
                    Attribute::PublicExponent(e) => exponent = Some(e),
                    _ => {}
                }
            }
            let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
                return Err(HsmError::Setup(format!("{location:?}: the RSA key has no modulus or exponent")));
            };
            PublicKey::rsa_spki_der(&modulus, &exponent)
        }
        Some(KeyType::EC) => {
            let public = find_one(session, ObjectClass::PUBLIC_KEY, location)?;
            let point = attributes(public, &[AttributeType::EcPoint])?.into_iter().find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            });
            let Some(point) = point else {
                return Err(HsmError::Setup(format!("{location:?}: the EC public key has no point")));
            };
            // CKA_EC_POINT is the DER OCTET STRING holding the point (some modules give it bare).
            let point = match point.as_slice() {
                [0x04, 65, rest @ ..] if rest.len() == 65 => rest.to_vec(),
                _ => point,
            };
            PublicKey::p256_spki_der(&point)
        }
        _ => return Err(HsmError::Setup(format!("{location:?}: neither an RSA nor an EC key"))),
    };
    PublicKey::from_spki_der(&spki).map_err(|reason| HsmError::Setup(format!("{location:?}: {reason}")))
}

/// `registry-token keys new --pkcs11`: generates a key pair inside the token (the private key
/// sensitive and not extractable), never replacing a key of the same label.
pub fn generate(location: &HsmLocation, algorithm: SigningAlgorithm, bits: u32) -> Result<HsmKey, HsmError> {
    let module = Module::get(&location.module);
    module.connect()?;
    {
        let state = module.state.read().unwrap_or_else(PoisonError::into_inner);
        let context =
            state.context.as_ref().ok_or_else(|| HsmError::Unavailable("the module was reset".into()))?;
        let session = open_session(&module, context, location, true)?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            if !find_all(&session, class, location)?.is_empty() {
                return Err(HsmError::Setup(format!(
                    "token {:?} already has a key labelled {:?}; keys new never replaces a key",
                    location.token_label, location.key_label
                )));
            }
        }
        let label = Attribute::Label(location.key_label.as_bytes().to_vec());
        let id = Attribute::Id(Sha256::digest(location.key_label.as_bytes())[..8].to_vec());
        let mut public = vec![Attribute::Token(true), Attribute::Verify(true), label.clone(), id.clone()];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            label,
            id,
        ];
        let mechanism = match algorithm {
            SigningAlgorithm::RS256 => {
                public.push(Attribute::ModulusBits(u64::from(bits).into()));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
            SigningAlgorithm::ES256 => {
                // DER of the OID prime256v1 (1.2.840.10045.3.1.7).
                public.push(Attribute::EcParams(vec![
                    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
                ]));
                Mechanism::EccKeyPairGen
            }
        };
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| unavailable("C_GenerateKeyPair", e))?;
    }
    HsmKey::open(location.clone(), 1)
}
