//! Capabilities: what a definition asks for, what the executor allows, and the WASI context a
//! granted guest gets. Closed by default: no env, no filesystem, no network.

use std::path::PathBuf;

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::error::ExecError;

/// A definition's `capabilities`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    pub network: bool,
    pub filesystem: bool,
    /// Names of environment variables the guest may read.
    pub env: Vec<String>,
    /// Host functions (`namespace.name`) the guest may call.
    pub host_functions: Vec<String>,
}

/// The directory the executor's options offer to definitions that ask for `filesystem`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FilesystemConfig {
    pub host_dir: PathBuf,
    /// Where the guest sees it (WASI preopen name).
    pub guest_dir: String,
    pub writable: bool,
}

/// The environment the executor offers (`options.env`): a definition is granted only variables
/// named here. Nothing by default: definitions may come from workflow data, and the process's
/// environment holds its own secrets (the object stores' credentials, say).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum EnvOffer {
    #[default]
    Nothing,
    /// These variables of the process's environment, read at each call (only those set).
    Names(Vec<String>),
    /// These variables, with these values (the process's environment is not read).
    Values(Vec<(String, String)>),
}

impl EnvOffer {
    /// The value offered under `name`: `Err` if it is not offered, `Ok(None)` if it is but unset.
    fn value(&self, name: &str) -> Result<Option<String>, ()> {
        match self {
            EnvOffer::Nothing => Err(()),
            EnvOffer::Names(names) if names.iter().any(|n| n == name) => Ok(std::env::var(name).ok()),
            EnvOffer::Values(values) => values.iter().find(|(k, _)| k == name).map(|(_, v)| Some(v.clone())).ok_or(()),
            EnvOffer::Names(_) => Err(()),
        }
    }
}

/// What one call is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    pub env: Vec<(String, String)>,
    pub filesystem: Option<FilesystemConfig>,
}

impl Grants {
    /// Resolves a definition's request against the executor's configuration.
    pub fn resolve(caps: &Capabilities, fs: Option<&FilesystemConfig>, offer: &EnvOffer) -> Result<Grants, ExecError> {
        let filesystem = match (caps.filesystem, fs) {
            (false, _) => None,
            (true, Some(fs)) => Some(fs.clone()),
            (true, None) => {
                return Err(ExecError::CapabilityDenied(
                    "capabilities.filesystem: the executor has no directory to grant (set options.filesystem.hostDir)"
                        .into(),
                ))
            }
        };
        // Only the named variables the executor offers, and only those that are set.
        let mut env = Vec::new();
        for name in &caps.env {
            match offer.value(name) {
                Ok(Some(value)) => env.push((name.clone(), value)),
                Ok(None) => {}
                Err(()) => {
                    return Err(ExecError::CapabilityDenied(format!(
                        "capabilities.env: {name:?} is not offered by the executor (options.env names the variables definitions may read)"
                    )))
                }
            }
        }
        Ok(Grants { env, filesystem })
    }

    /// The lock of looks and renames of the granted directory (`wasi_open`), if one is granted.
    pub fn path_lock(&self) -> Option<crate::wasi_open::PathLock> {
        self.filesystem.as_ref().map(|fs| crate::wasi_open::path_lock(&fs.host_dir))
    }

    /// Whether the definition asked for anything WASI provides.
    pub fn wants_wasi(caps: &Capabilities) -> bool {
        caps.filesystem || !caps.env.is_empty()
    }

    /// The WASI context of a granted guest: the granted variables, the granted directory, no
    /// arguments, no stdio, no network; for a deterministic call, clocks stopped at its `now`
    /// and randomness from its `seed`.
    pub fn wasi_context(&self, det: Option<&crate::replay::Determinism>) -> Result<WasiP1Ctx, ExecError> {
        Ok(self.wasi_builder(det)?.build_p1())
    }

    /// The same, with stdio connected to pipes (a WASI command's input and output).
    pub fn wasi_context_with_stdio(
        &self,
        det: Option<&crate::replay::Determinism>,
        stdin: wasmtime_wasi::p2::pipe::MemoryInputPipe,
        stdout: impl wasmtime_wasi::cli::StdoutStream + 'static,
        stderr: impl wasmtime_wasi::cli::StdoutStream + 'static,
    ) -> Result<WasiP1Ctx, ExecError> {
        let mut b = self.wasi_builder(det)?;
        b.stdin(stdin).stdout(stdout).stderr(stderr);
        Ok(b.build_p1())
    }

    /// A component's WASI preview 2 context: the same grants.
    pub fn wasi_p2_context(&self, det: Option<&crate::replay::Determinism>) -> Result<wasmtime_wasi::WasiCtx, ExecError> {
        Ok(self.wasi_builder(det)?.build())
    }

