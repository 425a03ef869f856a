//! Runtime instruction-set detection and the `MIXPREC_MAX_CPU_ISA` cap.
//!
//! Levels are named as oneDNN names them so that people who already know
//! `ONEDNN_MAX_CPU_ISA` can read ours at a glance. Detection runs once and is
//! cached; every kernel family dispatches on [`active_isa`].

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Environment variable that caps the dispatch level (case-insensitive level name).
pub const MAX_ISA_ENV: &str = "MIXPREC_MAX_CPU_ISA";

/// An instruction-set level, ordered from least to most capable.
///
/// Each level implies every level below it, so `a <= b` means "code written
/// for `a` runs wherever `b` runs".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust; the reference every SIMD path is tested against.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell and later, Zen and later).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (Skylake-SP and later, Zen 4 and later).
    Avx512Core,
    /// `avx512_core` plus AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4).
    Avx512CoreBf16,
    /// `avx512_core_bf16` plus AVX512-FP16 (Sapphire Rapids and later).
    Avx512CoreFp16,
}

impl Isa {
    /// Every implemented level, lowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Core,
        Isa::Avx512CoreBf16,
        Isa::Avx512CoreFp16,
    ];

    /// The oneDNN-style name (`scalar`, `avx2`, `avx512_core`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Core => "avx512_core",
            Isa::Avx512CoreBf16 => "avx512_core_bf16",
            Isa::Avx512CoreFp16 => "avx512_core_fp16",
        }
    }

    /// Whether this CPU can execute code written for this level.
    pub fn is_available(self) -> bool {
        self <= detected_isa()
    }

    /// `Ok(self)` if this CPU can run the level, else [`IsaError::Unsupported`].
    ///
    /// This is the gate every explicit-level kernel entry point goes through,
    /// so a `#[target_feature]` function is never reached on a CPU without it.
    pub fn require(self) -> Result<Isa, IsaError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(IsaError::Unsupported {
                requested: self,
                detected: detected_isa(),
            })
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_available())
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    /// Parses a level name case-insensitively. `avx512_core_amx` is known but
    /// not implemented, which is a different error from a typo.
    fn from_str(s: &str) -> Result<Isa, IsaError> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some(isa) = Isa::ALL.into_iter().find(|isa| isa.name() == lower) {
            return Ok(isa);
        }
        match lower.as_str() {
            "avx512_core_amx" | "avx512_core_amx_fp16" => {
                Err(IsaError::NotImplemented(s.trim().to_string()))
            }
            _ => Err(IsaError::Unknown(s.to_string())),
        }
    }
}

/// Errors about instruction-set levels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not a level mixprec knows.
    Unknown(String),
    /// The name is a real oneDNN level that mixprec has no kernels for.
    NotImplemented(String),
    /// A kernel was asked to run at a level this CPU lacks.
    Unsupported {
        /// The level asked for.
        requested: Isa,
        /// The highest level this CPU supports.
        detected: Isa,
    },
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = Isa::ALL.map(Isa::name).join(", ");
        match self {
            IsaError::Unknown(name) => {
                write!(f, "unknown ISA level {name:?}; known levels: {known}")
            }
            IsaError::NotImplemented(name) => {
                write!(
                    f,
                    "ISA level {name:?} is recognised but not implemented; implemented levels: {known}"
                )
            }
            IsaError::Unsupported {
                requested,
                detected,
            } => write!(
                f,
                "this CPU does not support {requested} (highest supported level: {detected})"
            ),
        }
    }
}

impl std::error::Error for IsaError {}

/// Why [`active_isa`] is what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActiveReason {
    /// No cap: the highest detected level is used.
    Detected,
    /// `MIXPREC_MAX_CPU_ISA` named a level at or below the detected one.
    Capped(Isa),
    /// `MIXPREC_MAX_CPU_ISA` named a level above the detected one; it has no effect.
    CapAboveDetected(Isa),
    /// `MIXPREC_MAX_CPU_ISA` could not be used; detection is kept.
    InvalidCap(IsaError),
}

/// Detection result, cap and the resulting dispatch level, computed once per process.
#[derive(Clone, Debug)]
pub struct IsaState {
    /// Highest level this CPU supports.
    pub detected: Isa,
    /// Level the kernels dispatch to: `min(detected, cap)`.
    pub active: Isa,
    /// How `active` was chosen.
    pub reason: ActiveReason,
    /// The raw value of `MIXPREC_MAX_CPU_ISA`, if set.
    pub cap_env: Option<String>,
}

impl IsaState {
    /// Builds the state from a detected level and an optional cap value.
    ///
    /// Public so the cap logic can be tested without touching the process
    /// environment.
    pub fn from_cap(detected: Isa, cap_env: Option<String>) -> IsaState {
        let (active, reason) = match cap_env.as_deref().map(str::parse::<Isa>) {
            None => (detected, ActiveReason::Detected),
            Some(Ok(cap)) if cap <= detected => (cap, ActiveReason::Capped(cap)),
            Some(Ok(cap)) => (detected, ActiveReason::CapAboveDetected(cap)),
            Some(Err(err)) => (detected, ActiveReason::InvalidCap(err)),
        };
        IsaState {
            detected,
            active,
            reason,
            cap_env,
        }
    }

