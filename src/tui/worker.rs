//! The TUI's workers, in one module with one message enum. The UI thread only draws and
//! handles input; everything slow runs here:
//! - `runs` scans the runs folder twice a second and sends a snapshot when something changed;
//! - `probe` loads models and runs fill-mask;
//! - `kernels` computes the SSM kernels of a run's checkpoints and records;
//! - `compare` times training steps of the Compare view's two models;
//! - `image` lists sample folders, decodes PNGs and encodes them for graphics protocols;
//! - `sampler` draws samples ("sample now");
//! - `derive` computes what the panes show from data they hold: the Curves series
//!   (smoothing and min/max downsampling of a whole log) and the Kernels figures (FFTs,
//!   heat maps), when their input changes, never per frame.
//!
//! Jobs carry run paths, ids and plain data (no engine type); every result comes back as a
//! [`WorkerMsg`] through one [`Report`] callback (the event loop's channel), and the app
//! routes it to the pane it belongs to. Every worker thread is named `ssmlab-<what>`, and
//! [`guard`] turns a panic inside one job into that job's error, so the pane shows it and the
//! worker goes on with the next job. The panic hook keeps worker panics off the screen (the
//! default hook would print over the frame, and ratatui's would leave the alternate screen
//! while the UI runs on): it records them for the status line instead. A panic on the UI
//! thread still restores the terminal first.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::image::{ImageEvent, ImageJob};
use super::views::curves::{Series, SeriesKey, SeriesSpec};
use crate::compare::ScalingPoint;
use crate::kernels::ModelKernels;
use crate::kernels::figure::{Figure, Selection};
use crate::runs::index::{RunSummary, RunsIndex};

/// A "sample now" job for the sampler worker.
pub use crate::sample::NowRequest as SampleRequest;

const PREFIX: &str = "ssmlab-";

/// Worker panics not yet shown in the status line.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// The last panic on this thread, as the hook described it (with its location).
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Starts a worker thread named `ssmlab-<what>`.
pub fn spawn(what: &str, f: impl FnOnce() + Send + 'static) {
    let b = std::thread::Builder::new().name(format!("{PREFIX}{what}"));
    // A thread that cannot start leaves its pane waiting; say so in the status line.
    if let Err(e) = b.spawn(f) {
        record(format!("cannot start the {what} worker: {e}"));
    }
}

fn record(msg: String) {
    if let Ok(mut p) = PANICS.lock()
        && p.len() < 16
    {
        p.push(msg);
    }
}

/// Worker panics since the last call (for the status line).
pub fn take_panics() -> Vec<String> {
    PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs one job of the `what` worker; a panic becomes `Err` naming the worker and the panic
/// (where the hook saw it), and the worker stays usable.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let detail = LAST
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(|| payload_text(p.as_ref()));
            Err(format!(
                "the {what} worker hit a bug ({detail}); it goes on with the next request"
            ))
        }
    }
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let loc = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    format!("panicked{loc}: {}", payload_text(info.payload()))
}

/// Installs the hook described in the module docs, around the current one (ratatui's).
pub fn install_panic_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        match thread.name().and_then(|n| n.strip_prefix(PREFIX)) {
            Some(what) => {
                let d = describe(info);
                record(format!("{what} worker {d}"));
                LAST.with(|l| *l.borrow_mut() = Some(d));
            }
            None => prev(info),
        }
    }));
}

// ---------------------------------------------------------------------------------------
// Messages and jobs

/// Everything a worker reports to the UI thread.
pub enum WorkerMsg {
    /// A new snapshot of the runs folder.
    Runs(Vec<RunSummary>),
    /// A fill-mask result for probe slot 0 (A) or 1 (B).
    Probe(usize, Result<crate::probe::ProbeOutput, String>),
    Kernels(KernelsMsg),
    Image(ImageEvent),
    Sample(SampleEvent),
    Compare(CompareMsg),
    /// A Curves series, for the key it was asked for.
    Series(SeriesKey, Result<Series, String>),
    /// A Kernels figure, for the key it was asked for.
    Figure(FigureKey, Result<Figure, String>),
}

/// How workers report: returns false once the UI is gone (the worker then ends).
pub type Report = Arc<dyn Fn(WorkerMsg) -> bool + Send + Sync>;

