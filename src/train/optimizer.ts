/**
 * The optimizer side of on-device training: AdamW with torch.optim.AdamW's update (decoupled weight
 * decay, bias-corrected moments, non-amsgrad), the global gradient norm and its clipping as
 * torch.nn.utils.clip_grad_norm_ computes them, and the finiteness guard a training step checks first.
 *
 * Parameters are named Float32Arrays (a LoRA adapter's lora_A / lora_B tensors); gradients are maps
 * with the same names and sizes. Each update is computed per element in float64 and stored as float32
 * (parameters and both moments), so one step is exact up to that final rounding.
 */
import { InvalidInputError } from '../errors.js';

/** Named parameter (or gradient) tensors, flat and row-major. */
export type Params = Map<string, Float32Array>;

export interface AdamWOptions {
  /** The learning rate used when step() is given none (default schedule-free use). */
  lr: number;
  /** Decay rates of the first and second moment averages; torch's default (0.9, 0.999). */
  betas?: [number, number];
  /** Added to the denominator; torch's default 1e-8. */
  eps?: number;
  /** Decoupled weight decay coefficient: p *= 1 - lr * weightDecay each step; torch's default 0.01. */
  weightDecay?: number;
}

/** The optimizer's state, as torch keeps it: the step count and the two moment averages per tensor. */
export interface AdamWState {
  /** Steps taken so far (torch's state['step']). */
  step: number;
  /** First moment averages (torch's exp_avg), one per parameter. */
  m: Map<string, Float32Array>;
  /** Second moment averages (torch's exp_avg_sq), one per parameter. */
  v: Map<string, Float32Array>;
}

interface ResolvedOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

const OPTIMIZER = 'optimizer';

function checkLr(lr: number, file: string): void {
  if (!(Number.isFinite(lr) && lr >= 0)) {
    throw new InvalidInputError(file, 'lr', `must be a finite number >= 0, got ${lr}`);
  }
}

function resolveOptions(options: AdamWOptions): ResolvedOptions {
  checkLr(options.lr, OPTIMIZER);
  const betas = options.betas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2) {
    throw new InvalidInputError(OPTIMIZER, 'betas', `must be a pair [beta1, beta2], got ${String(betas)}`);
  }
  betas.forEach((b, i) => {
    if (!(typeof b === 'number' && b >= 0 && b < 1)) {
      throw new InvalidInputError(OPTIMIZER, `betas[${i}]`, `must be in [0, 1), got ${b}`);
    }
  });
  const eps = options.eps ?? 1e-8;
  if (!(Number.isFinite(eps) && eps > 0)) {
    throw new InvalidInputError(OPTIMIZER, 'eps', `must be a finite number > 0, got ${eps}`);
  }
  const weightDecay = options.weightDecay ?? 0.01;
  if (!(Number.isFinite(weightDecay) && weightDecay >= 0)) {
    throw new InvalidInputError(OPTIMIZER, 'weightDecay', `must be a finite number >= 0, got ${weightDecay}`);
  }
  return { lr: options.lr, beta1: betas[0], beta2: betas[1], eps, weightDecay };
}

/**
 * Checks that `tensors` has exactly the names of `params`, each with the parameter's size. Throws an
 * InvalidInputError naming `file` and the tensor at fault.
 */
function checkSameLayout(params: Params, tensors: Params, file: string): void {
  for (const [name, p] of params) {
    const t = tensors.get(name);
    if (t === undefined) throw new InvalidInputError(file, name, 'missing (every parameter needs one)');
    if (!(t instanceof Float32Array)) throw new InvalidInputError(file, name, 'must be a Float32Array');
    if (t.length !== p.length) {
      throw new InvalidInputError(
        file,
        name,
        `expected ${p.length} values (the parameter's size), got ${t.length}`,
      );
    }
  }
  for (const name of tensors.keys()) {
    if (!params.has(name)) throw new InvalidInputError(file, name, 'not a parameter of this optimizer');
  }
}

const copyMap = (tensors: Params): Params => new Map([...tensors].map(([k, t]) => [k, t.slice()]));

/**
 * torch.optim.AdamW (amsgrad = false, maximize = false) over named Float32Arrays, updated in place.
 * Per step t (1-based) and element, with g the gradient:
 *
 *   p = p * (1 - lr * wd)
 *   m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g²
 *   p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 *
 * computed in float64 and stored as float32. The caller guards against non-finite losses and
 * gradients with allFinite() before calling step().
 */
export class AdamW {
  readonly #params: Params;
  readonly #options: ResolvedOptions;
  readonly #m: Params;
  readonly #v: Params;
  #step = 0;

