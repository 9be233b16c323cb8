/**
 * Training a UniPELT adapter on the device (../reference/unipelt.ts has the math): the training graph
 * of the base with LoRA slots on q_proj / v_proj and UniPELT's gated parts (../graph/unipelt-slots.ts),
 * every part's tensors and gates trained with SFT. Rows run one at a time (./train-inputs.ts): the
 * gates average over a call's tokens, so a padded batch would train something inference never runs.
 *
 * The prefix is trained as its keys and values (AdapterHub's `flat` form, what `eject()` makes of its
 * MLP), and saved so. Initialization follows AdapterHub: lora_A ~ kaiming-uniform-like N(0, 1/in),
 * lora_B = 0; bottleneck and gate weights ~ N(0, 0.02²), biases 0 (σ = 0.5: every part half open);
 * prefix keys and values ~ N(0, 0.02²) (the library's MLP form starts from its own random init).
 */
import { InvalidInputError } from '../errors.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import type { ModelProto } from '../formats/onnx/onnx_pb.js';
import type { UniPeltAdapter, UniPeltAdapterLayer } from '../formats/adapterhub-unipelt.js';
import { fillNormal } from '../formats/synth.js';
import type { Backend } from '../engine/backend.js';
import { slotTensors } from '../engine/slot-feeds.js';
import { TrainingSession } from '../engine/training-session.js';
import type { SlotLayout } from '../graph/adapter-slots.js';
import { loraGateInput, unipeltInputs, uniPeltDims, UNIPELT_LORA_MODULES } from '../graph/unipelt-slots.js';
import { uniPeltFeeds } from '../methods/unipelt.js';
import type { TrainingRow } from './batch.js';
import { buildTrainingGraph } from './training-graph.js';
import { lossAndGradients, trainInputs, type InputParam, type TrainInputsOptions } from './train-inputs.js';

export interface UniPeltInit {
  /** LoRA rank on q_proj and v_proj (default 8; 0 = no LoRA part). */
  rank?: number;
  /** Prefix length (default 10, UniPELTConfig's; 0 = no prefix part). */
  prefixLength?: number;
  /** Bottleneck size (default hidden / 16, SeqBnConfig's reduction_factor 16; 0 = none). */
  bottleneck?: number;
  seed?: number;
  name?: string;
}

/** A new UniPELT adapter for `config`, initialized as AdapterHub initializes one. */
export function initUniPelt(config: LlamaConfig, o: UniPeltInit = {}): UniPeltAdapter {
  const d = config.hidden_size;
  const r = o.rank ?? 8;
  const P = o.prefixLength ?? 10;
  const m = o.bottleneck ?? Math.floor(d / 16);
  let seed = o.seed ?? 0;
  const normal = (n: number, std: number) => {
    const a = new Float32Array(n);
    if (std > 0) fillNormal(a, seed++, 0, std);
    return a;
  };
  const hd = d / config.num_attention_heads;
  const layers: UniPeltAdapterLayer[] = Array.from({ length: config.num_hidden_layers }, () => {
    const layer: UniPeltAdapterLayer = { lora: {} };
    if (r > 0) {
      for (const [proj, out] of [
        ['q_proj', d],
        ['v_proj', config.num_key_value_heads * hd],
      ] as const) {
        layer.lora[proj] = {
          a: normal(r * d, 1 / Math.sqrt(d)),
          b: new Float32Array(out * r),
          r,
          gateW: normal(d, 0.02),
          gateB: 0,
        };
      }
    }
    if (P > 0) layer.prefixGate = { w: normal(d, 0.02), b: 0 };
    if (m > 0)
      layer.bottleneck = {
        down: normal(m * d, 0.02),
        downBias: new Float32Array(m),
        up: normal(d * m, 0.02),
        upBias: new Float32Array(d),
        size: m,
        gate: { w: normal(d, 0.02), b: 0 },
      };
    return layer;
  });
  const adapter: UniPeltAdapter = { name: o.name ?? 'unipelt', label: o.name ?? 'unipelt', layers };
  if (P > 0) adapter.prefix = { length: P, states: normal(P * config.num_hidden_layers * 2 * d, 0.02) };
  return adapter;
}