/// A report callback that sends into a channel (the event loop's, or a test's).
pub fn report_to<T: Send + 'static>(tx: Sender<T>, wrap: fn(WorkerMsg) -> T) -> Report {
    let tx = Mutex::new(tx);
    Arc::new(move |m| tx.lock().map(|t| t.send(wrap(m)).is_ok()).unwrap_or(false))
}

/// A fill-mask request for the probe worker.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    /// 0 = A, 1 = B.
    pub slot: usize,
    pub model: PathBuf,
    pub text: String,
}

/// Compute the kernels of every checkpoint of a model path (the kernels worker).
#[derive(Debug, Clone)]
pub struct KernelsJob {
    pub generation: u64,
    pub model: PathBuf,
}

/// What the kernels worker reports, tagged with its job's generation.
#[derive(Debug)]
pub enum KernelsMsg {
    Started {
        generation: u64,
        total: usize,
    },
    Loaded {
        generation: u64,
        kernels: Box<ModelKernels>,
    },
    Failed {
        generation: u64,
        error: String,
    },
    Done {
        generation: u64,
    },
}

impl KernelsMsg {
    pub fn generation(&self) -> u64 {
        match self {
            KernelsMsg::Started { generation, .. }
            | KernelsMsg::Loaded { generation, .. }
            | KernelsMsg::Failed { generation, .. }
            | KernelsMsg::Done { generation } => *generation,
        }
    }
}

/// Time a training step of two models at several lengths (the Compare view's worker).
#[derive(Debug, Clone)]
pub struct CompareJob {
    pub generation: u64,
    /// (run id, config.toml text) of the BiGS run, then the attention run.
    pub runs: Vec<(String, String)>,
}

/// What the scaling worker reports.
#[derive(Debug)]
pub enum CompareMsg {
    Point(u64, ScalingPoint),
    Done(u64),
    Failed(u64, String),
}

/// The sampler: draws the samples of a request, calls the progress callback with a fraction
/// in [0, 1], and returns the `samples/now-*` folder it wrote (per `runs::samples`).
pub type SamplerFn = Box<dyn Fn(SampleRequest, &dyn Fn(f64)) -> anyhow::Result<PathBuf> + Send>;

/// Messages of the sampler worker.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleEvent {
    Progress(f64),
    Done(Result<PathBuf, String>),
}

/// What a Kernels figure is computed from: the selection, how many entries had arrived, and
/// the job generation they belong to.
pub type FigureKey = (Selection, usize, u64);

/// Work for the derive worker.
pub enum DeriveJob {
    /// A run's series for the Curves view (the run is a snapshot: its metrics share chunks
    /// with the UI's copy, so sending it copies no records).
    Series {
        key: SeriesKey,
        run: Box<RunSummary>,
        spec: SeriesSpec,
        buckets: usize,
    },
    /// The Kernels view's figure for a selection.
    Figure {
        key: FigureKey,
        data: Arc<Vec<ModelKernels>>,
        sel: Selection,
    },
}

impl DeriveJob {
    /// Does the job (on the worker, or inline where there is none).
    pub fn run(self) -> WorkerMsg {
        match self {
            DeriveJob::Series {
                key,
                run,
                spec,
                buckets,
            } => {
                let s = guard("derive", || {
                    Ok(super::views::curves::series(&run, &spec, buckets))
                });
                WorkerMsg::Series(key, s)
            }
            DeriveJob::Figure { key, data, sel } => {
                let f = guard("derive", || Ok(crate::kernels::figure::figure(&data, &sel)));
                WorkerMsg::Figure(key, f)
            }
        }
    }
}

/// Where the panes send their jobs. A sender is `None` in headless tests, where panes do the
/// quick jobs (image listing and decoding, derived data) inline and say that the slow ones
/// (models, sampling, timing) have no worker.
#[derive(Default)]
pub struct Workers {
    pub probe: Option<Sender<ProbeJob>>,
    pub kernels: Option<Sender<KernelsJob>>,
    pub compare: Option<Sender<CompareJob>>,
    pub image: Option<Sender<ImageJob>>,
    pub sample: Option<Sender<SampleRequest>>,
    pub derive: Option<Sender<DeriveJob>>,
}

