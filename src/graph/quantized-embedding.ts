/**
 * A quantized token embedding: the decoder's `/model/embed_tokens/Gather` over a float32 table
 * [vocab, hidden] becomes onnxruntime's GatherBlockQuantized (com.microsoft), which gathers the rows
 * of a blockwise-quantized table and dequantizes only them:
 *
 *   /model/embed_tokens/GatherBlockQuantized   data uint8 [vocab, hidden * bits / 8], input_ids,
 *                                              scales float32 [vocab, ceil(hidden / block_size)];
 *                                              attrs gather_axis 0, quantize_axis 1, block_size, bits
 *
 * uint8 data follows MatMulNBits' conventions: 4-bit codes two to a byte, element 2j in the low
 * nibble, and without a zero_points input the zero point is 2^(bits-1) (8, or 128 for 8 bits); the
 * value is (code - zero point) * scale in float32. Blocks run along each row and are not padded.
 *
 *   int4 (and nf4 bases)  symmetric int4 blocks, the arithmetic of ../quant/int4.ts. NF4 has no gather
 *                         kernel, so an nf4 base quantizes its embedding as int4 with the NF4 block size.
 *   int8                  ../quant/int8.ts per row (= per token): one block of the next power of two
 *                         >= hidden, codes stored + 128.
 *
 * onnxruntime-web has the kernel on wasm and WebGPU (1.30); see bench/quant.ts for what it costs.
 */
import { create } from '@bufbuild/protobuf';
import { ModelFormatError } from '../errors.js';
import {
  NodeProtoSchema,
  tensorData,
  tensorProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
} from '../formats/onnx/index.js';
import { quantizeInt4, quantizeInt8, type QuantFormat } from '../quant/index.js';
import { attribute, MS_DOMAIN } from './builder.js';

const FILE = 'model.onnx';
export const EMBEDDING_GATHER = '/model/embed_tokens/Gather';
export const EMBEDDING_QUANTIZED = '/model/embed_tokens/GatherBlockQuantized';

export interface EmbeddingQuantizeOptions {
  format: QuantFormat;
  /** int4: default 32; nf4 bases: default 64 (their NF4 block size). Ignored by int8. */
  blockSize?: number;
}

/** The node and table initializer of the float embedding Gather. */
function floatEmbedding(model: ModelProto): { node: NodeProto; table: TensorProto } {
  const graph = model.graph;
  const node = graph?.node.find((n) => n.opType === 'Gather' && n.name === EMBEDDING_GATHER);
  const table = node && graph?.initializer.find((t) => t.name === node.input[0]);
  if (!node || !table || table.dims.length !== 2) {
    throw new ModelFormatError(FILE, EMBEDDING_GATHER, 'no token-embedding Gather over a 2-D table');
  }
  return { node, table };
}

/**
 * The GatherBlockQuantized node and its two initializers for the float embedding of `model`,
 * replacing its Gather and table.
 */
export function quantizeEmbedding(
  model: ModelProto,
  opts: EmbeddingQuantizeOptions,
): { drop: { node: NodeProto; table: string }; node: NodeProto; initializers: TensorProto[] } {
  const { node, table } = floatEmbedding(model);
  const t = tensorData(table, FILE);
  if (t.dtype !== 'float32') throw new ModelFormatError(FILE, table.name, `expected float32, got ${t.dtype}`);
  const [vocab, hidden] = t.dims;
  const base = table.name.replace(/\.weight$/, '');
  let bits: number;
  let blockSize: number;
  let data: Uint8Array;
  let scales: Float32Array;
  if (opts.format === 'int8') {
    const q = quantizeInt8(t.data, vocab, hidden);
    bits = 8;
    blockSize = Math.max(16, 2 ** Math.ceil(Math.log2(hidden)));
    data = Uint8Array.from(q.data, (v) => v + 128);
    scales = q.scales;
  } else {
    if (hidden % 2 !== 0) {
      throw new ModelFormatError(
        FILE,
        table.name,
        `a 4-bit embedding needs an even hidden size, got ${hidden}`,
      );
    }
    const q = quantizeInt4(t.data, vocab, hidden, {
      blockSize: opts.blockSize ?? (opts.format === 'nf4' ? 64 : 32),
    });
    bits = 4;
    blockSize = q.blockSize;
    scales = q.scales;
    // MatMulNBits pads each row to whole blocks; GatherBlockQuantized's rows are hidden / 2 bytes.
    const row = hidden / 2;
    const padded = (q.blocks * q.blockSize) / 2;
    data = new Uint8Array(vocab * row);
    for (let r = 0; r < vocab; r++) data.set(q.data.subarray(r * padded, r * padded + row), r * row);
  }
  const blocks = Math.ceil(hidden / blockSize);
  const quantized = create(NodeProtoSchema, {
    name: EMBEDDING_QUANTIZED,
    opType: 'GatherBlockQuantized',
    domain: MS_DOMAIN,
    input: [`${base}.q${bits}`, node.input[1], `${base}.scales`],
    output: node.output,
    attribute: [
      attribute('gather_axis', 0),
      attribute('quantize_axis', 1),
      attribute('block_size', blockSize),
      attribute('bits', bits),
    ],
  });
  return {
    drop: { node, table: table.name },
    node: quantized,
    initializers: [
      tensorProto(`${base}.q${bits}`, 'uint8', [vocab, (hidden * bits) / 8], data),
      tensorProto(`${base}.scales`, 'float32', [vocab, blocks], scales),
    ],
  };
}