interface Parts {
  lora: boolean;
  prefix: boolean;
  bottleneck: boolean;
}

export class UniPeltTrainer {
  /** One training session per set of parts trained (zero-size parts get no gradient). */
  private readonly sessions = new Map<string, Promise<{ session: TrainingSession; layout: SlotLayout }>>();

  constructor(
    private readonly backend: Backend,
    private readonly graph: ModelProto,
    private readonly config: LlamaConfig,
  ) {}

  private open(parts: Parts): Promise<{ session: TrainingSession; layout: SlotLayout }> {
    const key = JSON.stringify(parts);
    let entry = this.sessions.get(key);
    if (!entry) {
      entry = (async () => {
        const c = this.config;
        const modules = Array.from({ length: c.num_hidden_layers }, (_, l) =>
          UNIPELT_LORA_MODULES.map((k) => `model.layers.${l}.${k}`),
        ).flat();
        const values = Array.from({ length: c.num_hidden_layers }, (_, l) => {
          const n = unipeltInputs(l);
          return [
            ...(parts.prefix ? [n.prefixKeys, n.prefixValues, n.prefixGate] : []),
            ...(parts.bottleneck ? [n.down, n.up, n.bottleneckGate] : []),
          ];
        }).flat();
        if (parts.lora) values.push(...modules.map(loraGateInput));
        const graph = buildTrainingGraph(this.graph, {
          slots: { modules, outputScales: false, inputScales: 'none', prompt: false },
          objective: 'sft',
          train: { lora: parts.lora, values },
          unipelt: uniPeltDims(c),
        });
        const session = await TrainingSession.create(this.backend, graph.model, c, graph.gradients);
        return { session, layout: graph.layout };
      })();
      this.sessions.set(key, entry);
    }
    return entry;
  }

  /** The fixed feeds and the trained parameters (every input of the parts `adapter` has). */
  private async feeds(adapter: UniPeltAdapter) {
    const parts: Parts = {
      lora: adapter.layers.some((l) => l.lora.q_proj || l.lora.v_proj),
      prefix: adapter.prefix !== undefined && adapter.layers.some((l) => l.prefixGate),
      bottleneck: adapter.layers.some((l) => l.bottleneck),
    };
    const { session, layout } = await this.open(parts);
    const fixed = slotTensors(this.backend.ort, layout, uniPeltFeeds(adapter, this.config));
    const params = new Map<string, InputParam>();
    const take = (name: string) => {
      const t = fixed[name];
      params.set(name, { data: Float32Array.from(t.data as Float32Array), dims: [...t.dims] });
    };
    if (parts.lora) {
      for (const g of layout.groups) {
        take(g.a);
        take(g.b);
      }
    }
    adapter.layers.forEach((layer, l) => {
      const names = unipeltInputs(l);
      for (const proj of ['q_proj', 'v_proj'] as const)
        if (layer.lora[proj]) take(loraGateInput(`model.layers.${l}.self_attn.${proj}`));
      if (adapter.prefix && layer.prefixGate)
        [names.prefixKeys, names.prefixValues, names.prefixGate].forEach(take);
      if (layer.bottleneck) [names.down, names.up, names.bottleneckGate].forEach(take);
    });
    return { session, layout, fixed, params };
  }

  /** The SFT loss of `rows` and its gradient w.r.t. each trained input (slot-feed layout). */
  async lossAndGradients(adapter: UniPeltAdapter, rows: readonly TrainingRow[]) {
    const { session, fixed, params } = await this.feeds(adapter);
    return lossAndGradients(session, rows, fixed, params, 1);
  }

  async train(
    start: UniPeltAdapter,
    rows: readonly TrainingRow[],
    options: Omit<TrainInputsOptions, 'rowsPerRun'>,
    onProgress?: (p: { step: number; steps: number; loss: number }) => void,
  ): Promise<{ adapter: UniPeltAdapter; losses: number[]; skipped: number }> {
    if (start.layers.length !== this.config.num_hidden_layers)
      throw new InvalidInputError(
        'trainUniPelt',
        'layers',
        `${start.layers.length} layers, expected ${this.config.num_hidden_layers}`,
      );
    const { session, layout, fixed, params } = await this.feeds(start);
    const { losses, skipped } = await trainInputs(
      session,
      rows,
      fixed,
      params,
      { ...options, rowsPerRun: 1 },
      onProgress,
    );
    return { adapter: adapterFrom(start, layout, params, this.config), losses, skipped };
  }

