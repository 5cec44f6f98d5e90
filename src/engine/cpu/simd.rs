//! Vectorisable element-wise math for the fused CPU kernels.
//!
//! libm's `expf` is a call per element, so loops over it never vectorise; in a BiGS training
//! step the tanh-GELU's exponentials alone were a sixth of the CPU time. [`exp_f32`] is
//! branch-free arithmetic that the compiler turns into SIMD code, and [`vectorised`] runs a
//! kernel compiled for AVX2+FMA where the CPU has them (checked once at run time), the
//! baseline x86-64 (SSE2) build everywhere else.

use std::sync::OnceLock;

/// e^x in f32: round x·log₂e to n, reduce r = x − n·ln 2 (|r| ≤ ln2/2, two-part ln 2), a
/// degree-7 Taylor polynomial for e^r, and 2ⁿ from the exponent bits. Relative error below
/// 3e-7 on [−87, 88]; inputs are clamped to that range (e^x of larger |x| saturates to
/// 1.2e-38 or 2.2e38, which every caller here treats as 0 or ∞); NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    // Selects rather than `max`/`min`, which would turn a NaN into a bound: NaN stays NaN.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// Whether the CPU has AVX2 and FMA (checked once).
pub(crate) fn has_avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Runs `f` compiled for AVX2+FMA when the CPU has them: `f` is inlined into a function with
/// those features enabled, so its loops vectorise 8 floats wide instead of 4. Mark the closure
/// `#[inline(always)]` and write plain `for` loops over slices cut to one length: without the
/// attribute the closure stayed a function of its own, compiled for SSE (every fused element
/// loop of a BiGS step ran 4 wide, seen in the profile); a `for_each` (an iterator's `fold`)
/// could stay outlined too, and slices of unknown length keep a bounds check in the loop.
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { with_avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Defines `fn $name<generics>(args…)`, which calls the always-inlined kernel `$kernel(args…)`
/// compiled for AVX2+FMA where the CPU has them (the baseline build elsewhere). Closures handed
/// to [`vectorised`] were not always inlined into its AVX2 function (the profile showed their
/// loops on SSE registers); an instance names its kernel directly, so the kernel is inlined.
macro_rules! avx2_instance {
    ($name:ident [$($g:tt)*] => $kernel:ident ($($arg:ident: $ty:ty),* $(,)?)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<$($g)*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if $crate::engine::cpu::simd::has_avx2_fma() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$($g)*>($($arg: $ty),*) {
                    $kernel($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { avx2($($arg),*) };
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use avx2_instance;
