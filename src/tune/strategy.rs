//! The searches: a session that evaluates plans within the budget, and the
//! three strategies (default, INC 3.x `Sequential`, INC 2.x `OpWise`).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use mixprec_kernels::FloatType;

use super::config::{CompiledFilter, MixedPrecisionConfig, Tolerance, TuningConfig};
use super::error::TuneError;
use super::report::TrialRecord;
use super::sensitivity::{largest_gap, rank, relative_l2};
use super::target::{DtypeMap, Tunable, TunableNode};

/// A plan over every lowerable node, in [`Session::nodes`] order.
pub(crate) type Plan = Vec<FloatType>;

/// Sensitivity gap (ratio between consecutive ranked nodes) worth probing
/// before plain bisection.
const GAP_RATIO: f64 = 4.0;

/// A low node counts as measured slower than fp32 when its median time is
/// this many times the fp32 one...
const SLOWER_RATIO: f64 = 1.25;
/// ...and at least this many seconds more (so noise on tiny nodes does
/// not decide).
const SLOWER_MIN_S: f64 = 2e-6;

/// Op types that do the heavy lifting; others are cheap enough to follow
/// their neighbours' precision when no cost model says otherwise.
const HEAVY_OPS: [&str; 5] = ["Gemm", "MatMul", "Conv", "ConvTranspose", "Linear"];

/// One config's search space.
pub(crate) struct Space {
    /// Indices (into the session's nodes) the search may change.
    pub cand: Vec<usize>,
    /// Per node: the override dtype, if pinned.
    pub fixed: Vec<Option<FloatType>>,
    /// Low dtypes in preference order.
    pub lows: Vec<FloatType>,
    /// Per node: why it is not searched (filters, overrides).
    pub excluded: Vec<Option<String>>,
}

impl Space {
    pub fn new(
        nodes: &[TunableNode],
        cfg: &MixedPrecisionConfig,
        filter: &CompiledFilter,
    ) -> Space {
        let mut cand = Vec::new();
        let mut fixed = vec![None; nodes.len()];
        let mut excluded = vec![None; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            if let Some(&d) = cfg.overrides.get(&n.name) {
                fixed[i] = Some(d);
                excluded[i] = Some(format!("pinned to {} by an override", d.name()));
            } else if let Some(why) = filter.reason_excluded(&n.name, &n.op_type) {
                excluded[i] = Some(why);
            } else {
                debug_assert!(filter.allows(&n.name, &n.op_type));
                cand.push(i);
            }
        }
        Space {
            cand,
            fixed,
            lows: cfg.low_dtypes(),
            excluded,
        }
    }

    /// Candidates in `low` except those in `fp32` (indices into `cand`);
    /// pinned nodes as pinned, the rest f32.
    pub fn plan(&self, low: FloatType, fp32: &[bool]) -> Plan {
        let mut p: Plan = self
            .fixed
            .iter()
            .map(|f| f.unwrap_or(FloatType::F32))
            .collect();
        for (c, &i) in self.cand.iter().enumerate() {
            if !fp32[c] {
                p[i] = low;
            }
        }
        p
    }
}

/// The result of one strategy over one config.
#[derive(Default)]
pub(crate) struct Outcome {
    /// The plan the strategy settles on, if one passed.
    pub winner: Option<Plan>,
    /// Per node: sensitivity (relative L2 of outputs) when measured.
    pub sensitivity: Vec<Option<f64>>,
    /// Per node: why it ended fp32.
    pub reasons: Vec<Option<String>>,
    /// The low dtype the search settled on.
    pub low: Option<FloatType>,
}

/// Evaluates plans with the user's function, within the budget, recording
/// every trial.
pub(crate) struct Session<'a, T: Tunable, F> {
    pub target: &'a T,
    eval: F,
    pub nodes: Vec<TunableNode>,
    pub baseline: f64,
    pub tolerance: Tolerance,
    pub higher_is_better: bool,
    max_trials: usize,
    deadline: Option<Instant>,
    pub trials: Vec<TrialRecord>,
    cache: HashMap<Plan, (f64, bool, usize)>,
    pub calibration_passes: usize,
    pub timed_out: bool,
    reference: Option<Vec<f32>>,
    reps: usize,
    prefer_measured: bool,
}

