//! The summary table of `ssmlab kernels`: decay and Δt per layer and direction.

use super::*;

/// One row of the summary table: a layer's direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub layer: usize,
    pub direction: Direction,
    /// Per channel: lag where |K| falls below 1% of its max (None: beyond L). BiGS: one.
    pub decay: Vec<Option<usize>>,
    pub dt: (f64, f64, f64),
    /// |Re A| (min, median, max) over all modes.
    pub a_re: (f64, f64, f64),
    pub max_abs_k: f64,
}

/// The rows of `ssmlab kernels`' table (all layers, or one).
pub fn summary(mk: &ModelKernels, layer: Option<usize>) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for (i, l) in mk.layers.iter().enumerate() {
        if layer.is_some_and(|x| x != i) {
            continue;
        }
        for dir in [Direction::Forward, Direction::Backward] {
            let s = l.get(dir);
            let a: Vec<f64> = s.eig.iter().map(|e| e.0.abs()).collect();
            rows.push(SummaryRow {
                layer: i,
                direction: dir,
                decay: s.kernels.iter().map(|k| decay_lag(k, 0.01)).collect(),
                dt: spread(&s.dt).unwrap_or_default(),
                a_re: spread(&a).unwrap_or_default(),
                max_abs_k: s.kernels.iter().flatten().fold(0f64, |m, v| m.max(v.abs())),
            });
        }
    }
    rows
}

/// "37" or ">128" (never falls below 1% within L).
pub fn fmt_decay(d: Option<usize>, len: usize) -> String {
    match d {
        Some(d) => d.to_string(),
        None => format!(">{len}"),
    }
}

/// Decay lags of several channels as "min/med/max" (`>L` for a channel whose kernel outlasts
/// L; the median over all channels, counting those as L).
pub fn fmt_decay_spread(decay: &[Option<usize>], len: usize) -> String {
    let as_len: Vec<f64> = decay.iter().map(|d| d.unwrap_or(len) as f64).collect();
    let Some((lo, med, hi)) = spread(&as_len) else {
        return String::new();
    };
    let f = |v: f64| {
        if v >= len as f64 {
            format!(">{len}")
        } else {
            format!("{v:.0}")
        }
    };
    format!("{}/{}/{}", f(lo), f(med), f(hi))
}

/// The summary table as text (what `ssmlab kernels` prints without `--out`).
pub fn summary_table(mk: &ModelKernels, layer: Option<usize>) -> String {
    let weights = match mk.weights_note() {
        "" => String::new(),
        w => format!(" ({w})"),
    };
    let image = mk
        .image
        .map(|g| {
            format!(
                ", {}×{} image in {}×{} patches of {}² (raster order)",
                g.height,
                g.width,
                g.rows(),
                g.cols(),
                g.patch
            )
        })
        .unwrap_or_default();
    let mut s = format!(
        "{}: {} {}{weights}, {} layers × 2 directions, {}, L = {}{image}, A init {} (Δt init {}–{})\n",
        mk.weights.display(),
        mk.family,
        mk.label(),
        mk.layers.len(),
        mk.channels_note(),
        mk.len,
        mk.init.a_init,
        mk.init.dt_range.0,
        mk.init.dt_range.1,
    );
    let rows = summary(mk, layer);
    let per_channel = rows.iter().any(|r| r.decay.len() > 1);
    s += if per_channel {
        "decay lag: the lag after which |K| stays below 1% of its maximum; min/med/max over \
         channels, as are Δt and |A_re| over channels and modes\n"
    } else {
        "decay lag: the lag after which |K| stays below 1% of its maximum\n"
    };
    let decays: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.decay.len() == 1 {
                fmt_decay(r.decay[0], mk.len)
            } else {
                fmt_decay_spread(&r.decay, mk.len)
            }
        })
        .collect();
    let head = if per_channel {
        "decay min/med/max"
    } else {
        "decay lag"
    };
    let dw = decays
        .iter()
        .map(|d| d.chars().count())
        .chain([head.chars().count()])
        .max()
        .unwrap_or(10)
        .max(10);
    s += &format!(
        "{:>5} {:>4} {:>dw$} {:>9} {:>9} {:>9} {:>21} {:>9}\n",
        "layer", "dir", head, "Δt min", "Δt med", "Δt max", "|A_re| min/med/max", "max|K|"
    );
    for (r, decay) in rows.into_iter().zip(decays) {
        s += &format!(
            "{:>5} {:>4} {:>dw$} {:>9.4} {:>9.4} {:>9.4} {:>6.3}/{:>6.3}/{:>6.3} {:>9.4}\n",
            r.layer,
            r.direction.short(),
            decay,
            r.dt.0,
            r.dt.1,
            r.dt.2,
            r.a_re.0,
            r.a_re.1,
            r.a_re.2,
            r.max_abs_k
        );
    }
    s
}