impl Workers {
    /// Starts every worker: the runs scan of `runs_dir` (until `stop`), and one thread per
    /// kind of job.
    pub fn start(
        runs_dir: PathBuf,
        report: Report,
        stop: Arc<AtomicBool>,
        sampler: SamplerFn,
    ) -> Workers {
        spawn_runs(runs_dir, report.clone(), stop);
        Workers {
            probe: Some(spawn_probe(report.clone())),
            kernels: Some(spawn_kernels(report.clone())),
            compare: Some(spawn_compare(report.clone())),
            image: Some(spawn_image(report.clone())),
            sample: Some(spawn_sample(sampler, report.clone())),
            derive: Some(spawn_derive(report)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The workers

/// Scans the runs folder twice a second and sends a snapshot when something changed.
fn spawn_runs(dir: PathBuf, report: Report, stop: Arc<AtomicBool>) {
    spawn("runs", move || {
        let mut index = RunsIndex::new();
        let mut last_sig = String::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(runs) = guard("runs", || {
                let mut runs = index.scan(&dir);
                crate::sweep::label_runs(&dir, &mut runs);
                Ok(runs)
            }) else {
                // The status line names the panic; start over with an empty cache.
                index = RunsIndex::new();
                std::thread::sleep(Duration::from_millis(2000));
                continue;
            };
            let sig: String = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}:{}:{}:{:?}:{:?};",
                        r.id,
                        r.metrics.len(),
                        r.state_label(),
                        r.checkpoints.len(),
                        r.status.as_ref().map(|s| s.heartbeat as u64),
                        r.sweep
                    )
                })
                .collect();
            if sig != last_sig {
                last_sig = sig;
                if !report(WorkerMsg::Runs(runs)) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// Loads models and runs fill-mask off the UI thread. A model is kept loaded until its weights
/// file changes (a running run's latest checkpoint is picked up when a new one appears; probing
/// only reads files, so it never disturbs the run).
fn spawn_probe(report: Report) -> Sender<ProbeJob> {
    let (jtx, jrx) = mpsc::channel::<ProbeJob>();
    spawn("probe", move || {
        let mut cache: Vec<(PathBuf, crate::probe::ProbeModel)> = Vec::new();
        while let Ok(job) = jrx.recv() {
            let res = guard("probe", || -> Result<crate::probe::ProbeOutput, String> {
                let files = crate::probe::resolve(&job.model).map_err(|e| e.to_string())?;
                let pos = cache.iter().position(|(w, _)| *w == files.weights);
                let pm = match pos {
                    Some(i) => &cache[i].1,
                    None => {
                        let pm = crate::probe::ProbeModel::open_on_cpu(&job.model)
                            .map_err(|e| e.to_string())?;
                        if cache.len() == 4 {
                            cache.remove(0);
                        }
                        cache.push((files.weights.clone(), pm));
                        &cache[cache.len() - 1].1
                    }
                };
                pm.fill_mask(&job.text, 10, &[], true)
                    .map_err(|e| e.to_string())
            });
            if !report(WorkerMsg::Probe(job.slot, res)) {
                return;
            }
        }
    });
    jtx
}

/// Computes the kernels of a model path's history (its checkpoints and `kernels.jsonl` records)
/// off the UI thread, one message per entry (ascending by step). Results are cached by weights
/// file and modification time (records: by file, step and time); a newer job abandons the
/// current one between entries.
fn spawn_kernels(report: Report) -> Sender<KernelsJob> {
    let (jtx, jrx) = mpsc::channel::<KernelsJob>();
    spawn("kernels", move || {
        let mut cache: HashMap<String, ModelKernels> = HashMap::new();
        let mut next: Option<KernelsJob> = None;
        loop {
            let mut job = match next.take() {
                Some(j) => j,
                None => match jrx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            while let Ok(j) = jrx.try_recv() {
                job = j;
            }
            let generation = job.generation;
            let send = |m: KernelsMsg| report(WorkerMsg::Kernels(m));
            let entries = guard("kernels", || {
                crate::kernels::snapshots(&job.model).map_err(|e| e.to_string())
            });
            let entries = match entries {
                Ok(f) => f,
                Err(error) => {
                    if !send(KernelsMsg::Failed { generation, error }) {
                        return;
                    }
                    continue;
                }
            };
            if !send(KernelsMsg::Started {
                generation,
                total: entries.len(),
            }) {
                return;
            }
            let mut failed = false;
            for e in &entries {
                if let Ok(j) = jrx.try_recv() {
                    next = Some(j);
                    break;
                }
                let key = e.cache_key();
                let mk = match cache.get(&key) {
                    Some(mk) => mk.clone(),
                    None => match guard("kernels", || {
                        crate::kernels::load_snapshot(e).map_err(|e| e.to_string())
                    }) {
                        Ok(mk) => {
                            if cache.len() > 4 * crate::kernels::MAX_HISTORY {
                                cache.clear();
                            }
                            cache.insert(key, mk.clone());
                            mk
                        }
                        Err(error) => {
                            failed = true;
                            if !send(KernelsMsg::Failed { generation, error }) {
                                return;
                            }
                            break;
                        }
                    },
                };
                if !send(KernelsMsg::Loaded {
                    generation,
                    kernels: Box::new(mk),
                }) {
                    return;
                }
            }
            if next.is_none() && !failed && !send(KernelsMsg::Done { generation }) {
                return;
            }
        }
    });
    jtx
}

/// Times training steps of the Compare view's two models, one point per message; a newer job
/// abandons the current one after the point in progress.
fn spawn_compare(report: Report) -> Sender<CompareJob> {
    let (jtx, jrx) = mpsc::channel::<CompareJob>();
    spawn("compare", move || {
        let mut next: Option<CompareJob> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match jrx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            let g = job.generation;
            let res = guard("compare", || {
                crate::compare::scaling_of_runs(
                    &job.runs,
                    &crate::compare::LENGTHS,
                    crate::compare::TOKENS,
                    1,
                    |p| {
                        if let Ok(j) = jrx.try_recv() {
                            next = Some(j);
                            return false;
                        }
                        report(WorkerMsg::Compare(CompareMsg::Point(g, p.clone())))
                    },
                )
                .map_err(|e| format!("scaling: {e}"))
            });
            let m = match res {
                Ok(_) => CompareMsg::Done(g),
                Err(e) => CompareMsg::Failed(g, e),
            };
            if !report(WorkerMsg::Compare(m)) {
                return;
            }
        }
    });
    jtx
}

/// Starts the image worker. Of several queued encode jobs only the newest is done (the pane
/// size changed meanwhile).
pub fn spawn_image(report: Report) -> Sender<ImageJob> {
    let (tx, rx) = mpsc::channel::<ImageJob>();
    spawn("image", move || {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let last_encode = jobs
                .iter()
                .rposition(|j| matches!(j, ImageJob::Encode { .. }));
            for (i, job) in jobs.into_iter().enumerate() {
                if matches!(job, ImageJob::Encode { .. }) && Some(i) != last_encode {
                    continue;
                }
                if !report(WorkerMsg::Image(super::image::handle(job))) {
                    return;
                }
            }
        }
    });
    tx
}

/// Runs `sampler` on its own thread, one request at a time.
pub fn spawn_sample(sampler: SamplerFn, report: Report) -> Sender<SampleRequest> {
    let (tx, rx) = mpsc::channel::<SampleRequest>();
    spawn("sampler", move || {
        while let Ok(req) = rx.recv() {
            let progress = |f: f64| {
                report(WorkerMsg::Sample(SampleEvent::Progress(f.clamp(0.0, 1.0))));
            };
            let r = guard("sampler", || {
                sampler(req, &progress).map_err(|e| format!("{e:#}"))
            });
            if !report(WorkerMsg::Sample(SampleEvent::Done(r))) {
                return;
            }
        }
    });
    tx
}

/// Computes derived data for the panes. Jobs queued together are done once each (series by
/// key, in order), and of several Kernels figures only the newest (the selection moved on).
pub fn spawn_derive(report: Report) -> Sender<DeriveJob> {
    let (tx, rx) = mpsc::channel::<DeriveJob>();
    spawn("derive", move || {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let last_figure = jobs
                .iter()
                .rposition(|j| matches!(j, DeriveJob::Figure { .. }));
            let mut seen: Vec<SeriesKey> = Vec::new();
            for (i, job) in jobs.into_iter().enumerate() {
                match &job {
                    DeriveJob::Figure { .. } if Some(i) != last_figure => continue,
                    DeriveJob::Series { key, .. } => {
                        if seen.contains(key) {
                            continue;
                        }
                        seen.push(key.clone());
                    }
                    _ => {}
                }
                if !report(job.run()) {
                    return;
                }
            }
        }
    });
    tx
}
