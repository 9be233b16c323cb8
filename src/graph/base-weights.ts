/**
 * The base model's weights as methods/ reads them (DoRA's weight norm, checks of base weights saved
 * with an adapter), taken from the decoder graph itself: W [out, in] of a linear module is the
 * transpose of its MatMul initializer, the embedding table is the data of the token Gather.
 */
import { ModelFormatError } from '../errors.js';
import type { LlamaConfig } from '../formats/checkpoint.js';
import { tensorData, type ModelProto, type TensorProto } from '../formats/onnx/index.js';
import type { BaseModel } from '../methods/feeds.js';
import { linearNodes } from './llama.js';
import { dequantizeEmbedding, quantizedEmbeddingNode } from './quantized-embedding.js';
import { linearWeight } from './quantized-linear.js';

export function graphBaseModel(model: ModelProto, config: LlamaConfig, file = 'model.onnx'): BaseModel {
  const initializers = new Map((model.graph?.initializer ?? []).map((t) => [t.name, t]));
  const linears = new Map(linearNodes(model).map(({ module, node }) => [module, node.input[1]]));
  // Quantized linears (./quantized-linear.ts): W is dequantized exactly as the op computes it.
  const quantized = new Map(
    linearNodes(model)
      .filter(({ node }) => node.opType !== 'MatMul' || !initializers.has(node.input[1]))
      .map(({ module, node }) => [module, node]),
  );
  const embedding = model.graph?.node.find((n) => n.name === '/model/embed_tokens/Gather')?.input[0];
  const quantizedEmbedding = quantizedEmbeddingNode(model); // ./quantized-embedding.ts
  const cache = new Map<string, Float32Array>();

  const float32 = (t: TensorProto | undefined, what: string) => {
    if (!t) throw new ModelFormatError(file, what, 'no initializer holds this weight');
    const data = tensorData(t, file);
    if (data.dtype !== 'float32' || data.dims.length !== 2) {
      throw new ModelFormatError(
        file,
        t.name,
        `expected a 2-D float32 weight, got ${data.dtype} [${data.dims.join(', ')}]`,
      );
    }
    return { data: data.data, rows: data.dims[0], cols: data.dims[1] };
  };

  return {
    config,
    weight(module: string): Float32Array {
      const known = cache.get(module);
      if (known) return known;
      let w: Float32Array;
      const qnode = quantized.get(module);
      if (qnode) {
        w = linearWeight(model, module, qnode);
      } else if (module === 'model.embed_tokens' && quantizedEmbedding) {
        w = dequantizeEmbedding(model, quantizedEmbedding);
      } else if (module === 'model.embed_tokens') {
        w = float32(embedding === undefined ? undefined : initializers.get(embedding), module).data;
      } else {
        // MatMul weights are stored [in, out]; methods/ reads W as [out, in].
        const t = float32(initializers.get(linears.get(module) ?? ''), module);
        w = new Float32Array(t.rows * t.cols);
        for (let i = 0; i < t.rows; i++)
          for (let o = 0; o < t.cols; o++) w[o * t.rows + i] = t.data[i * t.cols + o];
      }
      cache.set(module, w);
      return w;
    },
  };
}
