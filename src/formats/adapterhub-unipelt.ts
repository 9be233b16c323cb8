/**
 * A UniPELT adapter as AdapterHub's `adapters` library saves it for a Llama model
 * (`model.save_adapter(dir, name, use_safetensors=True)`):
 *
 *   adapter_config.json   { "config": { "architecture": "union", "configs": [prefix_tuning, bottleneck, lora] },
 *                           "name", "model_class", "model_type": "llama", "hidden_size", "version", ... }
 *   adapter.safetensors   the adapter's tensors by state-dict name ({n} = the adapter's name):
 *     model.layers.{i}.self_attn.{q,v}_proj.loras.{n}.lora_A [r, hidden], .lora_B [out, r],
 *                                             .gate.weight [1, hidden], .gate.bias [1]
 *     model.prefix_tuning.prefix_tunings.{n}.self_prefix.wte.weight [P, hidden],
 *       .control_trans.0.weight [bottleneck, hidden] (+ .bias), .control_trans.2.weight [N·2·hidden, bottleneck] (+ .bias)
 *       (or, `flat: true`, .control_trans [P · N · 2 · hidden])
 *     model.layers.{i}.self_attn.prefix_tuning.prefix_gates.{n}.weight [1, hidden] (+ .bias [1])
 *     model.layers.{i}.output_adapters.adapters.{n}.adapter_down.0.weight [m, hidden] (+ .bias [m]),
 *       .adapter_up.weight [hidden, m] (+ .bias), .gate.weight [1, hidden] (+ .bias [1])
 *
 * Only the settings UniPELTConfig uses are accepted (gating on; a bottleneck with ReLU, no extra
 * layer norms, scaling 1, after the MLP; LoRA on selfattn q and v, composition "add"); anything else
 * is refused naming the field. `pytorch_adapter.bin` (a torch pickle) is refused: save with
 * use_safetensors=True. The tensor names follow the library's module attributes; check them against
 * a real file when one is available (none is among this project's fixtures).
 */
import { AdapterFormatError } from '../errors.js';
import type { LlamaConfig } from './checkpoint.js';
import { checkFinite, readConfigJson } from './peft-adapter.js';
import {
  float32Entry,
  parseSafetensors,
  serializeSafetensors,
  tensorToFloat32,
  type SafetensorsEntry,
} from './safetensors.js';

export const ADAPTERHUB_CONFIG = 'adapter_config.json';
export const ADAPTERHUB_WEIGHTS = 'adapter.safetensors';

export interface UniPeltAdapter {
  name: string;
  label: string;
  /** Per layer: gated LoRA (q, v), the prefix gate, the bottleneck. */
  layers: UniPeltAdapterLayer[];
  /** The prefix keys and values of every layer, from the prefix MLP: [P, N · 2 · heads · head_dim]. */
  prefix?: { length: number; states: Float32Array };
}

export interface UniPeltAdapterLayer {
  lora: Partial<
    Record<
      'q_proj' | 'v_proj',
      { a: Float32Array; b: Float32Array; r: number; gateW: Float32Array; gateB: number }
    >
  >;
  prefixGate?: { w: Float32Array; b: number };
  bottleneck?: {
    down: Float32Array;
    downBias: Float32Array;
    up: Float32Array;
    upBias: Float32Array;
    size: number;
    gate: { w: Float32Array; b: number };
  };
}

type Json = Record<string, unknown>;