impl<'a, T, F, E> Session<'a, T, F>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    pub fn new(target: &'a T, eval: F, cfg: &TuningConfig, start: Instant) -> Self {
        Session {
            target,
            eval,
            nodes: target.tunable_nodes(),
            baseline: f64::NAN,
            tolerance: cfg.tolerance,
            higher_is_better: cfg.higher_is_better,
            max_trials: cfg.max_trials,
            deadline: cfg.timeout.map(|t| start + t),
            trials: Vec::new(),
            cache: HashMap::new(),
            calibration_passes: 0,
            timed_out: false,
            reference: None,
            reps: cfg.latency_reps.max(1),
            prefer_measured: cfg.prefer_measured_speed,
        }
    }

    pub fn to_map(&self, plan: &[FloatType]) -> DtypeMap {
        self.nodes
            .iter()
            .zip(plan)
            .map(|(n, &d)| (n.name.clone(), d))
            .collect()
    }

    pub fn all_f32(&self) -> Plan {
        vec![FloatType::F32; self.nodes.len()]
    }

    pub fn compile(&self, plan: &[FloatType], during: &str) -> Result<T::Model, TuneError<E>> {
        self.target
            .compile(&self.to_map(plan))
            .map_err(|e| TuneError::model(format!("compiling the {during} plan"), e))
    }

    /// Evaluates the all-f32 baseline (not a trial).
    pub fn evaluate_baseline(&mut self) -> Result<f64, TuneError<E>> {
        let model = self.compile(&self.all_f32(), "fp32 baseline")?;
        let m = (self.eval)(&model).map_err(TuneError::Eval)?;
        self.baseline = m;
        Ok(m)
    }

    pub fn passes(&self, metric: f64) -> bool {
        self.tolerance
            .passes(metric, self.baseline, self.higher_is_better)
    }

    /// Whether `a` scores better than `b` (NaN is worst).
    pub fn better(&self, a: f64, b: f64) -> bool {
        if a.is_nan() {
            return false;
        }
        if b.is_nan() {
            return true;
        }
        if self.higher_is_better { a > b } else { a < b }
    }

    fn out_of_budget(&mut self) -> bool {
        if self.trials.len() >= self.max_trials {
            return true;
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            self.timed_out = true;
            return true;
        }
        false
    }

    /// Evaluates a plan as a trial: `Some((passed, metric))`, or `None` when
    /// the budget or the timeout is spent. A plan seen before is answered
    /// from the cache without calling `eval_fn`.
    pub fn trial(
        &mut self,
        plan: &[FloatType],
        phase: &str,
        description: String,
    ) -> Result<Option<(bool, f64)>, TuneError<E>> {
        if let Some(&(m, p, _)) = self.cache.get(plan) {
            return Ok(Some((p, m)));
        }
        if self.out_of_budget() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let model = self.compile(plan, phase)?;
        let metric = (self.eval)(&model).map_err(TuneError::Eval)?;
        let passed = self.passes(metric);
        let index = self.trials.len() + 1;
        self.trials.push(TrialRecord {
            index,
            phase: phase.to_string(),
            description,
            fp32_nodes: self
                .nodes
                .iter()
                .zip(plan)
                .filter(|(_, d)| **d == FloatType::F32)
                .map(|(n, _)| n.name.clone())
                .collect(),
            low_nodes: plan.iter().filter(|d| **d != FloatType::F32).count(),
            metric,
            passed,
            seconds: t0.elapsed().as_secs_f64(),
        });
        self.cache.insert(plan.to_vec(), (metric, passed, index));
        Ok(Some((passed, metric)))
    }

    /// The trial number that evaluated `plan`, if any.
    pub fn trial_of(&self, plan: &[FloatType]) -> Option<(usize, f64)> {
        self.cache.get(plan).map(|&(m, _, i)| (i, m))
    }

    /// Calibration outputs of a plan (no `eval_fn`).
    pub fn forward(&mut self, plan: &[FloatType]) -> Result<Vec<f32>, TuneError<E>> {
        let model = self.compile(plan, "sensitivity")?;
        self.calibration_passes += 1;
        self.target
            .forward(&model)
            .map_err(|e| TuneError::model("running the calibration inputs", e))
    }

    /// Median seconds per node over `reps` profiled calibration passes, by
    /// node index; `None` when the model cannot profile.
    pub fn node_time_medians(
        &mut self,
        plan: &[FloatType],
    ) -> Result<Option<Vec<f64>>, TuneError<E>> {
        let model = self.compile(plan, "profiling")?;
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); self.nodes.len()];
        for _ in 0..self.reps {
            let Some(times) = self
                .target
                .node_times(&model)
                .map_err(|e| TuneError::model("profiling the calibration inputs", e))?
            else {
                return Ok(None);
            };
            self.calibration_passes += 1;
            for (i, n) in self.nodes.iter().enumerate() {
                samples[i].push(times.get(&n.name).copied().unwrap_or(0.0));
            }
        }
        Ok(Some(
            samples
                .into_iter()
                .map(|mut v| {
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(0.0)
                })
                .collect(),
        ))
    }

    fn reference(&mut self) -> Result<Vec<f32>, TuneError<E>> {
        if self.reference.is_none() {
            let r = self.forward(&self.all_f32())?;
            self.reference = Some(r);
        }
        Ok(self.reference.clone().unwrap_or_default())
    }

    /// The passing trial that scores best, else the best-scoring trial.
    pub fn best_trial(&self) -> Option<Plan> {
        let mut best: Option<(&Plan, f64, bool, usize)> = None;
        for (plan, &(m, p, i)) in &self.cache {
            let take = match best {
                None => true,
                Some((_, bm, bp, bi)) => {
                    (p && !bp)
                        || (p == bp && self.better(m, bm))
                        || (p == bp && m.to_bits() == bm.to_bits() && i < bi)
                }
            };
            if take {
                best = Some((plan, m, p, i));
            }
        }
        best.map(|(p, ..)| p.clone())
    }
}

