//! Pure helpers behind the curves view: smoothing, downsampling, log-scale ticks.

/// TensorBoard-style smoothing: an exponential moving average debiased for its zero start,
/// `m_i = w·m_{i−1} + (1−w)·y_i`, `s_i = m_i / (1 − w^{i+1})`. Computed on the full series,
/// before any downsampling. Non-finite values are skipped (they keep the previous value).
pub fn ema_debiased(ys: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 0.999);
    let mut m = 0.0;
    let mut wn = 1.0; // w^n
    let mut last = f64::NAN;
    ys.iter()
        .map(|&y| {
            if y.is_finite() {
                m = w * m + (1.0 - w) * y;
                wn *= w;
                last = m / (1.0 - wn);
            }
            last
        })
        .collect()
}

/// Downsamples points (sorted by x) to at most `2·buckets` points: each bucket of equal x
/// width keeps its minimum and its maximum (in x order), so spikes survive.
pub fn minmax_downsample(pts: &[(f64, f64)], buckets: usize) -> Vec<(f64, f64)> {
    if pts.len() <= 2 * buckets || buckets == 0 {
        return pts.to_vec();
    }
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0);
    let width = (x1 - x0) / buckets as f64;
    let mut out = Vec::with_capacity(2 * buckets);
    let mut i = 0;
    for b in 0..buckets {
        let end = if b + 1 == buckets {
            f64::INFINITY
        } else {
            x0 + width * (b + 1) as f64
        };
        let start = i;
        while i < pts.len() && pts[i].0 < end {
            i += 1;
        }
        let bucket = &pts[start..i];
        if bucket.is_empty() {
            continue;
        }
        let (mut lo, mut hi) = (0, 0);
        for (j, p) in bucket.iter().enumerate() {
            if p.1 < bucket[lo].1 {
                lo = j;
            }
            if p.1 > bucket[hi].1 {
                hi = j;
            }
        }
        let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        out.push(bucket[a]);
        if b != a {
            out.push(bucket[b]);
        }
    }
    out
}

/// Tick values for a log-scale axis over [lo, hi] (lo > 0): powers of ten, with 2× and 5×
/// steps added when the range spans at most three decades, and every k-th decade when it spans
/// many (at most ~12 ticks). Bounds beyond the floats (an overflowed 10^y) are clamped, so an
/// extreme value in a log can never make this loop long.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if lo.is_nan() || lo <= 0.0 {
        return vec![];
    }
    let (lo, hi) = (lo.max(f64::MIN_POSITIVE), hi.min(f64::MAX));
    if hi <= lo {
        return vec![];
    }
    let (a, b) = (
        lo.log10().floor().clamp(-308.0, 308.0) as i32,
        hi.log10().ceil().clamp(-308.0, 308.0) as i32,
    );
    let mults: &[f64] = if b - a <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let every = ((b - a) / 12 + 1).max(1) as usize;
    let mut v = Vec::new();
    for e in (a..=b).step_by(every) {
        for m in mults {
            let t = m * 10f64.powi(e);
            if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                v.push(t);
            }
        }
    }
    v
}

/// Short label for a number (axis ticks, readouts).
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.1e}")
    }
}

/// A logged value as the log has it, for readouts: five significant digits with trailing
/// zeros dropped (`4.614`, `0.271`, `3133.2`), exponent form outside [1e-3, 1e5).
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.3e}");
    }
    let decimals = (4 - a.log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An integer axis label with thousands separators (`12,500`).
pub fn fmt_int(v: f64) -> String {
    let n = v.round();
    if !n.is_finite() || n.abs() >= 1e18 {
        return fmt_num(v);
    }
    let digits = format!("{}", n.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// A count axis label: `950`, `350k`, `1.2M`, `3.4G`.
pub fn fmt_count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Seconds as `h:mm:ss`.
pub fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return fmt_num(secs);
    }
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