export function parseAdapterHubUniPelt(
  files: { config: Uint8Array | object; weights: Uint8Array },
  base: LlamaConfig,
  label = 'adapter',
): UniPeltAdapter {
  const cfgFile = `${label}/${ADAPTERHUB_CONFIG}`;
  const file = `${label}/${ADAPTERHUB_WEIGHTS}`;
  const parsed = readConfigJson(files.config, cfgFile);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new AdapterFormatError(cfgFile, undefined, 'must be a JSON object');
  const json = parsed as Json;
  const config = json.config as Json | undefined;
  const fail = (field: string, why: string) => new AdapterFormatError(cfgFile, field, why);
  if (!config || config.architecture !== 'union' || !Array.isArray(config.configs))
    throw fail('config.architecture', 'expected an AdapterHub "union" config (UniPELT)');
  if (json.model_type !== undefined && json.model_type !== 'llama')
    throw fail('model_type', `expected llama, got ${JSON.stringify(json.model_type)}`);
  const name = typeof json.name === 'string' ? json.name : '';
  if (!name) throw fail('name', 'missing: the adapter name is part of every tensor name');
  const parts = config.configs as Json[];
  const prefixCfg = parts.find((c) => c.architecture === 'prefix_tuning');
  const loraCfg = parts.find((c) => c.architecture === 'lora');
  const bnCfg = parts.find((c) => c.architecture === undefined || c.architecture === 'bottleneck');
  const expect = (c: Json | undefined, part: string, field: string, ok: (v: unknown) => boolean) => {
    if (c && c[field] !== undefined && !ok(c[field]))
      throw fail(
        `config.configs.${part}.${field}`,
        `${JSON.stringify(c[field])} is not supported (UniPELT's setting only)`,
      );
  };
  for (const [c, part] of [
    [prefixCfg, 'prefix_tuning'],
    [loraCfg, 'lora'],
    [bnCfg, 'bottleneck'],
  ] as const)
    expect(c, part, 'use_gating', (v) => v === true);
  expect(loraCfg, 'lora', 'composition_mode', (v) => v === 'add');
  expect(loraCfg, 'lora', 'intermediate_lora', (v) => v === false);
  expect(loraCfg, 'lora', 'output_lora', (v) => v === false);
  expect(bnCfg, 'bottleneck', 'non_linearity', (v) => v === 'relu');
  expect(bnCfg, 'bottleneck', 'mh_adapter', (v) => v === false);
  expect(bnCfg, 'bottleneck', 'ln_before', (v) => v === false);
  expect(bnCfg, 'bottleneck', 'ln_after', (v) => v === false);
  expect(bnCfg, 'bottleneck', 'scaling', (v) => v === 1 || v === 1.0);
  expect(bnCfg, 'bottleneck', 'is_parallel', (v) => v === false);
  expect(prefixCfg, 'prefix_tuning', 'shared_gating', (v) => v === true);
  expect(prefixCfg, 'prefix_tuning', 'non_linearity', (v) => v === 'tanh');

  const st = parseSafetensors(files.weights, { file, error: AdapterFormatError });
  const used = new Set<string>();
  const get = (key: string, shape: number[]): Float32Array => {
    const t = st.tensors.get(key);
    if (!t) throw new AdapterFormatError(file, key, 'missing');
    if (t.shape.length !== shape.length || t.shape.some((d, i) => shape[i] >= 0 && d !== shape[i]))
      throw new AdapterFormatError(
        file,
        key,
        `shape [${t.shape.join(', ')}], expected [${shape.map((d) => (d < 0 ? '?' : d)).join(', ')}]`,
      );
    used.add(key);
    checkFinite(key, t, file);
    return tensorToFloat32(t, file, key, AdapterFormatError);
  };
  const has = (key: string) => st.tensors.has(key);
  const d = base.hidden_size;
  const hd = d / base.num_attention_heads;
  const outOf = { q_proj: base.num_attention_heads * hd, v_proj: base.num_key_value_heads * hd };
  const layers: UniPeltAdapterLayer[] = [];
  for (let i = 0; i < base.num_hidden_layers; i++) {
    const layer: UniPeltAdapterLayer = { lora: {} };
    for (const m of ['q_proj', 'v_proj'] as const) {
      const p = `model.layers.${i}.self_attn.${m}.loras.${name}`;
      if (!has(`${p}.lora_A`)) continue;
      const a = get(`${p}.lora_A`, [-1, d]);
      const r = a.length / d;
      layer.lora[m] = {
        a,
        b: get(`${p}.lora_B`, [outOf[m], r]),
        r,
        gateW: get(`${p}.gate.weight`, [1, d]),
        gateB: get(`${p}.gate.bias`, [1])[0],
      };
    }
    const g = `model.layers.${i}.self_attn.prefix_tuning.prefix_gates.${name}`;
    if (has(`${g}.weight`)) layer.prefixGate = { w: get(`${g}.weight`, [1, d]), b: get(`${g}.bias`, [1])[0] };
    const b = `model.layers.${i}.output_adapters.adapters.${name}`;
    if (has(`${b}.adapter_down.0.weight`)) {
      const down = get(`${b}.adapter_down.0.weight`, [-1, d]);
      const size = down.length / d;
      layer.bottleneck = {
        down,
        downBias: get(`${b}.adapter_down.0.bias`, [size]),
        up: get(`${b}.adapter_up.weight`, [d, size]),
        upBias: get(`${b}.adapter_up.bias`, [d]),
        size,
        gate: { w: get(`${b}.gate.weight`, [1, d]), b: get(`${b}.gate.bias`, [1])[0] },
      };
    }
    layers.push(layer);
  }
  const adapter: UniPeltAdapter = { name, label, layers };
  const pre = `model.prefix_tuning.prefix_tunings.${name}.self_prefix`;
  const width = base.num_hidden_layers * 2 * d;
  if (has(`${pre}.wte.weight`)) {
    const wte = get(`${pre}.wte.weight`, [-1, d]);
    const length = wte.length / d;
    const w0 = get(`${pre}.control_trans.0.weight`, [-1, d]);
    const mid = w0.length / d;
    const b0 = get(`${pre}.control_trans.0.bias`, [mid]);
    const w2 = get(`${pre}.control_trans.2.weight`, [width, mid]);
    const b2 = get(`${pre}.control_trans.2.bias`, [width]);
    // control_trans(wte(arange(P))): Linear, Tanh, Linear.
    const states = new Float32Array(length * width);
    for (let p = 0; p < length; p++) {
      const h = new Float64Array(mid);
      for (let j = 0; j < mid; j++) {
        let s = b0[j];
        for (let k = 0; k < d; k++) s += w0[j * d + k] * wte[p * d + k];
        h[j] = Math.tanh(s);
      }
      for (let o = 0; o < width; o++) {
        let s = b2[o];
        for (let j = 0; j < mid; j++) s += w2[o * mid + j] * h[j];
        states[p * width + o] = s;
      }
    }
    adapter.prefix = { length, states };
  } else if (has(`${pre}.control_trans`)) {
    const flat = get(`${pre}.control_trans`, [-1]);
    if (flat.length % width !== 0)
      throw new AdapterFormatError(
        file,
        `${pre}.control_trans`,
        `${flat.length} values are not P x ${width}`,
      );
    adapter.prefix = { length: flat.length / width, states: flat };
  }
  for (const key of st.tensors.keys())
    if (!used.has(key))
      throw new AdapterFormatError(file, key, 'not a tensor of a UniPELT adapter on this base');
  return adapter;
}

