/**
 * Learning-rate schedules, named as transformers' get_scheduler names them, with the multipliers of
 * transformers/optimization.py's LambdaLR lambdas. Step 0 is the first optimizer step: LambdaLR
 * evaluates the lambda at 0 before the first optimizer.step(), so with warmup the first step has lr 0,
 * as in the Trainer.
 */
import { InvalidInputError } from '../errors.js';

export type ScheduleName = 'constant' | 'constant_with_warmup' | 'linear' | 'cosine';

export interface ScheduleOptions {
  /** The schedule; default 'linear' (the Trainer's default lr_scheduler_type). */
  name?: ScheduleName;
  /** The peak learning rate (the optimizer's initial lr in transformers). */
  lr: number;
  /** Steps of linear warmup from 0 (num_warmup_steps); default 0. Ignored by 'constant'. */
  warmupSteps?: number;
  /** The number of optimizer steps of the run (num_training_steps). */
  totalSteps: number;
  /**
   * For 'cosine' only: the floor as a fraction of lr, as get_cosine_with_min_lr_schedule_with_warmup's
   * min_lr_rate (factor * (1 - ratio) + ratio); default 0, the plain cosine schedule.
   */
  minLrRatio?: number;
}

const NAMES: readonly ScheduleName[] = ['constant', 'constant_with_warmup', 'linear', 'cosine'];
const FILE = 'schedule';

function checkCount(value: number, field: string): void {
  if (!(Number.isInteger(value) && value >= 0)) {
    throw new InvalidInputError(FILE, field, `must be an integer >= 0, got ${value}`);
  }
}

/**
 * The learning rate for optimizer step `step` (0-based): lr times transformers' multiplier
 *
 * - constant: 1
 * - constant_with_warmup: step / max(1, warmup) during warmup, then 1
 * - linear: warmup, then max(0, (total - step) / max(1, total - warmup)): 0 from totalSteps on
 * - cosine (num_cycles 0.5): warmup, then with progress = (step - warmup) / max(1, total - warmup),
 *   max(0, 0.5 * (1 + cos(pi * progress))), floored at minLrRatio when given. Like transformers,
 *   the cosine is not clamped at totalSteps: past it the rate rises again.
 */
export function learningRate(step: number, options: ScheduleOptions): number {
  const { name = 'linear', lr, warmupSteps = 0, totalSteps, minLrRatio = 0 } = options;
  if (!NAMES.includes(name)) {
    throw new InvalidInputError(FILE, 'name', `unknown schedule '${name}' (known: ${NAMES.join(', ')})`);
  }
  if (!(Number.isFinite(lr) && lr >= 0)) {
    throw new InvalidInputError(FILE, 'lr', `must be a finite number >= 0, got ${lr}`);
  }
  checkCount(warmupSteps, 'warmupSteps');
  checkCount(totalSteps, 'totalSteps');
  checkCount(step, 'step');
  if (!(minLrRatio >= 0 && minLrRatio <= 1)) {
    throw new InvalidInputError(FILE, 'minLrRatio', `must be in [0, 1], got ${minLrRatio}`);
  }
  if (minLrRatio !== 0 && name !== 'cosine') {
    throw new InvalidInputError(FILE, 'minLrRatio', `applies to the 'cosine' schedule only, not '${name}'`);
  }
  return lr * multiplier(name, step, warmupSteps, totalSteps, minLrRatio);
}

function multiplier(
  name: ScheduleName,
  step: number,
  warmup: number,
  total: number,
  minRatio: number,
): number {
  if (name === 'constant') return 1;
  if (step < warmup) return step / Math.max(1, warmup);
  switch (name) {
    case 'constant_with_warmup':
      return 1;
    case 'linear':
      return Math.max(0, (total - step) / Math.max(1, total - warmup));
    case 'cosine': {
      const progress = (step - warmup) / Math.max(1, total - warmup);
      const factor = 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress));
      return Math.max(0, factor * (1 - minRatio) + minRatio);
    }
  }
}