fn describe(nodes: &[TunableNode], plan: &[FloatType], low: FloatType) -> String {
    let fp32: Vec<&str> = nodes
        .iter()
        .zip(plan)
        .filter(|(_, d)| **d == FloatType::F32)
        .map(|(n, _)| n.name.as_str())
        .collect();
    if fp32.is_empty() {
        return format!("all {}", low.name());
    }
    let shown: Vec<&str> = fp32.iter().take(6).copied().collect();
    let more = if fp32.len() > 6 {
        format!(" (+{} more)", fp32.len() - 6)
    } else {
        String::new()
    };
    format!("{}, fp32: {}{}", low.name(), shown.join(", "), more)
}

/// How a fallback strategy starts after its all-low trials.
enum Opening {
    /// An all-low plan passed, or there is no low dtype: the outcome is final.
    Done(Outcome),
    /// Nothing passed: search per node in this low dtype.
    Search(Outcome, FloatType),
}

/// The opening the default and `OpWise` strategies share: an empty outcome
/// for every node, then each low dtype with every candidate low.
fn open_all_low<T, F, E>(s: &mut Session<'_, T, F>, space: &Space) -> Result<Opening, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let n = s.nodes.len();
    let mut out = Outcome {
        sensitivity: vec![None; n],
        reasons: vec![None; n],
        ..Default::default()
    };
    if let Some(p) = try_all_low(s, space)? {
        out.low = p.iter().copied().find(|d| *d != FloatType::F32);
        out.winner = Some(p);
        return Ok(Opening::Done(out));
    }
    let Some(&low) = space.lows.first() else {
        return Ok(Opening::Done(out));
    };
    out.low = Some(low);
    Ok(Opening::Search(out, low))
}

/// Tries each low dtype with every candidate low; returns the first plan
/// that passes. Step 2 of the default strategy and step 1 of `OpWise`.
fn try_all_low<T, F, E>(
    s: &mut Session<'_, T, F>,
    space: &Space,
) -> Result<Option<Plan>, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let none = vec![false; space.cand.len()];
    for &low in &space.lows {
        let plan = space.plan(low, &none);
        let desc = format!("all {}", low.name());
        match s.trial(&plan, "all-low", desc)? {
            Some((true, _)) => return Ok(Some(plan)),
            Some((false, _)) => {}
            None => break,
        }
    }
    Ok(None)
}