/**
 * The adapter as AdapterHub's files (adapter_config.json, adapter.safetensors), the prefix in its
 * flat form (`flat: true`, `control_trans` [P · N · 2 · hidden]), for `adapters`' load_adapter.
 */
export function serializeAdapterHubUniPelt(
  adapter: UniPeltAdapter,
  base: LlamaConfig,
): Map<string, Uint8Array> {
  const n = adapter.name;
  const d = base.hidden_size;
  const tensors: [string, SafetensorsEntry][] = [];
  const put = (name: string, data: Float32Array, shape: number[]) =>
    tensors.push([name, float32Entry(data, shape)]);
  if (adapter.prefix)
    put(`model.prefix_tuning.prefix_tunings.${n}.self_prefix.control_trans`, adapter.prefix.states, [
      adapter.prefix.states.length,
    ]);
  let r = 0;
  let m = 0;
  adapter.layers.forEach((layer, i) => {
    for (const proj of ['q_proj', 'v_proj'] as const) {
      const lora = layer.lora[proj];
      if (!lora) continue;
      r = lora.r;
      const p = `model.layers.${i}.self_attn.${proj}.loras.${n}`;
      put(`${p}.lora_A`, lora.a, [lora.r, d]);
      put(`${p}.lora_B`, lora.b, [lora.b.length / lora.r, lora.r]);
      put(`${p}.gate.weight`, lora.gateW, [1, d]);
      put(`${p}.gate.bias`, Float32Array.of(lora.gateB), [1]);
    }
    if (layer.prefixGate) {
      const g = `model.layers.${i}.self_attn.prefix_tuning.prefix_gates.${n}`;
      put(`${g}.weight`, layer.prefixGate.w, [1, d]);
      put(`${g}.bias`, Float32Array.of(layer.prefixGate.b), [1]);
    }
    const bn = layer.bottleneck;
    if (bn) {
      m = bn.size;
      const b = `model.layers.${i}.output_adapters.adapters.${n}`;
      put(`${b}.adapter_down.0.weight`, bn.down, [bn.size, d]);
      put(`${b}.adapter_down.0.bias`, bn.downBias, [bn.size]);
      put(`${b}.adapter_up.weight`, bn.up, [d, bn.size]);
      put(`${b}.adapter_up.bias`, bn.upBias, [d]);
      put(`${b}.gate.weight`, bn.gate.w, [1, d]);
      put(`${b}.gate.bias`, Float32Array.of(bn.gate.b), [1]);
    }
  });
  const config = {
    config: {
      architecture: 'union',
      configs: [
        ...(adapter.prefix
          ? [
              {
                architecture: 'prefix_tuning',
                flat: true,
                prefix_length: adapter.prefix.length,
                non_linearity: 'tanh',
                shared_gating: true,
                use_gating: true,
              },
            ]
          : []),
        ...(m
          ? [
              {
                mh_adapter: false,
                output_adapter: true,
                reduction_factor: d / m,
                non_linearity: 'relu',
                original_ln_before: true,
                original_ln_after: true,
                residual_before_ln: true,
                ln_before: false,
                ln_after: false,
                scaling: 1.0,
                is_parallel: false,
                use_gating: true,
              },
            ]
          : []),
        ...(r
          ? [
              {
                architecture: 'lora',
                r,
                alpha: 2,
                selfattn_lora: true,
                intermediate_lora: false,
                output_lora: false,
                attn_matrices: ['q', 'v'],
                composition_mode: 'add',
                use_gating: true,
              },
            ]
          : []),
      ],
    },
    hidden_size: d,
    model_class: 'LlamaForCausalLM',
    model_type: 'llama',
    name: n,
  };
  return new Map([
    [ADAPTERHUB_CONFIG, new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`)],
    [ADAPTERHUB_WEIGHTS, serializeSafetensors(tensors, { format: 'pt' })],
  ]);
}