/** The quantized embedding node of `model`, if it has one. */
export function quantizedEmbeddingNode(model: ModelProto): NodeProto | undefined {
  return model.graph?.node.find((n) => n.opType === 'GatherBlockQuantized' && n.name === EMBEDDING_QUANTIZED);
}

/** The embedding table [vocab, hidden] of a GatherBlockQuantized node, as the op computes it. */
export function dequantizeEmbedding(model: ModelProto, node: NodeProto): Float32Array {
  const inits = new Map((model.graph?.initializer ?? []).map((t) => [t.name, t]));
  const read = (name: string) => {
    const t = inits.get(name);
    if (!t) throw new ModelFormatError(FILE, name, 'no initializer holds this tensor');
    return tensorData(t, FILE);
  };
  const attr = (name: string) => Number(node.attribute.find((a) => a.name === name)?.i ?? NaN);
  const data = read(node.input[0]);
  const scales = read(node.input[2]);
  const bits = attr('bits');
  const blockSize = attr('block_size');
  if (data.dtype !== 'uint8' || scales.dtype !== 'float32' || node.input[3] || (bits !== 4 && bits !== 8)) {
    throw new ModelFormatError(
      FILE,
      node.name,
      'expected uint8 data, float32 scales, no zero points and bits 4 or 8 (the layout quantizeEmbedding writes)',
    );
  }
  if (attr('gather_axis') !== 0 || attr('quantize_axis') !== 1 || data.dims.length !== 2) {
    throw new ModelFormatError(
      FILE,
      node.name,
      'expected a 2-D table gathered on axis 0, quantized on axis 1',
    );
  }
  const [vocab, bytes] = data.dims;
  const hidden = (bytes * 8) / bits;
  if (!(Number.isInteger(blockSize) && blockSize >= 16 && (blockSize & (blockSize - 1)) === 0)) {
    throw new ModelFormatError(FILE, node.name, `block_size must be a power of 2 >= 16, got ${blockSize}`);
  }
  const blocks = Math.ceil(hidden / blockSize);
  if (scales.dims.length !== 2 || scales.dims[0] !== vocab || scales.dims[1] !== blocks) {
    throw new ModelFormatError(
      FILE,
      node.input[2],
      `expected scales [${vocab}, ${blocks}] for a [${vocab}, ${hidden}] table in blocks of ${blockSize}, ` +
        `got [${scales.dims.join(', ')}]`,
    );
  }
  const zero = 2 ** (bits - 1);
  const out = new Float32Array(vocab * hidden);
  for (let r = 0; r < vocab; r++) {
    for (let c = 0; c < hidden; c++) {
      const byte = data.data[r * bytes + (bits === 4 ? c >> 1 : c)];
      const code = bits === 8 ? byte : c & 1 ? byte >> 4 : byte & 0x0f;
      out[r * hidden + c] = (code - zero) * scales.data[r * blocks + Math.floor(c / blockSize)];
    }
  }
  return out;
}