  /**
   * @param params the tensors to train; the optimizer keeps these Float32Arrays (not the map) and
   *   updates them in place.
   */
  constructor(params: Params, options: AdamWOptions) {
    this.#options = resolveOptions(options);
    for (const [name, p] of params) {
      if (!(p instanceof Float32Array)) throw new InvalidInputError('params', name, 'must be a Float32Array');
    }
    this.#params = new Map(params);
    this.#m = new Map([...params].map(([k, p]) => [k, new Float32Array(p.length)]));
    this.#v = new Map([...params].map(([k, p]) => [k, new Float32Array(p.length)]));
  }

  /** Steps taken so far. */
  get stepCount(): number {
    return this.#step;
  }

  /**
   * One update in place with learning rate `lr` (from the schedule; default options.lr). Every
   * parameter needs a gradient of its size; otherwise an InvalidInputError names the tensor and
   * nothing (parameters, moments, step count) changes.
   */
  step(grads: Params, lr: number = this.#options.lr): void {
    checkLr(lr, OPTIMIZER);
    checkSameLayout(this.#params, grads, 'grads');
    const { beta1, beta2, eps, weightDecay } = this.#options;
    const t = ++this.#step;
    const decay = 1 - lr * weightDecay;
    const stepSize = lr / (1 - beta1 ** t);
    const bc2Sqrt = Math.sqrt(1 - beta2 ** t);
    for (const [name, p] of this.#params) {
      const g = grads.get(name) as Float32Array;
      const m = this.#m.get(name) as Float32Array;
      const v = this.#v.get(name) as Float32Array;
      for (let i = 0; i < p.length; i++) {
        const gi = g[i];
        const mi = beta1 * m[i] + (1 - beta1) * gi;
        const vi = beta2 * v[i] + (1 - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
      }
    }
  }

  /** A copy of the state (step count and moments), for saving. */
  state(): AdamWState {
    return { step: this.#step, m: copyMap(this.#m), v: copyMap(this.#v) };
  }

  /**
   * An optimizer over `params` that continues from a saved state() exactly as the original would.
   * The state must have the step count and one moment of each parameter's size, for every parameter
   * (an InvalidInputError names 'optimizer state' and the tensor or field otherwise). The state is
   * copied, not kept.
   */
  static restore(params: Params, options: AdamWOptions, state: AdamWState): AdamW {
    const optimizer = new AdamW(params, options);
    if (!(Number.isInteger(state.step) && state.step >= 0)) {
      throw new InvalidInputError('optimizer state', 'step', `must be an integer >= 0, got ${state.step}`);
    }
    checkSameLayout(optimizer.#params, state.m, 'optimizer state m');
    checkSameLayout(optimizer.#params, state.v, 'optimizer state v');
    for (const [name, m] of state.m) (optimizer.#m.get(name) as Float32Array).set(m);
    for (const [name, v] of state.v) (optimizer.#v.get(name) as Float32Array).set(v);
    optimizer.#step = state.step;
    return optimizer;
  }
}

/**
 * The L2 norm over all gradients together, as if concatenated into one vector (what
 * torch.nn.utils.clip_grad_norm_ computes with norm_type 2), accumulated in float64. NaN when a
 * gradient holds NaN; Infinity when one holds an infinity and none NaN.
 */
export function globalNorm(grads: Params): number {
  let sumSquares = 0;
  for (const g of grads.values()) {
    for (let i = 0; i < g.length; i++) sumSquares += g[i] * g[i];
  }
  return Math.sqrt(sumSquares);
}

/**
 * Scales the gradients in place so that their global norm is at most `maxNorm`, as
 * torch.nn.utils.clip_grad_norm_: coef = maxNorm / (norm + 1e-6), applied only when coef < 1.
 * Returns the norm before clipping (check it, or allFinite(), for a non-finite step).
 */
export function clipGradNorm(grads: Params, maxNorm: number): number {
  if (!(maxNorm > 0)) throw new InvalidInputError('clipGradNorm', 'maxNorm', `must be > 0, got ${maxNorm}`);
  const norm = globalNorm(grads);
  const coef = maxNorm / (norm + 1e-6);
  if (coef < 1) {
    for (const g of grads.values()) {
      for (let i = 0; i < g.length; i++) g[i] *= coef;
    }
  }
  return norm;
}

/**
 * True when every value of every gradient (and the loss, when given) is finite: the NaN/Inf guard.
 * A step with a non-finite loss or gradient is skipped and the adapter kept.
 */
export function allFinite(grads: Params, loss?: number): boolean {
  if (loss !== undefined && !Number.isFinite(loss)) return false;
  for (const g of grads.values()) {
    // x * 0 is 0 for every finite x and NaN for NaN and ±Infinity.
    let acc = 0;
    for (let i = 0; i < g.length; i++) acc += g[i] * 0;
    if (acc !== 0) return false;
  }
  return true;
}