    /// The problem with `MIXPREC_MAX_CPU_ISA`, if it could not be applied.
    pub fn cap_error(&self) -> Option<&IsaError> {
        match &self.reason {
            ActiveReason::InvalidCap(err) => Some(err),
            _ => None,
        }
    }
}

impl fmt::Display for ActiveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActiveReason::Detected => f.write_str("detected"),
            ActiveReason::Capped(cap) => write!(f, "capped by {MAX_ISA_ENV}={cap}"),
            ActiveReason::CapAboveDetected(cap) => write!(
                f,
                "detected ({MAX_ISA_ENV}={cap} is above what this CPU supports, so it has no effect)"
            ),
            ActiveReason::InvalidCap(err) => {
                write!(f, "detected ({MAX_ISA_ENV} ignored: {err})")
            }
        }
    }
}

/// Detects the highest level this CPU supports (without any cap).
#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let core = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
    let bf16 = core && has!("avx512bf16");
    let fp16 = bf16 && has!("avx512fp16");
    match (avx2, core, bf16, fp16) {
        (_, _, _, true) => Isa::Avx512CoreFp16,
        (_, _, true, _) => Isa::Avx512CoreBf16,
        (_, true, _, _) => Isa::Avx512Core,
        (true, _, _, _) => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}

/// The process-wide ISA state (detection plus cap), computed on first use.
pub fn isa_state() -> &'static IsaState {
    static STATE: OnceLock<IsaState> = OnceLock::new();
    STATE.get_or_init(|| IsaState::from_cap(detect(), std::env::var(MAX_ISA_ENV).ok()))
}

/// Highest level this CPU supports, ignoring `MIXPREC_MAX_CPU_ISA`.
pub fn detected_isa() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

/// The level kernels dispatch to by default.
pub fn active_isa() -> Isa {
    isa_state().active
}

/// The individual CPU features mixprec looks at, with whether each is present.
pub fn cpu_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vec![
            ("avx2", has!("avx2")),
            ("fma", has!("fma")),
            ("f16c", has!("f16c")),
            ("avx512f", has!("avx512f")),
            ("avx512bw", has!("avx512bw")),
            ("avx512dq", has!("avx512dq")),
            ("avx512vl", has!("avx512vl")),
            ("avx512bf16", has!("avx512bf16")),
            ("avx512fp16", has!("avx512fp16")),
            // std does not detect AMX on stable; CPUID.(7,0):EDX[24] is enough
            // for reporting, since mixprec has no AMX kernels to gate on it.
            (
                "amx-tile",
                std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 24) != 0,
            ),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The CPU's brand string (from CPUID leaves 0x8000_0002..4), if the CPU reports one.
pub fn cpu_model() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let max_ext = __cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_0004 {
            return None;
        }
        let mut bytes = Vec::with_capacity(48);
        for leaf in 0x8000_0002u32..=0x8000_0004 {
            let r = __cpuid(leaf);
            for reg in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend_from_slice(&reg.to_le_bytes());
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let model = text.trim_matches(char::from(0)).trim().to_string();
        (!model.is_empty()).then_some(model)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_case_insensitively() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().to_uppercase().parse::<Isa>(), Ok(isa));
        }
    }

    #[test]
    fn amx_is_known_but_not_implemented() {
        assert_eq!(
            "AVX512_CORE_AMX".parse::<Isa>(),
            Err(IsaError::NotImplemented("AVX512_CORE_AMX".into()))
        );
        assert!(matches!(
            "avx9000".parse::<Isa>(),
            Err(IsaError::Unknown(_))
        ));
    }

    #[test]
    fn cap_lowers_but_never_raises() {
        let s = IsaState::from_cap(Isa::Avx512CoreBf16, Some("avx2".into()));
        assert_eq!(
            (s.active, s.reason),
            (Isa::Avx2, ActiveReason::Capped(Isa::Avx2))
        );
        let s = IsaState::from_cap(Isa::Avx2, Some("avx512_core_fp16".into()));
        assert_eq!(s.active, Isa::Avx2);
        assert_eq!(
            s.reason,
            ActiveReason::CapAboveDetected(Isa::Avx512CoreFp16)
        );
        assert!(s.cap_error().is_none());
    }

    #[test]
    fn bad_cap_keeps_detection_and_reports_it() {
        let s = IsaState::from_cap(Isa::Avx512Core, Some("avx512_core_amx".into()));
        assert_eq!(s.active, Isa::Avx512Core);
        assert!(matches!(s.cap_error(), Some(IsaError::NotImplemented(_))));
        let s = IsaState::from_cap(Isa::Avx512Core, Some("sse9".into()));
        assert!(matches!(s.cap_error(), Some(IsaError::Unknown(_))));
        assert!(s.reason.to_string().contains("ignored"));
    }

    #[test]
    fn require_rejects_levels_above_detection() {
        assert_eq!(Isa::Scalar.require(), Ok(Isa::Scalar));
        for isa in Isa::ALL {
            assert_eq!(isa.require().is_ok(), isa <= detected_isa());
        }
    }
}