/// INC 3.x: whole-model trials in the dtype list's order; first pass wins.
pub(crate) fn sequential<T, F, E>(
    s: &mut Session<'_, T, F>,
    space: &Space,
    cfg: &MixedPrecisionConfig,
) -> Result<Outcome, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let n = s.nodes.len();
    let mut out = Outcome {
        sensitivity: vec![None; n],
        reasons: vec![None; n],
        ..Default::default()
    };
    let none = vec![false; space.cand.len()];
    for &d in &cfg.dtype {
        let plan = space.plan(d, &none);
        match s.trial(&plan, "sequential", format!("all {}", d.name()))? {
            Some((true, _)) => {
                out.low = Some(d);
                if d == FloatType::F32 {
                    for &i in &space.cand {
                        out.reasons[i] = Some("whole-model fp32 trial (sequential)".into());
                    }
                }
                out.winner = Some(plan);
                return Ok(out);
            }
            Some((false, _)) => {}
            None => break,
        }
    }
    Ok(out)
}

/// INC 2.x: all low; each candidate alone in fp32 to rank them; then
/// cumulative fallback in that order until it passes.
pub(crate) fn opwise<T, F, E>(
    s: &mut Session<'_, T, F>,
    space: &Space,
) -> Result<Outcome, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let (mut out, low) = match open_all_low(s, space)? {
        Opening::Done(out) => return Ok(out),
        Opening::Search(out, low) => (out, low),
    };
    let m = space.cand.len();
    let mut scores = Vec::with_capacity(m);
    for c in 0..m {
        let mut fp32 = vec![false; m];
        fp32[c] = true;
        let plan = space.plan(low, &fp32);
        let desc = describe(&s.nodes, &plan, low);
        match s.trial(&plan, "opwise-rank", desc)? {
            Some((_, metric)) => scores.push(metric),
            None => return Ok(out),
        }
    }
    // Best-scoring single fallback first, as INC 2.x orders them.
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (scores[a], scores[b]);
        if s.better(sa, sb) {
            std::cmp::Ordering::Less
        } else if s.better(sb, sa) {
            std::cmp::Ordering::Greater
        } else {
            a.cmp(&b)
        }
    });
    let mut fp32 = vec![false; m];
    for (step, &c) in order.iter().enumerate() {
        fp32[c] = true;
        let plan = space.plan(low, &fp32);
        let desc = describe(&s.nodes, &plan, low);
        match s.trial(&plan, "opwise-fallback", desc)? {
            Some((true, _)) => {
                for (k, &cc) in order.iter().take(step + 1).enumerate() {
                    out.reasons[space.cand[cc]] = Some(format!(
                        "op-wise fallback #{} (alone in fp32 it scored {:.6})",
                        k + 1,
                        scores[cc]
                    ));
                }
                out.winner = Some(plan);
                return Ok(out);
            }
            Some((false, _)) => {}
            None => return Ok(out),
        }
    }
    Ok(out)
}

