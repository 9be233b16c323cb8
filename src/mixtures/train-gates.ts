/**
 * Learning a mixture's gates on the device (MoLoRA-style: a softmax gate per module over frozen LoRA
 * experts), with the on-device learning engine: the training graph of the base with a 'gate' router
 * in its slots (../graph/expert-router.ts), the experts fed as constants, and the gradient of the SFT
 * loss with respect to each kind's packed router input `router.{kind}` [modules · in, experts];
 * AdamW with gradient clipping and the NaN/Inf guard, as the adapter trainer steps (../train/).
 *
 * The gate starts small and random (N(0, 0.02²), seeded), so that no two experts tie; the experts
 * outside a token's top k get no gradient for it, as in a top-k MoE. There is no load-balancing
 * term (nothing keeps a gate from sending every token to one expert; with a handful of experts
 * trained for distinct tasks that is a choice the loss makes, not a collapse to prevent).
 */
import { InvalidInputError } from '../errors.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import type { ModelProto } from '../formats/onnx/onnx_pb.js';
import type { PeftAdapter } from '../formats/peft-adapter.js';
import type { Backend } from '../engine/backend.js';
import { slotTensors } from '../engine/slot-feeds.js';
import { TrainingSession } from '../engine/training-session.js';
import { fillNormal } from '../formats/synth.js';
import { moduleKind, type SlotLayout } from '../graph/adapter-slots.js';
import { routerInput } from '../graph/expert-router.js';
import type { BaseModel } from '../methods/feeds.js';
import type { TrainingRow } from '../train/batch.js';
import { lossAndGradients, trainInputs } from '../train/train-inputs.js';
import { buildTrainingGraph } from '../train/training-graph.js';
import { mixtureFeeds } from './expert-feeds.js';

export interface GateTrainOptions {
  steps: number;
  /** Rows per step (default 8, or all there are). */
  batchSize?: number;
  /** AdamW's learning rate (default 1e-2). */
  lr?: number;
  /** Experts per token (default all). */
  topK?: number;
  temperature?: number;
  maxGradNorm?: number;
  seed?: number;
  /** Start from these gates (module -> [in, experts] row-major) instead of a random init. */
  init?: ReadonlyMap<string, Float32Array>;
  signal?: AbortSignal;
}

export interface GateTrainResult {
  /** The learned gate of every module the experts adapt: [in, experts] row-major. */
  weights: Map<string, Float32Array>;
  losses: number[];
  skipped: number;
}

export class GateTrainer {
  private session?: Promise<{ session: TrainingSession; layout: SlotLayout }>;

  constructor(
    private readonly backend: Backend,
    private readonly graph: ModelProto,
    private readonly config: LlamaConfig,
    private readonly base: BaseModel,
    private readonly experts: readonly PeftAdapter[],
  ) {}

  /** The modules the experts adapt: the gated ones. */
  modules(): string[] {
    return [...mixtureFeeds(this.experts, { kind: 'gate', weights: new Map() }, this.base).modules.keys()];
  }

  private open(): Promise<{ session: TrainingSession; layout: SlotLayout }> {
    return (this.session ??= (async () => {
      const modules = this.modules();
      const slots = {
        modules,
        router: 'gate' as const,
        outputScales: false,
        inputScales: 'none' as const,
        prompt: false,
      };
      // The trained inputs: each kind's packed router (../graph/expert-router.ts routerInput).
      const values = [...new Set(modules.map((m) => routerInput(moduleKind(m))))];
      const graph = buildTrainingGraph(this.graph, {
        slots,
        objective: 'sft',
        train: { lora: false, values },
      });
      const session = await TrainingSession.create(this.backend, graph.model, this.config, graph.gradients);
      return { session, layout: graph.layout };
    })());
  }

  async train(
    rows: readonly TrainingRow[],
    options: GateTrainOptions,
    onProgress?: (p: { step: number; steps: number; loss: number }) => void,
  ): Promise<GateTrainResult> {
    const e = this.experts.length;
    const topK = options.topK ?? e;
    const temperature = options.temperature ?? 1;
    const { session, layout } = await this.open();
    const dims = new Map(layout.groups.flatMap((g) => g.modules.map((m, k) => [m, { g, k }] as const)));

    // Parameters: each kind's packed router input, from `init` or seeded noise.
    const params = new Map<string, Float32Array>();
    let seed = options.seed ?? 0;
    for (const g of layout.groups) {
      const packed = new Float32Array(g.modules.length * g.in * e);
      fillNormal(packed, seed++, 0, 0.02);
      params.set(g.router as string, packed);
    }
    for (const [module, w] of options.init ?? []) {
      const at = dims.get(module);
      if (!at || w.length !== at.g.in * e)
        throw new InvalidInputError(
          'trainGates',
          `init.${module}`,
          `expected ${at ? at.g.in * e : '?'} values`,
        );
      (params.get(at.g.router as string) as Float32Array).set(w, at.k * at.g.in * e);
    }
    const unpack = (): Map<string, Float32Array> => {
      const out = new Map<string, Float32Array>();
      for (const [module, { g, k }] of dims) {
        const packed = params.get(g.router as string) as Float32Array;
        out.set(module, packed.slice(k * g.in * e, (k + 1) * g.in * e));
      }
      return out;
    };
    // The experts' slot tensors, built once; the router tensors are replaced every step.
    const feeds = mixtureFeeds(
      this.experts,
      { kind: 'gate', topK, temperature, weights: new Map() },
      this.base,
    );
    const slots = slotTensors(this.backend.ort, layout, feeds);
    const inputs = new Map(
      layout.groups.map((g) => [
        g.router as string,
        { data: params.get(g.router as string) as Float32Array, dims: [g.modules.length * g.in, e] },
      ]),
    );
    const { losses, skipped } = await trainInputs(session, rows, slots, inputs, options, onProgress);
    return { weights: unpack(), losses, skipped };
  }

  /** The SFT loss of `rows` (one batch) and its gradient with respect to each module's gate. */
  async lossAndGradients(
    rows: readonly TrainingRow[],
    weights: ReadonlyMap<string, Float32Array>,
    options: { topK?: number; temperature?: number } = {},
  ): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const { session, layout } = await this.open();
    const e = this.experts.length;
    const feeds = mixtureFeeds(
      this.experts,
      { kind: 'gate', topK: options.topK ?? e, temperature: options.temperature, weights },
      this.base,
    );
    const fixed = slotTensors(this.backend.ort, layout, feeds);
    const inputs = new Map(
      layout.groups.map((g) => {
        const name = g.router as string;
        return [name, { data: fixed[name].data as Float32Array, dims: [...fixed[name].dims] }];
      }),
    );
    const out = await lossAndGradients(session, rows, fixed, inputs);
    const grads = new Map<string, Float32Array>();
    for (const g of layout.groups) {
      const packed = out.grads.get(g.router as string) as Float32Array;
      g.modules.forEach((m, k) => grads.set(m, packed.slice(k * g.in * e, (k + 1) * g.in * e)));
    }
    return { loss: out.loss, grads };
  }

  async release(): Promise<void> {
    if (this.session) await (await this.session).session.release();
    this.session = undefined;
  }
}