  async release(): Promise<void> {
    for (const entry of this.sessions.values()) await (await entry).session.release();
    this.sessions.clear();
  }
}

/** The trained slot feeds back in the adapter's (AdapterHub's) layout. */
function adapterFrom(
  like: UniPeltAdapter,
  layout: SlotLayout,
  params: ReadonlyMap<string, InputParam>,
  c: LlamaConfig,
): UniPeltAdapter {
  const d = c.hidden_size;
  const heads = c.num_attention_heads;
  const hd = d / heads;
  const N = c.num_hidden_layers;
  const data = (name: string) => (params.get(name) as InputParam).data;
  const gateOf = (g: Float32Array) => ({ w: g.slice(0, d), b: g[d] });
  const layers = like.layers.map((layer, l): UniPeltAdapterLayer => {
    const names = unipeltInputs(l);
    const out: UniPeltAdapterLayer = { lora: {} };
    for (const proj of ['q_proj', 'v_proj'] as const) {
      const lora = layer.lora[proj];
      if (!lora) continue;
      const group = layout.groups.find((g) => g.kind === `self_attn.${proj}`);
      if (!group) throw new TypeError(`no slot group for ${proj}`);
      const k = group.modules.indexOf(`model.layers.${l}.self_attn.${proj}`);
      const r = lora.r;
      const rank = (params.get(group.a) as InputParam).dims[1];
      const A = data(group.a);
      const B = data(group.b);
      const outF = group.out;
      const a = new Float32Array(r * d);
      for (let i = 0; i < d; i++) for (let j = 0; j < r; j++) a[j * d + i] = A[(k * d + i) * rank + j];
      const b = new Float32Array(outF * r);
      for (let j = 0; j < r; j++) for (let o = 0; o < outF; o++) b[o * r + j] = B[(k * rank + j) * outF + o];
      const g = gateOf(data(loraGateInput(`model.layers.${l}.self_attn.${proj}`)));
      out.lora[proj] = { a, b, r, gateW: g.w, gateB: g.b };
    }
    if (like.prefix && layer.prefixGate) out.prefixGate = gateOf(data(names.prefixGate));
    const bn = layer.bottleneck;
    if (bn) {
      const m = bn.size;
      const down = data(names.down);
      const up = data(names.up);
      const W = new Float32Array(m * d);
      const Wb = new Float32Array(m);
      for (let j = 0; j < m; j++) {
        for (let i = 0; i < d; i++) W[j * d + i] = down[i * m + j];
        Wb[j] = down[d * m + j];
      }
      const U = new Float32Array(d * m);
      const Ub = new Float32Array(d);
      for (let o = 0; o < d; o++) {
        for (let j = 0; j < m; j++) U[o * m + j] = up[j * d + o];
        Ub[o] = up[m * d + o];
      }
      out.bottleneck = {
        down: W,
        downBias: Wb,
        up: U,
        upBias: Ub,
        size: m,
        gate: gateOf(data(names.bottleneckGate)),
      };
    }
    return out;
  });
  const adapter: UniPeltAdapter = { name: like.name, label: like.label, layers };
  if (like.prefix) {
    const P = like.prefix.length;
    const width = N * 2 * d;
    const states = new Float32Array(P * width);
    like.layers.forEach((layer, l) => {
      if (!layer.prefixGate) return;
      const names = unipeltInputs(l);
      [names.prefixKeys, names.prefixValues].forEach((name, kv) => {
        const t = data(name);
        for (let p = 0; p < P; p++)
          for (let h = 0; h < heads; h++)
            for (let k = 0; k < hd; k++)
              states[p * width + ((2 * l + kv) * heads + h) * hd + k] = t[(h * P + p) * hd + k];
      });
    });
    adapter.prefix = { length: P, states };
  }
  return adapter;
}