/// The default strategy; see [`super::Strategy::Default`].
pub(crate) fn default<T, F, E>(
    s: &mut Session<'_, T, F>,
    space: &Space,
) -> Result<Outcome, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let n = s.nodes.len();
    // Step 2: everything low, each dtype in order.
    let (mut out, low) = match open_all_low(s, space)? {
        Opening::Done(out) => return Ok(out),
        Opening::Search(out, low) => (out, low),
    };
    let m = space.cand.len();
    if m == 0 {
        return Ok(out);
    }

    // Step 3: sensitivity without eval_fn. A node alone low shows what it
    // breaks on its own; the all-low plan with the node alone in fp32
    // shows what its fallback buys when errors compound. Take the larger.
    let y0 = s.reference()?;
    let all_low_err = {
        let y = s.forward(&space.plan(low, &vec![false; m]))?;
        relative_l2(&y, &y0)
    };
    let mut sens = vec![0.0f64; m];
    for c in 0..m {
        let mut fp32 = vec![true; m];
        fp32[c] = false;
        let alone = relative_l2(&s.forward(&space.plan(low, &fp32))?, &y0);
        fp32.iter_mut().for_each(|f| *f = false);
        fp32[c] = true;
        let without = relative_l2(&s.forward(&space.plan(low, &fp32))?, &y0);
        let gain = if all_low_err.is_infinite() {
            if without.is_finite() {
                f64::INFINITY
            } else {
                0.0
            }
        } else {
            (all_low_err - without).max(0.0)
        };
        sens[c] = alone.max(gain);
        out.sensitivity[space.cand[c]] = Some(sens[c]);
    }
    let order = rank(&sens);
    let sorted: Vec<f64> = order.iter().map(|&c| sens[c]).collect();
    let top = |k: usize| {
        let mut fp32 = vec![false; m];
        for &c in order.iter().take(k) {
            fp32[c] = true;
        }
        fp32
    };

    // Step 4: how many of the most sensitive to fall back, by bisection.
    // lo fails (all low did), hi is assumed to pass until shown.
    let (mut lo, mut hi) = (0usize, m);
    let mut hi_passed = false;
    let probe = |s: &mut Session<'_, T, F>, k: usize, phase: &str| {
        let plan = space.plan(low, &top(k));
        let desc = describe(&s.nodes, &plan, low);
        s.trial(&plan, phase, desc)
    };
    // A clear gap in the ranking is the likeliest boundary: probe it first.
    if let Some(k) = largest_gap(&sorted, GAP_RATIO) {
        match probe(s, k, "bisect")? {
            Some((true, _)) => {
                hi = k;
                hi_passed = true;
            }
            Some((false, _)) => lo = k,
            None => return Ok(out),
        }
    }
    let mut exhausted = false;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe(s, mid, "bisect")? {
            Some((true, _)) => {
                hi = mid;
                hi_passed = true;
            }
            Some((false, _)) => lo = mid,
            None => {
                exhausted = true;
                break;
            }
        }
    }
    if exhausted && !hi_passed {
        return Ok(out);
    }
    if !hi_passed {
        match probe(s, hi, "bisect")? {
            Some((true, _)) => {}
            _ => return Ok(out),
        }
    }
    let mut fp32 = top(hi);
    let failed_without_boundary = s.trial_of(&space.plan(low, &top(lo)));
    for (r, &c) in order.iter().take(hi).enumerate() {
        let why = if r + 1 == hi {
            match failed_without_boundary {
                Some((t, metric)) => format!(
                    "rank {} by sensitivity ({:.3e}); without it trial {t} scored {metric:.6} (fails)",
                    r + 1,
                    sens[c]
                ),
                None => format!("rank {} by sensitivity ({:.3e})", r + 1, sens[c]),
            }
        } else {
            format!(
                "rank {} by sensitivity ({:.3e}); among the top {hi} that bisection kept in fp32",
                r + 1,
                sens[c]
            )
        };
        out.reasons[space.cand[c]] = Some(why);
    }
    let mut current = space.plan(low, &fp32);

    // Step 4b: a cheap low node with fp32 on every side only adds two
    // casts; put it into the fp32 region.
    let costs = s.target.node_costs();
    let node_cost: Vec<Option<f64>> = s
        .nodes
        .iter()
        .map(|nd| costs.as_ref().and_then(|c| c.get(&nd.name).copied()))
        .collect();
    let heavy: Vec<bool> = s
        .nodes
        .iter()
        .map(|nd| {
            HEAVY_OPS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&nd.op_type))
        })
        .collect();
    let cost_of = |i: usize| node_cost[i];
    let total_cost: f64 = space.cand.iter().filter_map(|&i| cost_of(i)).sum();
    let is_cheap = |i: usize| match cost_of(i) {
        Some(c) if total_cost > 0.0 => c <= 0.02 * total_cost,
        _ => !heavy[i],
    };
    let index_of: BTreeMap<&str, usize> = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in s.nodes.iter().enumerate() {
        for p in &node.producers {
            if let Some(&j) = index_of.get(p.as_str()) {
                neighbours[i].push(j);
                neighbours[j].push(i);
            }
        }
    }
    let mut merged = Vec::new();
    for (c, &i) in space.cand.iter().enumerate() {
        if !fp32[c]
            && is_cheap(i)
            && !neighbours[i].is_empty()
            && neighbours[i].iter().all(|&j| current[j] == FloatType::F32)
        {
            merged.push(c);
        }
    }
    if !merged.is_empty() {
        let mut trial_fp32 = fp32.clone();
        for &c in &merged {
            trial_fp32[c] = true;
        }
        let plan = space.plan(low, &trial_fp32);
        let desc = describe(&s.nodes, &plan, low);
        if let Some((true, _)) = s.trial(&plan, "region", desc)? {
            for &c in &merged {
                out.reasons[space.cand[c]] = Some(
                    "cheap node between fp32 nodes: merged into their region to avoid casts".into(),
                );
            }
            fp32 = trial_fp32;
            current = plan;
        }
    }

    // Step 5: with the trials left, try lowering again the fallen-back
    // nodes other than the boundary one (which bisection showed is
    // needed): most costly first when a cost model exists, else least
    // sensitive first.
    let boundary = order[hi - 1];
    let mut again: Vec<usize> = order.iter().take(hi - 1).copied().collect();
    again.reverse();
    if costs.is_some() {
        again.sort_by(|&a, &b| {
            let ca = cost_of(space.cand[a]).unwrap_or(0.0);
            let cb = cost_of(space.cand[b]).unwrap_or(0.0);
            cb.partial_cmp(&ca).unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    for c in again {
        if c == boundary || !fp32[c] {
            continue;
        }
        if !sens[c].is_finite() {
            // Alone in low precision it already makes the outputs
            // non-finite (an overflow): no metric survives that.
            out.reasons[space.cand[c]] = Some(format!(
                "rank {} by sensitivity: alone in {} it makes the outputs non-finite (overflow)",
                order.iter().position(|&o| o == c).unwrap_or(0) + 1,
                low.name()
            ));
            continue;
        }
        let mut trial_fp32 = fp32.clone();
        trial_fp32[c] = false;
        let plan = space.plan(low, &trial_fp32);
        let desc = describe(&s.nodes, &plan, low);
        match s.trial(&plan, "relower", desc)? {
            Some((true, _)) => {
                fp32 = trial_fp32;
                current = plan;
                out.reasons[space.cand[c]] = None;
            }
            Some((false, metric)) => {
                let t = s.trial_of(&plan).map_or(0, |(t, _)| t);
                out.reasons[space.cand[c]] = Some(format!(
                    "rank {} by sensitivity ({:.3e}); lowering it again (trial {t}) scored {metric:.6} (fails)",
                    order.iter().position(|&o| o == c).unwrap_or(0) + 1,
                    sens[c]
                ));
            }
            None => break,
        }
    }

    // Step 5b: a node measured slower in low precision than in fp32 (its
    // casts and conversions cost more than the halved bytes save) is
    // better off in fp32 on both counts; try them back in fp32 together.
    if s.prefer_measured
        && let (Some(t32), Some(tlow)) = (
            s.node_time_medians(&s.all_f32())?,
            s.node_time_medians(&space.plan(low, &vec![false; m]))?,
        )
    {
        let slower: Vec<usize> = (0..m)
            .filter(|&c| !fp32[c])
            .filter(|&c| {
                let i = space.cand[c];
                tlow[i] > SLOWER_RATIO * t32[i] && tlow[i] - t32[i] > SLOWER_MIN_S
            })
            .collect();
        if !slower.is_empty() {
            let mut trial_fp32 = fp32.clone();
            for &c in &slower {
                trial_fp32[c] = true;
            }
            let plan = space.plan(low, &trial_fp32);
            let desc = describe(&s.nodes, &plan, low);
            if let Some((true, _)) = s.trial(&plan, "speed", desc)? {
                for &c in &slower {
                    let i = space.cand[c];
                    out.reasons[i] = Some(format!(
                        "measured slower in {} ({:.1} us) than in fp32 ({:.1} us)",
                        low.name(),
                        tlow[i] * 1e6,
                        t32[i] * 1e6
                    ));
                }
                current = plan;
            }
        }
    }
    out.winner = Some(current);
    Ok(out)
}
