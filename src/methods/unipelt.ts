/**
 * UniPELT (AdapterHub's UniPELTConfig; ../formats/adapterhub-unipelt.ts reads its files, the math is
 * ../reference/unipelt.ts) as slot feeds for a graph with UniPELT slots (../graph/unipelt-slots.ts):
 *
 *   LoRA on q_proj, v_proj   a = lora_Aᵀ, b = lora_Bᵀ (no alpha / r: with gating the gate scales it)
 *                            and the gate [w; b]
 *   prefix                   layer l's keys and values [heads, P, head_dim] from the prefix MLP's
 *                            output [P, 2N, heads, head_dim]: slices 2l and 2l + 1
 *   bottleneck               down = [Dᵀ; b_d] [hidden + 1, m], up = [Uᵀ; b_u] [m + 1, hidden]
 */
import type { LlamaConfig } from '../formats/checkpoint.js';
import type { UniPeltAdapter } from '../formats/adapterhub-unipelt.js';
import type { AdapterFeeds, GateFeed, ModuleFeed, UniPeltFeeds } from './feeds.js';

export function uniPeltFeeds(adapter: UniPeltAdapter, base: LlamaConfig): AdapterFeeds {
  const d = base.hidden_size;
  const heads = base.num_attention_heads;
  const hd = d / heads;
  const modules = new Map<string, ModuleFeed>();
  const unipelt: UniPeltFeeds = { loraGates: new Map(), layers: [] };
  const gateFeed = (w: Float32Array, b: number): GateFeed => {
    const g = new Float32Array(w.length + 1);
    g.set(w);
    g[w.length] = b;
    return g;
  };
  adapter.layers.forEach((layer, l) => {
    for (const [m, lora] of Object.entries(layer.lora)) {
      if (!lora) continue;
      const module = `model.layers.${l}.self_attn.${m}`;
      const out = lora.b.length / lora.r;
      const a = new Float32Array(d * lora.r);
      for (let k = 0; k < lora.r; k++) for (let i = 0; i < d; i++) a[i * lora.r + k] = lora.a[k * d + i];
      const b = new Float32Array(lora.r * out);
      for (let k = 0; k < lora.r; k++) for (let o = 0; o < out; o++) b[k * out + o] = lora.b[o * lora.r + k];
      modules.set(module, { rank: lora.r, a, b });
      unipelt.loraGates.set(module, gateFeed(lora.gateW, lora.gateB));
    }
    const entry: UniPeltFeeds['layers'][number] = {};
    if (adapter.prefix && layer.prefixGate) {
      const P = adapter.prefix.length;
      const width = base.num_hidden_layers * 2 * d;
      const slice = (j: number) => {
        const out = new Float32Array(heads * P * hd);
        for (let p = 0; p < P; p++)
          for (let h = 0; h < heads; h++)
            for (let k = 0; k < hd; k++)
              out[(h * P + p) * hd + k] = adapter.prefix!.states[p * width + (j * heads + h) * hd + k];
        return out;
      };
      entry.prefix = {
        length: P,
        keys: slice(2 * l),
        values: slice(2 * l + 1),
        gate: gateFeed(layer.prefixGate.w, layer.prefixGate.b),
      };
    }
    const bn = layer.bottleneck;
    if (bn) {
      const m = bn.size;
      const down = new Float32Array((d + 1) * m);
      for (let j = 0; j < m; j++) {
        for (let i = 0; i < d; i++) down[i * m + j] = bn.down[j * d + i];
        down[d * m + j] = bn.downBias[j];
      }
      const up = new Float32Array((m + 1) * d);
      for (let o = 0; o < d; o++) {
        for (let j = 0; j < m; j++) up[j * d + o] = bn.up[o * m + j];
        up[m * d + o] = bn.upBias[o];
      }
      entry.bottleneck = { size: m, down, up, gate: gateFeed(bn.gate.w, bn.gate.b) };
    }
    unipelt.layers.push(entry);
  });
  return { modules, unipelt };
}
