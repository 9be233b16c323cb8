/**
 * UniPELT adapters in AdapterHub's saved format for the stories260K-shaped Llama, seeded, and the
 * float64 oracle's layers (src/reference/unipelt.ts) read from the same bytes by this file's own
 * safetensors parsing (not the project's reader).
 */
import { fillNormal } from '../../src/formats/synth.js';
import { float32Entry, serializeSafetensors, type SafetensorsEntry } from '../../src/formats/safetensors.js';
import type { UniPeltLayer } from '../../src/reference/unipelt.js';
import { STORIES_CONFIG } from './peft-fixtures.js';

const c = STORIES_CONFIG;
const d = c.hidden_size;
const H = c.num_attention_heads;
const hd = d / H;
const N = c.num_hidden_layers;
export const NAME = 'unipelt';

export type Parts = { lora?: boolean; prefix?: boolean; bottleneck?: boolean };

/** AdapterHub's files for the parts asked, seeded: adapter_config.json and adapter.safetensors. */
export function adapterHubFiles(parts: Parts, seed = 1): { config: object; weights: Uint8Array } {
  let s = seed;
  const normal = (n: number, std: number) => {
    const a = new Float32Array(n);
    fillNormal(a, s++, 0, std);
    return a;
  };
  const t: [string, SafetensorsEntry][] = [];
  const put = (name: string, shape: number[], std: number) =>
    t.push([
      name,
      float32Entry(
        normal(
          shape.reduce((a, b) => a * b, 1),
          std,
        ),
        shape,
      ),
    ]);
  const P = 5;
  const mid = 16;
  const m = 4;
  if (parts.prefix) {
    const pre = `model.prefix_tuning.prefix_tunings.${NAME}.self_prefix`;
    put(`${pre}.wte.weight`, [P, d], 1);
    put(`${pre}.control_trans.0.weight`, [mid, d], 0.3);
    put(`${pre}.control_trans.0.bias`, [mid], 0.1);
    put(`${pre}.control_trans.2.weight`, [N * 2 * d, mid], 0.5);
    put(`${pre}.control_trans.2.bias`, [N * 2 * d], 0.1);
  }
  for (let i = 0; i < N; i++) {
    if (parts.lora) {
      for (const [proj, out] of [
        ['q_proj', d],
        ['v_proj', c.num_key_value_heads * hd],
      ] as const) {
        const p = `model.layers.${i}.self_attn.${proj}.loras.${NAME}`;
        put(`${p}.lora_A`, [8, d], 1 / Math.sqrt(d));
        put(`${p}.lora_B`, [out, 8], 0.1);
        put(`${p}.gate.weight`, [1, d], 0.3);
        put(`${p}.gate.bias`, [1], 0.5);
      }
    }
    if (parts.prefix) {
      put(`model.layers.${i}.self_attn.prefix_tuning.prefix_gates.${NAME}.weight`, [1, d], 0.3);
      put(`model.layers.${i}.self_attn.prefix_tuning.prefix_gates.${NAME}.bias`, [1], 0.5);
    }
    if (parts.bottleneck) {
      const b = `model.layers.${i}.output_adapters.adapters.${NAME}`;
      put(`${b}.adapter_down.0.weight`, [m, d], 0.3);
      put(`${b}.adapter_down.0.bias`, [m], 0.1);
      put(`${b}.adapter_up.weight`, [d, m], 0.2);
      put(`${b}.adapter_up.bias`, [d], 0.05);
      put(`${b}.gate.weight`, [1, d], 0.1);
      put(`${b}.gate.bias`, [1], 0.2);
    }
  }
  const config = {
    config: {
      architecture: 'union',
      configs: [
        {
          architecture: 'prefix_tuning',
          prefix_length: P,
          bottleneck_size: mid,
          use_gating: true,
          shared_gating: true,
          non_linearity: 'tanh',
          flat: false,
        },
        {
          mh_adapter: false,
          output_adapter: true,
          reduction_factor: 16,
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
        {
          architecture: 'lora',
          r: 8,
          alpha: 2,
          selfattn_lora: true,
          intermediate_lora: false,
          output_lora: false,
          attn_matrices: ['q', 'v'],
          composition_mode: 'add',
          use_gating: true,
        },
      ],
    },
    hidden_size: d,
    model_class: 'LlamaForCausalLM',
    model_name: 'stories260K',
    model_type: 'llama',
    name: NAME,
    version: 'adapters.1.2.0',
  };
  return { config, weights: serializeSafetensors(t, { format: 'pt' }) };
}

/** The oracle's layers from the same tensors, read here by name (not through the project's reader). */
export function oracleLayers(files: { weights: Uint8Array }, parts: Parts): UniPeltLayer[] {
  const st = new Map<string, Float32Array>();
  const view = new DataView(files.weights.buffer, files.weights.byteOffset);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(files.weights.subarray(8, 8 + n))) as Record<
    string,
    { data_offsets: [number, number] }
  >;
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const [a, b] = v.data_offsets;
    st.set(k, new Float32Array(files.weights.slice(8 + n + a, 8 + n + b).buffer));
  }
  const T = (k: string) => st.get(k)!;
  let prefixStates: Float64Array | undefined;
  let P = 0;
  const flat = st.get(`model.prefix_tuning.prefix_tunings.${NAME}.self_prefix.control_trans`);
  if (parts.prefix && flat) {
    prefixStates = Float64Array.from(flat);
    P = flat.length / (N * 2 * d);
  } else if (parts.prefix) {
    const pre = `model.prefix_tuning.prefix_tunings.${NAME}.self_prefix`;
    const wte = T(`${pre}.wte.weight`);
    P = wte.length / d;
    const [w0, b0, w2, b2] = ['0.weight', '0.bias', '2.weight', '2.bias'].map((x) =>
      T(`${pre}.control_trans.${x}`),
    );
    const mid = b0.length;
    prefixStates = new Float64Array(P * N * 2 * d);
    for (let p = 0; p < P; p++) {
      const h = Array.from({ length: mid }, (_, j) =>
        Math.tanh(
          b0[j] +
            Array.from({ length: d }, (_, k) => w0[j * d + k] * wte[p * d + k]).reduce((a, v) => a + v, 0),
        ),
      );
      for (let o = 0; o < N * 2 * d; o++)
        prefixStates[p * N * 2 * d + o] = b2[o] + h.reduce((a, v, j) => a + w2[o * mid + j] * v, 0);
    }
  }
  return Array.from({ length: N }, (_, i) => {
    const layer: UniPeltLayer = {};
    if (parts.lora) {
      layer.lora = {};
      for (const proj of ['q_proj', 'v_proj'] as const) {
        const p = `model.layers.${i}.self_attn.${proj}.loras.${NAME}`;
        layer.lora[proj] = {
          a: T(`${p}.lora_A`),
          b: T(`${p}.lora_B`),
          r: T(`${p}.lora_A`).length / d,
          gate: { w: T(`${p}.gate.weight`), b: T(`${p}.gate.bias`)[0] },
        };
      }
    }
    if (parts.prefix && prefixStates) {
      // [P, 2N, H, hd] -> per layer [H, P, hd]
      const slice = (j: number) => {
        const out = new Float64Array(H * P * hd);
        for (let p = 0; p < P; p++)
          for (let h = 0; h < H; h++)
            for (let k = 0; k < hd; k++)
              out[(h * P + p) * hd + k] = prefixStates![((p * 2 * N + j) * H + h) * hd + k];
        return out;
      };
      const g = `model.layers.${i}.self_attn.prefix_tuning.prefix_gates.${NAME}`;
      layer.prefix = {
        keys: slice(2 * i),
        values: slice(2 * i + 1),
        length: P,
        gate: { w: T(`${g}.weight`), b: T(`${g}.bias`)[0] },
      };
    }
    if (parts.bottleneck) {
      const b = `model.layers.${i}.output_adapters.adapters.${NAME}`;
      layer.bottleneck = {
        down: T(`${b}.adapter_down.0.weight`),
        downBias: T(`${b}.adapter_down.0.bias`),
        up: T(`${b}.adapter_up.weight`),
        upBias: T(`${b}.adapter_up.bias`),
        size: T(`${b}.adapter_down.0.bias`).length,
        gate: { w: T(`${b}.gate.weight`), b: T(`${b}.gate.bias`)[0] },
      };
    }
    return layer;
  });
}