    fn wasi_builder(&self, det: Option<&crate::replay::Determinism>) -> Result<WasiCtxBuilder, ExecError> {
        let mut b = WasiCtxBuilder::new();
        b.monotonic_clock(crate::replay::ProcessMonotonicClock);
        // One `get-random-bytes` at most 1 MiB (64 MiB by default: a single host call of ~230 ms,
        // past the call's deadline, review Q).
        b.max_random_size(MAX_RANDOM_BYTES);
        if let Some(det) = det {
            b.wall_clock(det.wall_clock())
                .monotonic_clock(crate::replay::FixedMonotonicClock)
                .secure_random(wasmtime_wasi::Deterministic::new(det.random_bytes()))
                .insecure_random(wasmtime_wasi::Deterministic::new(det.random_bytes()))
                .insecure_random_seed(det.seed as u128);
        }
        for (k, v) in &self.env {
            b.env(k, v);
        }
        if let Some(fs) = &self.filesystem {
            let perms = if fs.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            b.preopened_dir(&fs.host_dir, &fs.guest_dir, perms).map_err(|e| {
                ExecError::CapabilityDenied(format!("cannot open {}: {e:#}", fs.host_dir.display()))
            })?;
        }
        Ok(b)
    }
}

/// What one WASI preview 2 `get-random-bytes` may ask for (larger asks trap).
pub const MAX_RANDOM_BYTES: u64 = 1024 * 1024;

/// A module that imports WASI runs only when its definition asked for env or filesystem, except
/// a WASI command, whose stdio is its ABI (its context still holds only what was granted).
pub fn authorize(wasi_imports: &[String], caps: &Capabilities, abi: crate::abi::Abi) -> Result<(), ExecError> {
    if wasi_imports.is_empty() || Grants::wants_wasi(caps) || abi == crate::abi::Abi::WasiCommand {
        return Ok(());
    }
    Err(ExecError::CapabilityDenied(format!(
        "the module imports WASI ({}), which needs capabilities.env or capabilities.filesystem",
        crate::trap_text::name_list(wasi_imports, 20)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_by_default() {
        let none = Capabilities::default();
        assert_eq!(Grants::resolve(&none, None, &EnvOffer::Nothing), Ok(Grants::default()));
        let wasi = vec!["wasi_snapshot_preview1.fd_write".to_string()];
        let abi = crate::abi::Abi::AssemblyScript;
        assert_eq!(authorize(&wasi, &none, abi).map_err(|e| e.code()), Err("CAPABILITY_DENIED"));
        assert!(authorize(&[], &none, abi).is_ok());
        assert!(authorize(&wasi, &none, crate::abi::Abi::WasiCommand).is_ok());
        // Asking for the network is no WASI grant; what may use it is checked per module.
        let net = Capabilities { network: true, ..Default::default() };
        assert_eq!(Grants::resolve(&net, None, &EnvOffer::Nothing), Ok(Grants::default()));
        let fs = Capabilities { filesystem: true, ..Default::default() };
        assert_eq!(Grants::resolve(&fs, None, &EnvOffer::Nothing).map_err(|e| e.code()), Err("CAPABILITY_DENIED"));
    }

    #[test]
    fn env_grants_only_named_and_set_variables() {
        std::env::set_var("LOOM_CAP_TEST_A", "a-value");
        let caps = Capabilities { env: vec!["LOOM_CAP_TEST_A".into(), "LOOM_CAP_TEST_UNSET".into()], ..Default::default() };
        let offered = EnvOffer::Names(vec!["LOOM_CAP_TEST_A".into(), "LOOM_CAP_TEST_UNSET".into()]);
        let g = Grants::resolve(&caps, None, &offered).expect("env grants");
        assert_eq!(g.env, vec![("LOOM_CAP_TEST_A".to_string(), "a-value".to_string())]);
        // Values the executor gives are what the guest sees; the process's are not read.
        let given = EnvOffer::Values(vec![("LOOM_CAP_TEST_A".into(), "given".into()), ("LOOM_CAP_TEST_UNSET".into(), "x".into())]);
        let g2 = Grants::resolve(&caps, None, &given).expect("env grants");
        assert_eq!(g2.env, vec![("LOOM_CAP_TEST_A".to_string(), "given".to_string()), ("LOOM_CAP_TEST_UNSET".to_string(), "x".to_string())]);
        assert!(authorize(&["wasi_snapshot_preview1.environ_get".into()], &caps, crate::abi::Abi::AssemblyScript).is_ok());
        assert!(g.wasi_context(None).is_ok());
    }

    #[test]
    fn env_not_offered_by_the_executor_is_denied() {
        std::env::set_var("LOOM_CAP_TEST_SECRET", "secret");
        let caps = Capabilities { env: vec!["LOOM_CAP_TEST_SECRET".into()], ..Default::default() };
        for offer in [EnvOffer::Nothing, EnvOffer::Names(vec!["OTHER".into()]), EnvOffer::Values(vec![("OTHER".into(), "v".into())])] {
            let denied = Grants::resolve(&caps, None, &offer).expect_err("not offered");
            assert_eq!(denied.code(), "CAPABILITY_DENIED");
            assert!(denied.to_string().contains("LOOM_CAP_TEST_SECRET"), "{denied}");
        }
    }
}
